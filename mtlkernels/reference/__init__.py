"""Float64 plain-PyTorch references of every method, written from the papers.

Each works on the full K×N matrix the way its paper describes it (explicit projections,
explicit unit vectors, a generic solver for the QPs): slow and readable on purpose. They are the
ground truth of the test suite and of ``python -m mtlkernels.validate``; use them to check the
fast path on your own gradients.

Every function takes J [K, N] (any float dtype; computed in float64) and returns a
:class:`ReferenceResult`.
"""
from __future__ import annotations

from ._result import ReferenceResult
from .aligned_mtl import aligned_mtl
from .cagrad import cagrad
from .config import config
from .dualproj import dualproj
from .fairgrad import fairgrad
from .gradvac import gradvac
from .imtl import imtl
from .mean import mean
from .mgda import mgda
from .nash_mtl import nash_mtl
from .pcgrad import pcgrad
from .upgrad import upgrad

__all__ = [
    "ReferenceResult", "aligned_mtl", "cagrad", "config", "dualproj", "fairgrad", "gradvac", "imtl", "mean", "mgda",
    "nash_mtl", "pcgrad", "upgrad",
]
