"""Reference GradVac (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine", ICLR 2021, Algorithm 1).

For each task i: gᵢ' ← gᵢ; for j ≠ i in task i's visiting order, φ = gᵢ'·gⱼ/(‖gᵢ'‖‖gⱼ‖ + eps); if
φ < φ̂ᵢⱼ: gᵢ' ← gᵢ' + ‖gᵢ'‖(φ̂ᵢⱼ√(1−φ²) − φ√(1−φ̂ᵢⱼ²))/(‖gⱼ‖√(1−φ̂ᵢⱼ²) + eps)·gⱼ; then
φ̂ᵢⱼ ← (1−β)φ̂ᵢⱼ + βφ. The update is Σᵢ gᵢ'. Full vectors, float64.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._result import ReferenceResult
from .pcgrad import _visiting_orders


def gradvac(
    J: Tensor,
    *,
    beta: float = 0.5,
    eps: float = 0.0,
    target_update: str = "always",
    order: Tensor | None = None,
    generator: torch.Generator | None = None,
    targets: Tensor | None = None,
) -> ReferenceResult:
    """GradVac on the full gradients J [K, N], computed in float64.

    Args:
        J: task gradients, one per row.
        beta: the EMA rate of the targets.
        eps: added to both denominators (0: the paper's formulas; torchjd's 1e-8).
        target_update: "always" (the paper, torchjd) or "corrected" (LibMTL: only corrected pairs).
        order: [K, K] visiting orders (row i: task i's; i itself is skipped).
        generator: draws the orders when ``order`` is None.
        targets: the EMA cosine targets φ̂ [K, K] before this step (default zeros: the first step).

    Returns:
        direction d [N]; weights w with d = wᵀJ (tracked alongside the vectors); info: "targets"
        (φ̂ after this step), "corrections" (how many were made).
    """
    J = J.to(torch.float64)
    K = J.shape[0]
    rows = _visiting_orders(K, order, generator)
    phi_hat = torch.zeros(K, K, dtype=torch.float64) if targets is None else targets.to(torch.float64).clone()
    corrected_gradients = J.clone()
    coefficients = torch.eye(K, dtype=torch.float64)
    corrections = 0
    for i in range(K):
        for j in rows[i]:
            if j == i:
                continue
            g_i, g_j = corrected_gradients[i], J[j]
            norm_i, norm_j = float(g_i.norm()), float(g_j.norm())
            denominator = norm_i * norm_j + eps
            phi = float(g_i @ g_j) / denominator if denominator > 0 else 0.0
            target = float(phi_hat[i, j])
            corrected = False
            if phi < target:
                bound = norm_j * math.sqrt(max(1 - target**2, 0.0)) + eps
                if bound > 0:
                    step = norm_i * (target * math.sqrt(max(1 - phi**2, 0.0)) - phi * math.sqrt(max(1 - target**2, 0.0))) / bound
                    corrected_gradients[i] += step * g_j
                    coefficients[i, j] += step
                    corrections += 1
                    corrected = True
            if target_update == "always" or corrected:
                phi_hat[i, j] = (1 - beta) * target + beta * phi
    return ReferenceResult(
        corrected_gradients.sum(dim=0), coefficients.sum(dim=0), {"targets": phi_hat, "corrections": corrections}
    )
