import copy
import math

import pytest
import torch

from ddpm_course import UNet, UNetConfig, sinusoidal_embedding


@pytest.mark.parametrize("cfg", [
    UNetConfig(base_channels=16, num_res_blocks=1),
    UNetConfig(base_channels=16, num_res_blocks=1, num_classes=10),
    UNetConfig(image_size=32, base_channels=8, channel_mults=(1, 2, 2, 2), attention_resolutions=(8, 4)),
    UNetConfig(image_channels=3, base_channels=8, channel_mults=(1, 2), attention_resolutions=()),
    UNetConfig(base_channels=8, channel_mults=(2, 4, 4), num_res_blocks=1),  # first level wider than the stem
])
def test_output_shape(cfg):
    model = UNet(cfg)
    x = torch.randn(3, cfg.image_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([0, 10, 999])
    y = torch.tensor([0, 9, 10]) if cfg.num_classes else None
    out = model(x, t) if y is None else model(x, t, y)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_output_starts_at_zero_and_depends_on_t_and_y():
    """The last conv is zero-initialised (a residual-friendly start); after a perturbation the
    output depends on t and on y."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=16, num_res_blocks=1, num_classes=10))
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([5, 5])).abs().max() == 0
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    a = model(x[:1], torch.tensor([5]), torch.tensor([3]))

    def effect(b):  # the change relative to the output's own size: must be substantial
        return ((a - b).abs().mean() / a.abs().mean()).item()

    assert effect(model(x[:1], torch.tensor([500]), torch.tensor([3]))) > 0.05
    assert effect(model(x[:1], torch.tensor([5]), torch.tensor([4]))) > 0.05
    # y=None on a conditional model is the "no label" token
    torch.testing.assert_close(model(x[:1], torch.tensor([5])), model(x[:1], torch.tensor([5]), torch.tensor([10])))


def test_learns_a_target_only_t_and_y_determine():
    """Gradient reaches the output through both embeddings. The input is all zeros and the target
    is level[y] * t / 999, so the best a y-only predictor can do is level[y] / 2, an MSE of
    E[level^2] Var(t / 999) = 0.041 on this grid, and a t-only one, 0, an MSE of 0.143. Training
    must go well below both."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), num_classes=10))
    level, g = torch.linspace(-1, 1, 10), torch.Generator().manual_seed(0)

    def loss_on(t, y):
        target = (level[y] * (t / 999))[:, None, None, None].expand(len(t), 1, 8, 8)
        return ((model(torch.zeros(len(t), 1, 8, 8), t, y) - target) ** 2).mean()

    t_grid, y_grid = torch.linspace(0, 999, 11).long().repeat(10), torch.arange(10).repeat_interleave(11)
    with torch.no_grad():
        y_only_floor = (level[y_grid] ** 2).mean() * (t_grid / 999).var(unbiased=False)
        assert y_only_floor.item() == pytest.approx(0.041, abs=0.001)
        assert loss_on(t_grid, y_grid).item() == pytest.approx(0.143, abs=0.001)   # zero output at the start
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = loss_on(torch.randint(0, 1000, (32,), generator=g), torch.randint(0, 10, (32,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert loss_on(t_grid, y_grid).item() < y_only_floor.item() / 2


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [10000 ** (-k / 4) for k in range(4)]
    expected = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))


def test_summary_and_parameter_count():
    model = UNet(UNetConfig(base_channels=16, num_res_blocks=1, num_classes=10))
    unconditional = UNet(UNetConfig(base_channels=16, num_res_blocks=1, num_classes=None))
    # known answer: a label adds only its embedding table, 10 digits + "no label" rows of 4 * 16 values
    assert model.num_parameters() - unconditional.num_parameters() == 11 * 4 * 16
    n = model.num_parameters()
    line = model.summary()
    assert f"{n / 1e6:.2f}M parameters" in line and "28x28->14x14->7x7" in line and "attention at 7x7" in line


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=30), "image_size must be divisible by"),
    (dict(attention_resolutions=(5,)), "attention_resolutions must be among"),
    (dict(channel_mults=()), "channel_mults must be a non-empty tuple"),
    (dict(base_channels=0), "base_channels must be a positive int"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(num_classes=0), "num_classes must be None or a positive int"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_bad_forward_inputs():
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=()))
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(TypeError, match="t must be a torch.long tensor"):
        model(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 1, 28, 28\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="y was given but this UNet is unconditional"):
        model(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    cond = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(), num_classes=10))
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 10\]"):
        cond(x, torch.tensor([1, 2]), torch.tensor([0, 11]))
    with pytest.raises(TypeError, match="config must be a UNetConfig"):
        UNet({"base_channels": 8})


def test_attention_weights_are_the_softmax_the_block_uses():
    from ddpm_course.unet import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(32, heads=4)
    torch.nn.init.normal_(attn.proj.weight)   # the projection starts at zero; make it count
    x = torch.randn(2, 32, 5, 5)
    w = attn.attention_weights(x)
    assert w.shape == (2, 4, 25, 25) and torch.allclose(w.sum(-1), torch.ones(2, 4, 25))
    v = attn.qkv(attn.norm(x)).view(2, 3, 4, 8, 25)[:, 2].transpose(-1, -2)
    out = x + attn.proj((w @ v).transpose(-1, -2).reshape(2, 32, 5, 5))
    assert torch.allclose(out, attn(x), atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                                         attention_resolutions=(7,)),
                                    dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=2,
                                         attention_resolutions=(14,), num_classes=10)])
def test_the_diagram_reads_the_model(kwargs):
    import matplotlib

    matplotlib.use("Agg")
    from ddpm_course.course.diagram import draw_unet, unet_layers

    model = UNet(UNetConfig(**kwargs))
    layers = unet_layers(model)
    assert len(layers) == 2 + len(model.down) + len(model.mid) + len(model.up)
    skips = [layer for layer in layers if layer.skip_from is not None]
    assert len(skips) == len(model.down) + 1   # every encoder output (and conv_in's) is used once
    for layer in skips:
        i = layers.index(layer)
        assert layer.in_channels == layers[i - 1].out_channels + layers[layer.skip_from].out_channels
        assert layers[layer.skip_from].resolution == layer.resolution
    attn = {layer.resolution for layer in layers if layer.kind == "res+attn"}
    assert attn == set(kwargs["attention_resolutions"])
    assert len(draw_unet(model).patches) >= len(layers)


def test_groupnorm_and_attention_stay_float32_under_bf16_autocast(monkeypatch):
    """Under CPU bf16 autocast the convolutions run in bf16, the GroupNorms and attention's softmax
    in float32 (exact statistics, and the fast kernels on the CPU); on float32 input GroupNorm32 is
    nn.GroupNorm exactly, and the model's output matches float32 to bf16's precision."""
    from ddpm_course.precision import GroupNorm32
    from ddpm_course.unet import SelfAttention

    torch.manual_seed(0)
    norm, plain = GroupNorm32(4, 16), torch.nn.GroupNorm(4, 16)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 16, 7, 7)
    assert torch.equal(norm(x), plain(x))
    attention_dtypes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        attention_dtypes.append(q.dtype)
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
        attn = SelfAttention(16, heads=2)(x)
    assert out.dtype == torch.float32 and torch.allclose(out, plain(x.bfloat16().float()), atol=1e-5)
    assert attn.shape == x.shape and attention_dtypes == [torch.float32]
    model = UNet(UNetConfig(base_channels=16, num_res_blocks=1, num_classes=10))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    xt, t, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 300, 600, 999]), torch.tensor([1, 2, 3, 10])
    dtypes = []

    def record(mod, inp, outp):
        if isinstance(outp, torch.Tensor):
            dtypes.append((type(mod).__name__, outp.dtype))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(xt, t, y).float()
    finally:
        hook.remove()
    assert ("Conv2d", torch.bfloat16) in dtypes and ("GroupNorm32", torch.float32) in dtypes
    assert not any(name == "GroupNorm32" and dtype != torch.float32 for name, dtype in dtypes)
    full = model(xt, t, y)
    assert (low - full).abs().max() < 0.05 * full.abs().max()


def test_groupnorm32_cast_to_bf16_runs_without_autocast():
    """Cast to bf16 as a whole (no autocast), GroupNorm32 normalises in float32 and hands back bf16,
    as nn.GroupNorm does, agreeing with float32 to bf16's precision."""
    from ddpm_course.precision import GroupNorm32

    torch.manual_seed(0)
    norm = GroupNorm32(4, 16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 16, 7, 7)
    low = copy.deepcopy(norm).bfloat16()(x.bfloat16())
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), norm(x.bfloat16().float()), atol=0.05)
