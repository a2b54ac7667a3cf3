"""Aligned-MTL — Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023 (Algorithm 1).

The task gradients J = UΣVᵀ (thin SVD, rank r) are replaced by the aligned gradients
Ĵ = σ·UVᵀ, whose rows are orthogonal with equal norm σ (the condition number of Ĵ is 1), and the
direction is d = Ĵᵀp for the preference p (default 𝟙/K). σ is one singular value of J, by
``scale_mode``: "min" (the smallest kept σᵢ, the paper's choice), "median" (the lower median of the
kept σᵢ, as ``torch.median``), "rmse" (√mean σᵢ², the root mean square).

K-space solve: Γ = JJᵀ = U·diag(λ)·Uᵀ with λᵢ = σᵢ², and Ĵ = B·J with B = σ·U·diag(λ^(−½))·Uᵀ over
the kept components, so d = Σᵢ wᵢgᵢ with w = B·p (components of p along U at rounding level,
``zero_rtol``, count as 0). Components with λᵢ ≤ ``rank_rcond``·λ_max count as
zero (rank deficiency: duplicate, parallel or more tasks than dimensions); a zero gradient gets
weight 0 (its task is a null direction of Γ), and J = 0 gives w = 0.

Certificate: ``residual`` = max |B·Γ·B − σ²·P| / σ², P the projector on the kept components: the
aligned gradients' Gram ĴĴᵀ = σ²·P up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option
from .._extension import extension
from ._preference import check_pref_length, check_pref_vector, cpp_preference, device_preference, preference
from .base import Solution, Weighting, cpp_constants
from .config import scaled_rank_rcond

SCALE_MODES = ("min", "median", "rmse")


@dataclass(frozen=True)
class AlignedMTLConstants:
    """Aligned-MTL's tolerance and sweep cap: read by the torch solve and handed to the C++ solve
    (``mtlkernels._C.AlignedMTLConstants``).

    Attributes:
        rank_rcond: eigenvalues of Γ at or below this fraction of the largest count as zero (for a
            float64 Γ; :meth:`AlignedMTLWeighting.for_precision` scales it by u/u₆₄ for a Γ rounded
            to a coarser unit u). The authors and torchjd cut at K·eps·λ_max of Γ's dtype.
        zero_rtol: a component vₖᵀp of the preference along a kept eigenvector at or below this
            fraction of ‖p‖ counts as 0 (it is rounding: e.g. p = 𝟙/2 on two opposite gradients,
            whose only component is (1, −1)/√2, gives w = 0 exactly).
        max_sweeps: Jacobi sweeps of the C++ eigendecomposition (the torch solve uses ``torch.linalg.eigh``).
        jacobi_max_tasks: the C++ solve decomposes by cyclic Jacobi up to this many (nonzero)
            tasks, by Householder tridiagonalisation and implicit QL beyond (~9K³ flops against
            Jacobi's ~30K³; both backward stable).
    """

    rank_rcond: float = 1e-12
    zero_rtol: float = 1e-14
    max_sweeps: int = 64
    jacobi_max_tasks: int = 8


#: the constants every Aligned-MTL solve uses (for a float64 Γ)
CONSTANTS = AlignedMTLConstants()


def chosen_eigenvalue(eigenvalues: Tensor, scale_mode: str) -> float:
    """σ² of ``scale_mode`` from the kept eigenvalues λ = σ² of Γ (non-empty)."""
    if scale_mode == "min":
        return float(eigenvalues.min())
    if scale_mode == "median":
        return float(eigenvalues.sort().values[(eigenvalues.numel() - 1) // 2])  # the lower median
    return float(eigenvalues.mean())


class AlignedMTLWeighting(Weighting):
    """Γ → Aligned-MTL's weights w = σ·U·diag(λ^(−½))·Uᵀ·p (module docstring).

    Args:
        pref_vector: p [K], ≥ 0 (default 𝟙/K: torchjd's default; LibMTL sums, p = 𝟙).
        scale_mode: "min" (default), "median" or "rmse" (module docstring).
        backend: "auto", "torch", "cpp" or "triton" (the on-device solve, K ≤ 64).

    Diagnostics: ``residual`` (the certificate), ``rank`` (kept components), ``scale`` (σ, the
    chosen singular value), ``zero_tasks`` (zero gradients, weight 0).
    """

    name = "aligned_mtl"
    constants = CONSTANTS

    def __init__(
        self, *, pref_vector: "Tensor | Sequence[float] | None" = None, scale_mode: str = "min", backend: str = "auto"
    ) -> None:
        pref = check_pref_vector(pref_vector)
        check_option("scale_mode", scale_mode, SCALE_MODES)
        super().__init__(backend=backend)
        self.pref_vector = pref
        self.scale_mode = scale_mode

    def options(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "scale_mode": self.scale_mode, "backend": self.backend}

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        check_pref_length(self.pref_vector, gram.shape[0])

    def for_precision(self, dtype: torch.dtype) -> "AlignedMTLWeighting":
        return self.with_constants(scaled_rank_rcond(self.constants, dtype))

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        K = gram.shape[0]
        p = preference(self.pref_vector, K, 1.0 / K)
        norms2 = gram.diagonal()
        active = norms2 > 0
        weights = torch.zeros(K, dtype=torch.float64)
        diagnostics: dict[str, Any] = {"residual": 0.0, "rank": 0, "scale": 0.0}
        if bool(active.any()):
            G = gram[active][:, active]
            top = float(norms2.max())  # Γ's scale, so that 1e±40 entries stay in range
            eigenvalues, V = torch.linalg.eigh(G / top)
            kept = eigenvalues > self.constants.rank_rcond * float(eigenvalues.max())
            lam, V = eigenvalues[kept], V[:, kept]
            chosen = chosen_eigenvalue(lam, self.scale_mode)
            B = V @ torch.diag((chosen / lam).sqrt()) @ V.T
            components = V.T @ p[active]
            components[components.abs() <= self.constants.zero_rtol * float(torch.linalg.vector_norm(p[active]))] = 0.0
            weights[active] = V @ ((chosen / lam).sqrt() * components)
            aligned_gram = B @ (G / top) @ B
            diagnostics = {
                "residual": float((aligned_gram - chosen * (V @ V.T)).abs().max()) / chosen,
                "rank": int(kept.sum()),
                "scale": (chosen * top) ** 0.5,
            }
        diagnostics["zero_tasks"] = (~active).nonzero().flatten().tolist()
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        p = None if self.pref_vector is None else cpp_preference(self)  # None: the extension makes 𝟙/K
        return extension().aligned_mtl_solve(gram.numpy(), cpp_constants(self.constants), p, self.scale_mode)

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """The preference, when given, is copied to Γ's device once and kept there."""
        from ..kernels.solve_aligned_mtl import aligned_mtl_solve

        return Solution(*aligned_mtl_solve(gram, device_preference(self, gram), self.scale_mode, self.constants))
