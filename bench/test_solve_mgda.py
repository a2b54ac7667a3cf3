"""Microbenchmark of MGDA's K-space solve Γ [K, K] → w [K] (min_{w ∈ Δ} wᵀΓw, normalization "none").

    python -m pytest bench/test_solve_mgda.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and Γ = J·Jᵀ. Solvers, each timed through its Python call on the same Γ:
- ``authors_fw``: the authors' ``find_min_norm_element`` written from its description in NumPy on
  Γ (tests/peers.py: best-pair start, projected steps with the two-point line search, stop when
  the weights move < 1e-5) — the reference solver the speed-ups are measured against;
- ``torchjd``: ``torchjd.aggregation.MGDAWeighting()(Γ)`` (Frank–Wolfe, epsilon=1e-3, max_iters=100);
- ``cpp``, ``torch``: ours, ``MGDAWeighting(backend=...)(Γ)`` (Wolfe's active-set algorithm).

torch runs single-threaded here (a module fixture; restored after): on K×K operands its thread
pool only adds synchronisation, and on a shared machine its spin-waits dominate the time.

``extra_info`` of each benchmark: ``median_us``, ``speedup_vs_authors_fw`` (the authors' solver runs
first at each K), and the certificates of that solver's w on Γ, worst over five random Γ:
``kkt_residual`` (:func:`mtlkernels.methods.mgda.kkt_residual`, ~1e-16 at the exact optimum) and
``objective_excess`` = (wᵀΓw − f*)/f*, f* from the float64 reference on the vectors
(:func:`mtlkernels.reference.mgda`).
"""
from __future__ import annotations

import pytest
import torch

import mtlkernels as mk
from mtlkernels.methods.mgda import MGDAWeighting, kkt_residual
from mtlkernels.testing.cases import against_first_J
from peers import authors_min_norm_element, torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("authors_fw", "torchjd", "cpp", "torch")


pytestmark = pytest.mark.usefixtures("single_thread")


def solve_function(solver: str):
    if solver == "authors_fw":
        return lambda gram: authors_min_norm_element(gram.numpy())
    if solver == "torchjd":
        return torchjd_aggregation().MGDAWeighting()
    weighting = MGDAWeighting(backend=solver)
    return lambda gram: weighting(gram).weights


def certificate(solver: str, K: int, seeds: range = range(5)) -> dict[str, float]:
    worst = {"kkt_residual": 0.0, "objective_excess": 0.0}
    solve = solve_function(solver)
    for seed in seeds:
        J = against_first_J(K, N, seed)
        gram = J @ J.T
        w = torch.as_tensor(solve(gram), dtype=torch.float64)
        exact = mk.reference.mgda(J).info["objective"]
        worst["kkt_residual"] = max(worst["kkt_residual"], kkt_residual(gram, w))
        worst["objective_excess"] = max(worst["objective_excess"], float(w @ gram @ w - exact) / exact)
    return worst


def test_solve_mgda(time_solve, K, solver):
    J = against_first_J(K, N)
    time_solve(f"mgda solve K={K}", solver, solve_function(solver), J @ J.T, baselines=("authors_fw",),
               facts=lambda _: certificate(solver, K))
