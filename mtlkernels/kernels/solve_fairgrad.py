"""On-device FairGrad solve: one Triton program, Γ in float64 registers, no host synchronisation.

w > 0 with (Γw)ᵢ = wᵢ^(−1/α) (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML
2024): damped Newton on the convex f(β) = ½βᵀMβ − Σ mᵢφ(βᵢ) in βᵢ = wᵢ/sᵢ, the Newton system
equilibrated to the cosine matrix plus the barrier's curvature; full steps in the quadratic region,
else the full step or 0.99 of the way to βᵢ = 0, halved until f decreases enough or changes by less
than its rounding; zero gradients get weight 0; an iterate past the divergence threshold, or one
where f's Hessian is not positive definite (no positive solution), drops the tasks still growing
and the largest βᵢ and solves the rest again — the algorithm, constants and certificates of
csrc/solvers/fairgrad.h, step for step. Powers x^p are computed as exp(p·log x).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace
from .kspace import MAX_TASKS

# The solver's caps and tolerances arrive as constexpr arguments in upper case (the fields of
# mtlkernels.methods.fairgrad.FairGradConstants, see kspace.constexprs); α as the constexpr ALPHA:
# the exponents are computed from it in Python (exact for α = 1 and ½, see _fairgrad_power) and
# materialised in float64 with tl.full (a bare Python float would be rounded to float32).

RUNNING = tl.constexpr(0)
CONVERGED = tl.constexpr(1)
DIVERGED = tl.constexpr(2)


@triton.jit
def _fairgrad_power(x, P: tl.constexpr):
    """x^P for x > 0 (float64): exact forms for the exponents of α = 1 and α = ½ (0, ±1, ±2, ½), else
    exp(P·log x), whose relative error is ~|P·log x|·eps (std::pow's is one rounding)."""
    if P == 0.0:
        return tl.zeros_like(x) + 1.0
    elif P == 1.0:
        return x
    elif P == -1.0:
        return 1.0 / x
    elif P == -2.0:
        return 1.0 / (x * x)
    elif P == 2.0:
        return x * x
    elif P == 0.5:
        return tl.sqrt(x)
    else:
        return tl.exp(tl.full([], P, tl.float64) * tl.log(x))


@triton.jit
def _fairgrad_objective(C, root_m, beta, kept, ALPHA: tl.constexpr):
    """(f(β), ½|βᵀMβ| + Σ|mᵢφ(βᵢ)|) over the kept tasks, M = D·C·D, D = diag(√m)."""
    safe = tl.where(kept, beta, 1.0)
    y = tl.where(kept, root_m * beta, 0.0)
    quadratic = 0.5 * tl.sum(y * tl.sum(C * y[None, :], axis=1), axis=0)
    if ALPHA == 1.0:
        utility = tl.log(safe)
    else:
        utility = _fairgrad_power(safe, 1.0 - 1.0 / ALPHA) / tl.full([], 1.0 - 1.0 / ALPHA, tl.float64)
    terms = tl.where(kept, root_m * root_m * utility, 0.0)
    return quadratic - tl.sum(terms, axis=0), tl.abs(quadratic) + tl.sum(tl.abs(terms), axis=0)


@triton.jit
def _fairgrad_growing(growth, beta, kept, BLOCK_K: tl.constexpr):
    """The tasks dropped when f has no minimiser: relative last step > 1/4, and the largest βᵢ."""
    offs = tl.arange(0, BLOCK_K)
    largest = tl.argmax(tl.where(kept, beta, -float("inf")), axis=0)
    return kept & ((growth > 0.25) | (offs == largest))


@triton.jit
def _fairgrad_norms(norms_ptr, kept, K, BLOCK_K: tl.constexpr):
    """‖gᵢ‖ on the kept tasks, 1 elsewhere, from where the kernel parked the norms (the weights'
    output, until the end): read each time (volatile, after a barrier: other threads stored them),
    so the vector need not be held in registers through the rounds."""
    offs = tl.arange(0, BLOCK_K)
    tl.debug_barrier()
    return tl.where(kept, tl.load(norms_ptr + offs, mask=offs < K, other=1.0, volatile=True), 1.0)


@triton.jit
def _fairgrad_newton(
    C, root_m, beta, kept, ALPHA: tl.constexpr, K, BLOCK_K: tl.constexpr,
    MAX_NEWTON_STEPS: tl.constexpr, CONVERGED_LENGTH2: tl.constexpr, STALLED_RESIDUAL: tl.constexpr,
    DIVERGED_BETA: tl.constexpr, MAX_HALVINGS: tl.constexpr, FLAT_RTOL: tl.constexpr,
):
    """Minimise f over the ``kept`` tasks from β > 0: (β, steps, status, growing)."""
    offs = tl.arange(0, BLOCK_K)
    eye = offs[:, None] == offs[None, :]
    growing = offs < 0
    growth = tl.zeros([BLOCK_K], dtype=tl.float64)
    previous_length = tl.full([], float("inf"), tl.float64)
    spread = tl.max(tl.where(kept, root_m, 0.0), axis=0) / tl.min(tl.where(kept, root_m, float("inf")), axis=0)
    diverged = tl.full([], DIVERGED_BETA, tl.float64) * spread
    inverse_alpha = tl.full([], 1.0 / ALPHA, tl.float64)
    steps = 0
    status = RUNNING
    while (steps < MAX_NEWTON_STEPS) & (status == RUNNING):
        steps += 1
        safe_beta = tl.where(kept, beta, 1.0)
        # the Hessian's factor first, then the gradient: fewer vectors live through the factorisation.
        # H is ready for it: zero off the kept rows and columns (as C), 1 on the others' diagonal
        curvature = tl.where(kept, _fairgrad_power(safe_beta, -1.0 / ALPHA - 1.0) * inverse_alpha, 1.0)
        H = tl.where(eye, C + curvature[:, None], C)
        L, factored = kspace.cholesky(H, kept, K, BLOCK_K, 0.0, True)
        y = tl.where(kept, root_m * beta, 0.0)
        target = tl.where(kept, root_m * _fairgrad_power(safe_beta, -1.0 / ALPHA), 0.0)
        terms = C * y[None, :]
        rhs = tl.where(kept, tl.sum(terms, axis=1) - target, 0.0)
        magnitude = tl.sum(tl.abs(terms), axis=1) + target
        backward_error = tl.max(tl.where(kept, tl.abs(rhs) / tl.where(kept, magnitude, 1.0), 0.0), axis=0)
        if factored:
            scaled_step = tl.where(kept, kspace.cholesky_solve(L, rhs, kept, K, BLOCK_K), 0.0)
            decrement2 = tl.sum(rhs * scaled_step, axis=0)
            step = tl.where(kept, -scaled_step / tl.where(kept, root_m, 1.0), 0.0)
            relative = step / safe_beta
            length = tl.maximum(tl.sqrt(tl.maximum(decrement2, 0.0)), tl.max(tl.abs(relative), axis=0))
            if length * length <= CONVERGED_LENGTH2:
                beta += step
                status = CONVERGED
            else:
                t = tl.full([], 1.0, tl.float64)
                quadratic_region = length < 0.25
                if quadratic_region:  # full steps while they shrink, stop at the rounding floor
                    if (length >= previous_length) & (backward_error <= STALLED_RESIDUAL):
                        steps -= 1
                        status = CONVERGED
                    previous_length = length
                else:
                    # the full step, or 0.99 of the way to the boundary βᵢ = 0, halved until f
                    # decreases enough or changes by less than its rounding
                    shrinking = kept & (step < 0.0)
                    boundary = tl.min(tl.where(shrinking, safe_beta / tl.where(shrinking, -step, 1.0), float("inf")), axis=0)
                    t = tl.minimum(t, 0.99 * boundary)
                    current, size = _fairgrad_objective(C, root_m, beta, kept, ALPHA)
                    halvings = 0
                    searching = 1
                    while (halvings < MAX_HALVINGS) & (searching != 0):
                        value, _ = _fairgrad_objective(C, root_m, beta + t * step, kept, ALPHA)
                        if (value <= current - 0.25 * t * decrement2) | (tl.abs(value - current) <= FLAT_RTOL * size):
                            searching = 0
                        else:
                            t *= 0.5
                            halvings += 1
                if status == RUNNING:
                    growth = t * relative
                    beta += t * step
                    if tl.max(tl.where(kept, beta, -float("inf")), axis=0) > diverged:
                        growing = _fairgrad_growing(growth, beta, kept, BLOCK_K)
                        status = DIVERGED
        else:  # f's Hessian is not positive definite at β: the tasks cancel within Γ's rounding
            steps -= 1
            growing = _fairgrad_growing(growth, beta, kept, BLOCK_K)
            status = DIVERGED
    return beta, steps, status, growing


@triton.jit
def _fairgrad_solve_kernel(
    gram_ptr, weights_ptr, dropped_ptr, iterations_ptr, converged_ptr, certificates_ptr,
    K, ALPHA: tl.constexpr, BLOCK_K: tl.constexpr,
    MAX_NEWTON_STEPS: tl.constexpr, CONVERGED_LENGTH2: tl.constexpr, STALLED_RESIDUAL: tl.constexpr,
    DIVERGED_BETA: tl.constexpr, MAX_START_BETA: tl.constexpr, MAX_HALVINGS: tl.constexpr, FLAT_RTOL: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K
    G = kspace.load_square(gram_ptr, K, BLOCK_K)
    norms = tl.sqrt(tl.maximum(kspace.diagonal(G, BLOCK_K), 0.0))
    kept = in_k & (norms > 0.0)
    safe_norms = tl.where(kept, norms, 1.0)
    tl.store(weights_ptr + offs, safe_norms, mask=in_k)  # parked: read again each round (_fairgrad_norms)
    iterations = 0
    converged = 1
    done = (tl.sum(kept.to(tl.int32), axis=0) == 0).to(tl.int32)
    pair = kept[:, None] & kept[None, :]
    C = tl.where(pair, tl.minimum(tl.maximum(G / safe_norms[:, None] / safe_norms[None, :], -1.0), 1.0), 0.0)
    C = tl.where((offs[:, None] == offs[None, :]) & pair, 1.0, C)
    beta = tl.zeros([BLOCK_K], dtype=tl.float64)
    solved = 0
    rounds = 0
    while (done == 0) & (rounds < K):  # every round that does not finish drops a task
        rounds += 1
        # C of the kept tasks: the tasks only get fewer, so masking the previous round's C gives
        # what building it again from Γ would, and Γ need not stay in registers
        C = tl.where(kept[:, None] & kept[None, :], C, 0.0)
        safe_norms = _fairgrad_norms(weights_ptr, kept, K, BLOCK_K)  # read again: not held through the solve
        largest_norm = tl.max(tl.where(kept, safe_norms, 0.0), axis=0)  # the kept norms are the safe ones
        root_m = tl.where(kept, _fairgrad_power(safe_norms / largest_norm, (1.0 - ALPHA) / (1.0 + ALPHA)), 1.0)
        ray = tl.sum(tl.where(kept, root_m, 0.0) * tl.sum(C * tl.where(kept, root_m, 0.0)[None, :], axis=1), axis=0)
        diagonal = tl.sum(tl.where(kept, root_m * root_m, 0.0), axis=0)
        t = tl.full([], 1.0, tl.float64)
        if (ray > 0.0) & (ray < float("inf")):  # the minimiser of f along β = t·𝟙
            t = _fairgrad_power(diagonal / ray, ALPHA / (ALPHA + 1.0))
        beta = tl.where(kept, tl.minimum(t, MAX_START_BETA), 0.0).to(tl.float64)
        beta, steps, status, growing = _fairgrad_newton(
            C, root_m, beta, kept, ALPHA, K, BLOCK_K, MAX_NEWTON_STEPS, CONVERGED_LENGTH2, STALLED_RESIDUAL,
            DIVERGED_BETA, MAX_HALVINGS, FLAT_RTOL,
        )
        iterations += steps
        converged = (status == CONVERGED).to(tl.int32)
        if status == DIVERGED:  # no positive solution: drop the cancelling tasks, solve again
            kept = kept & ~growing
            converged = 1
        else:
            solved = 1
            done = 1
        if tl.sum(kept.to(tl.int32), axis=0) == 0:
            done = 1
    safe_norms = _fairgrad_norms(weights_ptr, kept, K, BLOCK_K)
    tl.debug_barrier()  # every thread has read the parked norms before the weights overwrite them
    # the weights of the solved round (its β and kept tasks, which end the loop): computed here, no
    # vector of them is carried through the rounds
    weights = tl.where(kept & (solved != 0), beta * _fairgrad_power(safe_norms, -2.0 * ALPHA / (ALPHA + 1.0)), 0.0)

    # certificates: |wᵢ^(1/α)(Γw)ᵢ − 1| / (wᵢ^(1/α)Σⱼ|Γᵢⱼwⱼ| + 1)
    positive = weights > 0.0
    scale = tl.where(positive, _fairgrad_power(tl.where(positive, weights, 1.0), 1.0 / ALPHA), 0.0)
    G = kspace.load_square(gram_ptr, K, BLOCK_K, True)  # Γ read again: not held across the rounds
    row = tl.sum(G * weights[None, :], axis=1)
    magnitude = tl.sum(tl.abs(G * weights[None, :]), axis=1)
    equations = tl.where(in_k, tl.abs(scale * row - 1.0) / (scale * magnitude + 1.0), 0.0)
    tl.store(weights_ptr + offs, weights, mask=in_k)
    tl.store(dropped_ptr + offs, ~positive, mask=in_k)
    tl.store(iterations_ptr, iterations)
    tl.store(converged_ptr, converged != 0)
    tl.store(certificates_ptr, tl.max(equations, axis=0))
    tl.store(certificates_ptr + 1, tl.max(tl.where(positive, equations, 0.0), axis=0))


def fairgrad_solve(gram: Tensor, alpha: float, constants: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """(weights [K] float64, diagnostics) as device tensors — csrc's fairgrad_solve.

    gram: Γ [K, K] float32/float64, K ≤ :data:`MAX_TASKS`; alpha: α > 0; constants: the solver's
    :class:`mtlkernels.methods.fairgrad.FairGradConstants` (kernel constexprs). Diagnostics:
    residual, kept_residual (0-d float64), iterations (0-d int32), converged (0-d bool),
    dropped_tasks ([K] bool mask).
    """
    K = gram.shape[0]
    device = gram.device
    weights = torch.empty(K, dtype=torch.float64, device=device)
    dropped = torch.empty(K, dtype=torch.bool, device=device)
    iterations = torch.empty((), dtype=torch.int32, device=device)
    converged = torch.empty((), dtype=torch.bool, device=device)
    certificates = torch.empty(2, dtype=torch.float64, device=device)
    block, warps = kspace.launch_config(K)
    _fairgrad_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), weights, dropped, iterations, converged, certificates, K,
        ALPHA=float(alpha), BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS, **kspace.constexprs(constants),
    )
    diagnostics = {
        "residual": certificates[0], "kept_residual": certificates[1], "dropped_tasks": dropped,
        "iterations": iterations, "converged": converged,
    }
    return weights, diagnostics
