"""Reference ConFIG — Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics
Informed Neural Networks", ICLR 2025 (Eq. 2).

On the full J, as the paper writes it: the unit gradients uᵢ = gᵢ/‖gᵢ‖ as the rows of U (a zero
gradient gives a zero row), the direction x = U⁺p by the pseudo-inverse of U (p the preference,
default 𝟙), its unit vector x̂, and d = (Σᵢ gᵢ·x̂)·x̂. The weights follow from x = Σᵢ βᵢuᵢ with
β = (UUᵀ)⁺p, computed by least squares on U's SVD.

The pseudo-inverse drops singular values of U at or below √rank_rcond·σ_max, the same cut as the
library's eigenvalue cut on the cosine matrix UUᵀ (σ² = λ); x = 0 (p orthogonal to the kept
directions) gives d = 0 and w = 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._result import ReferenceResult

#: the cut on the singular values of U, relative to the largest: √ of the library's 1e-12 on λ
SINGULAR_RCOND = 1e-6


def config(J: Tensor, *, pref_vector: "Tensor | Sequence[float] | None" = None) -> ReferenceResult:
    """ConFIG on the task gradients J [K, N] (computed in float64); ``info``: ``rank`` of U and
    ``length`` Σᵢ gᵢ·x̂."""
    J = J.to(torch.float64)
    K = J.shape[0]
    p = torch.ones(K, dtype=torch.float64) if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
    norms = torch.linalg.vector_norm(J, dim=1)
    U = torch.where(norms[:, None] > 0, J / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None], torch.zeros_like(J))
    left, singular, right_t = torch.linalg.svd(U, full_matrices=False)
    kept = singular > SINGULAR_RCOND * float(singular.max()) if float(singular.max()) > 0 else singular > 0
    coefficients = left[:, kept].T @ p
    x = right_t[kept].T @ (coefficients / singular[kept])  # U⁺p
    beta = left[:, kept] @ (coefficients / singular[kept] ** 2)  # (UUᵀ)⁺p, x = Uᵀβ
    x_norm = float(torch.linalg.vector_norm(x))
    info = {"rank": int(kept.sum()), "length": 0.0}
    if x_norm <= math.sqrt(1e-24 * float(p @ p)) / max(float(singular.max()), 1e-300):
        return ReferenceResult(torch.zeros(J.shape[1], dtype=torch.float64), torch.zeros(K, dtype=torch.float64), info)
    unit_x = x / x_norm
    length = float((J @ unit_x).sum())
    info["length"] = abs(length)
    safe_norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    weights = torch.where(norms > 0, length / x_norm * beta / safe_norms, torch.zeros_like(beta))
    return ReferenceResult(length * unit_x, weights, info)
