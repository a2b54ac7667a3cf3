"""Triton kernels, one file per kernel with its launcher: the two passes over J
(:mod:`.gram`, :mod:`.combine`, sharing :mod:`._launch`) and the on-device K-space solves.

The modules import triton, so the dispatch tables (:mod:`mtlkernels.gram`,
:mod:`mtlkernels.combine`) hold the thin entry points below, which import their kernel on first
use: ``import mtlkernels`` works without triton, and ``TRITON_INTERPRET`` is read when the kernels
are first needed.
"""
from __future__ import annotations

from torch import Tensor


def triton_gram(blocks: list[Tensor]) -> Tensor:
    """Γ = J·Jᵀ with the Triton kernels (see :func:`mtlkernels.kernels.gram.triton_gram`)."""
    from .gram import triton_gram as gram

    return gram(blocks)


def triton_combine(weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool) -> None:
    """out[b] (+)= wᵀ·blocks[b] with the Triton kernel (see :func:`mtlkernels.kernels.combine.triton_combine`)."""
    from .combine import triton_combine as combine

    combine(weights, blocks, outs, accumulate)
