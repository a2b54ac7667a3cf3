"""Reference DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
the projection of GEM, Lopez-Paz & Ranzato, NeurIPS 2017, Eq. 11).

d = π(Jᵀp), π the projection onto the dual cone {x : J·x ≥ 0}, computed face by face on the full
vectors (:mod:`mtlkernels.reference.dual_cone`). Float64.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._result import ReferenceResult
from .dual_cone import project


def dualproj(J: Tensor, *, pref_vector: Any = None, norm_eps: float = 0.0, reg_eps: float = 0.0) -> ReferenceResult:
    """DualProj on the full gradients J [K, N] (K ≤ 12), computed in float64.

    Args:
        J: task gradients, one per row.
        pref_vector: the K preferences p (default 1/K each: the mean gradient is projected).
        norm_eps, reg_eps: torchjd's regularisation, as :func:`mtlkernels.reference.upgrad`.

    Returns:
        direction d [N]; weights w with d = Jᵀw (unique when the gradients are linearly
        independent); info: "active_tasks" (the i with wᵢ > pᵢ, where gᵢ·d = 0).
    """
    J = J.to(torch.float64)
    K = J.shape[0]
    p = torch.full((K,), 1.0 / K, dtype=torch.float64) if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
    x, v = project(J, p, norm_eps=norm_eps, reg_eps=reg_eps)
    return ReferenceResult(x, v, {"active_tasks": (v > p).nonzero().flatten().tolist()})
