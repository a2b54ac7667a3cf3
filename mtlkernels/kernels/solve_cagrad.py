"""On-device CAGrad solve: one Triton program, Γ in float64 registers, no host synchronisation.

d = argmax_{‖d − g₀‖ ≤ √φ} minᵢ gᵢ·d = g₀ + Jᵀu, φ = c²‖g₀‖², weights (1/K + u)·factor (Liu et al.,
"Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021), by csrc/solvers/cagrad.h's
exact algorithm: with A = Γ/tr Γ and b = A𝟙/K, u(μ) = argmin_{u≥0} ½uᵀAu + (b − μ𝟙)ᵀu follows a
piecewise-linear path in μ (tasks enter and leave the active set S at breakpoints) until uᵀAu = φ;
an entering gradient that depends on the active ones either swaps one out along the null vector
(d unchanged) or, when the gradients' hull contains 0, stops the path at μ = 0 (the degenerate
case, its dual point by Lawson–Hanson); the last face is then re-solved directly and its active
set checked task by task. Systems on S go through the unit-diagonal A_SS/(σσᵀ): Cholesky, or least
squares on its Jacobi eigen-decomposition once Cholesky finds it singular, each with one step of
iterative refinement. Ties are broken as there (entering task: lowest index; leaving task:
earliest added); the Cholesky factorisations run in task-index order (insertion order there),
which changes rounding only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from typing import Any

from . import kspace
from .kspace import MAX_TASKS

# The solver's tolerances and iteration caps arrive as constexpr arguments in upper case (the
# fields of mtlkernels.methods.cagrad.CAGradConstants, see kspace.constexprs).

#: the smallest normal double (std::numeric_limits<double>::min())
TINY = tl.constexpr(2.2250738585072014e-308)
#: a timestamp later than any insertion
NEVER = tl.constexpr(2**30)

# the kinds of dual point: none (u's), the worst-off task (c = 0 or g₀ = 0), the zero gradients, the hull's
NO_DUAL_POINT = tl.constexpr(0)
WORST_TASK = tl.constexpr(1)
ZERO_ROWS = tl.constexpr(2)
HULL = tl.constexpr(3)

# path events
BALL = tl.constexpr(0)
CAP = tl.constexpr(1)
ENTER = tl.constexpr(2)
LEAVE = tl.constexpr(3)


@triton.jit
def _cagrad_active_solve(
    A, sigma, S, y1, y2, last, K, BLOCK_K: tl.constexpr, PAIR: tl.constexpr,
    PIVOT_TOLERANCE: tl.constexpr, EIGEN_RCOND: tl.constexpr, CONSISTENCY_TOLERANCE: tl.constexpr, MAX_SWEEPS: tl.constexpr,
):
    """x with A_SS·x = y (for y1, and y2 when PAIR) through M = A_SS/(σσᵀ): Cholesky, or least
    squares without M's eigenvalues below EIGEN_RCOND·λ_max once Cholesky fails; one step of
    iterative refinement either way (csrc/solvers/cagrad.h ActiveSystem). Returns
    (x1, x2, consistent1, consistent2, z): consistent is False when the scaled y has a component
    along a dropped eigenvector v beyond CONSISTENCY_TOLERANCE·|v|ᵀ|y|; z (least squares only) is
    the unit vector of task ``last`` projected onto the dropped eigenvectors, unscaled: A_SS·z ≈ 0."""
    offs = tl.arange(0, BLOCK_K)
    safe_sigma = tl.where(S, sigma, 1.0)
    M = tl.where(S[:, None] & S[None, :], A / (safe_sigma[:, None] * safe_sigma[None, :]), 0.0)
    rhs1 = tl.where(S, y1 / safe_sigma, 0.0)
    rhs2 = tl.where(S, y2 / safe_sigma, 0.0)
    L, positive_definite = kspace.cholesky(M, S, K, BLOCK_K, PIVOT_TOLERANCE)
    x1 = tl.zeros([BLOCK_K], dtype=tl.float64)
    x2 = tl.zeros([BLOCK_K], dtype=tl.float64)
    z = tl.zeros([BLOCK_K], dtype=tl.float64)
    consistent1 = tl.sum(S.to(tl.int32), axis=0) >= 0
    consistent2 = consistent1
    if positive_definite:
        x1 = kspace.cholesky_solve(L, rhs1, S, K, BLOCK_K)
        x1 += kspace.cholesky_solve(L, tl.where(S, rhs1 - kspace.matvec(M, x1), 0.0), S, K, BLOCK_K)
        if PAIR:
            x2 = kspace.cholesky_solve(L, rhs2, S, K, BLOCK_K)
            x2 += kspace.cholesky_solve(L, tl.where(S, rhs2 - kspace.matvec(M, x2), 0.0), S, K, BLOCK_K)
    else:
        lam, V = kspace.symmetric_eigen(M, K, BLOCK_K, MAX_SWEEPS)
        largest = tl.max(tl.where(S, tl.abs(lam), 0.0), axis=0)
        keep = S & (lam > EIGEN_RCOND * largest)
        drop = S & ~keep
        inverse = tl.where(keep, 1.0 / tl.where(keep, lam, 1.0), 0.0)
        coefficients = tl.sum(V * rhs1[:, None], axis=0)
        magnitudes = tl.sum(tl.abs(V * rhs1[:, None]), axis=0)
        consistent1 = tl.sum((drop & (tl.abs(coefficients) > CONSISTENCY_TOLERANCE * magnitudes)).to(tl.int32), axis=0) == 0
        x1 = kspace.matvec(V, coefficients * inverse)
        residual = tl.where(S, rhs1 - kspace.matvec(M, x1), 0.0)
        x1 += kspace.matvec(V, tl.sum(V * residual[:, None], axis=0) * inverse)
        if PAIR:
            coefficients = tl.sum(V * rhs2[:, None], axis=0)
            magnitudes = tl.sum(tl.abs(V * rhs2[:, None]), axis=0)
            consistent2 = (
                tl.sum((drop & (tl.abs(coefficients) > CONSISTENCY_TOLERANCE * magnitudes)).to(tl.int32), axis=0) == 0
            )
            x2 = kspace.matvec(V, coefficients * inverse)
            residual = tl.where(S, rhs2 - kspace.matvec(M, x2), 0.0)
            x2 += kspace.matvec(V, tl.sum(V * residual[:, None], axis=0) * inverse)
        last_row = tl.sum(tl.where(offs[:, None] == last, V, 0.0), axis=0)  # V[last, k]
        z = kspace.matvec(V, tl.where(drop, last_row, 0.0))
    return (
        tl.where(S, x1 / safe_sigma, 0.0), tl.where(S, x2 / safe_sigma, 0.0), consistent1, consistent2,
        tl.where(S, z / safe_sigma, 0.0),
    )


@triton.jit
def _cagrad_face(
    A, b, sigma, S, radius_sq, at_zero, K, BLOCK_K: tl.constexpr,
    PIVOT_TOLERANCE: tl.constexpr, EIGEN_RCOND: tl.constexpr, CONSISTENCY_TOLERANCE: tl.constexpr, MAX_SWEEPS: tl.constexpr,
):
    """(u_S, μ, ok) on the face S solved directly: A_SS·u_S + b_S = μ𝟙, u_S = μδ − β with A_SS·δ = 𝟙,
    A_SS·β = b_S; μ = 0 when ``at_zero``, else the larger root of qμ² − 2pμ + b_Sᵀβ = φ."""
    ones = tl.where(S, 1.0, 0.0).to(tl.float64)
    beta, delta, beta_ok, delta_ok, _ = _cagrad_active_solve(
        A, sigma, S, b, ones, 0, K, BLOCK_K, True, PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS
    )
    q = tl.sum(delta, axis=0)
    p = tl.sum(beta, axis=0)
    constant = tl.sum(tl.where(S, b, 0.0) * beta, axis=0) - radius_sq
    discriminant = p * p - q * constant
    root = tl.sqrt(tl.maximum(discriminant, 0.0))
    mu = tl.where(p >= 0.0, (p + root) / q, constant / (p - root))
    mu = tl.where(at_zero, 0.0, mu)
    ok = beta_ok & (at_zero | (delta_ok & (q > 0.0) & (discriminant >= 0.0)))
    return tl.where(S, mu * delta - beta, 0.0), mu, ok


@triton.jit
def _cagrad_refine(
    A, b, sigma, u, radius_sq, mean_sq, at_zero, K, BLOCK_K: tl.constexpr,
    REFINE_TOLERANCE: tl.constexpr, REFINE_ROUNDS_PER_TASK: tl.constexpr, REFINE_ROUNDS_EXTRA: tl.constexpr,
    PIVOT_TOLERANCE: tl.constexpr, EIGEN_RCOND: tl.constexpr, CONSISTENCY_TOLERANCE: tl.constexpr, MAX_SWEEPS: tl.constexpr,
):
    """Re-solve the final face and fix its active set task by task, task i's KKT condition judged
    at its scale (‖gᵢ‖ + min_S‖gⱼ‖)·(‖g₀‖ + √φ); a face out of the ball's reach drops the task of
    least uᵢ‖gᵢ‖ (csrc/solvers/cagrad.h refine). u is kept when no face passes."""
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    S = in_k & (u > 0.0)
    added = tl.where(S, offs, NEVER)
    clock = K
    d_scale = tl.sqrt(mean_sq) + tl.sqrt(radius_sq)
    rounds = 0
    running = (tl.sum(S.to(tl.int32), axis=0) > 0).to(tl.int32)
    while (running != 0) & (rounds < REFINE_ROUNDS_PER_TASK * K + REFINE_ROUNDS_EXTRA):
        rounds += 1
        u_S, mu, ok = _cagrad_face(
            A, b, sigma, S, radius_sq, at_zero, K, BLOCK_K, PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS
        )
        if ~ok:  # the ball is out of reach: drop the task nearest to leaving
            nearest = tl.where(S, u * sigma, float("inf"))
            leaving = tl.argmin(tl.where(S & (nearest == tl.min(nearest, axis=0)), added, NEVER), axis=0)
            S = S & (offs != leaving)
            added = tl.where(S, added, NEVER)
        else:
            scaled = tl.where(S, u_S * sigma, 0.0)
            largest = tl.max(tl.abs(scaled), axis=0)
            lowest = tl.minimum(tl.min(scaled, axis=0), 0.0)
            if lowest < -REFINE_TOLERANCE * largest:
                leaving = tl.argmin(tl.where(S & (scaled == lowest), added, NEVER), axis=0)
                S = S & (offs != leaving)
                added = tl.where(S, added, NEVER)
            else:
                candidate = tl.where(S, tl.maximum(u_S, 0.0), 0.0)
                r = b + kspace.matvec(A, candidate)
                reference_norm = tl.min(tl.where(S, sigma, float("inf")), axis=0)  # μ is exact to the active tasks' scale
                violation = tl.where(in_k & (sigma > 0.0) & ~S, (mu - r) / ((sigma + reference_norm) * d_scale), -float("inf"))
                worst = tl.argmax(violation, axis=0)
                if tl.max(violation, axis=0) > REFINE_TOLERANCE:
                    S = S | (offs == worst)
                    added = tl.where(offs == worst, clock, added)
                    clock += 1
                else:
                    u = candidate
                    running = 0
        running = running * (tl.sum(S.to(tl.int32), axis=0) > 0).to(tl.int32)
    return u


@triton.jit
def _cagrad_hull_zero_point(
    A, sigma, has_zero_row, K, BLOCK_K: tl.constexpr,
    HULL_TOLERANCE: tl.constexpr, HULL_ROUNDS_PER_TASK: tl.constexpr, HULL_ROUNDS_EXTRA: tl.constexpr,
    PIVOT_TOLERANCE: tl.constexpr, EIGEN_RCOND: tl.constexpr, CONSISTENCY_TOLERANCE: tl.constexpr, MAX_SWEEPS: tl.constexpr,
):
    """w on the simplex with Σᵢ wᵢgᵢ ≈ 0 when 0 ∈ conv{gᵢ} (the degenerate case's dual point; the
    best such attempt otherwise): the zero gradients if any, else w ∝ v/‖gᵢ‖ with v from
    Lawson–Hanson's active-set method for min_{v≥0} ‖Σᵢ vᵢĝᵢ‖² + (𝟙ᵀv − 1)² on the unit vectors,
    in Gram form on Q = A/(σσᵀ) + 𝟙𝟙ᵀ (csrc/solvers/cagrad.h hull_zero_point)."""
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    ones = tl.where(in_k, 1.0, 0.0).to(tl.float64)
    w = tl.zeros([BLOCK_K], dtype=tl.float64)
    if has_zero_row:
        zero_rows = tl.where(in_k & ~(sigma > 0.0), 1.0, 0.0).to(tl.float64)
        w = zero_rows / tl.sum(zero_rows, axis=0)
    else:
        safe_sigma = tl.where(in_k, sigma, 1.0)
        # Q's entries are formed where used, for the columns that matter there (w ≠ 0, the passive
        # set): built from a loop-varying mask, no Q tile is hoisted and held next to A
        q_sigma = tl.sqrt(tl.where(in_k, 2.0, 1.0).to(tl.float64))  # √Qᵢᵢ = √2
        passive = offs < 0
        rounds = 0
        running = 1
        while (running != 0) & (rounds < HULL_ROUNDS_PER_TASK * K + HULL_ROUNDS_EXTRA):
            rounds += 1
            Q_w = A / (safe_sigma[:, None] * tl.where(w != 0.0, safe_sigma, 1.0)[None, :]) + 1.0  # Q on w's columns
            gradient = tl.where(in_k & ~passive, 1.0 - kspace.matvec(Q_w, w), -float("inf"))  # −½ ∇
            if tl.max(gradient, axis=0) > HULL_TOLERANCE:
                passive = passive | (offs == tl.argmax(gradient, axis=0))
                inner = 0
                while (tl.sum(passive.to(tl.int32), axis=0) > 0) & (inner <= K):  # each pass drops a task or ends
                    inner += 1
                    Q_passive = A / (safe_sigma[:, None] * tl.where(passive, safe_sigma, 1.0)[None, :]) + 1.0
                    z, _, _, _, _ = _cagrad_active_solve(
                        Q_passive, q_sigma, passive, ones, ones, 0, K, BLOCK_K, False, PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS
                    )
                    ratios = w / (w - z)
                    ratios = tl.where(passive & (z <= 0.0) & (ratios == ratios), ratios, float("inf"))
                    ratio = tl.min(ratios, axis=0)
                    if ratio < float("inf"):
                        blocking = tl.argmin(ratios, axis=0)
                        w = tl.where(passive, w + ratio * (z - w), w)
                        w = tl.where(offs == blocking, 0.0, w)
                        passive = passive & (w > 0.0)
                    else:
                        w = tl.where(passive, z, 0.0)
                        inner = K + 1
            else:
                running = 0
        w = tl.maximum(w, 0.0) / safe_sigma
        total = tl.sum(w, axis=0)
        w = tl.where(in_k, tl.where(total > 0.0, w / tl.where(total > 0.0, total, 1.0), 1.0 / tl.sum(ones, axis=0)), 0.0)
    return w


@triton.jit
def _cagrad_parked(ptr):
    """A scalar parked in memory by :func:`_cagrad_solve_kernel` (stored by another thread)."""
    tl.debug_barrier()
    return tl.load(ptr, volatile=True)


@triton.jit
def _cagrad_zero_rows_point(nonzero, K, BLOCK_K: tl.constexpr):
    """The uniform weights on the zero gradients (built where needed, not held through the path)."""
    zero_rows = tl.where((tl.arange(0, BLOCK_K) < K) & ~nonzero, 1.0, 0.0).to(tl.float64)
    return zero_rows / tl.maximum(tl.sum(zero_rows, axis=0), 1.0)


@triton.jit
def _cagrad_is_zero_combination(A, sigma, w, HULL_ZERO_TOLERANCE: tl.constexpr):
    """‖Σᵢ wᵢgᵢ‖ ≤ HULL_ZERO_TOLERANCE·Σᵢ wᵢ‖gᵢ‖ (the square root of Γ's rounding)."""
    scale = HULL_ZERO_TOLERANCE * tl.sum(w * sigma, axis=0)
    return tl.sum(w * kspace.matvec(A, w), axis=0) <= scale * scale


@triton.jit
def _cagrad_solve_kernel(
    gram_ptr, weights_ptr, active_ptr, degenerate_ptr, iterations_ptr, facts_ptr,
    K, C: tl.constexpr, FACTOR: tl.constexpr, BLOCK_K: tl.constexpr,
    PIVOT_TOLERANCE: tl.constexpr, EIGEN_RCOND: tl.constexpr, CONSISTENCY_TOLERANCE: tl.constexpr,
    RATE_TOLERANCE: tl.constexpr, REFINE_TOLERANCE: tl.constexpr, HULL_TOLERANCE: tl.constexpr,
    HULL_ZERO_TOLERANCE: tl.constexpr, MAX_SWEEPS: tl.constexpr,
    PATH_STEPS_PER_TASK: tl.constexpr, PATH_STEPS_EXTRA: tl.constexpr,
    REFINE_ROUNDS_PER_TASK: tl.constexpr, REFINE_ROUNDS_EXTRA: tl.constexpr,
    HULL_ROUNDS_PER_TASK: tl.constexpr, HULL_ROUNDS_EXTRA: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    k_tasks = tl.sum(in_k.to(tl.float64), axis=0)
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    trace = tl.sum(kspace.diagonal(G, BLOCK_K), axis=0)
    A = tl.where(trace > 0.0, 0.5 * (G + tl.trans(G)) / tl.where(trace > 0.0, trace, 1.0), 0.0)
    tl.store(facts_ptr + 3, trace)  # parked in its output slot until the certificate (not held in registers)
    b = tl.sum(A, axis=1) / k_tasks  # gᵢ·g₀
    mean_sq = tl.maximum(tl.sum(b, axis=0) / k_tasks, 0.0)  # ‖g₀‖²
    radius_sq = C * C * mean_sq  # φ
    tl.store(facts_ptr + 4, mean_sq)  # parked in an output slot for the refinement and the certificate
    sigma = tl.sqrt(tl.maximum(kspace.diagonal(A, BLOCK_K), 0.0))
    nonzero = in_k & (sigma > 0.0)
    has_zero_row = tl.sum((in_k & ~nonzero).to(tl.int32), axis=0) > 0
    first = tl.argmin(tl.where(nonzero, b, float("inf")), axis=0)

    u = tl.zeros([BLOCK_K], dtype=tl.float64)
    # the dual point of a degenerate or trivial case, by kind (no vector of it is carried through
    # the path: the hull's point is parked in the weights' output until the certificate)
    has_dual_point = NO_DUAL_POINT
    degenerate = 0
    iterations = 0
    mu = tl.sum(tl.where(offs == first, b, 0.0), axis=0)
    if radius_sq == 0.0:  # c = 0 or g₀ = 0: d = g₀; the dual's minimiser is the worst-off task
        degenerate = (mean_sq == 0.0).to(tl.int32)
        has_dual_point = WORST_TASK
    elif has_zero_row & (mu >= 0.0):  # a zero gradient caps μ at 0, already reached by the mean
        degenerate = 1
        has_dual_point = ZERO_ROWS
    else:
        S = offs == first
        added = tl.where(S, 0, NEVER)
        clock = 1
        blocked = offs < 0  # tasks that left without μ moving may not re-enter until it moves (no cycling)
        running = 1
        iteration = 1
        while (running != 0) & (iteration < PATH_STEPS_PER_TASK * K + PATH_STEPS_EXTRA) & (tl.sum(S.to(tl.int32), axis=0) > 0):
            iterations = iteration
            last = tl.argmax(tl.where(S, added, -1), axis=0)  # the latest added task
            delta, _, consistent, _, z = _cagrad_active_solve(
                A, sigma, S, S.to(tl.float64), S.to(tl.float64), last, K, BLOCK_K, False, PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS
            )
            if consistent:
                rate = kspace.matvec(A, tl.where(S, delta, 0.0))  # d(gᵢ·d)/dμ (A's columns on S: no masked copy of A)
                r = b + kspace.matvec(A, tl.where(S, u, 0.0))
                rho = tl.sum(tl.where(S, u * (r - b), 0.0), axis=0)
                p = tl.sum(tl.where(S, u * rate, 0.0), axis=0)
                q = tl.sum(tl.where(S, delta * rate, 0.0), axis=0)
                room = tl.maximum(radius_sq - rho, 0.0)
                root = tl.sqrt(tl.maximum(p * p + q * room, 0.0))
                step = tl.where(p + root > 0.0, room / tl.where(p + root > 0.0, p + root, 1.0), float("inf"))
                event = tl.full([], BALL, tl.int32)
                index = first
                if has_zero_row & (-mu < step):
                    step = tl.maximum(-mu, 0.0)
                    event = tl.full([], CAP, tl.int32)
                # rows moving with μ (duplicates) never enter
                enter_times = tl.where(
                    nonzero & (rate < 1.0 - RATE_TOLERANCE) & ~S & ~blocked,
                    tl.maximum(r - mu, 0.0) / (1.0 - rate),
                    float("inf"),
                )
                if tl.min(enter_times, axis=0) < step:
                    step = tl.min(enter_times, axis=0)
                    event = tl.full([], ENTER, tl.int32)
                    index = tl.argmin(enter_times, axis=0)
                leave_times = tl.where(S & (delta < 0.0), -u / tl.where(S & (delta < 0.0), delta, -1.0), float("inf"))
                if tl.min(leave_times, axis=0) < step:
                    step = tl.min(leave_times, axis=0)
                    event = tl.full([], LEAVE, tl.int32)
                    index = tl.argmin(tl.where(leave_times == step, added, NEVER), axis=0)
                u = tl.where(S, u + step * delta, u)
                mu += step
                if step > 0.0:
                    blocked = offs < 0
                if event == BALL:
                    running = 0
                elif event == CAP:
                    degenerate = 1
                    has_dual_point = ZERO_ROWS
                    running = 0
                elif event == ENTER:
                    S = S | (offs == index)
                    added = tl.where(offs == index, clock, added)
                    clock += 1
                else:
                    u = tl.where(offs == index, 0.0, u)
                    if step == 0.0:
                        blocked = blocked | (offs == index)
                    S = S & (offs != index)
                    added = tl.where(S, added, NEVER)
            else:  # the entering gradient depends on the active ones: μ = 0 here
                hull_point = _cagrad_hull_zero_point(
                    A, sigma, has_zero_row, K, BLOCK_K, HULL_TOLERANCE, HULL_ROUNDS_PER_TASK, HULL_ROUNDS_EXTRA,
                    PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS,
                )
                # a degenerate pivot (Σ zₖgₖ = 0 with mixed signs, e.g. parallel gradients of different
                # norms): move u_S along z, d unchanged, until an active multiplier reaches 0
                z = tl.where(tl.sum(tl.where(offs == last, z, 0.0), axis=0) < 0.0, -z, z)
                scaled = tl.where(S, z * sigma, 0.0)
                candidates = S & (scaled < -CONSISTENCY_TOLERANCE * tl.max(tl.abs(scaled), axis=0))
                ratios = tl.where(candidates, u / tl.where(candidates, -z, 1.0), float("inf"))
                ratio = tl.min(ratios, axis=0)
                swapped_out = tl.argmin(tl.where(candidates & (ratios == ratio), added, NEVER), axis=0)
                swap = (
                    ~_cagrad_is_zero_combination(A, sigma, hull_point, HULL_ZERO_TOLERANCE)
                    & (tl.sum(tl.where(offs == last, z, 0.0), axis=0) > 0.0)
                    & (ratio < float("inf"))
                )
                if swap:
                    u = tl.where(S, tl.maximum(u + ratio * z, 0.0), u)
                    u = tl.where(offs == swapped_out, 0.0, u)
                    blocked = blocked | (offs == swapped_out)
                    S = S & (offs != swapped_out)
                    added = tl.where(S, added, NEVER)
                else:  # μ cannot rise: 0 ∈ conv{gᵢ}
                    degenerate = 1
                    tl.store(weights_ptr + offs, hull_point, mask=in_k)
                    has_dual_point = HULL
                    running = 0
            iteration += 1
        u = _cagrad_refine(  # after the ball, at μ = 0, or at the iteration cap
            A, b, sigma, tl.maximum(u, 0.0), radius_sq, _cagrad_parked(facts_ptr + 4), degenerate != 0, K, BLOCK_K,
            REFINE_TOLERANCE, REFINE_ROUNDS_PER_TASK, REFINE_ROUNDS_EXTRA, PIVOT_TOLERANCE, EIGEN_RCOND, CONSISTENCY_TOLERANCE, MAX_SWEEPS,
        )

    # certificate (csrc/solvers/cagrad.h certify; mtlkernels.methods.cagrad.certificate)
    radius = C * tl.sqrt(mean_sq)
    r = b + kspace.matvec(A, u)
    primal = tl.min(tl.where(in_k, r, float("inf")), axis=0)
    distance = tl.sqrt(tl.maximum(tl.sum(u * kspace.matvec(A, u), axis=0), 0.0))
    d_scale = tl.sqrt(mean_sq) + radius
    u_sum = tl.sum(u, axis=0)
    tl.debug_barrier()  # the hull's point and tr Γ, stored by other threads
    trace = tl.load(facts_ptr + 3, volatile=True)
    mean_sq = tl.load(facts_ptr + 4, volatile=True)
    dual_point = tl.load(weights_ptr + offs, mask=in_k, other=0.0, volatile=True)
    if has_dual_point == WORST_TASK:
        dual_point = tl.where(offs == tl.argmin(tl.where(in_k, b, float("inf")), axis=0), 1.0, 0.0).to(tl.float64)
    elif has_dual_point == ZERO_ROWS:
        dual_point = _cagrad_zero_rows_point(nonzero, K, BLOCK_K)
    w = tl.where(has_dual_point != NO_DUAL_POINT, dual_point, u / tl.where(u_sum != 0.0, u_sum, 1.0))
    dual = tl.sum(w * b, axis=0) + radius * tl.sqrt(tl.maximum(tl.sum(w * kspace.matvec(A, w), axis=0), 0.0))
    active = in_k & (u > 0.0)
    any_active = tl.sum(active.to(tl.int32), axis=0) > 0
    smallest = tl.argmin(tl.where(active, sigma, float("inf")), axis=0)
    from_active = any_active & (has_dual_point == NO_DUAL_POINT)
    mu = tl.where(any_active, tl.where(from_active, tl.sum(tl.where(offs == smallest, r, 0.0), axis=0), 0.0), primal)
    reference_norm = tl.where(from_active, tl.sum(tl.where(offs == smallest, sigma, 0.0), axis=0), 0.0)
    violation = tl.where(active, tl.abs(r - mu), tl.maximum(mu - r, 0.0)) / tl.maximum(
        (sigma + reference_norm) * d_scale, TINY
    )
    kkt = tl.max(tl.where(nonzero, violation, 0.0), axis=0)
    top = tl.max(tl.where(in_k, sigma, 0.0), axis=0) * d_scale

    tl.debug_barrier()  # every thread has read the parked dual point before the weights overwrite it
    tl.store(weights_ptr + offs, (1.0 / (tl.full([], 1.0, tl.float64) * K) + u) * FACTOR, mask=in_k)  # 1/K formed again
    tl.store(active_ptr + offs, active, mask=in_k)
    tl.store(degenerate_ptr, degenerate != 0)
    tl.store(iterations_ptr, iterations)
    tl.store(facts_ptr, kkt)
    tl.store(facts_ptr + 1, tl.where(radius > 0.0, (distance - radius) / tl.where(radius > 0.0, radius, 1.0), 0.0))
    tl.store(facts_ptr + 2, tl.where(top > 0.0, (dual - primal) / tl.where(top > 0.0, top, 1.0), 0.0))
    tl.store(facts_ptr + 3, primal * trace)
    tl.store(facts_ptr + 4, dual * trace)
    tl.store(facts_ptr + 5, u_sum)


def cagrad_solve(gram: Tensor, c: float, factor: float, constants: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """csrc's cagrad_solve on the device: weights (1/K + u)·factor [K] float64 and the diagnostics
    kkt_residual, ball_residual, duality_gap, worst_improvement, dual_objective, multiplier_sum
    (0-d float64), degenerate (0-d bool), iterations (0-d int32), active_set ([K] bool mask).

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; c ≥ 0 and factor are compile-time
    constants of the kernel (one compilation per value, as a weighting keeps them fixed), and so
    are the solver's ``constants`` (a :class:`mtlkernels.methods.cagrad.CAGradConstants`).
    """
    K = gram.shape[0]
    device = gram.device
    weights = torch.empty(K, dtype=torch.float64, device=device)
    active = torch.empty(K, dtype=torch.bool, device=device)
    degenerate = torch.empty((), dtype=torch.bool, device=device)
    iterations = torch.empty((), dtype=torch.int32, device=device)
    facts = torch.empty(6, dtype=torch.float64, device=device)
    block, warps = kspace.launch_config(K)
    _cagrad_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), weights, active, degenerate, iterations, facts, K,
        C=float(c), FACTOR=float(factor), BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS,
        **kspace.constexprs(constants),
    )
    names = ("kkt_residual", "ball_residual", "duality_gap", "worst_improvement", "dual_objective", "multiplier_sum")
    diagnostics: dict[str, Tensor] = dict(zip(names, facts.unbind()))
    diagnostics.update(active_set=active, degenerate=degenerate, iterations=iterations)
    return weights, diagnostics

