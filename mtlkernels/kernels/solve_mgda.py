"""On-device MGDA solve: one Triton program, Γ in float64 registers, no host synchronisation.

w = argmin_{w ∈ Δ} wᵀΓ'w, Γ' = Γ/(n·nᵀ) (Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018), by Wolfe's nearest-point algorithm as csrc/solvers/mgda.h runs it:
start from the shortest gradient; add the gradient most violating p·x ≥ ‖x‖² (scaled); minor cycles
step towards the affine minimiser of the active set — solved with the shortest active gradient as
base and unit differences, by Cholesky, each cycle from scratch — dropping gradients whose weight
reaches 0. Ties (entering gradient: lowest index; base and blocking gradient: earliest added) are
broken as there; the one difference is the order of the affine minimiser's Cholesky factorisation
(task index here, insertion order there), which changes rounding only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from typing import Any

from . import kspace
from .kspace import MAX_TASKS

# The solver's tolerances and iteration cap arrive as constexpr arguments in upper case (the fields
# of mtlkernels.methods.mgda.MGDAConstants, see kspace.constexprs).

#: the kernel's code for each normalisation (the names of mtlkernels.methods.mgda.NORMALIZATIONS)
NORMALIZATION_CODES = {"none": 0, "l2": 1, "loss": 2, "loss+": 3}
NONE = tl.constexpr(NORMALIZATION_CODES["none"])
L2 = tl.constexpr(NORMALIZATION_CODES["l2"])
LOSS = tl.constexpr(NORMALIZATION_CODES["loss"])
#: a timestamp later than any insertion
NEVER = tl.constexpr(2**30)


@triton.jit
def _mgda_normalizers(gram_ptr, losses_ptr, K, NORMALIZATION: tl.constexpr, BLOCK_K: tl.constexpr,
                      AGAIN: tl.constexpr):
    """(n, bad_losses): the normalisers (1, ‖gᵢ‖, lᵢ or lᵢ‖gᵢ‖; 1 where not > 0) and the count of
    losses that are negative or not finite (NaN weights: the host does not check them), from Γ's
    diagonal and the losses in memory. AGAIN (volatile loads) computes them a second time at the
    end instead of holding n in registers through the solve."""
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    bad_losses = 0
    if NORMALIZATION == NONE:
        n = tl.where(in_k, 1.0, 1.0).to(tl.float64)
    else:
        norms = tl.sqrt(tl.load(gram_ptr + offs * (kspace.row_stride(K, BLOCK_K) + 1), mask=in_k, other=0.0, volatile=AGAIN).to(tl.float64))
        if NORMALIZATION == L2:
            n = norms
        else:
            losses = tl.load(losses_ptr + offs, mask=in_k, other=1.0, volatile=AGAIN).to(tl.float64)
            bad_losses = tl.sum((~((losses >= 0.0) & (losses < float("inf")))).to(tl.int32), axis=0)
            if NORMALIZATION == LOSS:
                n = losses
            else:
                n = losses * norms
        n = tl.where(n > 0.0, n, 1.0)
    return n, bad_losses


@triton.jit
def _mgda_affine_minimizer(Q, active, added, lengths, K, BLOCK_K: tl.constexpr, DEPENDENT_PIVOT: tl.constexpr):
    """(α, ok): α (Σα = 1, zero off ``active``) of the point of the affine hull of the active
    gradients nearest 0; ok is False when they are numerically affinely dependent. Base p_b: the
    shortest active gradient (the earliest ``added`` on ties); Δ̂ᵢ = (pᵢ − p_b)/‖pᵢ − p_b‖;
    M̂β̂ = −Δ̂ᵀp_b; αᵢ = β̂ᵢ/‖Δᵢ‖."""
    offs = tl.arange(0, BLOCK_K)
    shortest = tl.min(tl.where(active, lengths, float("inf")), axis=0)
    base = tl.argmin(tl.where(active & (lengths == shortest), added, NEVER), axis=0)
    others = active & (offs != base)
    q_b = tl.sum(tl.where(offs[None, :] == base, Q, 0.0), axis=1)  # column b by a masked sum: Q in one layout
    q_bb = tl.sum(tl.where(offs == base, q_b, 0.0), axis=0)
    M = Q - q_b[:, None] - q_b[None, :] + q_bb  # Δᵢ·Δⱼ
    squared = kspace.diagonal(M, BLOCK_K)
    distinct = tl.sum((others & ~(squared > 0.0)).to(tl.int32), axis=0) == 0
    unit = tl.sqrt(tl.where(others & (squared > 0.0), squared, 1.0))
    M_unit = tl.where(offs[:, None] == offs[None, :], 1.0, M / (unit[:, None] * unit[None, :]))
    L, independent = kspace.cholesky(M_unit, others, K, BLOCK_K, DEPENDENT_PIVOT)
    rhs = tl.where(others, -(q_b - q_bb) / unit, 0.0)  # −Δ̂ᵢ·p_b
    beta = tl.where(others, kspace.cholesky_solve(L, rhs, others, K, BLOCK_K) / unit, 0.0)
    alpha = tl.where(offs == base, 1.0 - tl.sum(beta, axis=0), beta)
    return alpha, distinct & independent


@triton.jit
def _mgda_solve_kernel(
    gram_ptr, losses_ptr, weights_ptr, simplex_ptr, normalizers_ptr, kkt_ptr, objective_ptr, iterations_ptr,
    support_ptr, K, NORMALIZATION: tl.constexpr, NORMALIZED: tl.constexpr, BLOCK_K: tl.constexpr,
    TOLERANCE: tl.constexpr, DEPENDENT_PIVOT: tl.constexpr, CYCLES_PER_TASK: tl.constexpr, CYCLES_EXTRA: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    n, bad_losses = _mgda_normalizers(gram_ptr, losses_ptr, K, NORMALIZATION, BLOCK_K, False)
    Q = tl.where(in_k[:, None] & in_k[None, :], (G + tl.trans(G)) / 2.0 / n[:, None] / n[None, :], 0.0)
    lengths = tl.sqrt(tl.maximum(kspace.diagonal(Q, BLOCK_K), 0.0))

    zero = in_k & (lengths == 0.0)
    zeros = tl.sum(zero.to(tl.int32), axis=0)
    cycles = 0
    max_cycles = CYCLES_PER_TASK * K + CYCLES_EXTRA
    if zeros > 0:  # the min-norm point is 0: spread the weight over the zero gradients
        lam = tl.where(zero, 1.0 / zeros.to(tl.float64), 0.0)
    else:
        first = tl.argmin(tl.where(in_k, lengths, float("inf")), axis=0)
        active = offs == first
        added = tl.where(active, 0, NEVER)  # insertion times: the active set's order
        clock = 1
        lam = tl.where(active, 1.0, 0.0).to(tl.float64)
        running = 1
        while (running != 0) & (cycles < max_cycles):
            # Qλ and λᵀQλ at the current λ (computed here, not carried from the last cycle)
            g = tl.sum(Q * lam[None, :], axis=1)
            objective = tl.sum(lam * g, axis=0)
            m = tl.sum(lam * lengths, axis=0)
            slack = tl.where(in_k, (g - objective) / (m * (lengths + m)), float("inf"))
            j = tl.argmin(slack, axis=0)
            entering = offs == j
            if (tl.min(slack, axis=0) >= -TOLERANCE) | (tl.sum((active & entering).to(tl.int32), axis=0) > 0):
                running = 0
            else:
                previous_added = added  # the active set is where added < NEVER
                previous_lam = lam
                active = active | entering
                added = tl.where(entering, clock, added)
                clock += 1
                dependent = 0
                minor = 1
                while (minor != 0) & (cycles < max_cycles):  # minor cycles
                    cycles += 1
                    alpha, ok = _mgda_affine_minimizer(Q, active, added, lengths, K, BLOCK_K, DEPENDENT_PIVOT)
                    if ~ok:
                        dependent = 1
                        minor = 0
                    elif tl.sum((active & ~(alpha > 0.0)).to(tl.int32), axis=0) == 0:
                        lam = tl.where(active, alpha, 0.0)
                        minor = 0
                    else:
                        blocking = active & ~(alpha > 0.0)
                        ratios = tl.where(blocking, lam / tl.where(blocking, lam - alpha, 1.0), float("inf"))
                        theta = tl.min(ratios, axis=0)
                        k = tl.argmin(tl.where(blocking & (ratios == theta), added, NEVER), axis=0)
                        lam = tl.where(active & (offs != k), lam + theta * (alpha - lam), 0.0)
                        active = active & (lam > 0.0)
                        added = tl.where(active, added, NEVER)
                        lam = tl.where(active, lam, 0.0)
                        lam = lam / tl.sum(lam, axis=0)
                updated = tl.sum(lam * tl.sum(Q * lam[None, :], axis=1), axis=0)
                if (dependent != 0) | ~(updated < objective):  # no progress left: keep the better point
                    active = previous_added != NEVER
                    added = previous_added
                    lam = previous_lam
                    running = 0

    # certificate: the KKT residual of min_{w ∈ Δ} wᵀQw (mtlkernels.methods.mgda.kkt_residual)
    g = tl.sum(Q * lam[None, :], axis=1)
    objective = tl.sum(lam * g, axis=0)
    m = tl.sum(lam * lengths, axis=0)
    slack = (g - objective) / tl.where(m > 0.0, m * (lengths + m), 1.0)
    violation = tl.where(lam > 0.0, tl.abs(slack), tl.maximum(-slack, 0.0))
    kkt = tl.where(m > 0.0, tl.max(tl.where(in_k, violation, 0.0), axis=0), 0.0)
    n, bad_losses = _mgda_normalizers(gram_ptr, losses_ptr, K, NORMALIZATION, BLOCK_K, True)
    if NORMALIZED:
        weights = lam / n
    else:
        weights = lam
    weights = tl.where(bad_losses > 0, float("nan"), weights)
    tl.store(weights_ptr + offs, weights, mask=in_k)
    tl.store(simplex_ptr + offs, lam, mask=in_k)
    tl.store(normalizers_ptr + offs, n, mask=in_k)
    tl.store(kkt_ptr, kkt)
    tl.store(objective_ptr, objective)
    tl.store(iterations_ptr, cycles)
    tl.store(support_ptr, tl.sum((in_k & (lam > 0.0)).to(tl.int32), axis=0))


def mgda_solve(
    gram: Tensor, losses: Tensor | None, normalization: str, combination: str, constants: Any
) -> dict[str, Tensor]:
    """csrc's mgda_solve on the device: {"weights", "simplex_weights", "normalizers" ([K] float64),
    "kkt_residual", "objective" (0-d float64), "iterations", "support" (0-d int32)}.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; losses: [K] on gram's device, needed by
    the "loss"/"loss+" normalisations — not read on the host: a negative or non-finite loss makes every
    weight NaN (the host solves raise a ValueError instead); constants: the solver's
    :class:`mtlkernels.methods.mgda.MGDAConstants` (kernel constexprs).
    """
    K = gram.shape[0]
    device = gram.device
    out = {
        name: torch.empty(K, dtype=torch.float64, device=device)
        for name in ("weights", "simplex_weights", "normalizers")
    }
    out.update(
        kkt_residual=torch.empty((), dtype=torch.float64, device=device),
        objective=torch.empty((), dtype=torch.float64, device=device),
        iterations=torch.empty((), dtype=torch.int32, device=device),
        support=torch.empty((), dtype=torch.int32, device=device),
    )
    if normalization in ("loss", "loss+") and losses is None:
        raise ValueError(f"normalization={normalization!r} needs the K loss values")
    block, warps = kspace.launch_config(K)
    _mgda_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), out["weights"] if losses is None else losses.contiguous(), out["weights"],
        out["simplex_weights"], out["normalizers"], out["kkt_residual"], out["objective"], out["iterations"],
        out["support"], K,
        NORMALIZATION=NORMALIZATION_CODES[normalization], NORMALIZED=combination == "normalized", BLOCK_K=block,
        num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    return out

