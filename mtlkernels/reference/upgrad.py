"""Reference UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

d = Σᵢ pᵢ·π(gᵢ), π the projection onto the dual cone {x : J·x ≥ 0}, computed face by face on the
full vectors (:mod:`mtlkernels.reference.dual_cone`). Float64.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._result import ReferenceResult
from .dual_cone import project


def upgrad(J: Tensor, *, pref_vector: Any = None, norm_eps: float = 0.0, reg_eps: float = 0.0) -> ReferenceResult:
    """UPGrad on the full gradients J [K, N] (K ≤ 12), computed in float64.

    Args:
        J: task gradients, one per row.
        pref_vector: the K preferences p (default 1/K each).
        norm_eps, reg_eps: torchjd's regularisation (the projection for the Gram Γ/tr(Γ) + reg_eps·I);
            0 (default): the exact projection.

    Returns:
        direction d [N]; weights w = Σᵢ pᵢvᵢ with π(gᵢ) = Jᵀvᵢ (unique when the gradients are
        linearly independent); info: "projections" (the K projected gradients [K, N]).
    """
    J = J.to(torch.float64)
    K = J.shape[0]
    p = torch.full((K,), 1.0 / K, dtype=torch.float64) if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
    projections, weights = [], torch.zeros(K, dtype=torch.float64)
    for i in range(K):
        e = torch.zeros(K, dtype=torch.float64)
        e[i] = 1.0
        x, v = project(J, e, norm_eps=norm_eps, reg_eps=reg_eps)
        projections.append(x)
        weights += p[i] * v
    projected = torch.stack(projections)
    return ReferenceResult(p @ projected, weights, {"projections": projected})
