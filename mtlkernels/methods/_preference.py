"""The ``pref_vector`` option of the methods that weight the tasks by a preference (ConFIG,
Aligned-MTL): checked once when the method is built, its length checked against K before a solve."""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor


def check_pref_vector(value: "Tensor | Sequence[float] | None") -> tuple[float, ...] | None:
    """``pref_vector`` as a tuple of floats (None: the method's default), else a ValueError naming
    the option: not a 1-D sequence of real numbers, empty, non-finite, negative or all zero."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.dim() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"pref_vector must be a 1-D real tensor [K]; got shape {tuple(value.shape)}, dtype {value.dtype}")
        entries = [float(v) for v in value.detach().cpu().to(torch.float64)]
    elif isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, Real):
                raise ValueError(f"pref_vector[{k}]={v!r} is not a real number")
        entries = [float(v) for v in value]
    else:
        raise ValueError(f"pref_vector must be None, a 1-D tensor or a sequence of K numbers; got {type(value).__name__}")
    if not entries:
        raise ValueError("pref_vector is empty; it needs one entry per task")
    bad = [k for k, v in enumerate(entries) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"pref_vector has non-finite entries at {bad}")
    negative = [k for k, v in enumerate(entries) if v < 0]
    if negative:
        raise ValueError(f"pref_vector has negative entries at {negative}; preferences are ≥ 0")
    if not any(entries):
        raise ValueError("pref_vector is all zero; at least one task needs a positive preference")
    return tuple(entries)


def preference(pref_vector: tuple[float, ...] | None, K: int, default: float) -> Tensor:
    """The [K] float64 preference: ``pref_vector``, or ``default`` in every entry when None."""
    if pref_vector is None:
        return torch.full((K,), default, dtype=torch.float64)
    check_pref_length(pref_vector, K)
    return torch.tensor(pref_vector, dtype=torch.float64)


def check_pref_length(pref_vector: tuple[float, ...] | None, K: int) -> None:
    """A ValueError naming ``pref_vector`` when it does not have one entry per task."""
    if pref_vector is not None and len(pref_vector) != K:
        raise ValueError(f"pref_vector has {len(pref_vector)} entries but there are K = {K} tasks")


def device_preference(weighting: Any, gram: Tensor) -> Tensor | None:
    """``weighting.pref_vector`` as a float64 tensor on Γ's device (None when not given), copied
    there on the first call for that device and reused after, so later on-device solves issue no
    copy. The length is checked against K."""
    if weighting.pref_vector is None:
        return None
    check_pref_length(weighting.pref_vector, gram.shape[0])
    cache = weighting.__dict__.setdefault("_device_preferences", {})
    if gram.device not in cache:
        cache[gram.device] = torch.tensor(weighting.pref_vector, dtype=torch.float64).to(gram.device)
    return cache[gram.device]


def cpp_preference(weighting: Any) -> np.ndarray:
    """``weighting.pref_vector`` (not None) as a float64 NumPy array for the C++ solve, made on the
    first call and reused while the option is the same object (the extension checks its length)."""
    cached = weighting.__dict__.get("_cpp_preference")
    if cached is None or cached[0] is not weighting.pref_vector:
        cached = weighting.__dict__["_cpp_preference"] = (weighting.pref_vector, np.array(weighting.pref_vector, dtype=np.float64))
    return cached[1]
