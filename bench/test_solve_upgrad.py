"""Microbenchmark of the dual-cone solves Γ [K, K] → w [K]: UPGrad (K projections,
vᵢ = argmin_{v ≥ eᵢ} vᵀΓv, w = Σᵢ vᵢ/K) and DualProj (one projection, argmin_{w ≥ 𝟙/K} wᵀΓw).

    python -m pytest bench/test_solve_upgrad.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks
conflict) and Γ = J·Jᵀ. Solvers, each timed through its Python call on the same Γ:
- ``torchjd``: ``torchjd.aggregation.UPGradWeighting()(Γ)`` / ``DualProjWeighting()(Γ)`` (quadprog
  on Γ/tr(Γ) + 1e-4·I, one QP per projection) — the baseline the speed-ups are measured against;
- ``cpp``, ``torch``: ours, ``make_weighting(method, backend=...)(Γ)`` (Lawson–Hanson active set,
  exact); the torch solve only up to K = 32 (its Python loop takes seconds beyond).

``extra_info``: ``median_us``, ``speedup_vs_torchjd`` and, for ours, ``kkt_residual`` (the solve's
certificate on that Γ, ~1e-16 at the exact optimum).
"""
from __future__ import annotations

import pytest

from mtlkernels.methods import make_weighting
from mtlkernels.testing.cases import against_first_J
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64, 128)
N = 1000
SOLVERS = ("torchjd", "cpp", "torch")
TORCHJD_CLASSES = {"upgrad": "UPGradWeighting", "dualproj": "DualProjWeighting"}

pytestmark = pytest.mark.usefixtures("single_thread")


def solve_function(method: str, solver: str):
    if solver == "torchjd":
        return getattr(torchjd_aggregation(), TORCHJD_CLASSES[method])()
    weighting = make_weighting(method, backend=solver)
    return lambda gram: weighting(gram)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_solve_dual_cone(time_solve, K, solver, method):
    if solver == "torch" and K > 32:
        pytest.skip("the readable torch solve is not timed beyond K = 32")
    J = against_first_J(K, N)
    facts = (lambda _: {}) if solver == "torchjd" else (lambda solution: {"kkt_residual": solution.diagnostics["kkt_residual"]})
    time_solve(f"{method} solve K={K}", solver, solve_function(method, solver), J @ J.T, baselines=("torchjd",), facts=facts)
