"""mtlkernels: multi-task gradient-conflict methods at the cost of two passes over the gradients.

Data path: losses → per-task gradients J [K, N] (:mod:`mtlkernels.jacobian`) → Gram Γ = J·Jᵀ
(:mod:`mtlkernels.gram`) → K-space solve (:mod:`mtlkernels.methods`) → d = wᵀJ
(:mod:`mtlkernels.combine`) → the base optimizer (:mod:`mtlkernels.optim`).
"""
from . import methods, reference
from ._extension import cpu_isa
from .aggregate import AggregationResult, Aggregator, NashMTLAggregator, aggregate
from .combine import combine
from .gram import gram
from .methods import METHODS, Weighting, diagnostics_to_python
from .optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, DWA, FairGrad, FAMO, GradNorm, GradVac, IMTL, MGDA, MGDAUB,
    MultiTaskOptimizer, NashMTL, NonFiniteError, PCGrad, RLW, UPGrad, UW,
)

__version__ = "0.1.0"

__all__ = [
    "AlignedMTL",
    "CAGrad",
    "DWA",
    "FAMO",
    "GradNorm",
    "DualProj",
    "GradVac",
    "ConFIG",
    "FairGrad",
    "IMTL",
    "MGDA",
    "MGDAUB",
    "METHODS",
    "AggregationResult",
    "Aggregator",
    "MultiTaskOptimizer",
    "NashMTL",
    "NashMTLAggregator",
    "NonFiniteError",
    "PCGrad",
    "RLW",
    "UW",
    "UPGrad",
    "Weighting",
    "aggregate",
    "combine",
    "cpu_isa",
    "diagnostics_to_python",
    "gram",
    "methods",
    "reference",
]
