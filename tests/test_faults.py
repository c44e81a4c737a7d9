"""Nothing lost, nothing cryptic: interrupts save the last completed step, one run per folder,
output checked before the work, a full disk said as such, one exit-code convention."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddpm_course.ema as ema_module
import ddpm_course.training as training
from ddpm_course import load_checkpoint, train
from ddpm_course.checkpoints import read_checkpoint, save_checkpoint
from ddpm_course.cli import main
from ddpm_course.files import FolderBusy, folder_lock
from ddpm_course.stopping import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]


def interrupt_once(tiny_config, out, monkeypatch, at_step: int, phase: str, signum: int):
    """Train, sending ``signum`` to this process inside step ``at_step`` (in the loss, at its start,
    or in the EMA update, at its end); return the TrainingInterrupted raised."""
    real_loss, real_ema = training.diffusion_loss, ema_module.EMA.update
    state = {"calls": 0}

    def maybe_signal(where):
        if where == phase and state["calls"] == at_step:
            os.kill(os.getpid(), signum)

    def loss(*args, **kwargs):
        maybe_signal("loss")
        return real_loss(*args, **kwargs)

    def ema_update(self, model, step):
        real_ema(self, model, step)
        maybe_signal("ema")
        state["calls"] += 1

    monkeypatch.setattr(training, "diffusion_loss", loss)
    monkeypatch.setattr(ema_module.EMA, "update", ema_update)
    config = tiny_config.replace(max_steps=12, checkpoint_every=1000, out_dir=str(out))
    try:
        with pytest.raises(TrainingInterrupted) as stop:
            train(config, progress=False, log=lambda *a: None)
    finally:
        monkeypatch.undo()
    return stop.value


def test_a_signal_at_any_moment_saves_the_last_completed_step(tiny_config, tmp_path, monkeypatch):
    """8 random moments, by Ctrl-C or SIGTERM: the in-flight step finishes and is the one saved, every time."""
    rng, handler = random.Random(0), signal.getsignal(signal.SIGINT)
    for trial in range(8):
        at_step, phase = rng.randrange(0, 9), rng.choice(["loss", "ema"])
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        out = tmp_path / f"run{trial}"
        stop = interrupt_once(tiny_config, out, monkeypatch, at_step, phase, signum)
        completed = at_step + 1                                   # the step in flight finished
        assert (stop.step, stop.signum, stop.exit_code) == (completed, signum, 128 + signum)
        assert read_checkpoint(out / "checkpoint.pt")["step"] == completed, (trial, phase)
    assert signal.getsignal(signal.SIGINT) is handler   # the previous handler is back


def test_ctrl_c_from_outside_the_cli_prints_one_line_and_the_command(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ddpm_course", "train", "--profile", "ci", "--out", str(out),
               "--max-steps", "100000", "--checkpoint-every", "100000", "--set", "log_every=1"]
    log = tmp_path / "stdout.txt"
    with open(log, "wb") as stdout:
        proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while b"loss=" not in log.read_bytes():   # the progress bar's first loss: a step is done (log_every=1)
        assert time.monotonic() < deadline and proc.poll() is None, "training never took a step"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    step = read_checkpoint(out / "checkpoint.pt")["step"]
    assert f"Interrupted: step {step} is saved in {out / 'checkpoint.pt'}. Resume with: python -m ddpm_course train" \
        in err and step >= 1


def test_one_run_per_folder_and_no_resume_never_touches_a_held_folder(tiny_config, tmp_path):
    config = tiny_config.replace(max_steps=2, out_dir=str(tmp_path / "run"))
    first = train(config, progress=False, log=lambda *a: None)
    before = first.read_bytes()
    with folder_lock(config.out_dir):   # another run holds the folder
        for resume in (True, False):
            with pytest.raises(FolderBusy, match=rf"in use by another training run \(pid {os.getpid()}\)"):
                train(config.replace(max_steps=4), resume=resume, progress=False, log=lambda *a: None)
    assert first.read_bytes() == before and sorted(p.name for p in first.parent.iterdir()) == [".lock",
                                                                                                  "checkpoint.pt"]
    assert load_checkpoint(train(config.replace(max_steps=3), progress=False, log=lambda *a: None)).step == 3


def test_stale_temporaries_go_and_outputs_are_checked_before_the_work(tiny_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt.abc123.tmp").write_bytes(b"half")   # left by a save killed with SIGKILL
    said = []
    train(tiny_config.replace(max_steps=1, out_dir=str(out)), progress=False, log=said.append)
    assert not list(out.glob("*.tmp")) and any("Removed 1 unfinished temporary file" in s for s in said)
    with pytest.raises(ValueError, match="output folder '/proc/ddpm_run' is not writable"):
        train(tiny_config.replace(out_dir="/proc/ddpm_run"), progress=False)


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import ddpm_course.files as files

    path = save_checkpoint({"format": "ddpm_course.checkpoint/1", "step": 1}, tmp_path / "c.pt")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="no space left on the device to write .*c.pt; the previous version"):
        save_checkpoint({"format": "ddpm_course.checkpoint/1", "step": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_exit_codes_and_messages_without_tracebacks(tmp_path, capsys, monkeypatch):
    ckpt = ROOT / "assets" / "pretrained-mnist-cond.pt"
    cases = [
        (["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "grid")], "--out must end in an image"),
        (["sample", "--checkpoint", str(ckpt), "--out", "/proc/x/grid.png"], "is not writable"),
        (["sample", "--checkpoint", str(ckpt), "--device", "foo", "--out", str(tmp_path / "g.png")],
         "device must be 'auto', 'cpu'"),
        (["sample", "--checkpoint", str(ROOT / "assets" / "evaluator-mnist.pt"), "--out", str(tmp_path / "g.png")],
         "is an evaluator"),
        (["evaluate", "--checkpoint", str(ROOT / "assets" / "pretrained-mnist-uncond.pt"), "--guidance", "3"],
         "needs class labels"),
    ]
    cases.append((["evaluate", "--checkpoint", str(ckpt), "--num-samples", "0"], "--num-samples must be >= 1, got 0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    cases.append((["sample", "--checkpoint", str(ckpt), "--device", "cuda", "--out", str(tmp_path / "g.png")],
                  "no CUDA GPU"))
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, (argv, err)
    import ddpm_course.cli.models as models

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "no space left on the device to write x.png")
    monkeypatch.setattr(models, "save_grid", full)
    argv = ["sample", "--checkpoint", str(ckpt), "--n", "2", "--steps", "1", "--out", str(tmp_path / "g.png")]
    assert main(argv) == 1
    assert "no space left" in capsys.readouterr().err
