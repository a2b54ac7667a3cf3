"""ConFIG as a drop-in optimizer (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of
Physics Informed Neural Networks", ICLR 2025)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .base import MultiTaskOptimizer


class ConFIG(MultiTaskOptimizer):
    """Shared parameters get d = (Σᵢ gᵢ·x̂)·x̂, x = U⁺p the direction of equal cosines (∝ p) to the
    unit task gradients (:class:`mtlkernels.methods.ConFIGWeighting`).

    Args:
        optimizer: the wrapped torch optimizer.
        pref_vector: the cosines' target p [K], ≥ 0 (default 𝟙: equal cosines).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "config"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, pref_vector: "Tensor | Sequence[float] | None" = None, **options: Any
    ) -> None:
        super().__init__(optimizer, pref_vector=pref_vector, **options)
