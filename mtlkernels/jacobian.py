"""Per-task gradients → J, the K×N matrix whose row k is ∇L_k over the given tensors.

Two ways to get the rows, both writing into views of one preallocated [K, N] buffer (never a
``torch.cat`` of per-parameter gradients):

- ``"loop"``: K calls of ``torch.autograd.grad(L_k, inputs, retain_graph=True)``;
- ``"batched"``: one ``torch.autograd.grad`` of the stacked losses with the K×K identity as
  ``grad_outputs`` and ``is_grads_batched=True`` (vmap over the backward pass).

The inputs are shared parameters (the exact path) or a shared representation z (the "features"
path of MGDA-UB, Sener & Koltun 2018). Tensors that a loss does not reach get a zero row block;
``reach=True`` and :func:`reaches` tell them from reached tensors whose gradient is zero.
"""
from __future__ import annotations

import functools
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ._checks import check_option

GRAD_MODES = ("auto", "loop", "batched")


def resolve_grad_mode(mode: str) -> str:
    """``"auto"`` → ``"loop"``: on the CPU the batched path is never faster (measured, see
    README.md, "Drop-in optimizers"); on CUDA it saves launches but multiplies the backward's peak
    gradient memory by K and needs vmap batching rules for every op, so it is opt-in."""
    check_option("grad_mode", mode, GRAD_MODES)
    return "loop" if mode == "auto" else mode


def check_losses(losses: Sequence[Tensor] | Tensor, expected: int | None = None) -> list[Tensor]:
    """The K losses as a list of scalar tensors that require grad; errors name the task."""
    if isinstance(losses, Tensor):
        if losses.dim() > 1:
            raise ValueError(f"losses must be a sequence or a 1-D tensor of K scalars; got shape {tuple(losses.shape)}")
        losses = list(losses.reshape(-1).unbind())
    elif isinstance(losses, Mapping):
        raise TypeError("losses is a mapping; pass its values in task order, e.g. list(losses.values())")
    elif isinstance(losses, (str, bytes)) or not isinstance(losses, Iterable):
        raise TypeError(f"losses must be a sequence of K scalar tensors or a 1-D tensor; got a {type(losses).__name__}")
    else:
        losses = list(losses)
    if not losses:
        raise ValueError("got no losses: pass K >= 1 scalar losses")
    if expected is not None and len(losses) != expected:
        raise ValueError(f"got {len(losses)} losses; expected K = {expected} (one per task, as before)")
    for k, loss in enumerate(losses):
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss of task {k} is a {type(loss).__name__}; expected a scalar tensor")
        if loss.numel() != 1:
            raise ValueError(f"loss of task {k} is not a scalar: shape {tuple(loss.shape)} (reduce it first, e.g. .mean())")
        if not loss.is_floating_point():
            raise TypeError(f"loss of task {k} has dtype {loss.dtype}; expected a floating-point loss")
        if not loss.requires_grad:
            raise ValueError(f"loss of task {k} does not require grad: it is not connected to any trainable parameter")
    return losses


def common_dtype(tensors: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype that holds every tensor's values exactly (``torch.promote_types`` over them); None
    for no tensors."""
    dtypes = {t.dtype for t in tensors}
    return functools.reduce(torch.promote_types, dtypes) if dtypes else None


#: a padded layout (:func:`column_offsets`) starts every input's block, and every row, on a
#: multiple of this many bytes: the Triton kernels' 16-byte vector loads need every block aligned
ALIGN_BYTES = 16


def column_offsets(inputs: Sequence[Tensor], align: int = 1) -> tuple[list[int], int]:
    """(first column of each input's block, total width) when each block starts at a multiple of
    ``align`` columns and the width is one too (zero columns pad the gaps); ``align=1`` packs them."""
    offsets, start = [], 0
    for t in inputs:
        offsets.append(start)
        start += -(-t.numel() // align) * align
    return offsets, start


def column_views(buffer: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """Split the columns of ``buffer`` [K, N] into per-input blocks [K, *input.shape] (views).

    N is Σ numel (packed blocks) or the padded width of :func:`column_offsets` with
    ``align = ALIGN_BYTES // itemsize`` (every block 16-byte aligned when the buffer is); the two
    layouts coincide when every numel is a multiple of ``align``."""
    offsets, width = column_offsets(inputs)
    if buffer.shape[1] != width:
        packed = width
        offsets, width = column_offsets(inputs, max(1, ALIGN_BYTES // buffer.element_size()))
        if buffer.shape[1] != width:
            raise ValueError(
                f"the buffer has N = {buffer.shape[1]} columns; the inputs hold {packed} elements "
                f"({width} with each block padded to {ALIGN_BYTES} bytes)"
            )
    return [buffer[:, o : o + t.numel()].view(buffer.shape[0], *t.shape) for o, t in zip(offsets, inputs)]


def fill_task_gradients(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    rows: Tensor,
    *,
    private: Sequence[Sequence[int]] = (),
    private_inputs: Sequence[Tensor] = (),
    private_out: Sequence[Tensor] = (),
    mode: str = "loop",
    retain_graph: bool = False,
    reach: bool = False,
) -> list[list[bool]] | None:
    """rows[k] ← ∇_{inputs} L_k, and, in the same backward passes, private_out[j] ← Σ_{k ∈ tasks_j}
    ∇_{private_inputs[j]} L_k for the tensors only some tasks own (heads: the plain gradient of Σ L).

    Args:
        losses: K scalar losses.
        inputs: tensors J is taken with respect to; ``rows`` is [K, Σ numel] over them, in order.
        private: for each task k, the indices j of the private inputs it reaches.
        private_inputs / private_out: the private tensors and where their summed gradient goes.
        mode: "loop" or "batched" (resolve "auto" with :func:`resolve_grad_mode` first).
        retain_graph: keep the graph after the last pass (as ``Tensor.backward`` does).
        reach: also say which inputs each loss reaches.

    Returns:
        With ``reach=True``, reached[k][i]: whether L_k's autograd graph reaches inputs[i] (an
        unreached input's gradient is None, a reached one's may be zero); in "loop" mode it comes
        free with the gradients, in "batched" mode from :func:`reaches`. Else None.
    """
    K = len(losses)
    blocks = column_views(rows, inputs)
    for out in private_out:
        out.zero_()
    reached = [[False] * len(inputs) for _ in range(K)] if reach else None
    if mode == "loop":
        for k, loss in enumerate(losses):
            own = list(private[k]) if private else []
            grads = torch.autograd.grad(
                loss,
                [*inputs, *(private_inputs[j] for j in own)],
                retain_graph=retain_graph or k < K - 1,
                allow_unused=True,
            )
            for i, (block, g) in enumerate(zip(blocks, grads[: len(inputs)])):
                block[k].copy_(g) if g is not None else block[k].zero_()
                if reached is not None:
                    reached[k][i] = g is not None
            for j, g in zip(own, grads[len(inputs) :]):
                if g is not None:
                    private_out[j].add_(g)
    elif mode == "batched":
        dtype = common_dtype(losses)
        stacked = torch.stack([loss.reshape(()).to(dtype) for loss in losses])
        eye = torch.eye(K, dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked,
            [*inputs, *private_inputs],
            grad_outputs=eye,
            retain_graph=retain_graph,
            allow_unused=True,
            is_grads_batched=True,
        )
        for block, g in zip(blocks, grads[: len(inputs)]):
            block.copy_(g) if g is not None else block.zero_()
        for out, g in zip(private_out, grads[len(inputs) :]):
            if g is not None:
                out.copy_(g.sum(0))  # rows of the tasks that do not reach it are zero
        if reached is not None:  # one pass for all tasks: None only says that no task reaches the input
            reached = reaches(losses, inputs)
    else:
        raise ValueError(f"grad_mode={mode!r} must be resolved to 'loop' or 'batched' first")
    return reached


def reaches(losses: Sequence[Tensor], inputs: Sequence[Tensor], *, around: Sequence[Tensor] = ()) -> list[list[bool]]:
    """reached[k][i]: whether the autograd graph of losses[k] reaches inputs[i], i.e. whether
    ``torch.autograd.grad(losses[k], inputs[i], allow_unused=True)`` gives a tensor (perhaps zero)
    rather than None. A walk over the graph's edges, no arithmetic: an input is reached through
    its own output of a node, so a tensor returned beside the ones the loss uses (another output
    of the same node, e.g. of a compiled forward) is not reached.

    ``around``: tensors the walk does not go through (their own output of a node is not followed),
    so that reached[k][i] says whether losses[k] reaches inputs[i] by a path that avoids them —
    whether ∂L_k/∂inputs[i] has a part that does not flow through ``around``."""
    edge_of = torch.autograd.graph.get_gradient_edge
    targets: dict[tuple[object, int], list[int]] = {}
    for i, t in enumerate(inputs):
        edge = edge_of(t)
        targets.setdefault((edge.node, edge.output_nr), []).append(i)
    stops = {(edge.node, edge.output_nr) for edge in map(edge_of, around)}
    reached = []
    for loss in losses:
        found = [False] * len(inputs)
        root = edge_of(loss)
        pending, seen_edges, seen_nodes = [(root.node, root.output_nr)], set(), set()
        left = len(targets)
        while pending and left:
            edge = pending.pop()
            if edge in seen_edges or edge in stops:
                continue
            seen_edges.add(edge)
            if edge in targets:
                left -= 1
                for i in targets[edge]:
                    found[i] = True
            if edge[0] not in seen_nodes:
                seen_nodes.add(edge[0])
                pending.extend((node, nr) for node, nr in edge[0].next_functions if node is not None)
        reached.append(found)
    return reached


def jacobian(
    losses: Sequence[Tensor] | Tensor,
    inputs: Sequence[Tensor],
    *,
    mode: str = "auto",
    out: Tensor | None = None,
    retain_graph: bool = False,
) -> Tensor:
    """J [K, N]: row k is ∇L_k with respect to ``inputs`` (flattened in order; zero where L_k does
    not reach an input), in the inputs' common dtype (:func:`common_dtype`: exact for each).
    ``out`` is a preallocated [K, N] buffer to reuse across steps.
    """
    losses = check_losses(losses)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("got no inputs to differentiate with respect to")
    N = sum(t.numel() for t in inputs)
    if out is None:
        out = torch.empty(len(losses), N, dtype=common_dtype(inputs), device=inputs[0].device)
    elif out.shape != (len(losses), N) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{len(losses)}, {N}] tensor; got {tuple(out.shape)}")
    fill_task_gradients(losses, inputs, out, mode=resolve_grad_mode(mode), retain_graph=retain_graph)
    return out
