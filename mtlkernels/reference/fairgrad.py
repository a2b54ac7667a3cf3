"""Reference FairGrad — Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

Weights: the w > 0 with (GᵀG w)ᵢ = wᵢ^(−1/α) for every task (the paper's Eq. 4, G = Jᵀ the
gradients as columns); direction d = Σᵢ wᵢ·gᵢ, unnormalised.

The equations are the stationarity condition of the convex f(w) = ½‖Jᵀw‖² − Σᵢ φ(wᵢ) with
φ′(x) = x^(−1/α) (the paper's α-fair utility in the weights), minimised here by a textbook damped
Newton method on the full J: Jᵀw formed in parameter space, the Hessian JJᵀ + diag(x^(−1/α−1)/α)
solved as is (no rescaling), backtracking to stay positive and decrease f, from each task's own
solution wᵢ = ‖gᵢ‖^(−2α/(α+1)).

Where no positive solution exists (a non-negative combination of the gradients vanishes), the tasks
of every such combination — the support found by the linear program of
:mod:`mtlkernels.reference.nash_mtl` — get weight 0 and the rest is solved.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._result import ReferenceResult
from .nash_mtl import kept_tasks

_MAX_ITERATIONS = 500


def _objective(J: Tensor, w: Tensor, alpha: float) -> float:
    direction = J.T @ w
    utility = torch.log(w) if alpha == 1.0 else w ** (1.0 - 1.0 / alpha) / (1.0 - 1.0 / alpha)
    return float(0.5 * direction @ direction - utility.sum())


def _solve(J: Tensor, alpha: float) -> tuple[Tensor, int]:
    """Damped Newton on f from wᵢ = ‖gᵢ‖^(−2α/(α+1)); returns (w, Newton steps)."""
    w = (J * J).sum(dim=1) ** (-alpha / (alpha + 1.0))
    gram = J @ J.T
    previous_decrement2 = math.inf
    for iteration in range(1, _MAX_ITERATIONS + 1):
        gradient = J @ (J.T @ w) - w ** (-1.0 / alpha)
        hessian = gram + torch.diag(w ** (-1.0 / alpha - 1.0) / alpha)
        step = -torch.linalg.solve(hessian, gradient)
        decrement2 = float(-(gradient @ step))
        if decrement2 <= 1e-30 * max(1.0, abs(_objective(J, w, alpha))):
            return w + step, iteration
        if bool(((step / w).abs() < 1e-3).all()):  # near the solution: pure Newton to the rounding floor
            if decrement2 >= previous_decrement2:
                return w, iteration - 1
            previous_decrement2 = decrement2
            w = w + step
            continue
        t, current = 1.0, _objective(J, w, alpha)
        for _ in range(100):  # backtracking: stay positive, then Armijo decrease
            trial = w + t * step
            if bool((trial > 0).all()) and _objective(J, trial, alpha) <= current - 0.25 * t * decrement2:
                break
            t *= 0.5
        w = w + t * step
    raise RuntimeError("reference fairgrad: Newton did not converge")


def fairgrad(J: Tensor, *, alpha: float = 1.0) -> ReferenceResult:
    """FairGrad on the task gradients J [K, N] (computed in float64).

    Returns d, the weights w and in ``info``: ``residual`` = maxᵢ |wᵢ^(1/α)(Γw)ᵢ − 1| /
    (wᵢ^(1/α)Σⱼ|Γᵢⱼwⱼ| + 1) over the tasks with wᵢ > 0, ``iterations``, ``dropped_tasks`` (weight 0: zero or cancelling gradients).
    """
    J = J.to(torch.float64)
    K = J.shape[0]
    norms = torch.linalg.vector_norm(J, dim=1)
    kept = kept_tasks(J, norms)
    weights = torch.zeros(K, dtype=torch.float64)
    iterations = 0
    if bool(kept.any()):
        weights[kept], iterations = _solve(J[kept], alpha)
    scale = weights ** (1.0 / alpha)
    gram = J @ J.T
    residuals = (scale * (gram @ weights) - 1.0).abs() / (scale * (gram.abs() @ weights.abs()) + 1.0)
    info = {
        "residual": float(residuals[kept].max()) if bool(kept.any()) else 0.0,
        "iterations": iterations,
        "dropped_tasks": (~kept).nonzero().flatten().tolist(),
    }
    return ReferenceResult(weights @ J, weights, info)
