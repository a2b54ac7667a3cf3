"""CAGrad as a drop-in optimizer (Liu et al., "Conflict-Averse Gradient Descent", NeurIPS 2021)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class CAGrad(MultiTaskOptimizer):
    """Shared parameters get d = g₀ + (√φ/‖g_w‖)·g_w, w = argmin_{Δ} g_wᵀg₀ + √φ‖g_w‖, φ = c²‖g₀‖².

    Args:
        optimizer: the wrapped torch optimizer.
        c: conflict-aversion radius (default 0.5; c = 0 gives the mean).
        rescale: 1 (default, ÷(1+c²), authors and LibMTL), 0 (none, torchjd) or 2 (÷(1+c), the
            authors' toy script).
        sum_scale: multiply d by K, as the authors' training scripts do "to match the sum loss"
            (default False, as LibMTL and torchjd).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "cagrad"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, c: float = 0.5, rescale: int = 1, sum_scale: bool = False, **options: Any
    ) -> None:
        super().__init__(optimizer, c=c, rescale=rescale, sum_scale=sum_scale, **options)
