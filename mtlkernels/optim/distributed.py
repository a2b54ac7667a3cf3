"""Data-parallel reductions for the multi-task optimizers, with torch.distributed.

- ``"replicated"`` (DistributedDataParallel): each rank holds every parameter and its own slice of
  the batch; the per-task gradients are averaged over ranks ONCE, by one all-reduce of the whole
  [K, N] buffer (DDP's own hooks never fire: the task gradients come from
  ``torch.autograd.grad``, which does not run the parameters' gradient-accumulation hooks).
- ``"sharded"``: each rank holds a disjoint slice of the shared parameters with full-batch task
  gradients for it (ZeRO/FSDP after their reduce-scatter, or tensor parallelism); only the K×K
  Gram is all-reduced (Γ = Σ_ranks Γ_rank), the solve is replicated, each rank combines its slice.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from .._checks import check_option

DISTRIBUTED_MODES = ("auto", "none", "replicated", "sharded")


def world_size(group: dist.ProcessGroup | None) -> int:
    """Number of ranks in ``group`` (1 when torch.distributed is not initialized)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def resolve_mode(mode: str, group: dist.ProcessGroup | None) -> str:
    """``"auto"`` → ``"replicated"`` when torch.distributed is initialized with more than one rank,
    else ``"none"``; an explicit mode other than "none" needs an initialized process group."""
    check_option("distributed", mode, DISTRIBUTED_MODES)
    ranks = world_size(group)
    if mode == "auto":
        return "replicated" if ranks > 1 else "none"
    if mode != "none" and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"distributed={mode!r} needs torch.distributed.init_process_group() first")
    return mode


def all_reduce_mean_(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """tensor ← mean over ranks (SUM then divide: gloo has no AVG), in place."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.div_(world_size(group))


def all_reduce_sum_(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """tensor ← sum over ranks, in place."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor

