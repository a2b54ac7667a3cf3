"""Microbenchmark of PCGrad's K-space solve Γ [K, K] → w [K], fresh random orders every call.

    python -m pytest bench/test_solve_pcgrad.py --benchmark-only -q

Solvers, each timed through its Python call on the same Γ (the Gram of K random gradients over
N = 1000 parameters):
- ``cpp``, ``torch``: ours, ``PCGradWeighting(backend=..., generator=...)(gram)`` (orders drawn
  inside the call);
- ``authors_loop``: the authors' algorithm run on Γ, one task and one visit at a time in Python
  with a fresh ``torch.randperm`` per task (what torchjd does) — the reference solver the
  speed-ups are measured against;
- ``torchjd``: ``torchjd.aggregation.PCGradWeighting()(gram)``.

``extra_info`` of each benchmark: ``median_us``, ``speedup_vs_authors_loop`` (the authors' loop
runs first for each K), ``weights_error`` — max over k of |wₖ − w*ₖ|·‖gₖ‖ / Σᵢ‖gᵢ‖, where w* replays
the same orders in 80-bit long double (NumPy ``longdouble``): how far the solver's float64 result is
from the exact weights of that Γ; every solver gets the same five Γ and the same orders, the worst
is kept — and, for ours, the worst of the solver's own certificate ``orthogonality_residual``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlkernels.methods import PCGradWeighting
from mtlkernels.testing.cases import random_J
from mtlkernels.testing.peers import torchjd_pcgrad_orders as torchjd_orders
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("authors_loop", "cpp", "torch", "torchjd")


def random_gram(K: int, seed: int = 0) -> torch.Tensor:
    J = random_J(K, N, seed)
    return J @ J.T


def authors_loop(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PCGrad's sequential projections on Γ, visit by visit: for task i, cᵢ = eᵢ; for j in a fresh
    random permutation (j ≠ i), if (Γcᵢ)ⱼ < 0: cᵢ[j] −= (Γcᵢ)ⱼ/Γⱼⱼ. Returns (Σᵢ cᵢ, orders used)."""
    K = gram.shape[0]
    weights = torch.zeros(K, dtype=gram.dtype)
    rows = []
    for i in range(K):
        permutation = torch.randperm(K)
        rows.append([i] + [int(j) for j in permutation if j != i])
        c = torch.zeros(K, dtype=gram.dtype)
        c[i] = 1.0
        for j in permutation:
            if j == i:
                continue
            inner = gram[j] @ c
            if inner < 0 and gram[j, j] > 0:
                c[j] -= inner / gram[j, j]
        weights += c
    return weights, torch.tensor(rows)


def exact_weights(gram: torch.Tensor, order: torch.Tensor) -> np.ndarray:
    """The same K-space PCGrad with every operation in 80-bit long double."""
    G = gram.numpy().astype(np.longdouble)
    K = G.shape[0]
    weights = np.zeros(K, dtype=np.longdouble)
    for i in range(K):
        c = np.zeros(K, dtype=np.longdouble)
        c[i] = 1
        for j in order[i].tolist():
            inner = np.dot(G[j], c)
            if inner < 0 and G[j, j] > 0:
                c[j] -= inner / G[j, j]
        weights += c
    return weights


def weights_error(gram: torch.Tensor, weights: torch.Tensor, order: torch.Tensor) -> float:
    norms = np.sqrt(np.diag(gram.numpy()).astype(np.longdouble))
    deviation = np.abs(weights.numpy().astype(np.longdouble) - exact_weights(gram, order)) * norms
    return float(deviation.max() / norms.sum())


def certificate(solver: str, K: int, seeds: range = range(5)) -> dict[str, float | int]:
    """Solves outside the timing, all solvers on the same Γ and the same orders (torchjd's draws
    after ``torch.manual_seed(seed)``), each checked against the long-double replay; the worst
    over a few random Γ."""
    worst: dict[str, float | int] = {"weights_error": 0.0}
    for seed in seeds:
        gram = random_gram(K, seed=seed)
        order = torchjd_orders(K, seed)
        torch.manual_seed(seed)
        if solver == "authors_loop":
            weights, used = authors_loop(gram)
            assert torch.equal(used, order)
        elif solver == "torchjd":
            weights = torchjd_aggregation().PCGradWeighting()(gram)
        else:
            solution = PCGradWeighting(backend=solver, order=order)(gram)
            weights = solution.weights
            worst["orthogonality_residual"] = max(
                worst.get("orthogonality_residual", 0.0), solution.diagnostics["orthogonality_residual"]
            )
        worst["weights_error"] = max(worst["weights_error"], weights_error(gram, weights, order))
    return worst


def solve_function(solver: str):
    if solver == "authors_loop":
        return lambda gram: authors_loop(gram)[0]
    if solver == "torchjd":
        return torchjd_aggregation().PCGradWeighting()
    return PCGradWeighting(backend=solver, generator=torch.Generator().manual_seed(0))


def test_solve_pcgrad(time_solve, K, solver):
    time_solve(f"pcgrad solve K={K}", solver, solve_function(solver), random_gram(K), baselines=("authors_loop",),
               facts=lambda _: certificate(solver, K))
