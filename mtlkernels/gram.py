"""Pass 1 over the task gradients: the Gram matrix Γ = J·Jᵀ (K×K).

Every method's weights depend on J only through Γ, so this is the only full read of J before the
K-space solve. On the CPU Γ is accumulated in float64 (no overflow or underflow for gradients of
any float32 scale, so a NaN/Inf on Γ's diagonal means a NaN/Inf in that row of J); on CUDA in
float32 (float64 for float64 J).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import backend as _backend
from ._checks import Jacobian, as_blocks
from .kernels import triton_gram

#: columns per chunk in the torch fallback: bounds the float64 temporary to ~32 MB
_TORCH_CHUNK_ELEMS = 1 << 22


def accumulation_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype Γ is accumulated in for J of ``dtype`` on ``device``."""
    return torch.float64 if dtype == torch.float64 or device.type == "cpu" else torch.float32


def _gram_torch(blocks: list[Tensor]) -> Tensor:
    """Reference-quality fallback: Γ = Σ_chunks Jc·Jcᵀ with each chunk upcast to the accumulation dtype."""
    K, device = blocks[0].shape[0], blocks[0].device
    acc = accumulation_dtype(blocks[0].dtype, device)
    gram = torch.zeros(K, K, dtype=acc, device=device)
    step = max(1, _TORCH_CHUNK_ELEMS // K)
    for block in blocks:
        for start in range(0, block.shape[1], step):
            chunk = block[:, start : start + step].to(acc)
            gram.addmm_(chunk, chunk.T)
    return gram


_IMPLS: dict[str, Callable[[list[Tensor]], Tensor]] = {"torch": _gram_torch, "triton": triton_gram}


def gram_blocks(blocks: list[Tensor], backend: str = "auto") -> Tensor:
    """Γ of already-checked blocks, in the accumulation dtype (see :func:`accumulation_dtype`)."""
    return _backend.select("gram", _IMPLS, backend, blocks[0].device)(blocks)


def gram(J: Jacobian, *, backend: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
    """Γ = J·Jᵀ, the K×K Gram matrix of the task gradients.

    Args:
        J: [K, N] tensor, or a list of per-parameter blocks [K, n_i] (no flattening copy is made).
        backend: "auto", "torch", "cpp" or "triton" (see :mod:`mtlkernels.backend`).
        dtype: dtype of the result; default float64 for float64 J, else float32.
    """
    blocks, _ = as_blocks(J)
    result = gram_blocks(blocks, backend)
    if dtype is None:
        dtype = torch.float64 if blocks[0].dtype == torch.float64 else torch.float32
    return result.to(dtype)
