"""Reference Aligned-MTL — Senushkin et al., "Independent Component Alignment for Multi-Task
Learning", CVPR 2023 (Algorithm 1).

On the full J, as the paper writes it: the thin SVD J = UΣVᵀ, the singular values at or below
√rank_rcond·σ_max dropped (rank deficiency; the library cuts Γ's eigenvalues λ = σ² at
rank_rcond·λ_max), the aligned gradients Ĵ = σ·U_rV_rᵀ with σ the smallest kept singular value
("min"), the lower median ("median") or √mean σᵢ² ("rmse"), and d = Ĵᵀp (p default 𝟙/K). The
weights w with d = Jᵀw are w = σ·U_r·Σ_r⁻¹·U_rᵀ·p; components U_rᵀp at rounding level (≤ 1e-14·‖p‖)
count as 0, as in the library.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._result import ReferenceResult

#: the cut on J's singular values, relative to the largest: √ of the library's 1e-12 on λ
SINGULAR_RCOND = 1e-6
#: a component uₖᵀp of the preference at or below this fraction of ‖p‖ is rounding: 0 (the library's
#: zero_rtol)
ZERO_RTOL = 1e-14


def aligned_mtl(
    J: Tensor, *, pref_vector: "Tensor | Sequence[float] | None" = None, scale_mode: str = "min"
) -> ReferenceResult:
    """Aligned-MTL on the task gradients J [K, N] (computed in float64); ``info``: ``rank``, ``scale`` σ."""
    J = J.to(torch.float64)
    K, N = J.shape
    p = torch.full((K,), 1.0 / K, dtype=torch.float64) if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
    U, singular, Vt = torch.linalg.svd(J, full_matrices=False)
    top = float(singular.max())
    if top == 0.0:
        return ReferenceResult(torch.zeros(N, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), {"rank": 0, "scale": 0.0})
    kept = singular > SINGULAR_RCOND * top
    U, singular, Vt = U[:, kept], singular[kept], Vt[kept]
    ascending = singular.sort().values
    if scale_mode == "min":
        sigma = float(ascending[0])
    elif scale_mode == "median":
        sigma = float(ascending[(ascending.numel() - 1) // 2])
    elif scale_mode == "rmse":
        sigma = float((singular**2).mean().sqrt())
    else:
        raise ValueError(f"scale_mode={scale_mode!r} is not one of 'min', 'median', 'rmse'")
    aligned = sigma * U @ Vt  # Ĵ [K, N]: orthogonal rows of norm σ
    components = U.T @ p
    at_rounding = components.abs() <= ZERO_RTOL * float(torch.linalg.vector_norm(p))
    components[at_rounding] = 0.0
    weights = sigma * U @ (components / singular)
    direction = (U @ components) @ aligned  # p's part in the range of U, through Ĵ
    return ReferenceResult(direction, weights, {"rank": int(kept.sum()), "scale": sigma})
