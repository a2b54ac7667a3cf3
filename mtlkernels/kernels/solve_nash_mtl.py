"""On-device Nash-MTL solve: one Triton program, Γ in float64 registers, no host synchronisation.

α > 0 with αᵢ·(Γα)ᵢ = 1, then w = α·min(1, max_norm/√(αᵀΓα)) (Navon et al., "Multi-Task Learning
as a Bargaining Game", ICML 2022). With βᵢ = ‖gᵢ‖αᵢ and the cosine matrix C, damped Newton on
f(β) = ½βᵀCβ − Σ log βᵢ from the warm start rescaled onto the optimal ray, every iterate > 0;
zero gradients get weight 0; an iterate passing diverged_beta, or one where f's Hessian is not positive
definite (f unbounded below: no positive solution), drops the tasks still growing and the
largest βᵢ and solves the rest again — the algorithm, constants and certificates of
csrc/solvers/nash_mtl.h, step for step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from typing import Any

from . import kspace
from .kspace import MAX_TASKS

# The solver's caps and tolerances arrive as constexpr arguments in upper case (the fields of
# mtlkernels.methods.nash_mtl.NashMTLConstants, see kspace.constexprs).

# Newton round status
RUNNING = tl.constexpr(0)
CONVERGED = tl.constexpr(1)
DIVERGED = tl.constexpr(2)


@triton.jit
def _nash_mtl_growing(growth, beta, kept, BLOCK_K: tl.constexpr):
    """The tasks dropped when f is unbounded below: relative last step > 1/4, and the largest βᵢ."""
    offs = tl.arange(0, BLOCK_K)
    largest = tl.argmax(tl.where(kept, beta, -float("inf")), axis=0)
    return kept & ((growth > 0.25) | (offs == largest))


@triton.jit
def _nash_mtl_barrier_newton(
    C, beta, kept, K, BLOCK_K: tl.constexpr,
    MAX_NEWTON_STEPS: tl.constexpr, CONVERGED_DECREMENT2: tl.constexpr, DIVERGED_BETA: tl.constexpr,
):
    """Minimise f(β) = ½βᵀCβ − Σ log βᵢ over the ``kept`` tasks by damped Newton from β > 0, every
    iterate > 0: (β, steps, status, growing). f is taken as unbounded below (status DIVERGED) when
    the iterate passes DIVERGED_BETA or f's Hessian C + diag(β⁻²) is not positive definite;
    ``growing`` then masks the tasks whose βᵢ grows (relative step > 1/4) and the largest βᵢ."""
    offs = tl.arange(0, BLOCK_K)
    eye = offs[:, None] == offs[None, :]
    growing = offs < 0
    growth = tl.zeros([BLOCK_K], dtype=tl.float64)  # the last step relative to its starting iterate
    previous_decrement2 = tl.full([], float("inf"), tl.float64)
    steps = 0
    status = RUNNING
    while (steps < MAX_NEWTON_STEPS) & (status == RUNNING):
        steps += 1
        safe_beta = tl.where(kept, beta, 1.0)
        C_beta = tl.sum(C * beta[None, :], axis=1)
        gradient = tl.where(kept, C_beta - 1.0 / safe_beta, 0.0)
        H = tl.where(eye, C + tl.where(kept, 1.0 / (safe_beta * safe_beta), 0.0)[:, None], C)
        L, factored = kspace.cholesky(H, kept, K, BLOCK_K, 0.0)
        if factored:
            step = -tl.where(kept, kspace.cholesky_solve(L, gradient, kept, K, BLOCK_K), 0.0)
            decrement2 = -tl.sum(gradient * step, axis=0)
            # the step's length: the Newton decrement λ, or the step in the barrier's local norm when
            # longer (C with negative curvature); |stepᵢ|/βᵢ ≤ length, so β + t·step > 0 for t·length < 1
            relative = step / safe_beta
            length = tl.maximum(tl.sqrt(tl.maximum(decrement2, 0.0)), tl.sqrt(tl.sum(relative * relative, axis=0)))
            if length * length <= CONVERGED_DECREMENT2:
                beta += step
                status = CONVERGED
            elif length < 0.25:  # quadratic region: full steps, stop at the rounding floor
                if decrement2 >= previous_decrement2:
                    steps -= 1
                    status = CONVERGED
                else:
                    previous_decrement2 = decrement2
                    growth = relative
                    beta += step
            else:
                trial = beta + step
                positive = tl.sum((kept & (trial <= 0.0)).to(tl.int32), axis=0) == 0
                f_beta = 0.5 * tl.sum(beta * C_beta, axis=0) - tl.sum(tl.log(safe_beta), axis=0)
                safe_trial = tl.where(kept & (trial > 0.0), trial, 1.0)
                f_trial = 0.5 * tl.sum(trial * tl.sum(C * trial[None, :], axis=1), axis=0) - tl.sum(
                    tl.log(safe_trial), axis=0
                )
                accepted = positive & (f_trial <= f_beta - 0.25 * decrement2)
                step = tl.where(accepted, step, step / (1.0 + length))  # the damped step of self-concordant analysis
                growth = step / safe_beta
                beta += step
                if tl.max(tl.where(kept, beta, -float("inf")), axis=0) > DIVERGED_BETA:
                    growing = _nash_mtl_growing(growth, beta, kept, BLOCK_K)
                    status = DIVERGED
        else:  # f is not convex at β: C's negative curvature outweighs the barrier's
            steps -= 1
            growing = _nash_mtl_growing(growth, beta, kept, BLOCK_K)
            status = DIVERGED
    return beta, steps, status, growing


@triton.jit
def _nash_mtl_solve_kernel(
    gram_ptr, alpha_ptr, counters_ptr, weights_ptr, dropped_ptr, iterations_ptr, converged_ptr, reused_ptr,
    step_ptr, certificates_ptr,
    K, MAX_NORM: tl.constexpr, UPDATE_EVERY: tl.constexpr, BLOCK_K: tl.constexpr,
    MAX_NEWTON_STEPS: tl.constexpr, CONVERGED_DECREMENT2: tl.constexpr, DIVERGED_BETA: tl.constexpr,
    MAX_START_BETA: tl.constexpr,
):
    """One call of the weighting: the state (α [K] at alpha_ptr, counters = (calls so far, α
    valid?) at counters_ptr) is read, and written back in place, on the device."""
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    norms = tl.sqrt(tl.maximum(kspace.diagonal(G, BLOCK_K), 0.0))
    step = tl.load(counters_ptr)
    has_previous = tl.load(counters_ptr + 1) != 0
    # no previous α: zeros, which the warm start below replaces by 1 (the cold start)
    previous = tl.where(has_previous, tl.load(alpha_ptr + offs, mask=in_k, other=0.0).to(tl.float64), 0.0)
    reuse = has_previous & ((step % UPDATE_EVERY) != 0)
    alpha = tl.zeros([BLOCK_K], dtype=tl.float64)
    iterations = 0
    converged = 1
    if reuse:
        alpha = previous
    else:
        kept = in_k & (norms > 0.0)
        safe_norms = tl.where(kept, norms, 1.0)
        done = (tl.sum(kept.to(tl.int32), axis=0) == 0).to(tl.int32)
        pair = kept[:, None] & kept[None, :]
        C = tl.where(pair, tl.minimum(tl.maximum(G / safe_norms[:, None] / safe_norms[None, :], -1.0), 1.0), 0.0)
        C = tl.where((offs[:, None] == offs[None, :]) & pair, 1.0, C)
        rounds = 0
        while (done == 0) & (rounds < K):  # every round that does not finish drops a task
            rounds += 1
            # C of the kept tasks: the tasks only get fewer, so masking the previous round's C gives
            # what building it again from Γ would, and Γ need not stay in registers
            C = tl.where(kept[:, None] & kept[None, :], C, 0.0)
            beta = tl.where(kept, 1.0, 0.0).to(tl.float64)
            warm = previous * norms
            beta = tl.where(kept & (warm > 0.0) & (warm < float("inf")), warm, beta)
            ray = tl.sum(beta * tl.sum(C * beta[None, :], axis=1), axis=0)
            if (ray > 0.0) & (ray < float("inf")):  # the minimiser of f along the ray, kept below 1e3
                n = tl.sum(kept.to(tl.float64), axis=0)
                beta *= tl.minimum(tl.sqrt(n / ray), MAX_START_BETA / tl.max(beta, axis=0))
            beta, steps, status, growing = _nash_mtl_barrier_newton(
                C, beta, kept, K, BLOCK_K, MAX_NEWTON_STEPS, CONVERGED_DECREMENT2, DIVERGED_BETA,
            )
            iterations += steps
            converged = (status == CONVERGED).to(tl.int32)
            if status == DIVERGED:  # no positive solution: drop the cancelling tasks, solve again
                kept = kept & ~growing
                converged = 1
            else:
                alpha = tl.where(kept, beta / safe_norms, 0.0)
                done = 1
            if tl.sum(kept.to(tl.int32), axis=0) == 0:
                done = 1

    # certificates on the unnormalised Γ (read again), then the clipping
    gram_alpha = tl.sum(kspace.load_square(gram_ptr, K, BLOCK_K, True) * alpha[None, :], axis=1)
    equations = tl.where(in_k, alpha * gram_alpha - 1.0, 0.0)
    squares = equations * equations
    direction_norm = tl.sqrt(tl.maximum(tl.sum(alpha * gram_alpha, axis=0), 0.0))
    clip_scale = tl.where((MAX_NORM > 0.0) & (direction_norm > MAX_NORM), MAX_NORM / direction_norm, 1.0)
    tl.store(alpha_ptr + offs, alpha, mask=in_k)
    tl.store(weights_ptr + offs, clip_scale * alpha, mask=in_k)
    tl.store(dropped_ptr + offs, ~(alpha > 0.0), mask=in_k)
    tl.store(iterations_ptr, iterations)
    tl.store(converged_ptr, converged != 0)
    tl.store(reused_ptr, reuse)
    tl.store(step_ptr, step + 1)
    tl.store(counters_ptr, step + 1)
    tl.store(counters_ptr + 1, 1)
    tl.store(certificates_ptr, tl.sqrt(tl.sum(squares, axis=0)))
    tl.store(certificates_ptr + 1, tl.sqrt(tl.sum(tl.where(alpha > 0.0, squares, 0.0), axis=0)))
    tl.store(certificates_ptr + 2, direction_norm)
    tl.store(certificates_ptr + 3, clip_scale)


def nash_mtl_state(K: int, device: torch.device, alpha: Tensor | None = None, step: int = 0) -> tuple[Tensor, Tensor]:
    """A device state for :func:`nash_mtl_step`: (α [K] float64, counters [2] int64 = (calls so
    far, 1 if α holds a previous solution else 0)), from a host α (or None) and step count. The
    copies do not block the host (and, being fills and a device copy, can be captured)."""
    state = torch.zeros(K, dtype=torch.float64, device=device)
    counters = torch.zeros(2, dtype=torch.int64, device=device)
    if alpha is not None:
        state.copy_(alpha.detach(), non_blocking=True)
        counters[1] = 1
    if step:
        counters[0] = step
    return state, counters


def nash_mtl_step(
    gram: Tensor, alpha: Tensor, counters: Tensor, update_every: int, max_norm: float, constants: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """One call of the Nash-MTL weighting on the device, its state updated **in place**:
    (weights [K], diagnostics) — csrc's nash_mtl_solve plus the weighting's step logic.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; alpha, counters: the state from
    :func:`nash_mtl_state` on gram's device. The kernel reuses α (certified on this Γ, no Newton
    step) when it holds a solution and ``counters[0] % update_every != 0``, else solves warm-started
    from it; it writes the new α (before clipping) into ``alpha`` and advances ``counters``. Nothing
    is decided on the host, so a CUDA graph holding this call advances the warm start and the
    reuse schedule on every replay. constants: :class:`mtlkernels.methods.nash_mtl.NashMTLConstants`
    (kernel constexprs). Diagnostics: residual, kept_residual, direction_norm, clip_scale (0-d
    float64), iterations (0-d int32), converged and reused (0-d bool), step (0-d int64, calls
    including this one), dropped_tasks ([K] bool mask).
    """
    K = gram.shape[0]
    device = gram.device
    if alpha.shape != (K,) or alpha.dtype != torch.float64 or not alpha.is_contiguous() or alpha.device != device:
        raise ValueError(f"nash_mtl: the state α must be a contiguous float64 [{K}] tensor on {device}")
    if counters.shape != (2,) or counters.dtype != torch.int64 or counters.device != device:
        raise ValueError(f"nash_mtl: the state counters must be an int64 [2] tensor on {device}")
    weights = torch.empty(K, dtype=torch.float64, device=device)
    dropped = torch.empty(K, dtype=torch.bool, device=device)
    iterations = torch.empty((), dtype=torch.int32, device=device)
    converged = torch.empty((), dtype=torch.bool, device=device)
    reused = torch.empty((), dtype=torch.bool, device=device)
    step = torch.empty((), dtype=torch.int64, device=device)
    certificates = torch.empty(4, dtype=torch.float64, device=device)
    block, warps = kspace.launch_config(K)
    _nash_mtl_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), alpha, counters, weights, dropped, iterations, converged, reused, step, certificates, K,
        MAX_NORM=float(max_norm), UPDATE_EVERY=int(update_every), BLOCK_K=block,
        num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    diagnostics = {
        "residual": certificates[0], "kept_residual": certificates[1], "direction_norm": certificates[2],
        "clip_scale": certificates[3], "dropped_tasks": dropped, "iterations": iterations, "converged": converged,
        "reused": reused, "step": step,
    }
    return weights, diagnostics


def nash_mtl_solve(
    gram: Tensor, previous: Tensor | None, reuse: bool, max_norm: float, constants: Any
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(α [K] before clipping, weights [K], diagnostics) as device tensors — csrc's nash_mtl_solve,
    stateless: one :func:`nash_mtl_step` on a fresh state holding ``previous``.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; previous: the warm start α [K] on gram's
    device (or None); reuse: return ``previous`` (certified on this Γ) without solving; constants:
    the solver's :class:`mtlkernels.methods.nash_mtl.NashMTLConstants` (kernel constexprs).
    Diagnostics: residual, kept_residual, direction_norm, clip_scale (0-d float64), iterations
    (0-d int32), converged (0-d bool), dropped_tasks ([K] bool mask).
    """
    if reuse and previous is None:
        raise ValueError("nash_mtl: reuse=True needs the previous weights")
    # reuse ⇔ a state with a previous α at call 1 of every 2; solve ⇔ call 0 of every 1
    alpha, counters = nash_mtl_state(gram.shape[0], gram.device, previous, step=1 if reuse else 0)
    weights, diagnostics = nash_mtl_step(gram, alpha, counters, 2 if reuse else 1, max_norm, constants)
    del diagnostics["reused"], diagnostics["step"]
    return alpha, weights, diagnostics
