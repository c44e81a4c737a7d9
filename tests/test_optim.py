"""Muon for the hidden layers, AdamW for the rest (ddpm_course.optim): against PyTorch's own
optimisers, and the split of the U-Net's parameters."""
import pytest
import torch
from torch import nn

from ddpm_course import get_profile
from ddpm_course.optim import MuonAdamW, muon_parameters, orthogonalise
from ddpm_course.unet import UNet


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (3, 32, 32)])
def test_orthogonalise_flattens_the_spectrum(shape):
    """Singular values spread over 100x come out in about [0.5, 1.5], with the same singular vectors."""
    g = torch.Generator().manual_seed(0)
    *batch, m, n = shape
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(*batch, m, k, generator=g)).Q
    v = torch.linalg.qr(torch.randn(*batch, n, k, generator=g)).Q
    a = u @ torch.diag_embed(torch.logspace(-2, 0, k).expand(*batch, k)) @ v.transpose(-2, -1)
    o = orthogonalise(a)
    s = torch.linalg.svdvals(o)
    assert s.shape[-1] == k and 0.5 < s.min() and s.max() < 1.5
    assert torch.allclose(o, u @ torch.diag_embed((u.transpose(-2, -1) @ o @ v).diagonal(dim1=-2, dim2=-1))
                          @ v.transpose(-2, -1), atol=1e-4)   # U diag(s') V^T: only the values change


def test_orthogonalise_a_stack_is_each_matrix_alone():
    a = torch.randn(4, 8, 20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(orthogonalise(a)[2], orthogonalise(a[2]), atol=1e-6)


def _fixed_grads(params, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]


def _run(optimizer, params, grads):
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        optimizer.step()


def test_the_muon_part_follows_torchs_muon():
    """On 2-D weights, three steps match torch.optim.Muon (Nesterov momentum, the same iteration and
    scaling, decoupled decay) to 1%; torch orthogonalises in bf16, we in float32, hence the tolerance
    (without Nesterov the two differ by 23%)."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g) for s in ((24, 40), (40, 24))]
    ours = [nn.Parameter(w.clone()) for w in start]
    theirs = [nn.Parameter(w.clone()) for w in start]
    grads = _fixed_grads(ours, 3)
    _run(MuonAdamW(ours, [], lr=0.01, muon_lr_scale=2.0, weight_decay=0.1), ours, grads)
    _run(torch.optim.Muon(theirs, lr=0.02, weight_decay=0.05), theirs, grads)   # decay: lr * wd is the same
    for a, b, w in zip(ours, theirs, start):
        moved_a, moved_b = a.detach() - w, b.detach() - w
        assert moved_b.norm() > 0.05 and (moved_a - moved_b).norm() < 0.03 * moved_b.norm()


def test_a_kernel_is_stepped_as_its_flattened_matrix():
    kernel = nn.Parameter(torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(2)))
    matrix = nn.Parameter(kernel.detach().reshape(8, 36).clone())
    grads = _fixed_grads([kernel], 2, seed=3)
    _run(MuonAdamW([kernel], [], lr=0.01), [kernel], grads)
    _run(MuonAdamW([matrix], [], lr=0.01), [matrix], [[g.reshape(8, 36) for g in step] for step in grads])
    assert torch.allclose(kernel.detach().reshape(8, 36), matrix.detach(), atol=1e-6)


def test_the_adamw_part_is_torchs_adamw():
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(s)) for s in ((5,), (3, 4))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    grads = _fixed_grads(ours, 5)
    _run(MuonAdamW([], ours, lr=0.01, betas=(0.9, 0.99), weight_decay=0.05), ours, grads)
    _run(torch.optim.AdamW(theirs, lr=0.01, betas=(0.9, 0.99), weight_decay=0.05), theirs, grads)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_unets_split():
    """Muon: hidden layers' matrices and kernels; AdamW: biases, norms, the label table, conv_in, conv_out."""
    model = UNet(get_profile("cpu").model)
    muon, adamw = muon_parameters(model)
    by_id = {id(p): name for name, p in model.named_parameters()}
    muon_names, adamw_names = {by_id[id(p)] for p in muon}, {by_id[id(p)] for p in adamw}
    assert {"conv_in.weight", "conv_out.weight", "label_embed.weight"} <= adamw_names
    assert {"down.0.res.conv1.weight", "mid.0.attn.qkv.weight", "time_embed.mlp.0.weight"} <= muon_names
    assert all(p.ndim >= 2 for p in muon) and all(p.ndim == 1 for p in adamw if by_id[id(p)].endswith("bias"))
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def test_bad_arguments_are_named():
    p = [nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="muon_lr_scale must be > 0"):
        MuonAdamW(p, [], lr=0.01, muon_lr_scale=0.0)
    with pytest.raises(ValueError, match="momentum must be < 1"):
        MuonAdamW(p, [], lr=0.01, momentum=1.0)
