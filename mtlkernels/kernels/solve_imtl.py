"""On-device IMTL-G solve: one Triton program, Γ in float64 registers, no host synchronisation.

nᵢ = √Γᵢᵢ, C = N⁻¹ΓN⁻¹; β = C⁻¹𝟙 by Cholesky, w = N⁻¹β / Σ(N⁻¹β) — the paper's
α₂..K = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂..K (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).
The same algorithm, tolerances and degenerate conventions as csrc/solvers/imtl.h: zero gradients
get weight 0 (all zero: 𝟙/K); a singular C or Σ(N⁻¹β) ≈ 0 takes the fallback — C's eigen-decomposition
by Jacobi rotations (in parallel order; cyclic there), then the impartial w with Σw = 1 of least
‖N·w‖ — and none existing gives w = 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from typing import Any

from . import kspace
from .kspace import MAX_TASKS

# The solver's tolerances and sweep cap arrive as constexpr arguments in upper case (the fields of
# mtlkernels.methods.imtl.IMTLConstants, see kspace.constexprs).


@triton.jit
def _imtl_normalized_gram(gram_ptr, K, active, n, BLOCK_K: tl.constexpr, AGAIN: tl.constexpr):
    """C = N⁻¹ΓN⁻¹ on the active tasks, zero elsewhere — rebuilt from Γ in memory at each use, so
    no register tile holds it across the Cholesky factorisation and the eigendecomposition."""
    G = kspace.load_square(gram_ptr, K, BLOCK_K, AGAIN)
    return tl.where(active[:, None] & active[None, :], G / n[:, None] / n[None, :], 0.0)


@triton.jit
def _imtl_min_norm_impartial(
    gram_ptr, n, active, m, K, BLOCK_K: tl.constexpr,
    SUM_RTOL: tl.constexpr, RANK_RCOND: tl.constexpr, CONSISTENCY_RTOL: tl.constexpr, MAX_SWEEPS: tl.constexpr,
):
    """The least-‖β‖ β with C·β ∈ span 𝟙 and Σβᵢ/nᵢ = 1, as weights N⁻¹β (masked to ``active``):
    (alpha, found, unique, rank). C's null space and C⁺𝟙 come from its Jacobi eigen-decomposition;
    the answer is 1/n projected onto their span, rescaled (csrc/solvers/imtl.h min_norm_impartial)."""
    lam, V = kspace.symmetric_eigen(_imtl_normalized_gram(gram_ptr, K, active, n, BLOCK_K, True), K, BLOCK_K, MAX_SWEEPS)
    lam_max = tl.max(tl.where(active, tl.abs(lam), 0.0), axis=0)
    in_range = active & (tl.abs(lam) > RANK_RCOND * lam_max)
    null = active & ~in_range
    rank = tl.sum(in_range.to(tl.int32), axis=0)
    coords = tl.sum(tl.where(active[:, None], V, 0.0), axis=0)  # Vₖ·𝟙 over the active rows
    null_part = tl.sum(tl.where(null, coords * coords, 0.0), axis=0)
    consistent = tl.sqrt(null_part) <= CONSISTENCY_RTOL * tl.sqrt(m.to(tl.float64))
    particular = kspace.matvec(V, tl.where(in_range, coords / tl.where(in_range, lam, 1.0), 0.0))  # C⁺𝟙
    particular_norm = tl.sqrt(tl.sum(particular * particular, axis=0))
    with_particular = consistent & (particular_norm > 0.0)
    particular = particular / tl.where(with_particular, particular_norm, 1.0)
    unique = (tl.sum(null.to(tl.int32), axis=0) + with_particular.to(tl.int32)) == 1
    n_min = tl.min(tl.where(active, n, float("inf")), axis=0)
    inverse_norms = tl.where(active, n_min / n, 0.0)
    null_coords = tl.where(null, tl.sum(V * inverse_norms[:, None], axis=0), 0.0)
    projected = kspace.matvec(V, null_coords)
    projected += tl.where(with_particular, tl.sum(particular * inverse_norms, axis=0), 0.0) * particular
    projected = tl.where(active, projected, 0.0)
    found = tl.sqrt(tl.sum(projected * projected, axis=0)) > SUM_RTOL * tl.sqrt(
        tl.sum(inverse_norms * inverse_norms, axis=0)
    )
    alpha = projected / n
    alpha = tl.where(found, alpha / tl.sum(alpha, axis=0), 0.0)
    return alpha, found, unique & found, rank


@triton.jit
def _imtl_solve_kernel(
    gram_ptr, weights_ptr, zero_tasks_ptr, fallback_ptr, unique_ptr, degenerate_ptr, rank_ptr, residual_ptr,
    K, BLOCK_K: tl.constexpr,
    PIVOT_TOL: tl.constexpr, SUM_RTOL: tl.constexpr, RANK_RCOND: tl.constexpr, CONSISTENCY_RTOL: tl.constexpr,
    MAX_SWEEPS: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    active = (offs < K) & (kspace.diagonal(G, BLOCK_K) > 0.0)
    m = tl.sum(active.to(tl.int32), axis=0)
    n = tl.sqrt(tl.where(active, kspace.diagonal(G, BLOCK_K), 1.0))

    # closed form: β = C⁻¹𝟙 by Cholesky, γ = N⁻¹β, w = γ/Σγ
    L, positive_definite = kspace.cholesky(_imtl_normalized_gram(gram_ptr, K, active, n, BLOCK_K, False), active, K,
                                           BLOCK_K, PIVOT_TOL)
    gamma = tl.where(active, kspace.cholesky_solve(L, tl.where(active, 1.0, 0.0), active, K, BLOCK_K) / n, 0.0)
    gamma_sum = tl.sum(gamma, axis=0)
    closed_form = positive_definite & (tl.abs(gamma_sum) > SUM_RTOL * tl.sum(tl.abs(gamma), axis=0)) & (m > 0)
    alpha = tl.where(closed_form, gamma / tl.where(closed_form, gamma_sum, 1.0), 0.0)
    unique = closed_form
    degenerate = m < 0
    rank = tl.where(closed_form, m, 0)
    if (m > 0) & ~closed_form:
        alpha, found, unique, rank = _imtl_min_norm_impartial(
            gram_ptr, n, active, m, K, BLOCK_K, SUM_RTOL, RANK_RCOND, CONSISTENCY_RTOL, MAX_SWEEPS
        )
        degenerate = ~found
    weights = tl.where(m > 0, alpha, 1.0 / tl.sum((offs < K).to(tl.float64), axis=0))

    # certificate: max |pᵢ − mean p| / max Σⱼ|Cᵢⱼtⱼ|, p = C·t, t = N·w (active tasks)
    scaled = tl.where(active, n * alpha, 0.0)
    terms = _imtl_normalized_gram(gram_ptr, K, active, n, BLOCK_K, True) * scaled[None, :]
    projections = tl.sum(terms, axis=1)
    magnitude = tl.max(tl.sum(tl.abs(terms), axis=1), axis=0)
    mean = tl.sum(projections, axis=0) / tl.maximum(m, 1).to(tl.float64)
    spread = tl.max(tl.where(active, tl.abs(projections - mean), 0.0), axis=0)
    residual = tl.where(magnitude > 0.0, spread / tl.where(magnitude > 0.0, magnitude, 1.0), 0.0)

    tl.store(weights_ptr + offs, weights, mask=offs < K)
    tl.store(zero_tasks_ptr + offs, ~active, mask=offs < K)
    tl.store(fallback_ptr, ~closed_form)
    tl.store(unique_ptr, unique)
    tl.store(degenerate_ptr, degenerate)
    tl.store(rank_ptr, rank)
    tl.store(residual_ptr, residual)


def imtl_solve(gram: Tensor, constants: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights [K] float64 and the diagnostics of csrc/solvers/imtl.h as device tensors (0-d, and
    ``zero_tasks`` a [K] bool mask), from Γ [K, K] (float32 or float64, K ≤ :data:`MAX_TASKS`) and
    the solver's :class:`mtlkernels.methods.imtl.IMTLConstants` (kernel constexprs)."""
    K = gram.shape[0]
    device = gram.device
    weights = torch.empty(K, dtype=torch.float64, device=device)
    zero_tasks = torch.empty(K, dtype=torch.bool, device=device)
    flags = torch.empty(3, dtype=torch.bool, device=device)
    rank = torch.empty((), dtype=torch.int32, device=device)
    residual = torch.empty((), dtype=torch.float64, device=device)
    block, warps = kspace.launch_config(K)
    _imtl_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), weights, zero_tasks, flags[0], flags[1], flags[2], rank, residual, K,
        BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    diagnostics = {
        "fallback": flags[0], "unique": flags[1], "degenerate": flags[2], "rank": rank,
        "zero_tasks": zero_tasks, "residual": residual,
    }
    return weights, diagnostics

