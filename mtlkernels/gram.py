"""Pass 1 over the task gradients: the Gram matrix Γ = J·Jᵀ (K×K).

Every method's weights depend on J only through Γ, so this is the only full read of J before the
K-space solve. On the CPU Γ is accumulated in float64 (16-bit J, and float32 J of ≥ 2¹⁸ columns at
the ``avx2`` CPU level — see :func:`mtlkernels.cpu_isa`: products summed in float32 over runs of
≤ 32 per lane, then float64; |ΔΓᵢⱼ| ≤ 33·2⁻²⁴‖gᵢ‖‖gⱼ‖, ~2e-10 of it on random J at N = 1e7,
docs/kernels.md) —
no overflow or underflow for gradients of any float32 scale (rows outside float32's safe range
are redone in float64), so a NaN/Inf on Γ's diagonal means a NaN/Inf in that row of J; on CUDA
in float32 (float64 for float64 J; a checked overflow is recomputed in float64, see
:class:`mtlkernels.Aggregator`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _extension
from . import backend as _backend
from ._checks import Jacobian, as_blocks
from .kernels import triton_gram

#: columns per chunk in the torch fallback: bounds the float64 temporary to ~32 MB
_TORCH_CHUNK_ELEMS = 1 << 22


def accumulation_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype Γ is accumulated in for J of ``dtype`` on ``device``."""
    return torch.float64 if dtype == torch.float64 or device.type == "cpu" else torch.float32


def _gram_torch(blocks: list[Tensor], acc: torch.dtype | None = None) -> Tensor:
    """Reference-quality fallback: Γ = Σ_chunks Jc·Jcᵀ with each chunk upcast to ``acc`` (default:
    the accumulation dtype)."""
    K, device = blocks[0].shape[0], blocks[0].device
    acc = acc or accumulation_dtype(blocks[0].dtype, device)
    gram = torch.zeros(K, K, dtype=acc, device=device)
    step = max(1, _TORCH_CHUNK_ELEMS // K)
    for block in blocks:
        block = block.detach()  # a pass reads values: the result never requires grad
        for start in range(0, block.shape[1], step):
            chunk = block[:, start : start + step].to(acc)
            gram.addmm_(chunk, chunk.T)
    return gram


#: names of the dtypes the C++ kernels take (csrc/kernels/cpu_tensor.h)
CPP_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def cpp_blocks(blocks: list[Tensor], name: str = "J") -> list[Tensor]:
    """Blocks as the C++ kernels take them: CPU tensors of a float dtype with unit column stride
    (a block with another column stride is copied; the row stride is free)."""
    out = blocks
    for i, block in enumerate(blocks):
        if block.device.type != "cpu":
            raise ValueError(f"backend='cpp' needs CPU tensors; {name}[{i}] is on {block.device}")
        if block.dtype not in CPP_DTYPES:
            raise TypeError(f"backend='cpp' does not take {name}[{i}] of dtype {block.dtype}")
        if block.shape[1] > 1 and block.stride(1) != 1:
            if out is blocks:
                out = list(blocks)
            out[i] = block.contiguous()
    return out


def block_arguments(blocks: list[Tensor]) -> tuple[list[int], list[int], list[int]]:
    """The C++ kernels' description of the blocks: data pointers, column counts, row strides."""
    if len(blocks) == 1:  # the common case, without the list building
        block = blocks[0]
        return [block.data_ptr()], [block.shape[1]], [block.stride(0)]
    return [b.data_ptr() for b in blocks], [b.shape[1] for b in blocks], [b.stride(0) for b in blocks]


class CppBlocks:
    """J's blocks as the C++ passes take them, checked (:func:`cpp_blocks`) and described once
    (data pointers, column counts, row strides, dtype name) for every pass over the same J."""

    __slots__ = ("blocks", "K", "dtype", "pointers", "cols", "row_strides")

    def __init__(self, blocks: list[Tensor]) -> None:
        self.blocks = cpp_blocks(blocks)
        self.K: int = self.blocks[0].shape[0]
        self.dtype: str = CPP_DTYPES[self.blocks[0].dtype]
        self.pointers, self.cols, self.row_strides = block_arguments(self.blocks)


def gram_cpp(J: CppBlocks) -> Tensor:
    """Γ in float64 of described blocks (see :func:`_gram_cpp`)."""
    gram = torch.empty(J.K, J.K, dtype=torch.float64)
    _extension.extension().gram_cpu(J.pointers, J.cols, J.row_strides, J.K, J.dtype, gram.data_ptr())
    return gram


def _gram_cpp(blocks: list[Tensor]) -> Tensor:
    """Γ in float64 by one pass over J: column chunks × 4×4 register tiles, OpenMP, deterministic
    (csrc/kernels/gram_cpu.cpp)."""
    return gram_cpp(CppBlocks(blocks))


_IMPLS: dict[str, Callable[[list[Tensor]], Tensor]] = {"torch": _gram_torch, "triton": triton_gram, "cpp": _gram_cpp}


def gram_blocks(blocks: list[Tensor], backend: str = "auto") -> Tensor:
    """Γ of already-checked blocks, in the accumulation dtype (see :func:`accumulation_dtype`)."""
    return _backend.select("gram", _IMPLS, backend, blocks[0].device)(blocks)


def gram_blocks_float64(blocks: list[Tensor]) -> Tensor:
    """Γ accumulated in float64 on J's device (torch, chunked): the exact recomputation used when a
    float32-accumulated Γ came out non-finite, to tell an overflow (gradients ≳ 1e19) from a
    NaN/Inf in J."""
    return _gram_torch(blocks, torch.float64)


def gram(J: Jacobian, *, backend: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
    """Γ = J·Jᵀ, the K×K Gram matrix of the task gradients.

    Args:
        J: [K, N] tensor, or a list of per-parameter blocks [K, n_i] (no flattening copy is made).
        backend: "auto", "torch", "cpp" or "triton" (see :mod:`mtlkernels.backend`).
        dtype: dtype of the result; default float64 for float64 J, else float32.

    Not differentiable, like the other passes: the result never requires grad.
    """
    blocks, _ = as_blocks(J)
    result = gram_blocks(blocks, backend)
    if dtype is None:
        dtype = torch.float64 if blocks[0].dtype == torch.float64 else torch.float32
    return result.to(dtype)
