"""Microbenchmark of ConFIG against torchjd's.

    python -m pytest bench/test_solve_config.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and its Gram Γ = J·Jᵀ. Solvers, each timed through its Python call:
- ``torchjd``: ``torchjd.aggregation.ConFIG()`` on J — the pseudo-inverse of the [K, N] unit-gradient
  matrix, then d; it has no Gram form, so its time includes what our two passes do; the baseline
  the speed-ups are measured against;
- ``aggregate_cpp``: ours end to end on J, ``mk.aggregate(J, ConFIGWeighting(backend="cpp"))``
  (Gram pass, K-space solve, combination): the like-for-like comparison with ``torchjd``;
- ``cpp``, ``torch``: ours, the K-space solve ``ConFIGWeighting(backend=...)(Γ)`` alone.

``extra_info``: ``median_us``, ``speedup_vs_torchjd``, and ``cosine_spread`` = max − min of the
cosines between d and the gᵢ (0 for the exact direction; the solves' d is formed as wᵀJ here).
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import mtlkernels as mk
from mtlkernels.methods.config import ConFIGWeighting
from mtlkernels.testing.cases import against_first_J
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("torchjd", "aggregate_cpp", "cpp", "torch")
BASELINES = ("torchjd",)


pytestmark = pytest.mark.usefixtures("single_thread")


def solver_call(solver: str, J: Tensor):
    """(function, argument, result → d)."""
    if solver == "torchjd":
        return torchjd_aggregation().ConFIG(), J, lambda d: d
    if solver == "aggregate_cpp":
        weighting = ConFIGWeighting(backend="cpp")
        return lambda J_: mk.aggregate(J_, weighting).direction, J, lambda d: d
    weighting = ConFIGWeighting(backend=solver)
    return lambda gram: weighting(gram).weights, J @ J.T, lambda w: w @ J


def cosine_spread(J: Tensor, d: Tensor) -> float:
    cosines = (J @ d) / J.norm(dim=1) / d.norm()
    return float(cosines.max() - cosines.min())


def test_solve_config(time_solve, K, solver):
    J = against_first_J(K, N)
    solve, argument, direction = solver_call(solver, J)
    time_solve(f"config solve K={K}", solver, solve, argument, baselines=BASELINES,
               facts=lambda result: {"cosine_spread": cosine_spread(J, direction(result))})
