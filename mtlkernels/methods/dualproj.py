"""DualProj's K-space solve (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
2024; the projection of Lopez-Paz & Ranzato's GEM, NeurIPS 2017, Eq. 11).

The preference combination d₀ = Jᵀp (default p = 1/K: the mean gradient) is projected onto the
dual cone {x : J·x ≥ 0} of the task gradients:

    d = π(Jᵀp) = Jᵀw,   w = argmin_{w ≥ p} wᵀΓw,

solved exactly by :func:`mtlkernels.methods.dual_cone.project` (Lawson–Hanson active set).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._extension import extension
from .base import Solution, Weighting, cpp_constants
from .dual_cone import CONSTANTS, check_eps, check_pref_vector, kkt_residual, preferences, project, regularized


class DualProjWeighting(Weighting):
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
        p = preferences(self.pref_vector, G.shape[0], self.name)
        v, steps = project(G, p, self.constants)
        diagnostics = {
            "kkt_residual": kkt_residual(G, p, v),
            "iterations": steps,
            "active_tasks": (v > p).nonzero().flatten().tolist(),
        }
        return Solution(v, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        G = regularized(gram, self.norm_eps, self.reg_eps).contiguous()
        p = preferences(self.pref_vector, G.shape[0], self.name)
        return extension().dualproj_solve(G.numpy(), p.numpy(), cpp_constants(self.constants))

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """One program, no host sync; the preferences are copied to Γ's device once."""
        from ..kernels.solve_dual_cone import dualproj_solve

        G = regularized(gram.to(torch.float64), self.norm_eps, self.reg_eps) if self.reg_eps > 0 else gram
        out = dualproj_solve(G, self._pref_on(gram), self.constants)
        return Solution(out.pop("weights"), out)

    def _pref_on(self, gram: Tensor) -> Tensor:
        """The K preferences on Γ's device (cached)."""
        cached = self._pref_device
        if cached is None or cached.device != gram.device or cached.numel() != gram.shape[0]:
            cached = self._pref_device = preferences(self.pref_vector, gram.shape[0], self.name).to(gram.device)
        return cached
