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

"Singular" is judged at the precision of Γ's dtype: PIVOT_TOL and RANK_RCOND below are for a
float64 Γ; a Γ rounded to a coarser unit u (float32: the Gram of a CUDA accumulation) carries
cosines whose zero eigenvalues come out at ~u, so it gets PIVOT_TOL·u/u₆₄ and RANK_RCOND·√(u/u₆₄)
(float32: 5e-6 and 2e-4) — otherwise a singular float32 Γ passes the closed form as an invertible
one and is reported ``unique``. A float64 Γ holding values rounded to float32 is judged as float64.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._extension import extension
from .base import Solution, Weighting, host_gram, triton_solver

#: Cholesky pivots of C below this (C's diagonal is 1) send the solve to the fallback
PIVOT_TOL = 1e-14
#: |Σγ| below this fraction of Σ|γ| (γ = N⁻¹β) means the weights cannot be scaled to sum 1
SUM_RTOL = 1e-12
#: eigenvalues of C below this fraction of the largest count as zero in the fallback (C's
#: entries carry ~1e-16 rounding from Γ, so smaller eigenvalues hold little information)
RANK_RCOND = 1e-8
#: 𝟙 counts as in C's range when its component in C's null space is below this fraction of ‖𝟙‖
CONSISTENCY_RTOL = 1e-3
#: the C++ solve's limit (csrc/solvers/binding.h kMaxTasks); "auto" uses the torch solve beyond it
CPP_MAX_TASKS = 256


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(pivot tolerance, rank rcond) for a Gram matrix of ``dtype``: (PIVOT_TOL, RANK_RCOND) for
    float64, scaled by u/u₆₄ and √(u/u₆₄) for a floating dtype of rounding unit u."""
    ratio = torch.finfo(dtype).eps / torch.finfo(torch.float64).eps if dtype.is_floating_point else 1.0
    ratio = max(ratio, 1.0)
    return PIVOT_TOL * ratio, RANK_RCOND * math.sqrt(ratio)


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


def _closed_form(cosine: Tensor, norms: Tensor, pivot_tol: float = PIVOT_TOL) -> Tensor | None:
    """w = N⁻¹C⁻¹𝟙 / Σ(N⁻¹C⁻¹𝟙) by Cholesky; None when C is singular (a pivot ≤ ``pivot_tol``) or
    the sum vanishes."""
    L, info = torch.linalg.cholesky_ex(cosine)
    if int(info) != 0 or not float(L.diagonal().square().min()) > pivot_tol:
        return None
    gamma = torch.cholesky_solve(torch.ones(norms.shape[0], 1, dtype=torch.float64), L)[:, 0] / norms
    if not abs(float(gamma.sum())) > SUM_RTOL * float(gamma.abs().sum()):
        return None
    return gamma / gamma.sum()


def _min_norm_impartial(cosine: Tensor, norms: Tensor, rank_rcond: float = RANK_RCOND) -> tuple[Tensor | None, bool, int]:
    """The least-‖β‖ β (β = N·w) with C·β ∈ span 𝟙 and Σβᵢ/nᵢ = 1, as w (None when there is none);
    whether it is the only one; C's numerical rank (eigenvalues above ``rank_rcond``·max).

    From C = V·diag(λ)·Vᵀ: the β with C·β ∈ span 𝟙 span C⁺𝟙 (when 𝟙 ∈ range C) and C's null space;
    the least β with Σβᵢ/nᵢ = 1 is the projection of 1/n onto that subspace, rescaled. It is unique
    when the subspace is a line (then the paper's D·Uᵀ is invertible).
    """
    eigenvalues, V = torch.linalg.eigh(cosine)
    in_range = eigenvalues.abs() > rank_rcond * eigenvalues.abs().max()
    rank = int(in_range.sum())
    V_range, V_null = V[:, in_range], V[:, ~in_range]
    ones = torch.ones(V.shape[0], dtype=torch.float64)
    basis = [V_null]
    if float(torch.linalg.vector_norm(V_null.T @ ones)) <= CONSISTENCY_RTOL * V.shape[0] ** 0.5:
        particular = V_range @ ((V_range.T @ ones) / eigenvalues[in_range])
        basis.append((particular / torch.linalg.vector_norm(particular))[:, None])
    Q = torch.cat(basis, dim=1)
    unique = Q.shape[1] == 1
    inverse_norms = norms.min() / norms
    projected = Q @ (Q.T @ inverse_norms)
    if not float(torch.linalg.vector_norm(projected)) > SUM_RTOL * float(torch.linalg.vector_norm(inverse_norms)):
        return None, unique, rank
    gamma = projected / norms
    return gamma / gamma.sum(), unique, rank


def _solve_active(cosine: Tensor, norms: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, dict[str, Any]]:
    """Weights of the m nonzero gradients from their cosine matrix and norms, and the diagnostics;
    ``dtype`` is Γ's (see :func:`tolerances`)."""
    m = cosine.shape[0]
    pivot_tol, rank_rcond = tolerances(dtype)
    alpha = _closed_form(cosine, norms, pivot_tol)
    if alpha is not None:
        return alpha, {"fallback": False, "unique": True, "degenerate": False, "rank": m}
    alpha, unique, rank = _min_norm_impartial(cosine, norms, rank_rcond)
    diagnostics = {"fallback": True, "unique": unique and alpha is not None, "degenerate": alpha is None, "rank": rank}
    if alpha is None:
        alpha = torch.zeros_like(norms)
    return alpha, diagnostics


def _solve_torch(self: "IMTLWeighting", gram: Tensor, losses: Tensor | None) -> Solution:
    G = host_gram(gram)
    K = G.shape[0]
    norms = G.diagonal().sqrt()
    active = norms > 0
    weights = torch.zeros(K, dtype=torch.float64)
    if bool(active.any()):
        n = norms[active]
        alpha, diagnostics = _solve_active(G[active][:, active] / n[:, None] / n[None, :], n, gram.dtype)
        weights[active] = alpha
    else:
        weights.fill_(1.0 / K)
        diagnostics = {"fallback": True, "unique": False, "degenerate": False, "rank": 0}
    diagnostics["zero_tasks"] = (~active).nonzero().flatten().tolist()
    diagnostics["residual"] = equal_projection_residual(G, weights)
    return Solution(weights.to(gram.device), diagnostics)


def _solve_cpp(self: "IMTLWeighting", gram: Tensor, losses: Tensor | None) -> Solution:
    if self.backend == "auto" and gram.shape[0] > CPP_MAX_TASKS:
        return _solve_torch(self, gram, losses)
    G = gram.detach().to(device="cpu", dtype=torch.float64).contiguous()
    weights, diagnostics = extension().imtl_solve(G.numpy(), *tolerances(gram.dtype))
    return Solution(torch.from_numpy(weights).to(gram.device), diagnostics)


class IMTLWeighting(Weighting):
    """IMTL-G: the combination of the task gradients, with weights summing to 1, whose projections
    on all unit task gradients are equal (see the module docstring for the degenerate cases).

    Args:
        backend: "auto" (the C++ solve on CPU), "torch" or "cpp".

    Diagnostics: "fallback" (C is singular or Σ(N⁻¹C⁻¹𝟙) ≈ 0, so the closed form did not apply),
    "unique" (the weights are the only impartial ones summing to 1), "degenerate" (w = 0: none
    exist), "rank" (numerical rank of the nonzero gradients' cosine matrix C), "zero_tasks"
    (indices with gᵢ = 0, weight 0), "residual" (:func:`equal_projection_residual`).
    """

    name = "imtl"
    solvers = {"torch": _solve_torch, "cpp": _solve_cpp, "triton": triton_solver("solve_imtl")}

    def __init__(self, *, backend: str = "auto") -> None:
        super().__init__(backend=backend)

    def options(self) -> dict[str, str]:
        return {"backend": self.backend}
