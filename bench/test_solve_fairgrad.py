"""Microbenchmark of FairGrad's K-space solve against the peers' solver.

    python -m pytest bench/test_solve_fairgrad.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and its Gram Γ = J·Jᵀ, α = 2 (the authors' QM9 setting). Solvers, each timed through its Python call:
- ``torchjd``: ``torchjd.aggregation.FairGradWeighting(alpha)`` on Γ: scipy's ``least_squares``
  from 𝟙/K with its default tolerances — the authors' solver, which LibMTL's FairGrad (not in the
  installed LibMTL 1.1.5) runs too; the baseline the speed-ups are measured against;
- ``cpp``, ``torch``: ours, ``FairGradWeighting(alpha, backend=...)(Γ)``: Newton to rounding level.

``extra_info``: ``median_us``, ``speedup_vs_torchjd``, and ``residual`` — the certificate
:func:`mtlkernels.methods.fairgrad.fixed_point_residuals` (max over tasks) of that solver's weights.
"""
from __future__ import annotations

import pytest
import torch

from mtlkernels.methods.fairgrad import FairGradWeighting, fixed_point_residuals
from mtlkernels.testing.cases import against_first_J
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
ALPHA = 2.0
SOLVERS = ("torchjd", "cpp", "torch")
BASELINES = ("torchjd",)


pytestmark = pytest.mark.usefixtures("single_thread")


def solver_call(solver: str):
    if solver == "torchjd":
        weighting = torchjd_aggregation().FairGradWeighting(alpha=ALPHA)
        return lambda gram: weighting(gram)
    weighting = FairGradWeighting(alpha=ALPHA, backend=solver)
    return lambda gram: weighting(gram).weights


def test_solve_fairgrad(time_solve, K, solver):
    J = against_first_J(K, N)
    gram = J @ J.T
    time_solve(f"fairgrad solve K={K}", solver, solver_call(solver), gram, baselines=BASELINES,
               facts=lambda w: {"residual": float(fixed_point_residuals(gram, torch.as_tensor(w, dtype=torch.float64), ALPHA).max())})
