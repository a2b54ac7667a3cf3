"""mtlkernels: multi-task gradient-conflict methods at the cost of two passes over the gradients.

Data path: losses → per-task gradients J [K, N] → Gram Γ = J·Jᵀ (:mod:`mtlkernels.gram`) →
K-space solve (:mod:`mtlkernels.methods`) → d = wᵀJ (:mod:`mtlkernels.combine`) → base optimizer.
"""
from . import methods, reference
from .aggregate import AggregationResult, Aggregator, aggregate
from .combine import combine
from .gram import gram
from .methods import METHODS, Weighting

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AggregationResult",
    "Aggregator",
    "Weighting",
    "aggregate",
    "combine",
    "gram",
    "methods",
    "reference",
]
