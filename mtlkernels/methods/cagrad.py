"""PLACEHOLDER — being written; replaced by the method's real K-space solve."""
from __future__ import annotations

from .base import Weighting


class CAGradWeighting(Weighting):
    name = "cagrad"
    solvers = {}

    def __call__(self, gram, losses=None):
        raise NotImplementedError("cagrad is not implemented yet")
