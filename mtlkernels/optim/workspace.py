"""The flat buffers a multi-task optimizer reuses across steps, and their hand-over to ``.grad``.

One :class:`Workspace` holds the K task-gradient rows over the shared parameters (or, on the
features path, the one direction), the task-specific parameters' plain gradients and the K loss
values, laid out so that data-parallel training averages them with as few all-reduces as
possible. :class:`Buffers` keeps the workspace and the feature-gradient rows, rebuilt only when
the layout changes. :func:`fill_rows_through_grad` has autograd add each task's gradient into its
row in place (the parameters' ``.grad`` pointed at the row during that task's pass), so no
gradient is copied into the rows.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..jacobian import ALIGN_BYTES, column_offsets, column_views, common_dtype
from .roles import ParameterRoles


class Workspace:
    """K·N_shared task-gradient rows (or N_shared for the direction, features path), N_private
    plain gradients and K loss values. The rows are in the shared parameters' common dtype, the
    plain gradients in the private ones'; when the two agree (the usual case) it is ONE buffer, so
    data-parallel training averages it with one all-reduce.

    The rows are laid out for the Triton kernels: each shared parameter's columns start on a
    16-byte boundary and the row stride is a multiple of 16 bytes (zero columns pad the gaps, so Γ
    over the rows is unchanged), so one odd-sized parameter does not make the Gram and combination
    launches fall back to unaligned accesses.

    Attributes:
        rows: [K, N_rows] task gradients, N_rows ≥ N_shared with the zero pads (None on the features path).
        blocks: per shared parameter its [K, numel] columns of ``rows`` (None on the features path).
        direction: per shared parameter a [1, n] view of the direction (None with rows).
        private: the N_private plain gradients; ``private_views`` splits it per parameter.
        losses: K loss values (for the data-parallel average).
        buffers: what the replicated path averages; ``gradient_parts``: the parts holding gradients.
        key: the layout, to tell when the workspace must be rebuilt.
    """

    def __init__(self, K: int, roles: ParameterRoles, with_rows: bool, key: tuple, device: torch.device) -> None:
        shared_dtype = common_dtype(roles.shared) or common_dtype(roles.private) or torch.float32
        private_dtype = common_dtype(roles.private) or shared_dtype
        n_shared = sum(p.numel() for p in roles.shared)
        n_private = sum(p.numel() for p in roles.private)
        offsets, n_rows = column_offsets(roles.shared, max(1, ALIGN_BYTES // shared_dtype.itemsize))
        head = K * n_rows if with_rows else n_shared
        self.key = key
        if private_dtype == shared_dtype:
            storage = torch.empty(head + n_private + K, dtype=shared_dtype, device=device)
            front, self.private, self.losses = storage[:head], storage[head : head + n_private], storage[head + n_private :]
            self.buffers, self.gradient_parts = [storage], [storage[: head + n_private]]
        else:
            main = torch.empty(head + K, dtype=shared_dtype, device=device)
            self.private = torch.empty(n_private, dtype=private_dtype, device=device)
            front, self.losses = main[:head], main[head:]
            self.buffers, self.gradient_parts = [main, self.private], [front, self.private]
        self.rows = front.view(K, n_rows) if with_rows else None
        self.blocks = None
        if with_rows:
            if n_rows != n_shared:
                self.rows.zero_()  # the pads stay zero: only the parameters' columns are written
            self.blocks = [self.rows[:, o : o + p.numel()] for o, p in zip(offsets, roles.shared)]
        self.direction = None if with_rows else column_views(front.view(1, n_shared), roles.shared)
        self.private_views = [v[0] for v in column_views(self.private.view(1, n_private), roles.private)]


class Buffers:
    """The workspace and the feature-gradient rows, kept across steps while their layout holds."""

    def __init__(self) -> None:
        self._workspace: Workspace | None = None
        self._feature_rows: Tensor | None = None

    def clear(self) -> None:
        """Drop the buffers (the parameters changed)."""
        self._workspace = None

    def workspace(self, K: int, roles: ParameterRoles, with_rows: bool) -> Workspace:
        """The workspace for K tasks and these roles (rows of task gradients or one direction)."""
        params = roles.shared + roles.private
        device = params[0].device if params else torch.device("cpu")
        layout = [tuple((id(p), p.dtype, p.numel()) for p in group) for group in (roles.shared, roles.private)]
        key = (K, with_rows, *layout, device)
        if self._workspace is None or self._workspace.key != key:
            self._workspace = Workspace(K, roles, with_rows, key, device)
        return self._workspace

    def feature_rows(self, K: int, features: list[Tensor]) -> Tensor:
        """[K, M] rows for ∂Lₖ/∂z over the features, in their common dtype."""
        M = sum(z.numel() for z in features)
        dtype = common_dtype(features)
        rows = self._feature_rows
        if rows is None or rows.shape != (K, M) or rows.dtype != dtype or rows.device != features[0].device:
            rows = self._feature_rows = torch.empty(K, M, dtype=dtype, device=features[0].device)
        return rows


def accumulate_grads(params: list[Tensor], values: list[Tensor]) -> None:
    """``p.grad += v`` as ``Tensor.backward`` does (a fresh ``.grad`` in p's dtype, else rounded to
    the existing ``.grad``'s dtype)."""
    for p, v in zip(params, values):
        if p.grad is None:
            p.grad = v.detach().to(dtype=p.dtype, memory_format=torch.contiguous_format, copy=True).view_as(p)
        else:
            p.grad.add_(v.view_as(p.grad))


def grad_outputs(params: list[Tensor]) -> tuple[list[Tensor], bool]:
    """The ``.grad`` of each parameter to write a direction into, and whether to add to them: when
    no parameter has a ``.grad`` they are fresh (uninitialised, overwritten); otherwise the missing
    ones are zeros and the direction is added."""
    fresh = all(p.grad is None for p in params)
    for p in params:
        if p.grad is None:
            p.grad = torch.empty_like(p, memory_format=torch.contiguous_format) if fresh else torch.zeros_like(p)
    return [p.grad for p in params], not fresh


def accumulate_fresh_grads(params: list[Tensor], grads: list[Tensor]) -> None:
    """:func:`accumulate_grads` for gradients that ``torch.autograd.grad`` just made (owned by no
    one else): a missing ``.grad`` takes the new tensor itself, without a copy, when it fits."""
    for p, g in zip(params, grads):
        if p.grad is None and g.dtype == p.dtype and g.shape == p.shape and g.is_contiguous():
            p.grad = g
        else:
            accumulate_grads([p], [g])


def private_gradient_views(params: list[Tensor]) -> list[Tensor]:
    """Views shaped as ``params`` of one new flat buffer in their common dtype: gradients of this
    step only, which :func:`accumulate_fresh_grads` can take as ``.grad`` without a copy."""
    dtype = common_dtype(params) or torch.float32
    device = params[0].device if params else torch.device("cpu")
    flat = torch.empty(1, sum(p.numel() for p in params), dtype=dtype, device=device)
    return [v[0] for v in column_views(flat, params)]


def rows_through_grad(params: Sequence[Tensor]) -> bool:
    """Whether the K passes may run as ``Lₖ.backward`` into ``.grad`` tensors that are views of
    the rows (:func:`fill_rows_through_grad`): no torch.distributed process group (DDP's and
    FSDP's hooks on the gradient accumulators would fire on every pass) and no parameter with a
    ``register_post_accumulate_grad_hook`` (it would run once per task, on one task's gradient)."""
    if dist.is_available() and dist.is_initialized():
        return False
    return not any(p._post_accumulate_grad_hooks for p in params)


def fill_rows_through_grad(
    losses: Sequence[Tensor],
    shared: Sequence[Tensor],
    rows: Tensor,
    blocks: Sequence[Tensor],
    *,
    private: Sequence[Sequence[int]],
    private_inputs: Sequence[Tensor],
    private_out: Sequence[Tensor],
    retain_graph: bool,
) -> None:
    """rows[k] ← ∇ Lₖ over ``shared`` and private_out[j] ← Σ_{k ∈ tasks_j} ∇ Lₖ over
    private_inputs[j] (what :func:`mtlkernels.jacobian.fill_task_gradients` computes), with the
    gradients landing in the rows themselves: before pass k each shared parameter's ``.grad`` is
    its zeroed columns of row k (each private one's, its part of ``private_out``), and
    ``Lₖ.backward(inputs=...)`` adds autograd's gradient into it in place — no [K, N] copy. A
    parameter whose dtype is not the buffer's gets its own ``.grad``, copied. Every ``.grad`` is
    put back as it was afterwards, also when a pass raises.

    ``blocks``: per shared parameter its [K, numel] columns of ``rows``; ``private``: for each
    task k, the indices j of the private inputs it reaches."""
    K = len(losses)
    params = [*shared, *private_inputs]
    saved = [p.grad for p in params]
    rows_view = [_grad_view(p, block[0]) for p, block in zip(shared, blocks)]
    private_view = [_grad_view(p, out) for p, out in zip(private_inputs, private_out)]
    try:
        rows.zero_()
        for p, out, takes in zip(private_inputs, private_out, private_view):
            out.zero_()
            p.grad = out.view_as(p) if takes else None
        for k, loss in enumerate(losses):
            for p, block, takes in zip(shared, blocks, rows_view):
                p.grad = block[k].view_as(p) if takes else None
            own = [private_inputs[j] for j in private[k]] if private else []
            torch.autograd.backward(loss, inputs=[*shared, *own], retain_graph=retain_graph or k < K - 1)
            for p, block, takes in zip(shared, blocks, rows_view):
                if not takes and p.grad is not None:
                    block[k].copy_(p.grad.reshape(-1))
        for p, out, takes in zip(private_inputs, private_out, private_view):
            if not takes and p.grad is not None:
                out.copy_(p.grad)
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def _grad_view(param: Tensor, view: Tensor) -> bool:
    """Whether ``view`` (the buffer's columns for ``param``) can be ``param.grad``: same dtype."""
    return view.dtype == param.dtype and getattr(param, "grad_dtype", param.dtype) == param.dtype
