"""Training under torchrun (DistributedDataParallel, gloo on the CPU): 2 processes train the same
model as 1, and checkpoints resume across process counts.

Tolerance: with the same seeds both runs draw the same global batches and noise; 2 processes
average two half-batch gradients where 1 process sums the whole batch, so only the order of the
float32 additions differs. After 6 AdamW steps the weights agree to about 1e-6; the test allows
1e-4 (Adam divides by the root of the second moment, which can amplify rounding in tiny gradients).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_course import load_checkpoint, train
from ddpm_course.checkpoints import read_checkpoint
from ddpm_course.distributed import DistributedContext, init_distributed, launch_context, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
from ddpm_course import TrainConfig, train
config = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
train(config, resume=True, progress=False)
"""


def run(config, nproc: int, tmp_path: Path, env_extra=None) -> subprocess.CompletedProcess:
    cfg_file = tmp_path / f"config-{config.out_dir.replace('/', '_')}-{config.max_steps}-{nproc}.json"
    cfg_file.write_text(json.dumps(config.to_dict()))
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), str(cfg_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def max_weight_difference(a: Path, b: Path) -> float:
    sa, sb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.fixture
def ddp_config(tiny_config):
    # no dropout: its masks come from each process's own random stream
    return tiny_config.replace(model={"dropout": 0.0}, checkpoint_every=3)


def test_shards_split_the_global_batch():
    assert [shard_bounds(8, DistributedContext(rank=r, world_size=2)) for r in (0, 1)] == [(0, 4), (4, 8)]
    assert shard_bounds(8, DistributedContext()) == (0, 8)
    with pytest.raises(ValueError, match="batch_size=6 .* must be divisible by the number of processes, 4"):
        shard_bounds(6, DistributedContext(rank=0, world_size=4))


def train_here(config):
    """One process, no torchrun."""
    return train(config, resume=True, progress=False, log=lambda *a: None)


def test_two_processes_train_the_model_one_process_trains_and_resume_across_counts(ddp_config, tmp_path):
    straight = train_here(ddp_config.replace(out_dir=str(tmp_path / "one")))          # 1 process, 6 steps
    # 2 processes to step 3 ...
    two = ddp_config.replace(out_dir=str(tmp_path / "two"))
    result = run(two.replace(max_steps=3), 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in Path(two.out_dir).iterdir()) == [".lock", "checkpoint.pt"]  # rank 0 wrote, once
    assert result.stdout.count("Resuming") == 0
    shutil.copytree(two.out_dir, tmp_path / "two_then_one")
    # ... then 2 processes on to step 6: the same model as 1 process, up to reduction order
    result = run(two, 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"Resuming from {two.out_dir}/checkpoint.pt at step 3") == 1   # said once, by rank 0
    dual = Path(two.out_dir) / "checkpoint.pt"
    assert load_checkpoint(dual).step == 6
    assert max_weight_difference(straight, dual) < 1e-4
    # a checkpoint of 2 processes resumes under 1 ...
    assert max_weight_difference(straight, train_here(two.replace(out_dir=str(tmp_path / "two_then_one")))) < 1e-4
    # ... and one of 1 process under 2
    other = ddp_config.replace(out_dir=str(tmp_path / "one_then_two"))
    train_here(other.replace(max_steps=3))
    result = run(other, 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_weight_difference(straight, Path(other.out_dir) / "checkpoint.pt") < 1e-4


def test_what_cannot_work_is_refused_before_any_work(ddp_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="batch_size=7 .* must be divisible by the number of processes, 2"):
        train_here(ddp_config.replace(batch_size=7, out_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the refusal a machine without a GPU gives
    with pytest.raises(ValueError, match="rank 0: device='cuda', but this machine has no CUDA GPU"):
        init_distributed(launch_context(), "cuda")
