"""Microbenchmark of IMTL-G's K-space solve against the ways the peers compute the same weights.

    python -m pytest bench/test_solve_imtl.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and its Gram Γ = J·Jᵀ. Solvers, each timed through its Python call:
- ``libmtl_closed_form``: the paper's form on full vectors as LibMTL computes it, in float32 —
  unit vectors, D and U, (DUᵀ)⁻¹ by ``torch.inverse`` — from J; the reference solver the speed-ups
  are measured against;
- ``torchjd``: ``torchjd.aggregation.IMTLGWeighting()`` on the float32 Γ (what its IMTLG
  aggregator forms from float32 J): w = Γ⁺n / Σ(Γ⁺n), Γ⁺ by SVD;
- ``reference``: :func:`mtlkernels.reference.imtl` (float64, full vectors, with its singularity
  checks), from J;
- ``cpp``, ``torch``: ours, ``IMTLWeighting(backend=...)(Γ)`` on the float64 Γ.

torch runs single-threaded here (a module fixture; restored after): on K×K and K×1000 operands its
thread pool only adds synchronisation, and on a shared machine its spin-waits dominate the time.

``extra_info`` of each benchmark: ``median_us``, ``speedup_vs_<baseline>`` for the baselines timed
before it at the same K, and the certificates of that solver's weights w on the float64 Γ:
``residual`` (:func:`mtlkernels.methods.imtl.equal_projection_residual`, 0 for exact weights) and
``weights_error`` = maxᵢ |nᵢ(wᵢ − w*ᵢ)| / maxᵢ |nᵢw*ᵢ| against w* solved in 40-digit arithmetic.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import mtlkernels as mk
from mtlkernels.methods.imtl import IMTLWeighting, equal_projection_residual
from mtlkernels.testing.cases import against_first_J
from peers import require_peer, torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("libmtl_closed_form", "torchjd", "reference", "cpp", "torch")
BASELINES = ("libmtl_closed_form", "torchjd", "reference")


pytestmark = pytest.mark.usefixtures("single_thread")


def libmtl_closed_form(J: Tensor) -> Tensor:
    """α₂..K = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂..K on the full float32 vectors (uᵢ = gᵢ/‖gᵢ‖, D rows g₁ − gᵢ,
    U rows u₁ − uᵢ), as LibMTL's IMTL does it per step."""
    units = J / J.norm(dim=1, keepdim=True)
    D = J[0] - J[1:]
    U = units[0] - units[1:]
    rest = (J[0] @ U.T) @ torch.inverse(D @ U.T)
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


def exact_weights(gram: Tensor, digits: int = 40) -> Tensor:
    """w* = N⁻¹C⁻¹𝟙 / Σ(N⁻¹C⁻¹𝟙) from Γ in ``digits``-digit arithmetic."""
    mpmath = require_peer("mpmath")
    K = gram.shape[0]
    with mpmath.workdps(digits):
        G = mpmath.matrix(gram.tolist())
        n = [mpmath.sqrt(G[i, i]) for i in range(K)]
        C = mpmath.matrix(K, K)
        for i in range(K):
            for j in range(K):
                C[i, j] = G[i, j] / (n[i] * n[j])
        beta = mpmath.lu_solve(C, mpmath.matrix([1] * K))
        gamma = [beta[i] / n[i] for i in range(K)]
        total = sum(gamma)
        return torch.tensor([float(g / total) for g in gamma], dtype=torch.float64)


def solver_call(solver: str, J: Tensor):
    """(function, argument) timed for ``solver``."""
    if solver == "libmtl_closed_form":
        return libmtl_closed_form, J.float()
    if solver == "torchjd":
        return torchjd_aggregation().IMTLGWeighting(), (J @ J.T).float()
    if solver == "reference":
        return lambda J64: mk.reference.imtl(J64).weights, J
    weighting = IMTLWeighting(backend=solver)
    return lambda gram: weighting(gram).weights, J @ J.T


def certificate(weights: Tensor, gram: Tensor, exact: Tensor) -> dict[str, float]:
    weights = weights.double()
    norms = gram.diagonal().sqrt()
    error = (norms * (weights - exact)).abs().max() / (norms * exact).abs().max()
    return {"residual": equal_projection_residual(gram, weights), "weights_error": float(error)}


def test_solve_imtl(time_solve, K, solver):
    J = against_first_J(K, N)
    gram = J @ J.T
    solve, argument = solver_call(solver, J)
    time_solve(f"imtl solve K={K}", solver, solve, argument, baselines=BASELINES,
               facts=lambda weights: certificate(weights, gram, exact_weights(gram)))
