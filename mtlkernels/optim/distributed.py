"""Data-parallel reductions for the multi-task optimizers, with torch.distributed.

- ``"replicated"`` (DistributedDataParallel): each rank holds every parameter and its own slice of
  the batch; the per-task gradients are averaged over ranks ONCE, by one all-reduce of the whole
  [K, N] buffer (DDP's own hooks never fire: the task gradients come from
  ``torch.autograd.grad``, which does not run the parameters' gradient-accumulation hooks).
- ``"sharded"``: each rank holds a disjoint slice of the shared parameters with full-batch task
  gradients for it (ZeRO/FSDP after their reduce-scatter, or tensor parallelism); only the K×K
  Gram is all-reduced (Γ = Σ_ranks Γ_rank), the solve is replicated, each rank combines its slice.

The reductions below run between the Gram and the solve of a step; each packs what it needs into
one all-reduce where it can.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_option

if TYPE_CHECKING:
    from .workspace import Workspace

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



def average_workspace_(workspace: Workspace, values: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Replicated: the task gradients, task-specific gradients and loss ``values`` averaged over
    ranks in place (one all-reduce per buffer of the workspace); returns the averaged losses (float64)."""
    workspace.losses.copy_(values)
    for buffer in workspace.buffers:
        all_reduce_mean_(buffer, group)
    return workspace.losses.to(torch.float64)


def sum_sharded_gram(gram: Tensor, private_ok: Tensor, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor]:
    """Sharded: Γ = Σ_ranks Γ_rank, with the vote "every rank's task-specific gradients are finite"
    packed into the same all-reduce."""
    K = gram.shape[0]
    packed = all_reduce_sum_(torch.cat([gram.reshape(-1), (~private_ok).to(gram.dtype).reshape(1)]), group)
    return packed[: K * K].view(K, K), packed[K * K] == 0


def average_feature_gram(gram: Tensor, values: Tensor, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor]:
    """Replicated features path: the loss is the mean of the rank losses, so ∂L/∂z_rank =
    ∂L_rank/∂z_rank ÷ R and Γ = Σ_ranks Γ_rank ÷ R²; the losses are averaged in the same all-reduce."""
    K, ranks = gram.shape[0], world_size(group)
    packed = all_reduce_sum_(torch.cat([gram.reshape(-1), values.to(gram)]), group)
    return packed[: K * K].view(K, K) / ranks**2, packed[K * K :].to(torch.float64) / ranks
