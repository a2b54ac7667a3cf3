"""UPGrad's K-space solve (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

Each task gradient gᵢ is projected onto the dual cone {x : J·x ≥ 0} of all task gradients, and
the projections are combined with the preferences p (default 1/K):

    d = Σᵢ pᵢ·π(gᵢ) = Jᵀw,   w = Σᵢ pᵢ·vᵢ,   vᵢ = argmin_{v ≥ eᵢ} vᵀΓv

(the paper's Proposition 1: π(Jᵀu) = Jᵀv with v = argmin_{v ≥ u} vᵀΓv). The K quadratic programs
are solved exactly by :func:`mtlkernels.methods.dual_cone.project` (Lawson–Hanson active set). Every gᵢ·d ≥ 0: d conflicts with no task.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._extension import extension
from .base import Solution, Weighting, cpp_constants
from .dual_cone import CONSTANTS, check_eps, check_pref_vector, kkt_residual, preferences, project, regularized


class UPGradWeighting(Weighting):
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
    constants = CONSTANTS

    def __init__(self, *, pref_vector: Any = None, reg_eps: float = 0.0, norm_eps: float = 0.0, backend: str = "auto") -> None:
        super().__init__(backend=backend)
        self.pref_vector = check_pref_vector(pref_vector)
        self.reg_eps = check_eps("reg_eps", reg_eps)
        self.norm_eps = check_eps("norm_eps", norm_eps)
        self._pref_device: Tensor | None = None  # a cache of the preferences on the device, not state

    def options(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "reg_eps": self.reg_eps, "norm_eps": self.norm_eps, "backend": self.backend}

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        preferences(self.pref_vector, gram.shape[0], self.name)

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

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        G = regularized(gram, self.norm_eps, self.reg_eps).contiguous()
        p = preferences(self.pref_vector, G.shape[0], self.name)
        return extension().upgrad_solve(G.numpy(), p.numpy(), cpp_constants(self.constants))

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """One program, no host sync; the preferences are copied to Γ's device once."""
        from ..kernels.solve_dual_cone import upgrad_solve

        G = regularized(gram.to(torch.float64), self.norm_eps, self.reg_eps) if self.reg_eps > 0 else gram
        out = upgrad_solve(G, self._pref_on(gram), self.constants)
        return Solution(out.pop("weights"), out)

    def _pref_on(self, gram: Tensor) -> Tensor:
        """The K preferences on Γ's device (cached)."""
        cached = self._pref_device
        if cached is None or cached.device != gram.device or cached.numel() != gram.shape[0]:
            cached = self._pref_device = preferences(self.pref_vector, gram.shape[0], self.name).to(gram.device)
        return cached
