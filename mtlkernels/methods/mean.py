"""Mean of the task gradients: w = 𝟙/K (plain multi-task training, up to the 1/K factor)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Solution, Weighting


def _solve_torch(self: "Mean", gram: Tensor, losses: Tensor | None) -> Solution:
    K = gram.shape[0]
    return Solution(torch.full((K,), 1.0 / K, dtype=torch.float64, device=gram.device))


class Mean(Weighting):
    """w = 𝟙/K, so d = g₀ = (1/K)·Σₖ gₖ."""

    name = "mean"
    # device-agnostic and sync-free: the same solve serves every backend
    solvers = {"torch": _solve_torch, "cpp": _solve_torch, "triton": _solve_torch}
