"""MGDA-UB, the authors' MGDA variant, as a drop-in optimizer (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018)."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from ..aggregate import AggregationResult
from .mgda import MGDA


class MGDAUB(MGDA):
    """MGDA-UB, the authors' variant of :class:`~mtlkernels.optim.MGDA`: the min-norm point of the
    convex hull of the loss-normalised task gradients, on the gradients with respect to the shared
    representation. It differs from ``MGDA`` (and the functional "mgda") only in its default
    ``normalization="loss+"`` and in warning when ``features=`` is missing.

    Made for the features path: ``backward(losses, features=z)`` takes the K gradients with
    respect to the shared representation z (the "upper bound"), then one backward of Σ wᵢLᵢ.
    Without ``features=`` it warns once and solves on the shared parameters' gradients (exact
    MGDA, K backward passes through the whole network).

    Args:
        optimizer: the wrapped torch optimizer.
        normalization: "loss+" (default: the authors' experiments, Lᵢ·‖gᵢ‖), "loss", "l2" or
            "none" (LibMTL's default, and :class:`~mtlkernels.optim.MGDA`'s).
        combination: "original" (default, authors: d = Σ wᵢgᵢ) or "normalized" (LibMTL:
            d = Σ (wᵢ/nᵢ)gᵢ).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        normalization: str = "loss+",
        combination: str = "original",
        **options: Any,
    ) -> None:
        super().__init__(optimizer, normalization=normalization, combination=combination, **options)
        self._warned_no_features = False
    def backward(
        self, losses: Sequence[Tensor] | Tensor, *, features: Tensor | Sequence[Tensor] | None = None, **kwargs: Any
    ) -> AggregationResult | None:
        if features is None and not self._warned_no_features:
            warnings.warn(
                "MGDAUB.backward got no features=: solving MGDA on the shared parameters' gradients "
                "(exact MGDA, K backward passes through the whole network). Pass features=z, the shared "
                "representation, for the upper-bound solve.",
                UserWarning,
                stacklevel=2,
            )
            self._warned_no_features = True
        return super().backward(losses, features=features, **kwargs)
