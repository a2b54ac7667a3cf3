"""Reference projection onto the dual cone {x : J·x ≥ 0} of the task gradients, on full vectors
(Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Eq. 3).

The projection x* of d₀ onto the polyhedral cone lies on one of its faces: with S the constraints
active at x*, the KKT conditions say x* − d₀ is a combination of the gᵢ, i ∈ S, and gᵢ·x* = 0 there,
so x* is the projection of d₀ onto the null space of J_S. Every subset S is tried (the projection
onto the null space by least squares in N-space), and the feasible candidate nearest d₀ is x*:
exponential in K, exact, and independent of the K-space solve. Float64, torch only.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

#: the largest K enumerated (2^K subsets)
MAX_TASKS = 12


def _augmented(J: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """J itself, or for torchjd's regularisation (reg_eps > 0) the matrix whose Gram is
    Γ/tr(Γ) + reg_eps·I (0 in place of Γ/tr(Γ) when tr(Γ) < norm_eps): [J/√tr(Γ), √reg_eps·I]."""
    if reg_eps == 0.0:
        return J
    trace = float((J * J).sum())
    scaled = torch.zeros_like(J) if trace < norm_eps else J / trace**0.5
    return torch.cat([scaled, reg_eps**0.5 * torch.eye(J.shape[0], dtype=J.dtype)], dim=1)


def project(J: Tensor, u: Tensor, *, norm_eps: float = 0.0, reg_eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """The projection of Jᵀu onto {x : J·x ≥ 0}: returns (x [N] in J's space, v [K] with x = Jᵀv).

    With reg_eps > 0 the projection is done for the augmented matrix of :func:`_augmented`
    (torchjd's regularised problem) and x = Jᵀv for the original J."""
    J = J.to(torch.float64)
    K = J.shape[0]
    if K > MAX_TASKS:
        raise ValueError(f"the reference enumerates 2^K faces; K = {K} is above {MAX_TASKS}")
    A = _augmented(J, norm_eps, reg_eps)
    u = u.to(torch.float64)
    d0 = A.T @ u
    norms = torch.linalg.vector_norm(A, dim=1)
    best: tuple[float, Tensor] | None = None
    for size in range(K + 1):
        for S in itertools.combinations(range(K), size):
            v = u.clone()
            x = d0
            if S:
                rows = A[list(S)]
                mu = torch.linalg.lstsq(rows.T, d0[:, None], driver="gelsd").solution[:, 0]
                x = d0 - rows.T @ mu
                v[list(S)] -= mu
            slack = A @ x
            if bool((slack >= -1e-12 * norms * float(torch.linalg.vector_norm(d0))).all()) and bool((v >= u - 1e-12 * float(u.abs().max())).all()):
                distance = float(torch.linalg.vector_norm(x - d0))
                if best is None or distance < best[0] * (1 - 1e-12):
                    best = (distance, v)
    assert best is not None  # S = all tasks gives x = 0, always feasible
    v = best[1]
    return J.T @ v, v
