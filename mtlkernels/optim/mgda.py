"""MGDA as a drop-in optimizer (Désidéri, "Multiple-gradient descent algorithm", 2012; Sener &
Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018), with the defaults
of ``mk.aggregate(J, "mgda")``."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class MGDA(MultiTaskOptimizer):
    """Min-norm point of the convex hull of the (normalised) task gradients, w = argmin_{Δ} wᵀΓ'w,
    d = Σ wᵢgᵢ — the same defaults as ``mk.aggregate(J, "mgda")``.

    Solves on the shared parameters' gradients (exact MGDA), or on ∂Lᵢ/∂z with
    ``backward(losses, features=z)``. :class:`~mtlkernels.optim.MGDAUB` is the authors' MGDA-UB
    variant: loss normalisation by default and meant for the features path.

    Args:
        optimizer: the wrapped torch optimizer.
        normalization: "none" (default, as the functional "mgda" and LibMTL), "l2", "loss" or
            "loss+" (the authors' experiments, Lᵢ·‖gᵢ‖).
        combination: "original" (default, authors: d = Σ wᵢgᵢ) or "normalized" (LibMTL:
            d = Σ (wᵢ/nᵢ)gᵢ).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "mgda"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, normalization: str = "none", combination: str = "original", **options: Any
    ) -> None:
        super().__init__(optimizer, normalization=normalization, combination=combination, **options)
