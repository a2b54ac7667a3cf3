"""K-space solves, one file per method: Γ (+ losses) → weights. See :class:`base.Weighting`."""
from __future__ import annotations

from .base import Solution, Weighting
from .mean import Mean

#: method name → Weighting class; each method module adds itself here.
METHODS: dict[str, type[Weighting]] = {Mean.name: Mean}


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


__all__ = ["METHODS", "Mean", "Solution", "Weighting", "make_weighting"]
