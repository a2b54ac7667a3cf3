"""DualProj as a drop-in optimizer (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class DualProj(MultiTaskOptimizer):
    """Shared parameters get the projection of Σᵢ pᵢgᵢ (default: the mean gradient) onto the dual
    cone {x : gₖ·x ≥ 0 for every k}; task-specific ones their plain gradient.

    Args:
        optimizer: the wrapped torch optimizer.
        pref_vector: K non-negative preferences (default 1/K each, torchjd's default).
        reg_eps, norm_eps: 0 (default): the exact projection; reg_eps=1e-4, norm_eps=1e-4 solve
            torchjd's regularised problem instead.
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "dualproj"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        pref_vector: Any = None,
        reg_eps: float = 0.0,
        norm_eps: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(optimizer, pref_vector=pref_vector, reg_eps=reg_eps, norm_eps=norm_eps, **options)
