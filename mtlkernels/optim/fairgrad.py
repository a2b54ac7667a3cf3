"""FairGrad as a drop-in optimizer (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class FairGrad(MultiTaskOptimizer):
    """Shared parameters get d = Σᵢ wᵢgᵢ with the α-fair weights w > 0, Γw = w^(−1/α)
    (:class:`mtlkernels.methods.FairGradWeighting`).

    Args:
        optimizer: the wrapped torch optimizer.
        alpha: the fairness exponent α > 0 (default 1: proportional fairness, Nash-MTL's system).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "fairgrad"

    def __init__(self, optimizer: torch.optim.Optimizer, *, alpha: float = 1.0, **options: Any) -> None:
        super().__init__(optimizer, alpha=alpha, **options)
