
import math
import os

import pytest
import torch

from ddpm_course import TrainConfig, TrainingDiverged, get_profile, load_checkpoint, train
from ddpm_course.checkpoints import read_checkpoint, save_checkpoint


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_quietly(config, resume=True, **kwargs):
    lines = []
    path = train(config, resume=resume, progress=False, log=lines.append, **kwargs)
    return path, lines


def test_an_auto_split_run_records_the_split_it_used(tiny_config, tmp_path):
    """split="auto" falls back to the test split when the train split is missing; the checkpoint
    says which, and the memorisation check compares with that split."""
    from helpers import write_mnist_split

    from ddpm_course.memorisation import trained_split

    write_mnist_split(tmp_path / "only-test", "test", 16)
    config = tiny_config.replace(split="auto", data_root=str(tmp_path / "only-test"), max_steps=1)
    ckpt = load_checkpoint(_train_quietly(config)[0])
    assert ckpt.info["split"] == "test" and ckpt.info["num_images"] == 16
    assert trained_split(ckpt.config.split, ckpt.info) == "test"


def test_train_writes_a_loadable_checkpoint(tiny_config):
    path, _ = _train_quietly(tiny_config)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 6 and ckpt.config == tiny_config and ckpt.schedule.T == 50
    assert len(ckpt.history) == 6 and all(torch.isfinite(torch.tensor(loss)) for _, loss in ckpt.history)
    assert ckpt.info["num_images"] == 64 and ckpt.num_classes == 10
    x = ckpt.ema_model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 4]))
    assert x.shape == (2, 1, 28, 28)
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())


def test_loaded_models_use_the_fast_layout_and_agree_with_the_default_one(tiny_config):
    from ddpm_course import UNet

    ckpt = load_checkpoint(_train_quietly(tiny_config)[0])
    conv = next(m for m in ckpt.ema_model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain = UNet(tiny_config.model).eval()
    plain.load_state_dict(ckpt.ema_model.state_dict())
    x, t, y = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 9, 25, 49]), \
        torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.ema_model(x, t, y), plain(x, t, y), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_resume_is_exact(tiny_config, tmp_path, channels_last):
    """Training to N in one go == training to k, stopping, and resuming to N (bit for bit)."""
    tiny_config = tiny_config.replace(channels_last=channels_last)
    straight, _ = _train_quietly(tiny_config.replace(out_dir=str(tmp_path / "a")))
    part = tiny_config.replace(out_dir=str(tmp_path / "b"), max_steps=4)
    _train_quietly(part)
    path, lines = _train_quietly(part.replace(max_steps=6))
    assert f"Resuming from {path} at step 4" in lines
    a, b = read_checkpoint(straight), read_checkpoint(path)
    assert a["step"] == b["step"] == 6
    assert _states_equal(a["model"], b["model"]) and _states_equal(a["ema"], b["ema"])
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


@pytest.mark.parametrize("recipe", [
    {}, dict(fused_optimizer=True), dict(lr_schedule="cosine", timesteps="stratified"),
    dict(optimizer="muon", muon_lr_scale=3.0, weight_decay=0.01),
])
def test_interrupted_run_keeps_its_work_and_resumes_exactly(tiny_config, tmp_path, recipe):
    tiny_config = tiny_config.replace(**recipe)
    straight, _ = _train_quietly(tiny_config.replace(out_dir=str(tmp_path / "a")))
    config = tiny_config.replace(out_dir=str(tmp_path / "b"), checkpoint_every=100)

    def interrupt(info):
        if info["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_quietly(config, callback=interrupt)
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5  # saved on the interrupt
    path, lines = _train_quietly(config)
    assert any("at step 5" in line for line in lines)
    assert _states_equal(read_checkpoint(straight)["model"], read_checkpoint(path)["model"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, monkeypatch):
    import ddpm_course.training as training

    real = training.diffusion_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(training, "diffusion_loss", exploding)
    with pytest.raises(TrainingDiverged, match="NaN or infinite between steps 4 and 5.*last good checkpoint"):
        _train_quietly(tiny_config)
    state = read_checkpoint(tiny_config.out_dir + "/checkpoint.pt")
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_false_keeps_the_old_checkpoint(tiny_config, tmp_path):
    _train_quietly(tiny_config.replace(max_steps=3))
    _, lines = _train_quietly(tiny_config.replace(max_steps=3), resume=False)
    old = list((tmp_path / "run").glob("checkpoint-old-*.pt"))
    assert len(old) == 1 and read_checkpoint(old[0])["step"] == 3
    assert any("Kept the previous checkpoint" in line for line in lines)


def test_resume_refuses_a_different_config(tiny_config):
    _train_quietly(tiny_config.replace(max_steps=3))
    with pytest.raises(ValueError, match=r"cannot resume .* lr: 0.001 -> 0.01"):
        _train_quietly(tiny_config.replace(lr=0.01))


def test_cosine_schedule_values_and_its_resume_rule(tiny_config):
    from ddpm_course.training import lr_at

    cfg = tiny_config.replace(lr=1.0, warmup_steps=2, max_steps=10, lr_schedule="cosine")
    lrs = [lr_at(step, cfg) for step in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0]            # warm-up, then the top of the cosine
    assert lrs[6] == pytest.approx(0.5)          # halfway through the 8 steps after the warm-up
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_at(9, cfg.replace(lr_schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="warmup_steps=10 >= max_steps=10 leaves no steps to decay over"):
        cfg.replace(warmup_steps=10).validate()
    run = tiny_config.replace(lr_schedule="cosine", max_steps=6)
    with pytest.raises(KeyboardInterrupt):
        _train_quietly(run.replace(checkpoint_every=3), callback=_stop_at(3))
    _, lines = _train_quietly(run.replace(checkpoint_every=2))     # what only sets the pace may change
    assert any("at step 3" in line for line in lines)
    run = run.replace(out_dir=run.out_dir + "-2", max_steps=3)
    _train_quietly(run)
    with pytest.raises(ValueError, match=r"max_steps: 3 -> 6 \(lr_schedule='cosine' decays to 0 at max_steps"):
        _train_quietly(run.replace(max_steps=6))


def test_compiled_training_matches_plain_training_and_saves_the_plain_model(tiny_config, tmp_path, monkeypatch):
    """compile=True: the loss calls the compiled network, and training through it gives the plain
    run's weights (to float rounding); the checkpoint holds the plain model's weights (no
    "_orig_mod." prefixes), so it loads and resumes like any other. Compiled with the aot_eager
    backend: the same graph capture and autograd, without needing a C++ compiler in CI."""
    from ddpm_course.training import Trainer

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="aot_eager"))
    config = tiny_config.replace(max_steps=3)
    compiled = Trainer(config.replace(compile=True), log=lambda *_: None)
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule) and compiled.net is not compiled.model
    plain_path, _ = _train_quietly(config.replace(out_dir=str(tmp_path / "plain")))
    compiled_path, _ = _train_quietly(config.replace(out_dir=str(tmp_path / "compiled"), compile=True))
    a, b = read_checkpoint(plain_path), read_checkpoint(compiled_path)
    assert a["model"].keys() == b["model"].keys() and not any("_orig_mod" in k for k in b["model"])
    start = Trainer(config, log=lambda *_: None).model.state_dict()
    moved = max((a["model"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4                      # three steps changed the weights ...
    for k in a["model"]:                     # ... and the compiled run changed them the same way
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-5, rtol=1e-4)
    _, lines = _train_quietly(config.replace(out_dir=str(tmp_path / "compiled"), max_steps=4))
    assert any("at step 3" in line for line in lines)     # a compiled run resumes without compile


def test_init_from_starts_from_the_ema_weights_and_resumes_without_them(tiny_config, tmp_path):
    """init_from: model and EMA start from another run's EMA weights (step 0, a fresh optimizer);
    once the new run has a checkpoint it resumes from that, even if the first file is gone."""
    from ddpm_course.training import Trainer

    first, _ = _train_quietly(tiny_config.replace(out_dir=str(tmp_path / "first")))
    source = tmp_path / "source.pt"
    source.write_bytes(first.read_bytes())
    config = tiny_config.replace(out_dir=str(tmp_path / "second"), init_from=str(source), max_steps=2)
    trainer = Trainer(config, log=lambda *_: None)
    assert not _states_equal(trainer.model.state_dict(), read_checkpoint(source)["ema"])
    trainer.start_from_init()
    ema = read_checkpoint(source)["ema"]
    assert _states_equal(trainer.model.state_dict(), ema) and _states_equal(trainer.ema.state_dict(), ema)
    path, lines = _train_quietly(config)
    assert f"Starting from the weights of {source}" in lines and read_checkpoint(path)["step"] == 2
    origin = read_checkpoint(path)["info"]["init_from"]          # what the card will count
    assert origin["path"] == str(source) and origin["step"] == 6 and origin["init_from"] is None
    assert origin["train_seconds"] == read_checkpoint(source)["info"]["train_seconds"]
    source.unlink()
    _, lines = _train_quietly(config.replace(max_steps=3))
    assert f"Resuming from {path} at step 2" in lines and read_checkpoint(path)["info"]["init_from"] == origin


def test_init_from_refuses_another_u_net_and_a_missing_file(tiny_config, tmp_path):
    from ddpm_course.assets import asset_paths

    shipped, _ = asset_paths("pretrained-mnist-uncond")     # a shipped model: base 32, unconditional
    with pytest.raises(ValueError, match=r"init_from=.* holds a different U-Net \(base_channels: 32 there, 8 here"):
        _train_quietly(tiny_config.replace(init_from=str(shipped)))
    with pytest.raises(FileNotFoundError, match=r"checkpoint to start from \(TrainConfig.init_from\) not found"):
        _train_quietly(tiny_config.replace(init_from=str(tmp_path / "none.pt")))
    with pytest.raises(ValueError, match="TrainConfig.init_from must be a checkpoint's path or None, got ''"):
        tiny_config.replace(init_from="").validate()


def _stop_at(step):
    def callback(info):
        if info["step"] == step:
            raise KeyboardInterrupt
    return callback


def test_speed_switches_may_change_on_resume(tiny_config):
    from ddpm_course.training import Trainer

    _train_quietly(tiny_config.replace(max_steps=3))
    faster = tiny_config.replace(fused_optimizer=True)
    _, lines = _train_quietly(faster)
    assert any("at step 3" in line for line in lines)
    trainer = Trainer(faster, log=lambda *_: None)
    trainer.load(trainer.path)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)   # the config's choice, not the file's


def test_adam_beta2_reaches_the_optimiser_and_is_kept_on_resume(tiny_config):
    from ddpm_course.training import Trainer

    config = tiny_config.replace(adam_beta2=0.95, max_steps=2)
    trainer = Trainer(config, log=lambda *_: None)
    assert all(group["betas"] == (0.9, 0.95) for group in trainer.optimizer.param_groups)
    _train_quietly(config)
    with pytest.raises(ValueError, match=r"cannot resume .* adam_beta2: 0.95 -> 0.999"):
        _train_quietly(config.replace(adam_beta2=0.999, max_steps=3))


def test_checkpoints_written_before_a_field_existed_still_resume(tiny_config):
    path, _ = _train_quietly(tiny_config.replace(max_steps=3))
    state = read_checkpoint(path)
    for key in ("lr_schedule", "timesteps", "fused_optimizer", "compile", "adam_beta2"):
        del state["config"][key]       # as written by an earlier version
    save_checkpoint(state, path)
    _, lines = _train_quietly(tiny_config)
    assert any("at step 3" in line for line in lines)


def test_checkpoints_never_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ddpm_course.checkpoint/1", "x": Evil()}, path)
    with pytest.raises(ValueError, match="refused") as error:
        read_checkpoint(path)
    assert "weights_only" not in str(error.value)  # no advice to turn the safety off


def test_atomic_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint({"format": "ddpm_course.checkpoint/1", "step": 1}, tmp_path / "c.pt")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "ddpm_course.checkpoint/1", "step": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ddpm_course file"):
        load_checkpoint(tmp_path / "other.pt")


def test_each_bad_file_says_what_is_wrong_with_its_path(tmp_path):
    from ddpm_course.assets import assets_dir

    good = save_checkpoint({"format": "ddpm_course.checkpoint/1", "w": torch.zeros(1000)}, tmp_path / "g.pt")
    cases = {"empty.pt": (b"", "is empty"), "truncated.pt": (good.read_bytes()[:300], "truncated or corrupt"),
             "garbage.pt": (b"not a checkpoint at all" * 10, "truncated or corrupt")}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=words) as error:
            load_checkpoint(tmp_path / name)
        assert name in str(error.value)
    torch.save({"format": "ddpm_course.checkpoint/9"}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="does not know"):
        load_checkpoint(tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="is an evaluator.*load_evaluator"):
        load_checkpoint(assets_dir() / "evaluator-mnist.pt")


def test_split_auto_falls_back_to_test_and_says_so(tiny_config, tmp_path):
    from helpers import write_mnist_split

    root = tmp_path / "only_test"
    write_mnist_split(root, "test", 24)
    config = tiny_config.replace(data_root=str(root), split="auto", max_steps=1, out_dir=str(tmp_path / "o"))
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("offline")

    mp = pytest.MonkeyPatch()
    mp.setattr(torchvision.datasets, "MNIST", Offline)
    try:
        path, lines = _train_quietly(config)
    finally:
        mp.undo()
    assert any("train split is not available" in line and "24-image test split" in line for line in lines)
    assert load_checkpoint(path).info["num_images"] == 24


@pytest.mark.parametrize("changes, match", [
    (dict(lr=0.0), "TrainConfig.lr must be > 0"),
    (dict(batch_size=0), "TrainConfig.batch_size must be >= 1"),
    (dict(schedule="sigmoid"), "TrainConfig.schedule must be one of"),
    (dict(split="val"), "TrainConfig.split must be one of"),
    (dict(mixed_precision="fp8"), "TrainConfig.mixed_precision must be one of"),
    (dict(lr_schedule="linear"), r"TrainConfig.lr_schedule must be one of \['constant', 'cosine'\], got 'linear'"),
    (dict(timesteps="sobol"), r"TrainConfig.timesteps must be one of \['uniform', 'stratified'\]"),
    (dict(ema_decay=1.0), "TrainConfig.ema_decay must be < 1"),
    (dict(adam_beta2=1.0), "TrainConfig.adam_beta2 must be < 1"),
    (dict(model=dict(num_classes=None)), "p_uncond=0.2 drops labels"),
    (dict(guidance=-1.0), "TrainConfig.guidance must be >= 0"),
    (dict(optimizer="sgd"), r"TrainConfig.optimizer must be one of \['adamw', 'adam', 'muon'\], got 'sgd'"),
    (dict(muon_lr_scale=5.0), r"TrainConfig.muon_lr_scale=5.0 scales Muon's .*='adamw'; set optimizer='muon'"),
    (dict(optimizer="muon", muon_lr_scale=0.0), "TrainConfig.muon_lr_scale must be > 0"),
    (dict(optimizer="muon", fused_optimizer=True), "fused_optimizer=True fuses AdamW's update, but optimizer='muon'"),
    (dict(model=dict(num_classes=None), p_uncond=0.0, guidance=1.5),
     r"TrainConfig.guidance=1.5 is the classifier-free guidance scale .* unconditional .* set guidance=None"),
])
def test_bad_train_config(tiny_config, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config.replace(**changes).validate()


def test_a_checkpoint_recommends_its_configs_guidance(tiny_config):
    assert load_checkpoint(_train_quietly(tiny_config.replace(max_steps=1))[0]).sampling["guidance_scale"] == 2.0
    ckpt = load_checkpoint(_train_quietly(tiny_config.replace(max_steps=1, guidance=1.3,
                                                              out_dir=tiny_config.out_dir + "-w"))[0])
    assert ckpt.sampling == {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 1.3}
    resumed = load_checkpoint(_train_quietly(tiny_config.replace(max_steps=2, guidance=1.6,
                                                                 out_dir=tiny_config.out_dir + "-w"))[0])
    assert (resumed.step, resumed.sampling["guidance_scale"]) == (2, 1.6)   # a recommendation: free on resume
    assert get_profile("t4").guidance == 1.25        # measured per profile (docs/RESULTS.md)


def test_fp16_on_cpu_is_refused(tiny_config):
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a CUDA device, got device cpu"):
        _train_quietly(tiny_config.replace(mixed_precision="fp16", device="cpu"))


def test_bf16_on_the_cpu_trains_under_autocast_and_resumes_exactly(tiny_config, monkeypatch):
    import ddpm_course.devices as devices
    from ddpm_course.devices import resolve_precision

    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "no"      # float32 on CPUs without bf16 units
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"    # bf16 where AMX / AVX512_BF16 speed it up
    assert resolve_precision("no", torch.device("cpu")) == "no"
    with pytest.raises(ValueError, match=r"mixed_precision='bf16' needs a CUDA device \(or the CPU, for bf16\)"):
        resolve_precision("bf16", torch.device("mps"))
    dtypes = []
    real = torch.nn.Conv2d.forward

    def recording_forward(self, x):
        out = real(self, x)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording_forward)
    config = tiny_config.replace(mixed_precision="bf16", device="cpu", max_steps=4)
    once, _ = _train_quietly(config)
    assert torch.bfloat16 in dtypes                                # the convolutions ran in bf16
    state = read_checkpoint(once)
    assert state["info"]["precision"] == "bf16" and all(v.dtype == torch.float32 for v in state["ema"].values())
    _train_quietly(config.replace(max_steps=2, out_dir=tiny_config.out_dir + "-r"))
    twice = read_checkpoint(_train_quietly(config.replace(out_dir=tiny_config.out_dir + "-r"))[0])
    assert all(torch.equal(state["ema"][k], twice["ema"][k]) for k in state["ema"])   # 2 steps, resumed to 4: exact


def test_config_round_trip_and_profiles(monkeypatch):
    for name in ("ci", "cpu", "t4"):
        cfg = get_profile(name)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    monkeypatch.setenv("DDPM_COURSE_PROFILE", "ci")
    assert get_profile().out_dir == "runs/ci"
    monkeypatch.setenv("DDPM_COURSE_PROFILE", "gpu")
    with pytest.raises(ValueError, match="DDPM_COURSE_PROFILE must be one of"):
        get_profile()
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train({"lr": 1})


def test_the_machine_description_names_the_cpu_and_its_vector_units(tiny_config, monkeypatch):
    """Checkpoints and cards say which CPU trained them: two 2-core machines differ 2-3.5x in speed."""
    import ddpm_course.devices as devices

    name = devices.cpu_model_name()
    assert isinstance(name, str) and name.strip() == name and name
    monkeypatch.setattr(devices, "cpu_model_name", lambda: "Some CPU 9000")
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": False})
    plain = devices.describe_machine(torch.device("cpu"))
    assert plain.startswith(f"{os.cpu_count()}-core Some CPU 9000 CPU (")
    assert torch.backends.cpu.get_cpu_capability() in plain and "AMX" not in plain and "BF16" not in plain
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert devices.describe_machine(torch.device("cpu")).endswith(", AVX512_BF16)")
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": True})
    assert devices.describe_machine(torch.device("cpu")).endswith(", AVX512_BF16, AMX)")
    ckpt = load_checkpoint(_train_quietly(tiny_config.replace(max_steps=1, mixed_precision="no"))[0])
    assert ckpt.info["machine"] == devices.describe_machine(torch.device("cpu"))


def test_a_resume_in_another_precision_says_so(tiny_config, monkeypatch):
    """"auto" resolves per machine (bf16 with bf16 units, else float32): a run resumed where it resolves
    differently says so, and how to continue as it started; mixed_precision may change on resume."""
    import ddpm_course.devices as devices

    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: True)
    config = tiny_config.replace(mixed_precision="auto", device="cpu")
    _train_quietly(config.replace(max_steps=2))
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: False)
    path, lines = _train_quietly(config)
    note = [line for line in lines if line.startswith("Note: steps 1-2 ran with precision 'bf16'")]
    assert note and "the rest run with 'no'" in note[0] and "Set mixed_precision='bf16'" in note[0]
    assert read_checkpoint(path)["info"]["precision"] == "no"
    path, again = _train_quietly(config.replace(mixed_precision="no", max_steps=8))   # a changed setting: accepted
    assert read_checkpoint(path)["step"] == 8 and not any(line.startswith("Note: steps") for line in again)


def test_amx_is_asked_of_torch_then_of_the_cpu_flags(monkeypatch):
    import ddpm_course.devices as devices

    monkeypatch.setattr(devices, "_cpuinfo", lambda field: "fpu avx2 amx_bf16 amx_tile" if field == "flags" else "")
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": False})
    assert devices.cpu_has_amx() is False                      # torch's answer wins where it has one
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {})
    assert devices.cpu_has_amx() is True                       # an older torch: Linux's flags
    monkeypatch.setattr(devices, "_cpuinfo", lambda field: "fpu avx2 amx_tile" if field == "flags" else "")
    assert devices.cpu_has_amx() is False                      # AMX tiles without bf16 are not enough
    assert devices.cpu_has_bf16_units() is False
    monkeypatch.setattr(devices, "_cpuinfo", lambda field: "fpu avx2 avx512f avx512_bf16" if field == "flags" else "")
    assert devices.cpu_has_amx() is False and devices.cpu_has_bf16_units() is True   # AMD Zen 4/5: AVX512_BF16
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": False})
    assert devices.cpu_has_bf16_units() is False               # torch's answer wins again
    cpu = torch.device("cpu")
    assert devices.resolve_precision("auto", cpu) == "no"     # "auto" follows the flags end to end
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert devices.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices.platform, "processor", lambda: "")
    assert devices.cpu_model_name() == devices.platform.machine()     # nobody names it: the architecture
    monkeypatch.setattr(devices, "_cpu_capabilities", lambda: {"cpu_name": " Some CPU 9000 "})
    assert devices.cpu_model_name() == "Some CPU 9000"
