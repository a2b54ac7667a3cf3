"""Pass 2 over the task gradients: the direction d = wᵀ·J, written into caller-given outputs.

With ``out`` a list of tensors (e.g. each shared parameter's ``.grad``), block i of J is
combined straight into ``out[i]``; when J is one [K, N] tensor, ``out`` splits its columns in
order. The weights are float64 and the products are accumulated in float64 — free, as the pass is
memory-bound — so a weight beyond the float32 range (PCGrad projecting a 1e20 gradient off a
1e-20 one gives ~1e40) still gives the finite term wₖ·gₖ; each output is rounded once to its dtype.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from . import _extension
from . import backend as _backend
from ._checks import Jacobian, as_blocks, check_weights
from .kernels import triton_combine
from .gram import CPP_DTYPES, CppBlocks

_TORCH_CHUNK_ELEMS = 1 << 22


def _combine_torch(weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool) -> None:
    acc = torch.float64
    w = weights.detach().to(device=blocks[0].device, dtype=acc)
    step = max(1, _TORCH_CHUNK_ELEMS // blocks[0].shape[0])
    for block, out in zip(blocks, outs):
        block = block.detach()  # a pass reads values: the result never requires grad
        flat = out.view(-1)
        for start in range(0, block.shape[1], step):
            part = w @ block[:, start : start + step].to(acc)
            target = flat[start : start + step]
            target.add_(part) if accumulate else target.copy_(part)


def check_cpp_outputs(blocks: list[Tensor], outs: list[Tensor]) -> None:
    """The outputs the C++ combination writes: contiguous float CPU tensors, one per block, each
    with the block's number of columns."""
    for i, (out, block) in enumerate(zip(outs, blocks)):
        if out.device.type != "cpu" or out.dtype not in CPP_DTYPES or not out.is_contiguous():
            raise ValueError(
                f"backend='cpp' needs out[{i}] to be a contiguous float tensor on the CPU; got {out.dtype} on {out.device}"
            )
        if out.numel() != block.shape[1]:
            raise ValueError(f"out[{i}] has {out.numel()} elements; block {i} of J has {block.shape[1]} columns")


def cpp_weights(weights: Tensor) -> Tensor:
    """The weights as the C++ combination reads them: a contiguous float64 CPU tensor."""
    w = weights.detach()
    if w.dtype != torch.float64 or w.device.type != "cpu" or not w.is_contiguous():
        w = w.to(device="cpu", dtype=torch.float64).contiguous()
    return w


def combine_cpp(weights: Tensor, J: CppBlocks, outs: list[Tensor], accumulate: bool) -> None:
    """d = wᵀJ of described blocks into checked outputs (see :func:`_combine_cpp`)."""
    w = cpp_weights(weights)
    out_pointers = [o.data_ptr() for o in outs] if len(outs) > 1 else [outs[0].data_ptr()]
    _extension.extension().combine_cpu(
        w.data_ptr(), J.pointers, J.cols, J.row_strides, J.K, J.dtype, out_pointers, [CPP_DTYPES[o.dtype] for o in outs],
        accumulate,
    )


def _combine_cpp(weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool) -> None:
    """d = wᵀJ straight into ``outs`` by one pass over J: OpenMP over column chunks, each column
    summed over k in order in float64 (csrc/kernels/combine_cpu.cpp)."""
    J = CppBlocks(blocks)
    check_cpp_outputs(J.blocks, outs)
    combine_cpp(weights, J, outs, accumulate)


def gram_and_combine_cpp(weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool) -> Tensor:
    """Γ (float64) and d = wᵀJ into ``outs`` by one pass over J, for weights known before Γ (the
    mean): each panel of J is combined while the Gram tiles have it in cache
    (csrc/kernels/gram_cpu.cpp). Γ and d are those of :func:`_gram_cpp` and :func:`_combine_cpp`."""
    J = CppBlocks(blocks)
    check_cpp_outputs(J.blocks, outs)
    gram = torch.empty(J.K, J.K, dtype=torch.float64)
    w = cpp_weights(weights)
    _extension.extension().gram_combine_cpu(
        J.pointers, J.cols, J.row_strides, J.K, J.dtype, gram.data_ptr(),
        w.data_ptr(), [o.data_ptr() for o in outs], [CPP_DTYPES[o.dtype] for o in outs], accumulate,
    )
    return gram


_IMPLS: dict[str, Callable[[Tensor, list[Tensor], list[Tensor], bool], None]] = {"torch": _combine_torch, "triton": triton_combine, "cpp": _combine_cpp}


def output_blocks(blocks: list[Tensor], out: Sequence[Tensor]) -> list[Tensor]:
    """Match ``out`` to J's blocks: per-block outputs, or J's columns split in the order of ``out``."""
    if isinstance(out, Tensor):
        raise TypeError("out must be a list of tensors (e.g. [t] for one output), not a tensor")
    out = list(out)
    for i, o in enumerate(out):
        if not isinstance(o, Tensor):
            raise TypeError(f"out[{i}] is a {type(o).__name__}; expected a tensor")
        if not o.is_floating_point():
            raise TypeError(f"out[{i}] has dtype {o.dtype}; the direction needs a floating-point output")
        if not o.is_contiguous():
            raise ValueError(f"out[{i}] must be contiguous")
        if o.device != blocks[0].device:
            raise ValueError(f"out[{i}] is on {o.device}; J is on {blocks[0].device}")
    sizes = [o.numel() for o in out]
    if len(blocks) == 1 and len(out) > 1:
        if sum(sizes) != blocks[0].shape[1]:
            raise ValueError(f"out holds {sum(sizes)} elements in all; J has N = {blocks[0].shape[1]} columns")
        return list(out)
    if len(out) != len(blocks):
        raise ValueError(f"out has {len(out)} tensors for {len(blocks)} blocks of J")
    for i, (o, b) in enumerate(zip(out, blocks)):
        if o.numel() != b.shape[1]:
            raise ValueError(f"out[{i}] has {o.numel()} elements; block {i} of J has {b.shape[1]} columns")
    return out


def combine_blocks(
    weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool = False, backend: str = "auto"
) -> None:
    """d = wᵀJ over checked blocks into matching outputs (see :func:`output_blocks`)."""
    blocks = blocks_of_outputs(blocks, outs)
    _backend.select("combine", _IMPLS, backend, blocks[0].device)(weights, blocks, outs, accumulate)


def blocks_of_outputs(blocks: list[Tensor], outs: list[Tensor]) -> list[Tensor]:
    """The blocks matched one to one with ``outs``: one J split into the outputs' column ranges
    (views), else the blocks as they are."""
    if len(blocks) == 1 and len(outs) > 1:  # one J, split into several outputs
        offsets = [0]
        for o in outs:
            offsets.append(offsets[-1] + o.numel())
        blocks = [blocks[0][:, a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return blocks


def combine(
    weights: Tensor | Sequence[float],
    J: Jacobian,
    *,
    out: Sequence[Tensor] | None = None,
    accumulate: bool = False,
    backend: str = "auto",
) -> Tensor | list[Tensor]:
    """d = Σₖ wₖ·J[k], the combination of the task gradients with weights w [K].

    Args:
        weights: [K] real weights (a tensor, or a sequence of numbers).
        J: [K, N] tensor or list of blocks [K, n_i].
        out: optional list of contiguous tensors to write into (e.g. parameters' ``.grad``).
        accumulate: add into ``out`` instead of overwriting it.
    Returns:
        ``out`` when given; else [N] for one J tensor, or a list of [n_i] for a list of blocks.
        Not differentiable, like the other passes: the result never requires grad.
    """
    blocks, single = as_blocks(J)
    weights = check_weights(weights, blocks[0].shape[0])
    if out is None:
        outs = [torch.empty(b.shape[1], dtype=b.dtype, device=b.device) for b in blocks]
        accumulate = False
    else:
        outs = output_blocks(blocks, out)
    combine_blocks(weights, blocks, outs, accumulate, backend)
    if out is not None:
        return list(out)
    return outs[0] if single else outs
