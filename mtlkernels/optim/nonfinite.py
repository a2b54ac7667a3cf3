"""Non-finite losses and gradients in the multi-task optimizers, and GradScaler's overflow.

A backward whose losses, task gradients (read off Γ's diagonal, as :class:`mtlkernels.Aggregator`
does, with the same float64 recomputation of an overflowed float32 Γ) or task-specific gradients
hold NaN/Inf changes nothing. Then either :class:`NonFiniteError` names the tasks
(``on_nonfinite="raise"``), the next ``step()`` does nothing (``"skip"``), or — with a
``GradScaler`` — every ``.grad`` is set to Inf so that ``scaler.step`` skips the step and backs off
the scale, as it does after any overflow.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..aggregate import nonfinite_tasks

ON_NONFINITE = ("raise", "skip")


class NonFiniteError(FloatingPointError, ValueError):
    """A task's loss or gradient holds NaN/Inf; nothing was changed (see ``on_nonfinite``)."""


def find_nonfinite(
    values: Tensor,
    gram: Tensor,
    private_ok: Tensor,
    private_views: list[Tensor],
    private_tasks: list[tuple[int, ...]],
    *,
    blocks: list[Tensor] | None = None,
    scale: float = 1.0,
    otherwise: str = "a task-specific gradient on another rank holds NaN/Inf",
) -> tuple[Tensor, str | None]:
    """Γ to go on with, and None when the losses ``values``, Γ's diagonal and the task-specific
    gradients (``private_ok``, a 0-d bool) are finite — one host sync — else a message naming the
    tasks (``otherwise`` when no local value explains it).

    ``blocks`` (÷ ``scale``²) are the rows Γ was computed from, given where Γ is this rank's own:
    an overflowed float32 Γ is then recomputed in float64 (:func:`mtlkernels.aggregate.nonfinite_tasks`).
    """
    if bool(torch.isfinite(values).all() & torch.isfinite(gram.diagonal()).all() & private_ok):
        return gram, None
    gram, bad = nonfinite_tasks(gram, blocks, scale)
    losses_bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if not losses_bad and not bad and bool(private_ok):  # only a float32 overflow of Γ
        return gram, None
    parts = [f"task {k}: loss is {values[k].item()}" for k in losses_bad]
    parts += [f"task {k}: gradient holds NaN/Inf" for k in bad]
    for view, tasks in zip(private_views, private_tasks):
        if not bool(torch.isfinite(view).all()):
            parts.append(f"task {'/'.join(map(str, tasks))}: gradient of a task-specific parameter holds NaN/Inf")
    return gram, "; ".join(dict.fromkeys(parts)) if parts else otherwise


def flag_overflow(params: list[Tensor]) -> None:
    """Set every ``.grad`` of ``params`` to Inf, so that ``GradScaler.step`` skips the step."""
    for p in params:
        if p.grad is None:
            p.grad = torch.full_like(p, float("inf"))
        else:
            p.grad.fill_(float("inf"))


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite (one host sync): first one summing read per
    tensor (a NaN or Inf makes its sum non-finite); only when some sum is not finite — NaN/Inf,
    or a float32 sum of huge finite values that overflowed — are the entries tested one by one."""
    if not tensors:
        return True
    sums = torch.stack([t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32).to(tensors[0].device) for t in tensors])
    if bool(torch.isfinite(sums).all()):
        return True
    return bool(torch.stack([torch.isfinite(t).all().to(tensors[0].device) for t in tensors]).all())
