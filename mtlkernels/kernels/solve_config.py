"""On-device ConFIG solve: one Triton program, Γ in float64 registers, no host synchronisation.

β = C⁺p on the cosine matrix C of the nonzero gradients (its Jacobi eigendecomposition, kspace's,
eigenvalues at or below RANK_RCOND·λ_max dropped), then w = (nᵀCβ / βᵀCβ)·N⁻¹β (Liu, Chu,
Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025)
— the algorithm, constants and certificates of csrc/solvers/config.h (which decomposes by Jacobi
up to K = 8 and by Householder + QL beyond; both are backward stable).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace
from .kspace import MAX_TASKS

# ConFIGConstants' fields arrive as constexprs in upper case (kspace.constexprs); JACOBI_MAX_TASKS
# is the C++ solve's choice of eigensolver and unused here.


@triton.jit
def _config_cosines(gram_ptr, K, active, safe_norms, BLOCK_K: tl.constexpr, AGAIN: tl.constexpr):
    """C: the cosines of the active gradients, clamped to [−1, 1], ones on their diagonal, zero
    elsewhere — built from Γ in memory at each use, so no register tile holds it across the
    eigendecomposition."""
    offs = tl.arange(0, BLOCK_K)
    G = kspace.load_square(gram_ptr, K, BLOCK_K, AGAIN)
    pair = active[:, None] & active[None, :]
    C = tl.where(pair, tl.minimum(tl.maximum(G / safe_norms[:, None] / safe_norms[None, :], -1.0), 1.0), 0.0)
    return tl.where((offs[:, None] == offs[None, :]) & pair, 1.0, C)


@triton.jit
def _config_solve_kernel(
    gram_ptr, pref_ptr, weights_ptr, zero_tasks_ptr, facts_ptr, rank_ptr, equal_ptr,
    K, HAS_PREF: tl.constexpr, BLOCK_K: tl.constexpr,
    RANK_RCOND: tl.constexpr, ZERO_RTOL: tl.constexpr, CONSISTENCY_RTOL: tl.constexpr, MAX_SWEEPS: tl.constexpr,
    JACOBI_MAX_TASKS: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    norms = tl.sqrt(tl.maximum(kspace.diagonal(G, BLOCK_K), 0.0))
    active = in_k & (norms > 0.0)
    safe_norms = tl.where(active, norms, 1.0)
    if HAS_PREF:
        pref = tl.load(pref_ptr + offs, mask=in_k, other=0.0).to(tl.float64)
    else:
        pref = tl.where(in_k, 1.0, 0.0).to(tl.float64)
    p = tl.where(active, pref, 0.0)
    lam, V = kspace.symmetric_eigen(_config_cosines(gram_ptr, K, active, safe_norms, BLOCK_K, False), K, BLOCK_K, MAX_SWEEPS)
    top = tl.max(tl.where(in_k, lam, -float("inf")), axis=0)
    kept = in_k & (lam > RANK_RCOND * top)
    safe_lam = tl.where(kept, lam, 1.0)
    coefficients = tl.sum(V * p[:, None], axis=0)  # vₖᵀp
    scaled = tl.where(kept, coefficients / safe_lam, 0.0)
    beta = tl.sum(V * scaled[None, :], axis=1)
    x_norm2 = tl.sum(tl.where(kept, coefficients * coefficients / safe_lam, 0.0), axis=0)  # βᵀCβ
    C = _config_cosines(gram_ptr, K, active, safe_norms, BLOCK_K, True)
    C_beta = tl.sum(C * beta[None, :], axis=1)
    projections = tl.sum(tl.where(active, norms * C_beta, 0.0), axis=0)  # Σᵢ gᵢ·x = nᵀCβ
    p_norm2 = tl.sum(p * p, axis=0)
    p_scale = tl.max(tl.abs(p), axis=0)
    safe_top = tl.where(top > 0.0, top, 1.0)
    nonzero = (top > 0.0) & (x_norm2 > ZERO_RTOL * p_norm2 / safe_top)
    safe_x_norm2 = tl.where(nonzero, x_norm2, 1.0)
    weights = tl.where(active, tl.where(nonzero, projections / safe_x_norm2 * beta / safe_norms, 0.0), 0.0)
    length = tl.where(nonzero, tl.abs(projections) / tl.sqrt(safe_x_norm2), 0.0)
    misfit = tl.where(active, C_beta - p, 0.0)
    normal = tl.max(tl.abs(tl.sum(C * misfit[None, :], axis=1)), axis=0)
    consistency = tl.max(tl.abs(misfit), axis=0)
    some = (top > 0.0) & (p_scale > 0.0)
    residual = tl.where(some, normal / (safe_top * tl.where(some, p_scale, 1.0)), 0.0)
    equal = some & (consistency <= CONSISTENCY_RTOL * p_scale)
    tl.store(weights_ptr + offs, weights, mask=in_k)
    tl.store(zero_tasks_ptr + offs, ~active, mask=in_k)
    tl.store(facts_ptr, residual)
    tl.store(facts_ptr + 1, length)
    tl.store(rank_ptr, tl.sum(kept.to(tl.int32), axis=0))
    tl.store(equal_ptr, equal)


def config_solve(gram: Tensor, pref: Tensor | None, constants: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """(weights [K] float64, diagnostics) as device tensors — csrc's config_solve.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; pref: p [K] on gram's device, or None
    for 𝟙; constants: :class:`mtlkernels.methods.config.ConFIGConstants` (kernel constexprs).
    Diagnostics: residual, length (0-d float64), rank (0-d int32), equal_cosines (0-d bool),
    zero_tasks ([K] bool mask).
    """
    K = gram.shape[0]
    device = gram.device
    weights = torch.empty(K, dtype=torch.float64, device=device)
    zero_tasks = torch.empty(K, dtype=torch.bool, device=device)
    facts = torch.empty(2, dtype=torch.float64, device=device)
    rank = torch.empty((), dtype=torch.int32, device=device)
    equal = torch.empty((), dtype=torch.bool, device=device)
    block, warps = kspace.launch_config(K)
    _config_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), weights if pref is None else pref.contiguous(), weights, zero_tasks, facts, rank, equal, K,
        HAS_PREF=pref is not None, BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    diagnostics = {
        "residual": facts[0], "equal_cosines": equal, "rank": rank, "length": facts[1], "zero_tasks": zero_tasks,
    }
    return weights, diagnostics
