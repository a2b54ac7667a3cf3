"""IMTL-G's K-space solve (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

With nᵢ = √Γᵢᵢ and the cosine matrix C = N⁻¹ΓN⁻¹: β = C⁻¹𝟙, w = N⁻¹β / Σ(N⁻¹β). Then d = Σwᵢgᵢ has
the same projection d·uᵢ = (Γw)ᵢ/nᵢ on every unit gradient uᵢ = gᵢ/nᵢ, and Σw = 1 — the paper's
α₂..K = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂..K, without forming D or U. Working on C instead of Γ keeps
gradients whose norms differ by 40 orders of magnitude exact.

Degenerate Γ (documented, never NaN):
- a zero gradient (Γᵢᵢ = 0) gets weight 0 and the solve runs on the others; all zero → w = 𝟙/K;
- C singular or Σ(N⁻¹β) ≈ 0 (``fallback=True``): among all w with Σw = 1 whose direction has
  equal projections (C·N·w ∈ span 𝟙), the one of least ‖N·w‖. Where that w is the only one
  (``unique=True``: the paper's D·Uᵀ is invertible, e.g. two opposite gradients: w = (½, ½),
  d = 0) it is the paper's answer; otherwise (duplicate or parallel gradients, more tasks than
  dimensions) it is this library's choice;
- no such w (the equal-projection direction's weights sum to 0): w = 0 (``degenerate=True``).

"Singular" is judged at the precision of Γ's dtype (:func:`tolerances`): the ``pivot_tol`` and
``rank_rcond`` of :class:`IMTLConstants` are for a float64 Γ; a Γ rounded to a coarser unit u
(float32: the Gram of a CUDA accumulation) carries cosines whose zero eigenvalues come out at ~u,
so it gets pivot_tol·u/u₆₄ and rank_rcond·√(u/u₆₄) (float32: 5.4e-6 and 2.3e-4) — otherwise a
singular float32 Γ passes the closed form as an invertible one and is reported ``unique``. A
float64 Γ holding values rounded to float32 is judged as float64.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._extension import extension
from .base import Solution, Weighting, cpp_constants


@dataclass(frozen=True)
class IMTLConstants:
    """IMTL-G's tolerances and sweep cap: read by the torch solve, handed to the C++ solve
    (``mtlkernels._C.IMTLConstants``) and to the Triton kernel (as constexprs).

    Attributes:
        pivot_tol: Cholesky pivots of C below this (C's diagonal is 1) send the solve to the
            fallback (for a float64 Γ; :func:`tolerances` scales it to a coarser Γ).
        sum_rtol: |Σγ| below this fraction of Σ|γ| (γ = N⁻¹β) means the weights cannot be scaled
            to sum 1.
        rank_rcond: eigenvalues of C below this fraction of the largest count as zero in the
            fallback (C's entries carry ~1e-16 rounding from a float64 Γ, so smaller eigenvalues
            hold little information; :func:`tolerances` scales it to a coarser Γ).
        consistency_rtol: 𝟙 counts as in C's range when its component in C's null space is below
            this fraction of ‖𝟙‖.
        max_sweeps: Jacobi sweeps of the fallback's eigen-decomposition (C++ and Triton; the
            torch solve uses ``torch.linalg.eigh``).
    """

    pivot_tol: float = 1e-14
    sum_rtol: float = 1e-12
    rank_rcond: float = 1e-8
    consistency_rtol: float = 1e-3
    max_sweeps: int = 64


#: the constants every IMTL-G solve uses
CONSTANTS = IMTLConstants()


def tolerances(dtype: torch.dtype, constants: IMTLConstants = CONSTANTS) -> IMTLConstants:
    """``constants`` for a Gram matrix of ``dtype``: unchanged for float64 (and any dtype at least
    as fine); for a floating dtype of rounding unit u > u₆₄, ``pivot_tol`` scaled by u/u₆₄ and
    ``rank_rcond`` by √(u/u₆₄). The one place the precision-dependent tolerances are derived; every
    backend solves with its result. The same (constants, dtype) gives the same object."""
    return _tolerances(constants, dtype)


@functools.lru_cache(maxsize=None)
def _tolerances(constants: IMTLConstants, dtype: torch.dtype) -> IMTLConstants:
    ratio = torch.finfo(dtype).eps / torch.finfo(torch.float64).eps if dtype.is_floating_point else 1.0
    if ratio <= 1.0:
        return constants
    return replace(constants, pivot_tol=constants.pivot_tol * ratio, rank_rcond=constants.rank_rcond * math.sqrt(ratio))


def equal_projection_residual(gram: Tensor, weights: Tensor) -> float:
    """IMTL-G's certificate: how far d = Σwⱼgⱼ is from equal projections pᵢ = d·uᵢ on the nonzero gᵢ.

    max_i |pᵢ − mean(p)| / max_i Σⱼ |Γᵢⱼ·wⱼ|/nᵢ — a backward error: 0 for exact weights, about the
    rounding unit for a stable solve, scale-free, and meaningful also when d = 0.
    """
    gram = gram.detach().to(device="cpu", dtype=torch.float64)
    weights = weights.detach().to(device="cpu", dtype=torch.float64)
    norms = gram.diagonal().clamp_min(0).sqrt()
    active = norms > 0
    if not bool(active.any()):
        return 0.0
    n = norms[active]
    cosine = gram[active][:, active] / n[:, None] / n[None, :]
    scaled = n * weights[active]  # nⱼwⱼ; pᵢ = Σⱼ Cᵢⱼ·nⱼwⱼ
    projections = cosine @ scaled
    magnitude = float((cosine.abs() @ scaled.abs()).max())
    if magnitude == 0.0:
        return 0.0
    return float((projections - projections.mean()).abs().max()) / magnitude


def _closed_form(cosine: Tensor, norms: Tensor, k: IMTLConstants) -> Tensor | None:
    """w = N⁻¹C⁻¹𝟙 / Σ(N⁻¹C⁻¹𝟙) by Cholesky; None when C is singular or the sum vanishes."""
    L, info = torch.linalg.cholesky_ex(cosine)
    if int(info) != 0 or not float(L.diagonal().square().min()) > k.pivot_tol:
        return None
    gamma = torch.cholesky_solve(torch.ones(norms.shape[0], 1, dtype=torch.float64), L)[:, 0] / norms
    if not abs(float(gamma.sum())) > k.sum_rtol * float(gamma.abs().sum()):
        return None
    return gamma / gamma.sum()


def _min_norm_impartial(cosine: Tensor, norms: Tensor, k: IMTLConstants) -> tuple[Tensor | None, bool, int]:
    """The least-‖β‖ β (β = N·w) with C·β ∈ span 𝟙 and Σβᵢ/nᵢ = 1, as w (None when there is none);
    whether it is the only one; C's numerical rank (eigenvalues above ``rank_rcond``·max).

    From C = V·diag(λ)·Vᵀ: the β with C·β ∈ span 𝟙 span C⁺𝟙 (when 𝟙 ∈ range C) and C's null space;
    the least β with Σβᵢ/nᵢ = 1 is the projection of 1/n onto that subspace, rescaled. It is unique
    when the subspace is a line (then the paper's D·Uᵀ is invertible).
    """
    eigenvalues, V = torch.linalg.eigh(cosine)
    in_range = eigenvalues.abs() > k.rank_rcond * eigenvalues.abs().max()
    rank = int(in_range.sum())
    V_range, V_null = V[:, in_range], V[:, ~in_range]
    ones = torch.ones(V.shape[0], dtype=torch.float64)
    basis = [V_null]
    if float(torch.linalg.vector_norm(V_null.T @ ones)) <= k.consistency_rtol * V.shape[0] ** 0.5:
        particular = V_range @ ((V_range.T @ ones) / eigenvalues[in_range])
        basis.append((particular / torch.linalg.vector_norm(particular))[:, None])
    Q = torch.cat(basis, dim=1)
    unique = Q.shape[1] == 1
    inverse_norms = norms.min() / norms
    projected = Q @ (Q.T @ inverse_norms)
    if not float(torch.linalg.vector_norm(projected)) > k.sum_rtol * float(torch.linalg.vector_norm(inverse_norms)):
        return None, unique, rank
    gamma = projected / norms
    return gamma / gamma.sum(), unique, rank


def _solve_active(cosine: Tensor, norms: Tensor, k: IMTLConstants) -> tuple[Tensor, dict[str, Any]]:
    """Weights of the m nonzero gradients from their cosine matrix and norms, and the diagnostics."""
    m = cosine.shape[0]
    alpha = _closed_form(cosine, norms, k)
    if alpha is not None:
        return alpha, {"fallback": False, "unique": True, "degenerate": False, "rank": m}
    alpha, unique, rank = _min_norm_impartial(cosine, norms, k)
    diagnostics = {"fallback": True, "unique": unique and alpha is not None, "degenerate": alpha is None, "rank": rank}
    if alpha is None:
        alpha = torch.zeros_like(norms)
    return alpha, diagnostics


class IMTLWeighting(Weighting):
    """IMTL-G: the combination of the task gradients, with weights summing to 1, whose projections
    on all unit task gradients are equal (see the module docstring for the degenerate cases).

    Args:
        backend: "auto" (C++ on the CPU, Triton on CUDA; torch beyond their K limits), "torch",
            "cpp" or "triton".

    Constants: :data:`CONSTANTS` (:class:`IMTLConstants`), used by every backend, with the
    singularity tolerances scaled to the precision of Γ's dtype (:func:`tolerances`).

    Diagnostics: "fallback" (C is singular or Σ(N⁻¹C⁻¹𝟙) ≈ 0, so the closed form did not apply),
    "unique" (the weights are the only impartial ones summing to 1), "degenerate" (w = 0: none
    exist), "rank" (numerical rank of the nonzero gradients' cosine matrix C), "zero_tasks"
    (indices with gᵢ = 0, weight 0), "residual" (:func:`equal_projection_residual`).

    Variant: IMTL-G, the gradient part of the paper's IMTL, on the given gradients. The wrapper
    :class:`mtlkernels.IMTL` runs this weighting and, with its option ``imtl_l=True``, also
    IMTL-L's learned loss scales.
    """

    name = "imtl"
    constants = CONSTANTS

    def __init__(self, *, backend: str = "auto") -> None:
        super().__init__(backend=backend)

    def options(self) -> dict[str, str]:
        return {"backend": self.backend}

    def for_precision(self, dtype: torch.dtype) -> "IMTLWeighting":
        return self.with_constants(tolerances(dtype, self.constants))

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        K = gram.shape[0]
        norms = gram.diagonal().sqrt()
        active = norms > 0
        weights = torch.zeros(K, dtype=torch.float64)
        if bool(active.any()):
            n = norms[active]
            alpha, diagnostics = _solve_active(gram[active][:, active] / n[:, None] / n[None, :], n, self.constants)
            weights[active] = alpha
        else:
            weights.fill_(1.0 / K)
            diagnostics = {"fallback": True, "unique": False, "degenerate": False, "rank": 0}
        diagnostics["zero_tasks"] = (~active).nonzero().flatten().tolist()
        diagnostics["residual"] = equal_projection_residual(gram, weights)
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        return extension().imtl_solve(gram.numpy(), cpp_constants(self.constants))

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        from ..kernels.solve_imtl import imtl_solve

        return Solution(*imtl_solve(gram, self.constants))
