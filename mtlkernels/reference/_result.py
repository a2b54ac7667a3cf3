from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class ReferenceResult:
    """direction [N] float64; weights [K] float64 where the method defines them in its paper's
    terms (None where it does not, e.g. PCGrad projects vectors); info: solver facts."""

    direction: Tensor
    weights: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
