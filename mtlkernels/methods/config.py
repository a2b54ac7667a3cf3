"""ConFIG — Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (Eq. 2).

Direction: with the unit gradients uᵢ = gᵢ/‖gᵢ‖ stacked as U [K, N] and the preference p (default
𝟙: the paper's equal cosines), the unit direction x̂ = x/‖x‖ of x = U⁺p (the least-norm x with
uᵢ·x = pᵢ for every task, or the least-squares one when none exists), and the length Σᵢ gᵢ·x̂ (the
sum of the projections of the gradients on it): d = (Σᵢ gᵢ·x̂)·x̂.

K-space solve: x = Uᵀβ with β = C⁺p, C = UUᵀ = N⁻¹ΓN⁻¹ the cosine matrix (N = diag(‖gᵢ‖)), so
‖x‖² = βᵀCβ and d = Σᵢ wᵢgᵢ with

    w = (nᵀCβ / βᵀCβ) · N⁻¹β.

C⁺ comes from C's eigendecomposition, keeping the eigenvalues above ``rank_rcond``·λ_max (the
pseudo-inverse's cut-off: ``torch.linalg.pinv(U)`` cut at singular values √rank_rcond·σ_max).
The C++ solve first tries the case where nothing is cut: C = LLᵀ (Cholesky) with
λ_min ≥ 1/‖L⁻¹‖²_F above 10·rank_rcond times the Gershgorin bound of λ_max proves every
eigenvalue kept, so C⁺p = C⁻¹p by two triangular solves; otherwise it decomposes. On that path
the residual's λ_max is a lower bound (power steps), so the certificate is never under-reported.
Degenerate inputs: a zero gradient has no unit vector (its row of U is 0, as torchjd's nan_to_num
makes it): weight 0, the others solved alone; rank-deficient U (duplicate, parallel or more tasks
than dimensions) is what the pseudo-inverse is for; p orthogonal to C's range (x = 0: e.g. two
opposite gradients with equal preference) gives w = 0, d = 0, as does J = 0.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._extension import extension
from ._preference import check_pref_length, check_pref_vector, cpp_preference, device_preference, preference
from .base import Solution, Weighting, cpp_constants


@dataclass(frozen=True)
class ConFIGConstants:
    """ConFIG's tolerances: read by the torch solve and handed to the C++ solve
    (``mtlkernels._C.ConFIGConstants``).

    Attributes:
        rank_rcond: eigenvalues of the cosine matrix C at or below this fraction of the largest
            are dropped from C⁺ (for a float64 Γ: C carries ~1e-16 rounding; :meth:`ConFIGWeighting.for_precision`
            scales it by u/u₆₄ for a Γ rounded to a coarser unit u).
        zero_rtol: ‖x‖² = βᵀCβ at or below this fraction of ‖p‖²/λ_max counts as x = 0 (p
            orthogonal to C's range): w = 0.
        consistency_rtol: Cβ = p within this fraction of ‖p‖ (the equal-cosine system has an
            exact solution): the ``equal_cosines`` diagnostic.
        max_sweeps: Jacobi sweeps of the C++ eigendecomposition (the torch solve uses ``torch.linalg.eigh``).
        jacobi_max_tasks: the C++ solve decomposes by cyclic Jacobi up to this many (nonzero)
            tasks, by Householder tridiagonalisation and implicit QL beyond (~9K³ flops against
            Jacobi's ~30K³; both backward stable).
    """

    rank_rcond: float = 1e-12
    zero_rtol: float = 1e-24
    consistency_rtol: float = 1e-8
    max_sweeps: int = 64
    jacobi_max_tasks: int = 8


#: the constants every ConFIG solve uses (for a float64 Γ)
CONSTANTS = ConFIGConstants()


def cosine_matrix(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(C of the nonzero gradients, their norms, the mask of nonzero gradients) from Γ."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    active = norms > 0
    n = norms[active]
    C = (gram[active][:, active] / n[:, None] / n[None, :]).clamp(-1.0, 1.0)
    C.fill_diagonal_(1.0)
    return C, n, active


class ConFIGWeighting(Weighting):
    """Γ → ConFIG's weights: the direction of equal cosine (or cosines ∝ pref_vector) to every unit
    task gradient, as long as the sum of the gradients' projections on it (module docstring).

    Args:
        pref_vector: the cosines' target p [K], ≥ 0 (default 𝟙, torchjd's default and the paper's
            equal weighting). Its scale does not matter.
        backend: "auto", "torch", "cpp" or "triton" (the on-device solve, K ≤ 64).

    Diagnostics: ``residual`` (the certificate: ‖C(Cβ − p)‖∞ / (λ_max·‖p‖∞), the normal equations
    of the least-squares x = U⁺p), ``equal_cosines`` (Cβ = p: the cosines are exactly ∝ p),
    ``rank`` (numerical rank of C), ``zero_tasks`` (zero gradients, weight 0), ``length``
    (Σᵢ gᵢ·x̂, the norm of d).
    """

    name = "config"
    constants = CONSTANTS

    def __init__(self, *, pref_vector: "Tensor | Sequence[float] | None" = None, backend: str = "auto") -> None:
        pref = check_pref_vector(pref_vector)
        super().__init__(backend=backend)
        self.pref_vector = pref

    def options(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "backend": self.backend}

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        check_pref_length(self.pref_vector, gram.shape[0])

    def for_precision(self, dtype: torch.dtype) -> "ConFIGWeighting":
        return self.with_constants(scaled_rank_rcond(self.constants, dtype))

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        K, k = gram.shape[0], self.constants
        p_all = preference(self.pref_vector, K, 1.0)
        C, n, active = cosine_matrix(gram)
        weights = torch.zeros(K, dtype=torch.float64)
        diagnostics: dict[str, Any] = {"residual": 0.0, "equal_cosines": False, "rank": 0, "length": 0.0}
        if bool(active.any()):
            p = p_all[active]
            eigenvalues, V = torch.linalg.eigh(C)
            top = float(eigenvalues.max())
            kept = eigenvalues > k.rank_rcond * top
            coefficients = V[:, kept].T @ p
            beta = V[:, kept] @ (coefficients / eigenvalues[kept])
            x_norm2 = float((coefficients**2 / eigenvalues[kept]).sum())  # βᵀCβ
            p_scale = float(p.abs().max())
            C_beta = C @ beta
            if x_norm2 > k.zero_rtol * float(p @ p) / top:
                length_times_norm = float(n @ C_beta)  # (Σᵢ gᵢ·x)
                weights[active] = (length_times_norm / x_norm2) * beta / n
                diagnostics["length"] = abs(length_times_norm) / math.sqrt(x_norm2)
            diagnostics["residual"] = float((C @ (C_beta - p)).abs().max()) / (top * p_scale)
            diagnostics["equal_cosines"] = float((C_beta - p).abs().max()) <= k.consistency_rtol * p_scale
            diagnostics["rank"] = int(kept.sum())
        diagnostics["zero_tasks"] = (~active).nonzero().flatten().tolist()
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        p = None if self.pref_vector is None else cpp_preference(self)  # None: the extension makes 𝟙
        return extension().config_solve(gram.numpy(), cpp_constants(self.constants), p)

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """The preference, when given, is copied to Γ's device once and kept there."""
        from ..kernels.solve_config import config_solve

        return Solution(*config_solve(gram, device_preference(self, gram), self.constants))


@functools.lru_cache(maxsize=None)
def scaled_rank_rcond(constants: Any, dtype: torch.dtype) -> Any:
    """``constants`` for a Γ of ``dtype``: unchanged for float64 (or finer); for a floating dtype of
    rounding unit u > u₆₄, ``rank_rcond`` scaled by u/u₆₄ (float32: 5.4e-4 from 1e-12). The same
    (constants, dtype) gives the same object."""
    ratio = torch.finfo(dtype).eps / torch.finfo(torch.float64).eps if dtype.is_floating_point else 1.0
    if ratio <= 1.0:
        return constants
    return replace(constants, rank_rcond=min(constants.rank_rcond * ratio, 0.5))
