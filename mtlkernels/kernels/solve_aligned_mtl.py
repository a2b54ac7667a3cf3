"""On-device Aligned-MTL solve: one Triton program, Γ in float64 registers, no host synchronisation.

Γ/s = V·diag(λ)·Vᵀ over the nonzero gradients (s = max Γᵢᵢ; kspace's Jacobi eigendecomposition),
eigenvalues at or below RANK_RCOND·λ_max dropped, w = B·p with B = V·diag(√(λ_chosen/λ))·Vᵀ, λ_chosen
by the scale mode (min, lower median, mean), components of p at rounding level dropped
(Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023) — the
algorithm, constants and certificate of csrc/solvers/aligned_mtl.h (which decomposes by Jacobi up
to K = 8 and by Householder + QL beyond; both are backward stable).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace
from .kspace import MAX_TASKS

#: scale_mode → the SCALE_MODE constexpr
SCALE_MODES = {"min": 0, "median": 1, "rmse": 2}

# AlignedMTLConstants' fields arrive as constexprs in upper case (kspace.constexprs);
# JACOBI_MAX_TASKS is the C++ solve's choice of eigensolver and unused here.


@triton.jit
def _aligned_mtl_row(A, j, BLOCK_K: tl.constexpr):
    """Row j of a register matrix A as a [BLOCK_K] vector."""
    return tl.reshape(tl.gather(A, tl.full([1, BLOCK_K], j, tl.int32), axis=0), [BLOCK_K])


@triton.jit
def _aligned_mtl_scaled_gram(gram_ptr, K, active, safe_top, BLOCK_K: tl.constexpr, AGAIN: tl.constexpr):
    """Γ/s on the nonzero gradients, zero elsewhere — built from Γ in memory at each use (AGAIN: read
    again), so no register tile holds it across the eigendecomposition."""
    G = kspace.load_square(gram_ptr, K, BLOCK_K, AGAIN)
    return tl.where(active[:, None] & active[None, :], G / safe_top, 0.0)


@triton.jit
def _aligned_mtl_solve_kernel(
    gram_ptr, pref_ptr, weights_ptr, zero_tasks_ptr, facts_ptr, rank_ptr,
    K, HAS_PREF: tl.constexpr, SCALE_MODE: tl.constexpr, BLOCK_K: tl.constexpr,
    RANK_RCOND: tl.constexpr, ZERO_RTOL: tl.constexpr, MAX_SWEEPS: tl.constexpr, JACOBI_MAX_TASKS: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    diag = kspace.diagonal(G, BLOCK_K)
    active = in_k & (diag > 0.0)
    top = tl.max(tl.where(active, diag, 0.0), axis=0)
    safe_top = tl.where(top > 0.0, top, 1.0)
    lam, V = kspace.symmetric_eigen(_aligned_mtl_scaled_gram(gram_ptr, K, active, safe_top, BLOCK_K, False), K, BLOCK_K,
                                    MAX_SWEEPS)
    largest = tl.max(tl.where(in_k, lam, -float("inf")), axis=0)
    kept = in_k & (lam > RANK_RCOND * largest) & (lam > 0.0)
    rank = tl.sum(kept.to(tl.int32), axis=0)
    if SCALE_MODE == 0:
        chosen = tl.min(tl.where(kept, lam, float("inf")), axis=0)
    elif SCALE_MODE == 1:  # the lower median: the kept eigenvalue with (rank − 1) // 2 kept ones below it
        below = (lam[None, :] < lam[:, None]) | ((lam[None, :] == lam[:, None]) & (offs[None, :] < offs[:, None]))
        position = tl.sum((kept[None, :] & below).to(tl.int32), axis=1)
        chosen = tl.sum(tl.where(kept & (position == (rank - 1) // 2), lam, 0.0), axis=0)
    else:
        chosen = tl.sum(tl.where(kept, lam, 0.0), axis=0) / tl.maximum(rank, 1).to(tl.float64)
    safe_chosen = tl.where(rank > 0, chosen, 1.0)
    factors = tl.where(kept, tl.sqrt(safe_chosen / tl.where(kept, lam, 1.0)), 0.0)
    if HAS_PREF:
        pref = tl.load(pref_ptr + offs, mask=in_k, other=0.0).to(tl.float64)
    else:
        pref = tl.where(in_k, 1.0 / tl.sum(in_k.to(tl.float64), axis=0), 0.0)  # 𝟙/K in float64
    p = tl.where(active, pref, 0.0)
    p_norm = tl.sqrt(tl.sum(p * p, axis=0))
    components = tl.sum(V * p[:, None], axis=0)  # vₖᵀp
    components = tl.where(tl.abs(components) <= ZERO_RTOL * p_norm, 0.0, components)
    weights = tl.where(active, tl.sum(V * (factors * components)[None, :], axis=1), 0.0)

    # certificate: max |B·(Γ/s)·B − λ_chosen·P| / λ_chosen, B and P built from the eigenvectors
    B = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float64)
    P = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float64)
    kept_flags = kept.to(tl.float64)
    for k in range(K):
        v = kspace.column(V, k, BLOCK_K)
        f = tl.sum(tl.where(offs == k, factors, 0.0), axis=0)
        keep = tl.sum(tl.where(offs == k, kept_flags, 0.0), axis=0)
        outer = v[:, None] * v[None, :]
        B += f * outer
        P += keep * outer
    Gs = _aligned_mtl_scaled_gram(gram_ptr, K, active, safe_top, BLOCK_K, True)
    GB = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float64)
    for b in range(K):
        GB += kspace.column(Gs, b, BLOCK_K)[:, None] * _aligned_mtl_row(B, b, BLOCK_K)[None, :]
    BGB = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float64)
    for b in range(K):
        BGB += kspace.column(B, b, BLOCK_K)[:, None] * _aligned_mtl_row(GB, b, BLOCK_K)[None, :]
    deviation = tl.max(tl.max(tl.abs(BGB - safe_chosen * P), axis=1), axis=0)
    residual = tl.where(rank > 0, deviation / safe_chosen, 0.0)
    scale = tl.where(rank > 0, tl.sqrt(safe_chosen * top), 0.0)
    tl.store(weights_ptr + offs, weights, mask=in_k)
    tl.store(zero_tasks_ptr + offs, ~active, mask=in_k)
    tl.store(facts_ptr, residual)
    tl.store(facts_ptr + 1, scale)
    tl.store(rank_ptr, rank)


def aligned_mtl_solve(gram: Tensor, pref: Tensor | None, scale_mode: str, constants: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """(weights [K] float64, diagnostics) as device tensors — csrc's aligned_mtl_solve.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; pref: p [K] on gram's device, or None
    for 𝟙/K; scale_mode: "min", "median" or "rmse"; constants:
    :class:`mtlkernels.methods.aligned_mtl.AlignedMTLConstants` (kernel constexprs). Diagnostics:
    residual, scale (0-d float64), rank (0-d int32), zero_tasks ([K] bool mask).
    """
    K = gram.shape[0]
    device = gram.device
    weights = torch.empty(K, dtype=torch.float64, device=device)
    zero_tasks = torch.empty(K, dtype=torch.bool, device=device)
    facts = torch.empty(2, dtype=torch.float64, device=device)
    rank = torch.empty((), dtype=torch.int32, device=device)
    block, warps = kspace.launch_config(K)
    _aligned_mtl_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), weights if pref is None else pref.contiguous(), weights, zero_tasks, facts, rank, K,
        HAS_PREF=pref is not None, SCALE_MODE=SCALE_MODES[scale_mode], BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS,
        **kspace.constexprs(constants),
    )
    diagnostics = {"residual": facts[0], "rank": rank, "scale": facts[1], "zero_tasks": zero_tasks}
    return weights, diagnostics
