"""DualProj's K-space solve (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
2024; the projection of Lopez-Paz & Ranzato's GEM, NeurIPS 2017, Eq. 11).

The preference combination d₀ = Jᵀp (default p = 1/K: the mean gradient) is projected onto the
dual cone {x : J·x ≥ 0} of the task gradients:

    d = π(Jᵀp) = Jᵀw,   w = argmin_{w ≥ p} wᵀΓw,

solved exactly by :func:`mtlkernels.methods.dual_cone.project` (Lawson–Hanson active set).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Solution
from .dual_cone import DualConeWeighting, kkt_residual, preferences, project, regularized


class DualProjWeighting(DualConeWeighting):
    """DualProj: the projection of the preference combination of the gradients onto the dual cone.

    Args:
        pref_vector: K non-negative preferences p (default: 1/K each, torchjd's default); a
            wrong length, a negative or a non-finite entry raises a ValueError naming it.
        reg_eps, norm_eps: as :class:`~mtlkernels.methods.upgrad.UPGradWeighting` (0: exact;
            reg_eps=1e-4, norm_eps=1e-4 match torchjd's regularised solve).
        backend: "auto", "torch", "cpp" or "triton" (one on-device program, K ≤ 64).

    Diagnostics: "kkt_residual" (see :func:`mtlkernels.methods.dual_cone.kkt_residual`),
    "iterations" (active-set steps), "active_tasks" (the tasks with wᵢ > pᵢ, whose constraint
    gᵢ·d ≥ 0 holds with equality: d is orthogonal to them).

    Constants: :data:`mtlkernels.methods.dual_cone.CONSTANTS`, shared with UPGrad.

    Variant: the paper's DualProj (torchjd's ``DualProj``) with the exact projection.
    """

    name = "dualproj"

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        G = regularized((gram + gram.T) / 2, self.norm_eps, self.reg_eps)
        p = preferences(self.pref_vector, G.shape[0], self.name)
        v, steps = project(G, p, self.constants)
        diagnostics = {
            "kkt_residual": kkt_residual(G, p, v),
            "iterations": steps,
            "active_tasks": (v > p).nonzero().flatten().tolist(),
        }
        return Solution(v, diagnostics)
