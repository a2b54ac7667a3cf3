"""Reference projection onto the dual cone {x : J·x ≥ 0} of the task gradients, on full vectors
(Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Eq. 3).

The projection x* of d₀ onto the polyhedral cone lies on one of its faces: with S the constraints
active at x*, the KKT conditions say x* − d₀ is a combination of the gᵢ, i ∈ S, and gᵢ·x* = 0 there,
so x* is the projection of d₀ onto the null space of J_S. Every subset S is tried (the projection
onto the null space by least squares in N-space), and the candidate in the cone nearest d₀ is x*:
exponential in K, exact, and independent of the K-space solve. The weights are the multipliers
of the smallest face giving x* whose multipliers are ≥ 0 (v ≥ u). Float64, torch only.
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
    size_d0 = float(torch.linalg.vector_norm(d0))
    candidates: list[tuple[float, Tensor, Tensor]] = []  # (distance, x, v) of the points in the cone
    for size in range(K + 1):
        for S in itertools.combinations(range(K), size):
            v = u.clone()
            x = d0
            S = [i for i in S if norms[i] > 0]  # a zero gradient constrains nothing
            if S:
                unit_rows = A[S] / norms[S, None]  # unit rows: norms 1e-20 and 1e20 alike
                mu = torch.linalg.lstsq(unit_rows.T, d0[:, None], driver="gelsd").solution[:, 0]
                x = d0 - unit_rows.T @ mu
                v[S] -= mu / norms[S]
            if bool((A @ x >= -1e-12 * norms * size_d0).all()):
                candidates.append((float(torch.linalg.vector_norm(x - d0)), x, v))
    # the nearest point of the cone is x*; among the faces giving x* (the smallest first), one
    # whose multipliers are ≥ 0 (v ≥ u) gives the weights
    _, nearest, _ = min(candidates, key=lambda c: c[0])
    same = [c for c in candidates if float(torch.linalg.vector_norm(c[1] - nearest)) <= 1e-10 * size_d0]
    u_scale = float(u.abs().max())
    valid = [c for c in same if bool((c[2] >= u - 1e-10 * u_scale).all())]
    v = (valid or same)[0][2]
    return J.T @ v, v
