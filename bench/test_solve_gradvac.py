"""Microbenchmark of GradVac's K-space solve Γ [K, K] (+ targets, orders) → w [K].

    python -m pytest bench/test_solve_gradvac.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0) and Γ = J·Jᵀ; the
first step (targets 0), fixed visiting orders. Solvers, each timed through its Python call on Γ:
- ``torchjd``: ``torchjd.aggregation.GradVacWeighting()(Γ)`` (reset before each call, its orders
  from torch's global RNG) — the baseline;
- ``cpp``, ``torch``: ours, ``GradVacWeighting(backend=..., order=...)`` reset before each call.

``extra_info``: ``median_us``, ``speedup_vs_torchjd`` and, for ours, ``target_residual``.
"""
from __future__ import annotations

import pytest
import torch

from mtlkernels.methods import GradVacWeighting
from mtlkernels.testing.cases import against_first_J
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("torchjd", "cpp", "torch")

pytestmark = pytest.mark.usefixtures("single_thread")


def solve_function(K: int, solver: str):
    if solver == "torchjd":
        weighting = torchjd_aggregation().GradVacWeighting()
    else:
        generator = torch.Generator().manual_seed(K)
        order = torch.stack([torch.randperm(K, generator=generator) for _ in range(K)])
        weighting = GradVacWeighting(backend=solver, order=order)

    def first_step(gram):
        weighting.reset()
        return weighting(gram)

    return first_step


def test_solve_gradvac(time_solve, K, solver):
    J = against_first_J(K, N)
    facts = (lambda _: {}) if solver == "torchjd" else (lambda solution: {"target_residual": solution.diagnostics["target_residual"]})
    time_solve(f"gradvac solve K={K}", solver, solve_function(K, solver), J @ J.T, baselines=("torchjd",), facts=facts)
