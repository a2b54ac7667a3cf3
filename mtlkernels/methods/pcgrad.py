"""PLACEHOLDER — being written; replaced by the method's real K-space solve."""
from __future__ import annotations

from .base import Weighting


class PCGradWeighting(Weighting):
    name = "pcgrad"
    solvers = {}

    def __call__(self, gram, losses=None):
        raise NotImplementedError("pcgrad is not implemented yet")
