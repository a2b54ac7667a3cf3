"""Microbenchmark of MGDA's K-space solve Γ [K, K] → w [K] (min_{w ∈ Δ} wᵀΓw, normalization "none").

    python -m pytest bench/test_solve_mgda.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and Γ = J·Jᵀ. Solvers, each timed through its Python call on the same Γ:
- ``authors_fw``: the authors' ``find_min_norm_element`` as METHODS.md describes it, written here
  in NumPy on Γ (best-pair start, projected steps with the two-point line search, stop when the
  weights move < 1e-5) — the reference solver the speed-ups are measured against;
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

import numpy as np
import pytest
import torch
from torch import Tensor

import mtlkernels as mk
from mtlkernels.methods.mgda import MGDAWeighting, kkt_residual

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("authors_fw", "torchjd", "cpp", "torch")
MEDIANS_US: dict[tuple[int, str], float] = {}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_J(K: int, seed: int = 0) -> Tensor:
    J = torch.randn(K, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    J[1::2] -= 1.5 * J[0]
    return J


def _two_point(aa: float, ab: float, bb: float) -> tuple[float, float]:
    """(γ, cost) of min_γ ‖γa + (1 − γ)b‖² from aa = a·a, ab = a·b, bb = b·b; at an end γ is 0.999 or
    0.001 and the cost that end's (aa or bb)."""
    if ab >= aa:
        return 0.999, aa
    if ab >= bb:
        return 0.001, bb
    gamma = (bb - ab) / (aa + bb - 2.0 * ab)
    return gamma, bb + gamma * (ab - bb)


def _onto_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex: shift by the threshold found on the sorted values."""
    ordered = np.sort(y)[::-1]
    excess = np.cumsum(ordered) - 1.0
    count = np.arange(1, y.size + 1)
    k = count[ordered - excess / count > 0][-1]
    return np.maximum(y - excess[k - 1] / k, 0.0)


def authors_fw(gram: np.ndarray, stop: float = 1e-5, safety_cap: int = 100_000) -> np.ndarray:
    """find_min_norm_element on Γ: the best pair (two-point problem of every pair, lowest cost);
    for K = 2 that pair; else repeat { step along the centred −Γw to the first simplex face
    (ignoring steps < 1e-7), project, two-point line search between w and that point } until w
    moves < ``stop`` in l1, returning the w before that move. ``safety_cap`` bounds a loop the
    authors leave unbounded."""
    K = gram.shape[0]
    if K == 1:
        return np.ones(1)
    best_cost, best = np.inf, (0, 1, 1.0)
    for i in range(K):
        for j in range(i + 1, K):
            gamma, cost = _two_point(gram[i, i], gram[i, j], gram[j, j])
            if cost < best_cost:
                best_cost, best = cost, (i, j, gamma)
    i, j, gamma = best
    w = np.zeros(K)
    w[i], w[j] = gamma, 1.0 - gamma
    if K == 2:
        return w
    for _ in range(safety_cap):
        centred = -(gram @ w)
        centred -= centred.mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = np.concatenate([np.where(centred < 0, -w / centred, np.inf), np.where(centred > 0, (1 - w) / centred, np.inf)])
        limits = limits[limits > 1e-7]
        target = _onto_simplex(w + (limits.min() if limits.size else 1.0) * centred)
        gamma, _ = _two_point(w @ gram @ w, w @ gram @ target, target @ gram @ target)
        moved = gamma * w + (1 - gamma) * target
        if np.abs(moved - w).sum() < stop:
            return w
        w = moved
    return w


def solve_function(solver: str):
    if solver == "authors_fw":
        return lambda gram: authors_fw(gram.numpy())
    if solver == "torchjd":
        return pytest.importorskip("torchjd.aggregation").MGDAWeighting()
    weighting = MGDAWeighting(backend=solver)
    return lambda gram: weighting(gram).weights


def certificate(solver: str, K: int, seeds: range = range(5)) -> dict[str, float]:
    worst = {"kkt_residual": 0.0, "objective_excess": 0.0}
    solve = solve_function(solver)
    for seed in seeds:
        J = random_J(K, seed)
        gram = J @ J.T
        w = torch.as_tensor(solve(gram), dtype=torch.float64)
        exact = mk.reference.mgda(J).info["objective"]
        worst["kkt_residual"] = max(worst["kkt_residual"], kkt_residual(gram, w))
        worst["objective_excess"] = max(worst["objective_excess"], float(w @ gram @ w - exact) / exact)
    return worst


@pytest.mark.parametrize("K, solver", [(K, s) for K in KS for s in SOLVERS], ids=[f"K{K}-{s}" for K in KS for s in SOLVERS])
def test_solve_mgda(benchmark, capsys, K, solver):
    J = random_J(K)
    gram = J @ J.T
    benchmark.group = f"mgda solve K={K}"
    benchmark(solve_function(solver), gram)
    median_us = benchmark.stats.stats.median * 1e6
    MEDIANS_US[K, solver] = median_us
    benchmark.extra_info["median_us"] = median_us
    baseline = MEDIANS_US.get((K, "authors_fw"))
    if baseline is not None:
        benchmark.extra_info["speedup_vs_authors_fw"] = baseline / median_us
    benchmark.extra_info.update(certificate(solver, K))
    info = ", ".join(f"{k}={v:.3g}" for k, v in benchmark.extra_info.items())
    with capsys.disabled():
        print(f"\nK={K:3d} {solver:11s} {info}")
