"""Aligned-MTL as a drop-in optimizer (Senushkin et al., "Independent Component Alignment for
Multi-Task Learning", CVPR 2023)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .base import MultiTaskOptimizer


class AlignedMTL(MultiTaskOptimizer):
    """Shared parameters get d = Ĵᵀp, Ĵ = σ·UVᵀ the task gradients J = UΣVᵀ aligned to equal,
    orthogonal singular directions (:class:`mtlkernels.methods.AlignedMTLWeighting`).

    Args:
        optimizer: the wrapped torch optimizer.
        pref_vector: p [K], ≥ 0 (default 𝟙/K).
        scale_mode: σ: "min" (default), "median" or "rmse".
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "aligned_mtl"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        pref_vector: "Tensor | Sequence[float] | None" = None,
        scale_mode: str = "min",
        **options: Any,
    ) -> None:
        super().__init__(optimizer, pref_vector=pref_vector, scale_mode=scale_mode, **options)
