"""Reference mean: d = (1/K)·Σₖ gₖ."""
from __future__ import annotations

import torch
from torch import Tensor

from ._result import ReferenceResult


def mean(J: Tensor) -> ReferenceResult:
    J = J.to(torch.float64)
    K = J.shape[0]
    return ReferenceResult(J.mean(dim=0), torch.full((K,), 1.0 / K, dtype=torch.float64))
