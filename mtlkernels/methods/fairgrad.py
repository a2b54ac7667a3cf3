"""FairGrad — Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

Weights: the w > 0 with (Γw)ᵢ = wᵢ^(−1/α) for every task i (Γ the unnormalised Gram), the
stationarity condition of the α-fair utility Σᵢ uᵢ^(1−α)/(1−α) of the improvements uᵢ = gᵢ·d over
directions d = Σᵢ wᵢgᵢ (the paper's Eq. 4: GᵀG w = w^(−1/α)). α = 1 is proportional fairness, the
system of Nash-MTL (without its clipping); α → 0 tends to the sum of the losses, α → ∞ to max-min
fairness. No normalisation is applied to w, as in the paper and its authors' code.

Solve: the system is the stationarity condition of the strictly convex

    f(w) = ½wᵀΓw − Σᵢ φ(wᵢ),   φ(x) = log x (α = 1),  x^(1−1/α)/(1−1/α) (α ≠ 1),

(φ′(x) = x^(−1/α) is decreasing, so −φ is convex for every α > 0). It is minimised by damped
Newton in βᵢ = wᵢ/sᵢ, sᵢ = Γᵢᵢ^(−α/(α+1)) the solution of task i alone, with the Newton system
equilibrated to unit diagonal (the cosine matrix C = D⁻¹ΓD⁻¹ plus the barrier's curvature), so
gradients of any scale are solved alike (the solution β, the steps and the stopping rule do not
change when Γ is multiplied by a constant). Steps: the full step when it is short (length < 1/4) and
while the length keeps falling (then it stops at rounding level), else the full step or 0.99 of the
way to the boundary βᵢ = 0, halved until f decreases enough (Armijo) or changes by less than its
rounding; δ = max(λ, max|Δβᵢ|/βᵢ), λ
the Newton decrement. Start: β = 𝟙 rescaled to the minimiser of f along that ray.

No positive solution exists when a non-negative combination of the gradients vanishes (0 in their
convex hull: a zero gradient, two exactly opposite gradients, a cancelling combination); f then
decreases without bound along it, or (α < 1) towards a limit it never reaches. As for Nash-MTL
(:mod:`.nash_mtl`), a zero gradient gets weight 0 up front, and an iterate past ``diverged_beta``
(times the spread of √mᵢ = (‖gᵢ‖/maxⱼ‖gⱼ‖)^((1−α)/(1+α)): at α ≠ 1 a solution's βᵢ legitimately
reaches the ratios √mⱼ/√mᵢ by which the tasks' equations couple),
or one where f's Hessian is not positive definite (a rounded Γ whose tasks cancel within its
rounding), drops the tasks still growing (relative step > 1/4) and the largest βᵢ (weight 0) and
solves the rest again.

Certificate: ``kept_residual`` = maxᵢ |wᵢ^(1/α)·(Γw)ᵢ − 1| / (wᵢ^(1/α)·Σⱼ|Γᵢⱼwⱼ| + 1) over the
tasks with wᵢ > 0 (:func:`fixed_point_residuals`: the fixed-point residual relative to the size of
its terms, 0 at the exact solution, ~1e-15 at rounding level even where (Γw)ᵢ is a small difference
of large terms), ``residual`` the same over all tasks (a dropped task counts 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_real
from .._extension import extension
from .base import Solution, Weighting, cpp_constants
from .nash_mtl import _growing


@dataclass(frozen=True)
class FairGradConstants:
    """The Newton solve's caps and tolerances: read by the torch solve and handed to the C++ solve
    (``mtlkernels._C.FairGradConstants``).

    Attributes:
        max_newton_steps: Newton steps per round at most.
        converged_length2: a squared step length δ² below this: one more full step reaches rounding.
        stalled_residual: in the quadratic region a step no shorter than the previous one means the
            rounding floor is reached (the solve stops) when the iterate's fixed-point backward
            error is below this; otherwise the steps go on (the relative steps of tasks whose
            weights the equations barely see can stay noisy above rounding).
        diverged_beta: an iterate beyond this (in units of the task's own solution sᵢ, times the
            spread max √mᵢ / min √mᵢ of the coupling, 1 at α = 1) means f has no minimiser: a
            non-negative combination of the gradients vanishes.
        max_start_beta: the start is kept below this, so that growth towards diverged_beta is seen
            step by step.
        max_halvings: Armijo halvings of a damped step at most.
        flat_rtol: a change of f below this fraction of the size of its terms is rounding: the step
            is taken (f cannot tell a better one; with weights spread over 40 orders of magnitude
            the small tasks' terms are below the large tasks' rounding).
    """

    max_newton_steps: int = 500
    converged_length2: float = 1e-20
    stalled_residual: float = 1e-12
    diverged_beta: float = 1e6
    max_start_beta: float = 1e3
    max_halvings: int = 60
    flat_rtol: float = 1e-13


#: the constants every FairGrad solve uses
CONSTANTS = FairGradConstants()


def _objective(C: Tensor, root_m: Tensor, beta: Tensor, alpha: float) -> tuple[float, float]:
    """f in β, ½βᵀMβ − Σ mᵢφ(βᵢ) with M = SΓS = DCD, D = diag(√m), and the size of its terms
    ½|βᵀMβ| + Σ|mᵢφ(βᵢ)| (what its rounding is relative to)."""
    if alpha == 1.0:
        utility = torch.log(beta)
    else:
        p = 1.0 - 1.0 / alpha
        utility = beta**p / p
    y = root_m * beta
    quadratic, utilities = 0.5 * float(y @ C @ y), root_m**2 * utility
    return quadratic - float(utilities.sum()), abs(quadratic) + float(utilities.abs().sum())


def _newton(C: Tensor, root_m: Tensor, beta: Tensor, alpha: float, k: FairGradConstants) -> tuple[Tensor, int, bool, Tensor | None]:
    """Minimise f from β > 0; every iterate stays > 0. Returns (β, steps, converged, growing):
    ``growing`` is None unless f is taken to have no minimiser, when it masks the tasks dropped."""
    previous_length = math.inf
    growth = torch.zeros_like(beta)
    # a solution's βᵢ may legitimately reach the coupling ratio √mⱼ/√mᵢ (α ≠ 1 and spread scales)
    diverged = k.diverged_beta * float(root_m.max() / root_m.min())
    for step_count in range(1, k.max_newton_steps + 1):
        # gradient of f scaled by D⁻¹ (D = diag(√m)) and the equilibrated Hessian C + diag(β^(−1/α−1)/α)
        y, target = root_m * beta, root_m * beta ** (-1.0 / alpha)
        rhs = C @ y - target
        hessian = C + torch.diag(beta ** (-1.0 / alpha - 1.0) / alpha)
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) != 0:
            return beta, step_count - 1, False, _growing(growth, beta)
        scaled_step = -torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        decrement2 = float(-(rhs @ scaled_step))
        step = scaled_step / root_m
        length = max(math.sqrt(max(decrement2, 0.0)), float((step / beta).abs().max()))
        if length**2 <= k.converged_length2:
            return beta + step, step_count, True, None
        if length < 0.25:  # quadratic region: full steps while they shrink, stop at the rounding floor
            backward_error = float((rhs.abs() / (C.abs() @ y + target)).max())
            if length >= previous_length and backward_error <= k.stalled_residual:
                return beta, step_count - 1, True, None
            previous_length = length
            growth, beta = step / beta, beta + step
            continue
        # the full step, or 0.99 of the way to the boundary βᵢ = 0, halved until f decreases enough
        shrinking = step < 0
        t = min(1.0, 0.99 * float((beta[shrinking] / -step[shrinking]).min())) if bool(shrinking.any()) else 1.0
        current, size = _objective(C, root_m, beta, alpha)
        for _ in range(k.max_halvings):
            trial, _ = _objective(C, root_m, beta + t * step, alpha)
            # enough decrease, or no change f can resolve (its rounding): Newton's step is then the guide
            if trial <= current - 0.25 * t * decrement2 or abs(trial - current) <= k.flat_rtol * size:
                break
            t *= 0.5
        growth, beta = t * step / beta, beta + t * step
        if float(beta.max()) > diverged:
            return beta, step_count, False, _growing(growth, beta)
    return beta, k.max_newton_steps, False, None


def fixed_point_residuals(gram: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """|wᵢ^(1/α)·(Γw)ᵢ − 1| / (wᵢ^(1/α)·Σⱼ|Γᵢⱼwⱼ| + 1) per task: how far FairGrad's system is from
    holding, relative to the size of its terms — a backward error, 0 at the solution, about the
    rounding unit for a stable solve even where (Γw)ᵢ cancels, and 1 for a task of weight 0."""
    scale = weights ** (1.0 / alpha)
    return (scale * (gram @ weights) - 1.0).abs() / (scale * (gram.abs() @ weights.abs()) + 1.0)


class FairGradWeighting(Weighting):
    """Γ → the α-fair weights w > 0 with Γw = w^(−1/α) (see the module docstring).

    Args:
        alpha: the fairness exponent α > 0 (default 1: proportional fairness, Nash-MTL's system).
        backend: "auto", "torch", "cpp" or "triton" (the on-device solve, K ≤ 64).

    Constants: :data:`CONSTANTS` (:class:`FairGradConstants`), used by every backend.

    Diagnostics: ``kept_residual`` (the certificate: :func:`fixed_point_residuals` over the tasks
    with wᵢ > 0), ``residual`` (the same over all tasks; a dropped task counts 1), ``dropped_tasks``
    (weight 0: zero or cancelling gradients), ``iterations`` (Newton steps), ``converged``.

    Variant: the paper's FairGrad weights, solved to rounding level; the authors, torchjd and
    LibMTL stop scipy's ``least_squares`` at its default tolerances from w = 𝟙/K (see
    docs/methods/fairgrad.md).
    """

    name = "fairgrad"
    constants = CONSTANTS

    def __init__(self, *, alpha: float = 1.0, backend: str = "auto") -> None:
        alpha = check_real("alpha", alpha, minimum=0.0, strict=True)
        super().__init__(backend=backend)
        self.alpha = alpha

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "backend": self.backend}

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        alpha, k = self.alpha, self.constants
        norms = gram.diagonal().clamp_min(0).sqrt()
        kept = norms > 0
        weights = torch.zeros_like(norms)
        steps, converged = 0, True
        while bool(kept.any()):
            n = norms[kept]
            C = (gram[kept][:, kept] / n[:, None] / n[None, :]).clamp(-1.0, 1.0)
            C.fill_diagonal_(1.0)
            # √(sᵢ²Γᵢᵢ) with sᵢ = nᵢ^(−2α/(α+1)), up to a common factor (β does not depend on it):
            # relative to the largest, so that the steps and the stopping rule do not see Γ's scale
            root_m = (n / n.max()) ** ((1.0 - alpha) / (1.0 + alpha))
            ray = float(root_m @ C @ root_m)  # the minimiser of f along β = t·𝟙, kept below max_start_beta
            t = (float((root_m**2).sum()) / ray) ** (alpha / (alpha + 1.0)) if ray > 0 and math.isfinite(ray) else 1.0
            beta = torch.full_like(n, min(t, k.max_start_beta))
            beta, round_steps, converged, growing = _newton(C, root_m, beta, alpha, k)
            steps += round_steps
            if growing is None:
                weights[kept] = beta * n ** (-2.0 * alpha / (alpha + 1.0))
                break
            kept[kept.clone()] = ~growing  # no positive solution: drop the cancelling tasks, re-solve
            converged = True
        residuals = fixed_point_residuals(gram, weights, alpha)
        positive = weights > 0
        diagnostics = {
            "residual": float(residuals.max()),
            "kept_residual": float(residuals[positive].max()) if bool(positive.any()) else 0.0,
            "dropped_tasks": (~positive).nonzero().flatten().tolist(),
            "iterations": steps,
            "converged": converged,
        }
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        return extension().fairgrad_solve(gram.numpy(), cpp_constants(self.constants), self.alpha)

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        from ..kernels.solve_fairgrad import fairgrad_solve

        return Solution(*fairgrad_solve(gram, self.alpha, self.constants))
