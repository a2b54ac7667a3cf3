"""On-device dual-cone solves of UPGrad and DualProj: one Triton program, Γ in float64 registers,
no host synchronisation.

v = argmin_{v ≥ u} vᵀΓv (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
2024, Proposition 1) by the Lawson–Hanson active set as csrc/solvers/dual_cone.h runs it: start
from the tasks Jᵀu conflicts with ((Γu)ⱼ < 0, uⱼ = 0), fixing back at once those whose candidate
falls to their bound (after dropping the highest-index tasks until the free set is linearly
independent), and for up to BLOCK_ROUNDS − 1 more rounds, while their number falls, free every
violated constraint at once and settle again; then free the most violated constraint (relative to the rounding of gⱼ·d) and take
inner steps towards the subproblem's solution, fixing back a task that reaches its bound. The
subproblem (Γv)_F = 0 is solved on the cosine matrix by Cholesky, from scratch each step, in task
index order (the C++ solve keeps an updated factor in insertion order: the rounding differs, and
ties between equal ratios go to the lowest index here, the first freed there).

UPGrad: w = Σᵢ pᵢ·vᵢ with u = eᵢ (tasks with pᵢ = 0 skipped); DualProj: w = v with u = p.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace
from .kspace import MAX_TASKS  # noqa: F401  (the K limit of these launchers)

# The solver's tolerances and caps arrive as constexpr arguments in upper case (the fields of
# mtlkernels.methods.dual_cone.DualConeConstants, see kspace.constexprs).


@triton.jit
def _dual_cone_candidate(G, L, u, free, unit, K, BLOCK_K: tl.constexpr):
    """u off the free set; on it the solution of (Γv)_F = 0 from L, the Cholesky factor of the
    free set's cosine matrix (unit: the norms, 1 where 0)."""
    fixed_u = tl.where(free, 0.0, u)
    rhs = tl.where(free, -tl.sum(G * fixed_u[None, :], axis=1) / unit, 0.0)
    y = kspace.cholesky_solve(L, rhs, free, K, BLOCK_K)
    return tl.where(free, y / unit, u)


@triton.jit
def _dual_cone_settle(G, unit, u, free, steps, max_steps, K, BLOCK_K: tl.constexpr,
                      DEPENDENT_PIVOT: tl.constexpr):
    """(v, free, steps): a feasible start from the free mask: its longest independent prefix in
    index order (dropping the highest index until the Cholesky succeeds), less the tasks whose
    candidate falls to their bound (all at once, until the candidate is feasible); v is that
    candidate, or u with an empty mask when none is left."""
    offs = tl.arange(0, BLOCK_K)
    v = u
    settling = 1
    while (settling != 0) & (steps < max_steps) & (tl.sum(free.to(tl.int32), axis=0) > 0):
        L, independent = kspace.cholesky(_dual_cone_cosine(G, unit, free, BLOCK_K), free, K, BLOCK_K, DEPENDENT_PIVOT)
        if independent:
            candidate = _dual_cone_candidate(G, L, u, free, unit, K, BLOCK_K)
            steps += 1
            below = free & ~(candidate > u)
            if tl.sum(below.to(tl.int32), axis=0) == 0:
                v = candidate
                settling = 0
            else:
                free = free & ~below
        else:
            last = tl.max(tl.where(free, offs, -1), axis=0)
            free = free & (offs != last)
    if settling != 0:
        free = offs < 0
    return v, free, steps


@triton.jit
def _dual_cone_project(G, unit, u, in_k, K, BLOCK_K: tl.constexpr, TOLERANCE: tl.constexpr,
                       DEPENDENT_PIVOT: tl.constexpr, STEPS_PER_TASK: tl.constexpr, STEPS_EXTRA: tl.constexpr,
                       BLOCK_ROUNDS: tl.constexpr):
    """(v, subproblems solved) for min_{v ≥ u} vᵀΓv (see the module docstring)."""
    offs = tl.arange(0, BLOCK_K)
    max_steps = STEPS_PER_TASK * K + STEPS_EXTRA
    gu = tl.sum(G * u[None, :], axis=1)
    free = in_k & (gu < 0.0) & (u == 0.0)
    v, free, steps = _dual_cone_settle(G, unit, u, free, tl.full([], 0, tl.int32), max_steps, K, BLOCK_K,
                                       DEPENDENT_PIVOT)
    violated_before = tl.full([], K + 1, tl.int32)
    rounds = 1
    while rounds < BLOCK_ROUNDS:  # the block-pivoting rounds of the start
        terms = G * v[None, :]
        multipliers = tl.sum(terms, axis=1)
        scale = tl.sum(tl.abs(terms), axis=1)
        candidates = in_k & ~free & (scale > 0.0)
        relative = tl.where(candidates, multipliers / tl.where(scale > 0.0, scale, 1.0), 0.0)
        violated = relative < -TOLERANCE
        count = tl.sum(violated.to(tl.int32), axis=0)
        if (count == 0) | (count >= violated_before):
            rounds = BLOCK_ROUNDS
        else:
            violated_before = count
            v, free, steps = _dual_cone_settle(G, unit, u, free | violated, steps, max_steps, K, BLOCK_K,
                                               DEPENDENT_PIVOT)
            rounds += 1
    blocked = offs < 0
    running = 1
    while (running != 0) & (steps < max_steps):
        terms = G * v[None, :]
        multipliers = tl.sum(terms, axis=1)
        scale = tl.sum(tl.abs(terms), axis=1)
        candidates = in_k & ~free & ~blocked & (scale > 0.0)
        relative = tl.where(candidates, multipliers / tl.where(scale > 0.0, scale, 1.0), 0.0)
        if tl.min(relative, axis=0) < -TOLERANCE:
            j = tl.argmin(relative, axis=0)
            trial = free | (offs == j)
            L, independent = kspace.cholesky(_dual_cone_cosine(G, unit, trial, BLOCK_K), trial, K, BLOCK_K, DEPENDENT_PIVOT)
            if independent:
                free = trial
                inner = 1
                while (inner != 0) & (steps < max_steps):
                    L, independent = kspace.cholesky(_dual_cone_cosine(G, unit, free, BLOCK_K), free, K, BLOCK_K,
                                                     DEPENDENT_PIVOT)
                    candidate = _dual_cone_candidate(G, L, u, free, unit, K, BLOCK_K)
                    steps += 1
                    below = free & ~(candidate > u)
                    if tl.sum(below.to(tl.int32), axis=0) == 0:
                        v = candidate
                        inner = 0
                    else:
                        step = tl.where(v > candidate, (v - u) / tl.where(v > candidate, v - candidate, 1.0), 0.0)
                        ratio = tl.where(below, step, float("inf"))
                        t = tl.min(ratio, axis=0)
                        hit = tl.argmin(ratio, axis=0)
                        v = tl.where(free, v + t * (candidate - v), v)
                        v = tl.where(offs == hit, u, v)
                        free = free & (offs != hit) & (v > u)
                        v = tl.maximum(v, u)
                        if tl.sum(free.to(tl.int32), axis=0) == 0:
                            inner = 0
            else:  # gⱼ lies in the span of the free gradients: leave it at its bound
                blocked = blocked | (offs == j)
        else:
            running = 0
    return v, steps


@triton.jit
def _dual_cone_kkt(G, u, v, in_k):
    """The KKT residual of v for min_{v ≥ u} vᵀΓv (mtlkernels.methods.dual_cone.kkt_residual)."""
    terms = G * v[None, :]
    multipliers = tl.sum(terms, axis=1)
    scale = tl.sum(tl.abs(terms), axis=1)
    relative = tl.where(scale > 0.0, multipliers / tl.where(scale > 0.0, scale, 1.0), 0.0)
    violation = tl.maximum(tl.maximum(-relative, 0.0), tl.where(v > u, tl.abs(relative), 0.0))
    u_scale = tl.max(tl.abs(u), axis=0)
    primal = tl.where(u_scale > 0.0, tl.max(tl.maximum(u - v, 0.0), axis=0) / tl.where(u_scale > 0.0, u_scale, 1.0), 0.0)
    return tl.maximum(primal, tl.max(tl.where(in_k, violation, 0.0), axis=0))


@triton.jit
def _dual_cone_setup(gram_ptr, K, BLOCK_K: tl.constexpr):
    """(Γ symmetrised, the norms with 0 → 1)."""
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    G = (G + tl.trans(G)) / 2.0
    norms = tl.sqrt(tl.maximum(kspace.diagonal(G, BLOCK_K), 0.0))
    return G, tl.where(norms > 0.0, norms, 1.0)


@triton.jit
def _dual_cone_cosine(G, unit, free, BLOCK_K: tl.constexpr):
    """The cosine matrix of Γ on the free set (ones on the diagonal; off the free set: anything
    finite, the Cholesky factorisation does not read it). Built at each factorisation from Γ:
    depending on the free set, it cannot be hoisted out of the loops and held in registers as a
    second BLOCK_K² tile (32 registers per thread at BLOCK_K 64 and 8 warps)."""
    offs = tl.arange(0, BLOCK_K)
    free_unit = tl.where(free, unit, 1.0)
    return tl.where(offs[:, None] == offs[None, :], 1.0, G / (free_unit[:, None] * free_unit[None, :]))


@triton.jit
def _upgrad_solve_kernel(
    gram_ptr, pref_ptr, weights_ptr, kkt_ptr, iterations_ptr, K, BLOCK_K: tl.constexpr, TOLERANCE: tl.constexpr,
    DEPENDENT_PIVOT: tl.constexpr, STEPS_PER_TASK: tl.constexpr, STEPS_EXTRA: tl.constexpr, BLOCK_ROUNDS: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G, unit = _dual_cone_setup(gram_ptr, K, BLOCK_K)
    pref = tl.load(pref_ptr + offs, mask=in_k, other=0.0).to(tl.float64)
    weights = tl.zeros([BLOCK_K], dtype=tl.float64)
    kkt = tl.sum(weights, axis=0)
    steps = 0
    for i in range(K):
        p_i = tl.sum(tl.where(offs == i, pref, 0.0), axis=0)
        if p_i != 0.0:
            u = tl.where(offs == i, 1.0, 0.0).to(tl.float64)
            v, taken = _dual_cone_project(G, unit, u, in_k, K, BLOCK_K, TOLERANCE, DEPENDENT_PIVOT,
                                          STEPS_PER_TASK, STEPS_EXTRA, BLOCK_ROUNDS)
            weights += p_i * v
            kkt = tl.maximum(kkt, _dual_cone_kkt(G, u, v, in_k))
            steps += taken
    tl.store(weights_ptr + offs, weights, mask=in_k)
    tl.store(kkt_ptr, kkt)
    tl.store(iterations_ptr, steps)


@triton.jit
def _dualproj_solve_kernel(
    gram_ptr, pref_ptr, weights_ptr, kkt_ptr, iterations_ptr, active_ptr, K, BLOCK_K: tl.constexpr,
    TOLERANCE: tl.constexpr, DEPENDENT_PIVOT: tl.constexpr, STEPS_PER_TASK: tl.constexpr, STEPS_EXTRA: tl.constexpr,
    BLOCK_ROUNDS: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G, unit = _dual_cone_setup(gram_ptr, K, BLOCK_K)
    u = tl.load(pref_ptr + offs, mask=in_k, other=0.0).to(tl.float64)
    v, steps = _dual_cone_project(G, unit, u, in_k, K, BLOCK_K, TOLERANCE, DEPENDENT_PIVOT,
                                  STEPS_PER_TASK, STEPS_EXTRA, BLOCK_ROUNDS)
    tl.store(weights_ptr + offs, v, mask=in_k)
    tl.store(kkt_ptr, _dual_cone_kkt(G, u, v, in_k))
    tl.store(iterations_ptr, steps)
    tl.store(active_ptr + offs, (v > u).to(tl.int8), mask=in_k)


def _outputs(K: int, device: torch.device) -> dict[str, Tensor]:
    return {
        "weights": torch.empty(K, dtype=torch.float64, device=device),
        "kkt_residual": torch.empty((), dtype=torch.float64, device=device),
        "iterations": torch.empty((), dtype=torch.int32, device=device),
    }


def upgrad_solve(gram: Tensor, pref: Tensor, constants: Any) -> dict[str, Tensor]:
    """csrc's upgrad_solve on the device: {"weights" [K] float64, "kkt_residual" (0-d float64),
    "iterations" (0-d int32)}.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; pref: the K preferences on gram's
    device (unchecked here); constants: :class:`mtlkernels.methods.dual_cone.DualConeConstants`."""
    K = gram.shape[0]
    out = _outputs(K, gram.device)
    block, warps = kspace.launch_config(K)
    _upgrad_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), pref.contiguous(), out["weights"], out["kkt_residual"], out["iterations"], K,
        BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    return out


def dualproj_solve(gram: Tensor, pref: Tensor, constants: Any) -> dict[str, Tensor]:
    """csrc's dualproj_solve on the device: as :func:`upgrad_solve`, plus "active_tasks" ([K] bool,
    the tasks with wᵢ > prefᵢ)."""
    K = gram.shape[0]
    out = _outputs(K, gram.device)
    active = torch.empty(K, dtype=torch.int8, device=gram.device)
    block, warps = kspace.launch_config(K)
    _dualproj_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), pref.contiguous(), out["weights"], out["kkt_residual"], out["iterations"], active, K,
        BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    out["active_tasks"] = active.bool()
    return out
