"""PLACEHOLDER — being written; replaced by the method's real K-space solve."""
from __future__ import annotations

from .base import Weighting


class MGDAWeighting(Weighting):
    name = "mgda"
    solvers = {}

    def __call__(self, gram, losses=None):
        raise NotImplementedError("mgda is not implemented yet")
