"""K-space solves, one file per method: Γ (+ losses) → weights. See :mod:`.base` for what a
method provides and what the shared backend layer does for it."""
from __future__ import annotations

from .base import Solution, Weighting, diagnostics_to_python
from .cagrad import CAGradWeighting
from .imtl import IMTLWeighting
from .mean import Mean
from .mgda import MGDAWeighting
from .nash_mtl import NashMTLWeighting
from .pcgrad import PCGradWeighting

#: method name → Weighting class
METHODS: dict[str, type[Weighting]] = {
    cls.name: cls for cls in (Mean, PCGradWeighting, CAGradWeighting, NashMTLWeighting, IMTLWeighting, MGDAWeighting)
}


def make_weighting(method: "str | Weighting", **options) -> Weighting:
    """Build the weighting for ``method`` with ``options``; unknown names/options raise clearly."""
    if isinstance(method, Weighting):
        if options:
            raise TypeError(f"options {sorted(options)} given with an already-built {method!r}")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[method]
    try:
        return cls(**options)
    except TypeError as exc:  # unexpected keyword → name the method and the option
        raise TypeError(f"method {method!r}: {exc}") from None


__all__ = [
    "METHODS",
    "CAGradWeighting",
    "IMTLWeighting",
    "MGDAWeighting",
    "Mean",
    "NashMTLWeighting",
    "PCGradWeighting",
    "Solution",
    "Weighting",
    "diagnostics_to_python",
    "make_weighting",
]
