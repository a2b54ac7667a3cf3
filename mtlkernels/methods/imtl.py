"""PLACEHOLDER — being written; replaced by the method's real K-space solve."""
from __future__ import annotations

from .base import Weighting


class IMTLWeighting(Weighting):
    name = "imtl"
    solvers = {}

    def __call__(self, gram, losses=None):
        raise NotImplementedError("imtl is not implemented yet")
