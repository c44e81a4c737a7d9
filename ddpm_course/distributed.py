"""Data-parallel training under ``torchrun``: PyTorch's own engine, no launcher of our own.

``torchrun --nproc_per_node=N -m ddpm_course train ...`` starts N processes and gives each the
environment variables RANK, LOCAL_RANK and WORLD_SIZE; :func:`init_distributed` reads them, joins
the process group (NCCL on GPUs, gloo on the CPU) and picks the rank's device. Without torchrun
(WORLD_SIZE unset or 1) nothing changes: one process, no process group.

The config's ``batch_size`` stays the *global* batch: every rank draws the same global batch and
the same noise (same seeds), and computes the loss on its own shard of it
(:func:`shard_bounds`); ``DistributedDataParallel`` averages the gradients, which is the gradient
of the mean loss over the global batch. So the same config means the same optimisation whatever
N is, and checkpoints (written by rank 0 alone) resume under any N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank r of world_size processes (1 and 0 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False   # this context initialised the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (torchrun sets it), got {value!r}") from None


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it (for printing once)."""
    return _env_int("RANK", 0) == 0


def launch_context() -> DistributedContext:
    """This process's place as torchrun's environment describes it (RANK, LOCAL_RANK, WORLD_SIZE);
    joins nothing, so checks that need only the numbers can run before any collective."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistributedContext()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    return DistributedContext(rank, world, local_rank)


def init_distributed(ctx: DistributedContext, device_setting: str = "auto") -> tuple:
    """(DistributedContext, torch.device) for this process, after joining the process group.

    Under torchrun with WORLD_SIZE > 1: joins the process group (NCCL when this rank has a GPU,
    else gloo) and takes ``cuda:LOCAL_RANK`` on GPUs. ``device_setting`` "cuda" on a rank without
    a GPU is an error that names the rank. Without torchrun: no group, the device as resolved.
    """
    if not ctx.enabled:
        return ctx, resolve_device(device_setting)
    rank, world, local_rank = ctx.rank, ctx.world_size, ctx.local_rank
    try:
        device = resolve_device(device_setting)
    except ValueError as error:
        raise ValueError(f"rank {rank}: {error}") from None
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank}: LOCAL_RANK={local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world, local_rank, owns), device


def shard_bounds(batch_size: int, ctx: DistributedContext) -> tuple:
    """(start, stop): the images of a global batch that this rank trains on; an error unless the
    global batch divides evenly among the ranks (each rank's gradient must weigh the same)."""
    if batch_size % ctx.world_size:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by the number of "
                         f"processes, {ctx.world_size}; choose a multiple of {ctx.world_size}")
    per_rank = batch_size // ctx.world_size
    return ctx.rank * per_rank, (ctx.rank + 1) * per_rank


def mean_over_ranks(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks (itself without torchrun)."""
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here (nothing without torchrun)."""
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group if this context joined it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
