"""Reference PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

For each task i: gᵢ' ← gᵢ, then for j in task i's visiting order, if gᵢ'·gⱼ < 0:
gᵢ' ← gᵢ' − (gᵢ'·gⱼ/‖gⱼ‖²)·gⱼ; the update is Σᵢ gᵢ' (or its mean). Full vectors, float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._result import ReferenceResult


def _visiting_orders(K: int, order: Tensor | None, generator: torch.Generator | None) -> list[list[int]]:
    """Row i: the tasks task i visits, in turn. Drawn rows follow the paper's Algorithm 1, a fresh
    uniform permutation of the *other* tasks per task: keys = torch.rand(K, K, float64) and task i
    visits j ≠ i by increasing keys[i, j] (the convention of mtlkernels.methods.pcgrad)."""
    if order is not None:
        return [[int(j) for j in row] for row in torch.as_tensor(order)]
    keys = torch.rand(K, K, generator=generator, dtype=torch.float64)
    return [sorted((j for j in range(K) if j != i), key=lambda j: float(keys[i, j])) for i in range(K)]


def pcgrad(
    J: Tensor,
    *,
    reduction: str = "sum",
    order: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ReferenceResult:
    """PCGrad on the full gradients J [K, N], computed in float64.

    Args:
        J: task gradients, one per row.
        reduction: "sum" (Σᵢ gᵢ', the authors' TF code, LibMTL, torchjd) or "mean" (Σᵢ gᵢ'/K).
        order: [K, K] integer tensor; row i is the order in which task i visits the tasks. Every
            listed j is visited with the same rule, i itself included (a no-op while gᵢ'·gᵢ ≥ 0,
            e.g. when i comes first; the authors' TF code and LibMTL visit i like any other task).
        generator: draws the orders when ``order`` is None (torch's global RNG when both are None).

    Returns:
        direction d [N]; weights w [K] with d = wᵀJ, tracked alongside the vectors (a projection
        subtracts α·gⱼ from gᵢ', so the coefficient of gⱼ drops by α); info: "projections" (how
        many were made) and "orthogonality_residual" (max over projections of |gᵢ'·gⱼ| right after
        it, over ‖gᵢ'‖·‖gⱼ‖ right before it: zero up to rounding).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction={reduction!r} is not supported; choose 'sum' or 'mean'")
    J = J.to(torch.float64)
    K = J.shape[0]
    rows = _visiting_orders(K, order, generator)

    projected = J.clone()  # row i: gᵢ'
    coefficients = torch.eye(K, dtype=torch.float64)  # row i: cᵢ with gᵢ' = cᵢᵀJ
    projections = 0
    worst_residual = 0.0
    for i in range(K):
        for j in rows[i]:
            g_j = J[j]
            squared_norm = torch.dot(g_j, g_j)
            inner = torch.dot(projected[i], g_j)
            if inner < 0 and squared_norm > 0:
                step = inner / squared_norm
                scale = projected[i].norm() * g_j.norm()
                projected[i] -= step * g_j
                coefficients[i, j] -= step
                projections += 1
                after = torch.dot(projected[i], g_j).abs()
                worst_residual = max(worst_residual, float(after / scale))

    direction = projected.sum(dim=0)
    weights = coefficients.sum(dim=0)
    if reduction == "mean":
        direction, weights = direction / K, weights / K
    return ReferenceResult(
        direction, weights, {"projections": projections, "orthogonality_residual": worst_residual}
    )
