"""Reference Nash-MTL — Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.

Weights: the α > 0 with αᵢ·(Γα)ᵢ = 1 for every task i, Γ = J·Jᵀ; direction d = Σᵢ αᵢ·gᵢ, scaled
down to ‖d‖ = max_norm when longer (at the solution ‖d‖² = αᵀΓα = K).

The system is the stationarity condition of the convex problem min_{α>0} ½αᵀΓα − Σᵢ log αᵢ,
solved here by a textbook damped Newton method (backtracking line search, then pure Newton steps).
Written on the full J: the unit gradients uᵢ = gᵢ/‖gᵢ‖ are formed explicitly and the problem is
solved for βᵢ = ‖gᵢ‖·αᵢ (the system is invariant under this per-task rescaling, so gradient scales
from 1e-20 to 1e20 are solved alike); d is formed and clipped in parameter space.

A positive solution exists exactly when no non-negative, non-zero combination of the gradients
vanishes (Σᵢ vᵢgᵢ = 0, v ≥ 0, i.e. 0 is not in their convex hull). Otherwise the tasks that take part
in such a combination — the support S of the cone {v ≥ 0 : Σᵢ vᵢuᵢ = 0}, which holds every zero
gradient and every pair of exactly opposite gradients — get weight 0 and the system is solved on
the others, where a positive solution always exists. S is found here by a linear program
(scipy's HiGHS, imported lazily): maximise Σᵢ tᵢ subject to Cv = 0, 0 ≤ tᵢ ≤ vᵢ, tᵢ ≤ 1,
C = UUᵀ the cosine matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._result import ReferenceResult

_MAX_ITERATIONS = 500


def _objective(C: Tensor, beta: Tensor) -> Tensor:
    return 0.5 * beta @ C @ beta - torch.log(beta).sum()


def _barrier_newton(C: Tensor) -> tuple[Tensor, int]:
    """Minimise ½βᵀCβ − Σ log βᵢ from β = 𝟙; returns (β, Newton steps taken)."""
    beta = torch.ones(C.shape[0], dtype=torch.float64)
    previous_decrement2 = float("inf")
    for iteration in range(1, _MAX_ITERATIONS + 1):
        gradient = C @ beta - 1.0 / beta
        hessian = C + torch.diag(1.0 / beta**2)
        step = -torch.linalg.solve(hessian, gradient)
        decrement2 = float(-(gradient @ step))  # squared Newton decrement λ²
        if decrement2 <= 1e-28:
            return beta + step, iteration
        if decrement2 < 1e-6:  # quadratic region: pure Newton steps while they still help
            if decrement2 >= previous_decrement2:  # rounding floor reached
                return beta, iteration - 1
            previous_decrement2 = decrement2
            beta = beta + step
            continue
        t = 1.0
        current = _objective(C, beta)
        for _ in range(80):  # backtracking: stay positive, then Armijo decrease
            trial = beta + t * step
            if bool((trial > 0).all()) and _objective(C, trial) <= current - 0.25 * t * decrement2:
                break
            t *= 0.5
        beta = beta + t * step
    raise RuntimeError("reference nash_mtl: Newton did not converge; is Γ degenerate beyond the LP's tolerance?")


def _cancelling_tasks(C: Tensor) -> Tensor:
    """Mask of the support of {v ≥ 0 : Cv = 0} (the tasks some non-negative combination cancels)."""
    import numpy as np
    from scipy.optimize import linprog

    K = C.shape[0]
    eye, zeros = np.eye(K), np.zeros((K, K))
    result = linprog(
        c=np.r_[np.zeros(K), -np.ones(K)],  # variables [v, t]: maximise Σ t
        A_eq=np.c_[C.numpy(), zeros],
        b_eq=np.zeros(K),
        A_ub=np.c_[-eye, eye],  # tᵢ − vᵢ ≤ 0
        b_ub=np.zeros(K),
        bounds=[(0, 1e6)] * K + [(0, 1)] * K,
        method="highs",
    )
    if not result.success:
        raise RuntimeError(f"reference nash_mtl: the support LP failed ({result.message})")
    return torch.from_numpy(result.x[K:] > 0.5)


def kept_tasks(J: Tensor, norms: Tensor) -> Tensor:
    """Mask of the tasks that get a weight (Nash-MTL's and FairGrad's): a non-zero gradient that no
    non-negative combination of the task gradients cancels (``norms``: the rows' norms ‖gᵢ‖)."""
    kept = norms > 0
    if bool(kept.any()):
        unit = J[kept] / norms[kept, None]
        kept[kept.clone()] = ~_cancelling_tasks(unit @ unit.T)
    return kept


def nash_mtl(J: Tensor, *, max_norm: float = 1.0) -> ReferenceResult:
    """Nash-MTL on the task gradients J [K, N] (computed in float64).

    Returns the clipped direction, the weights w (α after clipping) and in ``info``: ``alpha``
    (before clipping), ``residual`` = ‖α⊙(Γα) − 1‖ on the unnormalised Γ = JJᵀ over all tasks,
    ``kept_residual`` (over the tasks with αᵢ > 0), ``iterations``, ``direction_norm`` =
    ‖Σαᵢgᵢ‖ before clipping, ``dropped_tasks`` (weight 0: zero or cancelling gradients).
    """
    J = J.to(torch.float64)
    K = J.shape[0]
    norms = torch.linalg.vector_norm(J, dim=1)
    kept = kept_tasks(J, norms)

    alpha = torch.zeros(K, dtype=torch.float64)
    iterations = 0
    if bool(kept.any()):
        unit = J[kept] / norms[kept, None]
        beta, iterations = _barrier_newton(unit @ unit.T)
        alpha[kept] = beta / norms[kept]

    gram = J @ J.T
    equations = alpha * (gram @ alpha) - 1.0
    direction = alpha @ J
    direction_norm = float(torch.linalg.vector_norm(direction))
    scale = max_norm / direction_norm if 0 < max_norm < direction_norm else 1.0
    info = {
        "alpha": alpha,
        "residual": float(torch.linalg.vector_norm(equations)),
        "kept_residual": float(torch.linalg.vector_norm(equations[kept])),
        "iterations": iterations,
        "direction_norm": direction_norm,
        "dropped_tasks": (~kept).nonzero().flatten().tolist(),
    }
    return ReferenceResult(direction * scale, alpha * scale, info)
