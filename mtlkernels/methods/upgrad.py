"""UPGrad's K-space solve (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

Each task gradient gᵢ is projected onto the dual cone {x : J·x ≥ 0} of all task gradients, and
the projections are combined with the preferences p (default 1/K):

    d = Σᵢ pᵢ·π(gᵢ) = Jᵀw,   w = Σᵢ pᵢ·vᵢ,   vᵢ = argmin_{v ≥ eᵢ} vᵀΓv

(the paper's Proposition 1: π(Jᵀu) = Jᵀv with v = argmin_{v ≥ u} vᵀΓv). The K quadratic programs
are solved exactly by :func:`mtlkernels.methods.dual_cone.project` (Lawson–Hanson active set). Every gᵢ·d ≥ 0: d conflicts with no task.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Solution
from .dual_cone import DualConeWeighting, kkt_residual, preferences, project, regularized


class UPGradWeighting(DualConeWeighting):
    """UPGrad: the preference-weighted sum of each task gradient's projection onto the dual cone.

    Args:
        pref_vector: K non-negative preferences p (default: 1/K each, torchjd's default); a
            wrong length, a negative or a non-finite entry raises a ValueError naming it.
        reg_eps: 0 (default): the exact projection on Γ. torchjd's default 1e-4 solves on
            Γ/tr(Γ) + reg_eps·I instead (its quadprog needs a positive definite matrix), which moves
            the weights by O(reg_eps); pass reg_eps=1e-4, norm_eps=1e-4 to match torchjd.
        norm_eps: with reg_eps > 0, a Γ of trace below this is taken as 0 (torchjd's norm_eps).
        backend: "auto", "torch", "cpp" or "triton" (one on-device program, K ≤ 64).

    Diagnostics: "kkt_residual" (the largest over the K projections, see
    :func:`mtlkernels.methods.dual_cone.kkt_residual`; ~1e-16 at the exact optimum),
    "iterations" (active-set steps over all K projections).

    Constants: :data:`mtlkernels.methods.dual_cone.CONSTANTS`, shared with DualProj.

    Variant: the paper's UPGrad (torchjd's ``UPGrad``) with the exact projection; a rank-deficient
    Γ gives the unique projection d, with weights that move the fewest tasks (see
    :mod:`mtlkernels.methods.dual_cone`).
    """

    name = "upgrad"

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        G = regularized((gram + gram.T) / 2, self.norm_eps, self.reg_eps)
        K = G.shape[0]
        p = preferences(self.pref_vector, K, self.name)
        weights = torch.zeros(K, dtype=torch.float64)
        residual, steps = 0.0, 0
        for i in range(K):
            if p[i] == 0:
                continue
            u = torch.zeros(K, dtype=torch.float64)
            u[i] = 1.0
            v, taken = project(G, u, self.constants)
            weights += p[i] * v
            residual = max(residual, kkt_residual(G, u, v))
            steps += taken
        return Solution(weights, {"kkt_residual": residual, "iterations": steps})
