"""K-space solves, one file per method: Γ (+ losses) → weights. See :mod:`.base` for what a
method provides and what the shared backend layer does for it."""
from __future__ import annotations

import functools
import inspect

from .aligned_mtl import AlignedMTLWeighting
from .base import Solution, Weighting, diagnostics_to_python
from .cagrad import CAGradWeighting
from .config import ConFIGWeighting
from .dualproj import DualProjWeighting
from .fairgrad import FairGradWeighting
from .gradvac import GradVacWeighting
from .imtl import IMTLWeighting
from .mean import Mean
from .mgda import MGDAWeighting
from .nash_mtl import NashMTLWeighting
from .pcgrad import PCGradWeighting
from .upgrad import UPGradWeighting

#: method name → Weighting class
METHODS: dict[str, type[Weighting]] = {
    cls.name: cls
    for cls in (
        Mean, PCGradWeighting, CAGradWeighting, NashMTLWeighting, IMTLWeighting, MGDAWeighting, UPGradWeighting,
        DualProjWeighting, GradVacWeighting, FairGradWeighting, ConFIGWeighting, AlignedMTLWeighting,
    )
}


_NO_TASK_COUNT = (
    "{peer} is {who} task count; here K is read from J or from the losses (an optimizer wrapper "
    "checks it with num_tasks={value!r})"
)

#: option names of the reference implementations (the authors' code, LibMTL, torchjd) that are
#: not ours: (method or None for any method, their name) → the message naming our option, formatted
#: with ``peer`` (their name) and ``value`` (the value given)
PEER_OPTIONS: dict[tuple[str | None, str], str] = {
    ("cagrad", "alpha"): "CAGrad's c is the authors' alpha: use c={value!r}",
    ("cagrad", "calpha"): "CAGrad's c is LibMTL's calpha: use c={value!r}",
    ("cagrad", "norm_eps"): "torchjd's norm_eps guards its division by the norm of the combined gradient; "
                            "the CAGrad solve here treats a zero norm as a case of its own: drop it",
    ("mgda", "mgda_gn"): "LibMTL's mgda_gn is MGDA's normalization, and LibMTL combines the normalised "
                         "gradients: use normalization={value!r}, combination='normalized'",
    ("mgda", "epsilon"): "torchjd's MGDA epsilon is the tolerance of its iterative solver; the MGDA solve "
                         "here is exact (Wolfe's active-set method): drop it",
    ("mgda", "max_iters"): "torchjd's MGDA max_iters bounds its iterative solver; the MGDA solve here is "
                           "exact (Wolfe's active-set method): drop it",
    ("fairgrad", "max_iters"): "torchjd's FairGrad max_iters bounds scipy's least_squares; the FairGrad solve here "
                               "runs Newton to rounding level: drop it",
    ("fairgrad", "FairGrad_alpha"): "FairGrad's alpha is LibMTL's FairGrad_alpha: use alpha={value!r}",
    (None, "n_tasks"): _NO_TASK_COUNT.replace("{who}", "the Nash-MTL authors' and torchjd's"),
    (None, "task_num"): _NO_TASK_COUNT.replace("{who}", "LibMTL's"),
    (None, "pref_vector"): "torchjd's pref_vector has no counterpart in {method!r} (only 'upgrad' and "
                           "'dualproj' take one); to weight the tasks, scale their losses (task k's loss × pₖ "
                           "scales its gradient by pₖ)",
    ("upgrad", "projector"): "torchjd's projector picks its QP solver; the UPGrad solve here is exact "
                             "(an active-set method): drop it, and pass reg_eps=1e-4, norm_eps=1e-4 for "
                             "torchjd's regularisation",
    ("dualproj", "projector"): "torchjd's projector picks its QP solver; the DualProj solve here is exact "
                               "(an active-set method): drop it, and pass reg_eps=1e-4, norm_eps=1e-4 for "
                               "torchjd's regularisation",
}


def _unknown_option(method: str, cls: type[Weighting], name: str, value: object) -> TypeError:
    """The error for an option ``method`` does not take: the peer's name mapped to ours
    (:data:`PEER_OPTIONS`), else the options it does take."""
    hint = PEER_OPTIONS.get((method, name), PEER_OPTIONS.get((None, name)))
    if hint is not None:
        return TypeError(f"method {method!r} has no option {name!r}: " + hint.format(peer=name, value=value, method=method))
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return TypeError(f"method {method!r} has no option {name!r}; its options are {accepted}")


def make_weighting(method: "str | Weighting", **options) -> Weighting:
    """Build the weighting for ``method`` with ``options``; unknown names/options raise clearly,
    a reference implementation's name for an option naming ours (:data:`PEER_OPTIONS`)."""
    if isinstance(method, Weighting):
        if options:
            raise TypeError(f"options {sorted(options)} given with an already-built {method!r}")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[method]
    accepted = _accepted_options(cls)
    for name, value in options.items():
        if name not in accepted:
            raise _unknown_option(method, cls, name, value)
    return cls(**options)


@functools.lru_cache(maxsize=None)
def _accepted_options(cls: type[Weighting]) -> frozenset[str]:
    """The keyword options of a Weighting class (read once per class: a signature costs ~10 µs)."""
    return frozenset(name for name in inspect.signature(cls.__init__).parameters if name != "self")


__all__ = [
    "METHODS",
    "PEER_OPTIONS",
    "AlignedMTLWeighting",
    "CAGradWeighting",
    "DualProjWeighting",
    "GradVacWeighting",
    "ConFIGWeighting",
    "FairGradWeighting",
    "IMTLWeighting",
    "MGDAWeighting",
    "Mean",
    "NashMTLWeighting",
    "PCGradWeighting",
    "UPGradWeighting",
    "Solution",
    "Weighting",
    "diagnostics_to_python",
    "make_weighting",
]
