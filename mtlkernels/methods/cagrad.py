"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021).

    d = argmax_{‖d − g₀‖ ≤ √φ} minᵢ gᵢ·d,   φ = c²‖g₀‖²,   d = g₀ + Σᵢ uᵢgᵢ,   weights 1/K + u,

then ÷(1+c²) (rescale=1), ÷1 (0) or ÷(1+c) (2), and ×K when ``sum_scale``. The paper's dual
min_{w∈Δ} wᵀΓ𝟙/K + √φ·√(wᵀΓw) gives u = (√φ/‖g_w‖)·w; here the multipliers u are found
directly, exactly, in K-space: u(μ) = argmin_{u≥0} ½uᵀΓu + (Γ𝟙/K − μ𝟙)ᵀu is the projection of g₀
onto {d : gᵢ·d ≥ μ ∀i} (piecewise linear in μ), and μ is raised from minᵢ gᵢ·g₀ along that path,
task by task as they become worst-off, until the projection reaches the ball (‖Jᵀu‖ = √φ). The
final μ is the optimal worst-case improvement minᵢ gᵢ·d, equal to the dual's optimal value.

Degenerate case: when 0 ∈ conv{gᵢ} and the ball is not reached (every d of the ball has
minᵢ gᵢ·d ≤ 0), the path stops at μ = 0 and d is the optimal direction nearest g₀: the
projection of g₀ onto {d : gᵢ·d ≥ 0} — the mean when the mean is already conflict-free.

Scale: Γ is divided by its trace before the solve; the multipliers u are scale-free. Linear solves
on the active set use the Jacobi-scaled (unit-diagonal) matrix, so gradients whose norms differ
by 1e40 keep their precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option, check_real
from .._extension import extension
from .base import Solution, Weighting, cpp_constants, host_gram

RESCALES = (0, 1, 2)


@dataclass(frozen=True)
class CAGradConstants:
    """CAGrad's tolerances and iteration caps: read by the torch solve, handed to the C++ solve
    (``mtlkernels._C.CAGradConstants``) and to the Triton kernel (as constexprs).

    Attributes:
        pivot_tolerance: the unit-diagonal active matrix is "singular" below this smallest
            eigenvalue (Cholesky pivot² in C++ and Triton).
        eigen_rcond: eigenvalues below this (relative to the largest) are dropped in the singular
            case's least-squares solve.
        consistency_tolerance: a singular system is consistent when y along each dropped
            eigenvector is below this (relative to its cancellation scale).
        rate_tolerance: an inactive task enters when gᵢ·d falls behind μ, dgᵢ·d/dμ < 1 − this.
        refine_tolerance: the final face's KKT conditions, per task relative to
            (‖gᵢ‖ + ‖g_ref‖)·(‖g₀‖ + √φ).
        hull_tolerance: stopping test of the hull point's active-set method.
        hull_zero_tolerance: 0 ∈ conv{gᵢ} when the hull point's ‖Σwᵢgᵢ‖ is below this fraction of
            Σwᵢ‖gᵢ‖.
        max_sweeps: Jacobi sweeps of the singular systems' eigen-decomposition (C++ and Triton; the
            torch solve uses ``torch.linalg.eigh``).
        path_steps_per_task, path_steps_extra: the path stops after per_task·K + extra breakpoints.
        refine_rounds_per_task, refine_rounds_extra: rounds of the final face's refinement.
        hull_rounds_per_task, hull_rounds_extra: outer rounds of the hull point's active-set method.
    """

    pivot_tolerance: float = 1e-12
    eigen_rcond: float = 1e-12
    consistency_tolerance: float = 1e-6
    rate_tolerance: float = 1e-9
    refine_tolerance: float = 1e-13
    hull_tolerance: float = 1e-14
    hull_zero_tolerance: float = 1e-7
    max_sweeps: int = 64
    path_steps_per_task: int = 50
    path_steps_extra: int = 100
    refine_rounds_per_task: int = 2
    refine_rounds_extra: int = 10
    hull_rounds_per_task: int = 3
    hull_rounds_extra: int = 10


#: the constants every CAGrad solve uses
CONSTANTS = CAGradConstants()


def rescale_factor(c: float, rescale: int) -> float:
    """The divisor of d: 1 (rescale=0), 1 + c² (1), 1 + c (2)."""
    return {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]


class _ActiveSystem:
    """Solves A_SS·x = y on the active set through the unit-diagonal M = A_SS/(σσᵀ) and its
    eigen-decomposition: exactly when M is numerically positive definite (λ_min > pivot_tolerance,
    where a Cholesky factorisation succeeds), else by least squares without the eigenvalues below
    eigen_rcond·λ_max, telling a consistent singular system (duplicate gradients) from an
    inconsistent one. One step of iterative refinement recovers the digits an ill-conditioned M
    costs."""

    def __init__(self, A_active: Tensor, sigma: Tensor, k: CAGradConstants) -> None:
        self.sigma = sigma
        self.k = k
        self.M = A_active / (sigma[:, None] * sigma[None, :])
        self.eigenvalues, self.V = torch.linalg.eigh(self.M)
        if float(self.eigenvalues[0]) > k.pivot_tolerance:
            self.keep = torch.ones_like(self.eigenvalues, dtype=torch.bool)
        else:
            self.keep = self.eigenvalues > k.eigen_rcond * float(self.eigenvalues.abs().max())

    def _apply_inverse(self, rhs: Tensor) -> Tensor:
        return self.V[:, self.keep] @ ((self.V[:, self.keep].T @ rhs) / self.eigenvalues[self.keep])

    def solve(self, y: Tensor) -> tuple[Tensor, bool]:
        """(x, consistent): least squares x; inconsistent when the scaled y has a component along a
        dropped eigenvector v beyond consistency_tolerance relative to |v|ᵀ|y| (its cancellation
        scale, so gradients of any norm count alike)."""
        rhs = y / self.sigma
        x = self._apply_inverse(rhs)
        x = x + self._apply_inverse(rhs - self.M @ x)
        dropped = ~self.keep
        coefficients = self.V[:, dropped].T @ rhs
        magnitudes = self.V[:, dropped].abs().T @ rhs.abs()
        consistent = bool((coefficients.abs() <= self.k.consistency_tolerance * magnitudes).all())
        return x / self.sigma, consistent

    def null_vector(self) -> Tensor:
        """z with A_SS·z ≈ 0 involving the last task most: the last unit vector projected onto the
        dropped eigenvectors' span, unscaled."""
        dropped = self.V[:, ~self.keep]
        return (dropped @ dropped[-1]) / self.sigma


def _hull_zero_point(A: Tensor, sigma: Tensor, k: CAGradConstants) -> Tensor:
    """w on the simplex with Σᵢ wᵢgᵢ ≈ 0 when 0 ∈ conv{gᵢ} (the degenerate case's dual point; the
    best such attempt otherwise): the zero gradients if any, else w ∝ v/‖gᵢ‖ with v from
    Lawson–Hanson's active-set method for min_{v≥0} ‖Σᵢ vᵢĝᵢ‖² + (𝟙ᵀv − 1)² on the unit vectors
    ĝᵢ (Gram form, Q = A/(σσᵀ) + 𝟙𝟙ᵀ): when 0 ∈ conv{ĝᵢ} the minimiser has Σᵢvᵢĝᵢ = 0, 𝟙ᵀv = 1."""
    K = A.shape[0]
    if not bool((sigma > 0).all()):
        zero_rows = (sigma == 0).to(A.dtype)
        return zero_rows / zero_rows.sum()
    Q = A / (sigma[:, None] * sigma[None, :]) + 1.0
    ones = torch.ones(K, dtype=A.dtype)
    v = torch.zeros(K, dtype=A.dtype)
    passive = torch.zeros(K, dtype=torch.bool)
    for _ in range(k.hull_rounds_per_task * K + k.hull_rounds_extra):
        gradient = ones - Q @ v  # −½ × the objective's gradient
        candidates = torch.where(passive, -torch.inf, gradient)
        j = int(candidates.argmax())
        if float(candidates[j]) <= k.hull_tolerance:
            break
        passive[j] = True
        while True:
            P = passive.nonzero().flatten()
            z_P, _ = _ActiveSystem(Q[P][:, P], Q.diagonal()[P].sqrt(), k).solve(ones[P])
            if bool((z_P > 0).all()):
                v = torch.zeros(K, dtype=A.dtype)
                v[P] = z_P
                break
            v_P = v[P]
            blocking = z_P <= 0
            ratios = torch.where(blocking, v_P / torch.where(blocking, v_P - z_P, 1), torch.inf)
            blocked = int(ratios.argmin())
            v[P] = v_P + float(ratios[blocked]) * (z_P - v_P)
            v[P[blocked]] = 0.0
            passive &= v > 0
            if not bool(passive.any()):
                break
    w = v.clamp_min(0) / sigma
    return w / w.sum() if float(w.sum()) > 0 else torch.full((K,), 1.0 / K, dtype=A.dtype)


def _face_solution(
    A: Tensor, b: Tensor, sigma: Tensor, active: list[int], radius_sq: float, at_zero: bool, k: CAGradConstants
) -> tuple[Tensor, float] | None:
    """(u_S, μ) on the face S solved directly: A_SS·u_S + b_S = μ𝟙, so u_S = μδ − β with
    A_SS·δ = 𝟙 and A_SS·β = b_S; μ = 0 when ``at_zero`` (the degenerate case), else the larger
    root of u_SᵀA_SS·u_S = qμ² − 2pμ + b_Sᵀβ = φ (q = 𝟙ᵀδ, p = 𝟙ᵀβ). None when inconsistent."""
    S = torch.tensor(active)
    system = _ActiveSystem(A[S][:, S], sigma[S], k)
    beta, consistent = system.solve(b[S])
    if not consistent:
        return None
    if at_zero:
        return -beta, 0.0
    delta, consistent = system.solve(torch.ones(len(active), dtype=A.dtype))
    if not consistent:
        return None
    q, p, constant = float(delta.sum()), float(beta.sum()), float(b[S] @ beta) - radius_sq
    discriminant = p * p - q * constant
    if not q > 0 or discriminant < 0:
        return None
    root = math.sqrt(discriminant)
    mu = (p + root) / q if p >= 0 else constant / (p - root)
    return mu * delta - beta, mu


def _refine(
    A: Tensor, b: Tensor, sigma: Tensor, u: Tensor, radius_sq: float, mean_sq: float, k: CAGradConstants,
    at_zero: bool = False,
) -> Tensor:
    """Re-solve the final face directly and fix its active set task by task, judging each task's
    KKT condition at its scale (‖gᵢ‖ + min_S‖gⱼ‖)·(‖g₀‖ + √φ): the path's running μ loses the precision of
    tasks whose gradients are many orders of magnitude smaller than the active ones. Returns u
    unchanged when no face passes."""
    K = A.shape[0]
    active = u.nonzero().flatten().tolist()
    for _ in range(k.refine_rounds_per_task * K + k.refine_rounds_extra):
        if not active:
            return u
        face = _face_solution(A, b, sigma, active, radius_sq, at_zero, k)
        if face is None:  # the ball is out of this face's reach: drop the task nearest to leaving
            del active[int((u[active] * sigma[active]).argmin())]
            continue
        u_S, mu = face
        scale = sigma[active] * math.sqrt(mean_sq)
        if float((u_S * scale).min()) < -k.refine_tolerance * float((u_S * scale).abs().max()):
            del active[int((u_S * scale).argmin())]
            continue
        candidate = torch.zeros(K, dtype=A.dtype)
        candidate[active] = u_S.clamp_min(0)
        r = b + A @ candidate
        d_scale = math.sqrt(mean_sq) + math.sqrt(radius_sq)  # ≥ ‖d‖
        reference_norm = float(sigma[active].min())  # μ is gᵢ·d of the active tasks, exact to their scale
        violation = torch.where(sigma > 0, (mu - r) / ((sigma + reference_norm) * d_scale), 0.0)
        violation[active] = 0.0
        j = int(violation.argmax())
        if float(violation[j]) > k.refine_tolerance:
            active.append(j)
            continue
        return candidate
    return u


def _is_zero_combination(A: Tensor, sigma: Tensor, w: Tensor, k: CAGradConstants) -> bool:
    """‖Σᵢ wᵢgᵢ‖ ≤ hull_zero_tolerance·Σᵢ wᵢ‖gᵢ‖ (the square root of Γ's rounding)."""
    return float(w @ A @ w) <= (k.hull_zero_tolerance * float(w @ sigma)) ** 2


def _swap(u_S: Tensor, z: Tensor, sigma_S: Tensor, k: CAGradConstants) -> int | None:
    """A degenerate pivot at μ = 0 when the entering task (last of S, uⱼ = 0) depends on the active
    ones, Σₖ zₖgₖ = 0 with mixed signs (e.g. parallel gradients of different norms): move u_S along z
    (d does not change) until an active task's multiplier reaches 0; that task leaves. Updates u_S
    in place and returns the leaving position, or None when z has no sign change."""
    z = z if float(z[-1]) >= 0 else -z
    if not float(z[-1]) > 0:
        return None
    contribution = z * sigma_S  # zₖ‖gₖ‖: the sign test at each task's scale
    falling = contribution < -k.consistency_tolerance * float(contribution.abs().max())
    if not bool(falling.any()):
        return None
    ratios = torch.where(falling, u_S / torch.where(falling, -z, 1), torch.inf)
    leaving = int(ratios.argmin())
    u_S.add_(float(ratios[leaving]) * z).clamp_(min=0)
    u_S[leaving] = 0.0
    return leaving


def solve_normalized(A: Tensor, c: float, k: CAGradConstants = CONSTANTS) -> tuple[Tensor, dict[str, Any]]:
    """Multipliers u ≥ 0 for a trace-normalised Gram A (see the module docstring) and solver facts:
    the dual point w on the simplex when not u/Σu, iterations, degenerate."""
    K = A.shape[0]
    b = A.sum(dim=1) / K  # gᵢ·g₀
    mean_sq = max(float(b.sum()) / K, 0.0)  # ‖g₀‖²
    radius_sq = c * c * mean_sq  # φ
    sigma = A.diagonal().clamp_min(0).sqrt()
    nonzero = sigma > 0
    has_zero_row = not bool(nonzero.all())
    u = torch.zeros(K, dtype=A.dtype)
    facts: dict[str, Any] = {"iterations": 0, "degenerate": False, "dual_point": None}
    candidates = torch.where(nonzero, b, torch.inf)
    if radius_sq == 0:  # c = 0 or g₀ = 0: d = g₀; the dual's minimiser is the worst-off task
        facts.update(degenerate=mean_sq == 0, dual_point=torch.eye(K, dtype=A.dtype)[int(b.argmin())])
        return u, facts

    mu = float(candidates.min())
    if has_zero_row and mu >= 0:  # a zero gradient caps μ at 0, already reached by the mean
        facts.update(degenerate=True, dual_point=(~nonzero).to(A.dtype) / float((~nonzero).sum()))
        return u, facts
    active = [int(candidates.argmin())]
    blocked: list[int] = []  # tasks that left without μ moving may not re-enter until it moves (no cycling)
    for iteration in range(1, k.path_steps_per_task * K + k.path_steps_extra):
        facts["iterations"] = iteration
        S = torch.tensor(active)
        system = _ActiveSystem(A[S][:, S], sigma[S], k)
        delta, consistent = system.solve(torch.ones(len(active), dtype=A.dtype))
        u_S = u[S]
        if not consistent:  # the entering gradient depends on the active ones: μ = 0 here
            hull_point = _hull_zero_point(A, sigma, k)
            leaving = (
                None if _is_zero_combination(A, sigma, hull_point, k) else _swap(u_S, system.null_vector(), sigma[S], k)
            )
            if leaving is None:  # μ cannot rise: 0 ∈ conv{gᵢ}
                facts.update(degenerate=True, dual_point=hull_point)
                return _refine(A, b, sigma, u.clamp_(min=0), radius_sq, mean_sq, k, at_zero=True), facts
            u[S] = u_S  # d unchanged: u moved along Jᵀz = 0 until task `leaving` reached 0
            blocked.append(active[leaving])
            del active[leaving]
            continue
        rate = A[:, S] @ delta  # d(gᵢ·d)/dμ
        r = b + A[:, S] @ u_S
        rho = float(u_S @ A[S][:, S] @ u_S)
        p, q = float(u_S @ rate[S]), float(delta @ rate[S])
        room = max(radius_sq - rho, 0.0)
        root = math.sqrt(max(p * p + q * room, 0.0))
        step, event, index = (room / (p + root) if p + root > 0 else math.inf), "ball", -1
        if has_zero_row and -mu < step:
            step, event = max(-mu, 0.0), "cap"
        inactive = nonzero.clone()
        inactive[S] = False
        inactive[blocked] = False
        closing = inactive & (rate < 1 - k.rate_tolerance)  # rows moving with μ (duplicates) never enter
        if bool(closing.any()):
            times = torch.where(closing, (r - mu).clamp_min(0) / torch.where(closing, 1 - rate, 1), torch.inf)
            j = int(times.argmin())
            if float(times[j]) < step:
                step, event, index = float(times[j]), "enter", j
        shrinking = delta < 0
        if bool(shrinking.any()):
            times = torch.where(shrinking, -u_S / torch.where(shrinking, delta, -1), torch.inf)
            j = int(times.argmin())
            if float(times[j]) < step:
                step, event, index = float(times[j]), "leave", j
        u[S] = u_S + step * delta
        mu += step
        if step > 0:
            blocked.clear()
        if event == "ball":
            return _refine(A, b, sigma, u.clamp_(min=0), radius_sq, mean_sq, k), facts
        if event == "cap":
            zero_rows = (~nonzero).to(A.dtype)
            facts.update(degenerate=True, dual_point=zero_rows / zero_rows.sum())
            return _refine(A, b, sigma, u.clamp_(min=0), radius_sq, mean_sq, k, at_zero=True), facts
        if event == "enter":
            active.append(index)
        else:
            u[active[index]] = 0.0
            if step == 0:
                blocked.append(active[index])
            del active[index]
    return _refine(A, b, sigma, u.clamp_(min=0), radius_sq, mean_sq, k), facts  # iteration cap: fix what is left


def certificate(A: Tensor, u: Tensor, c: float, dual_point: Tensor | None) -> dict[str, float]:
    """Optimality certificate of multipliers u for a trace-normalised Gram A, d = g₀ + Jᵀu.

    ``kkt_residual``: d's optimality conditions gᵢ·d = μ where uᵢ > 0 and gᵢ·d ≥ μ elsewhere, μ the
    smallest active gradient g_ref's g_ref·d (0 in the degenerate case), task i judged at the scale
    of that comparison's rounding, (‖gᵢ‖ + ‖g_ref‖)·(‖g₀‖ + √φ). ``ball_residual``:
    (‖d − g₀‖ − √φ)/√φ, ≈ 0 when the ball is reached, < 0 in the degenerate case. ``duality_gap``:
    (D(w) − P(d))/(maxᵢ‖gᵢ‖·(‖g₀‖ + √φ)) with P(d) = minᵢ gᵢ·d and D(w) = g_w·g₀ + √φ‖g_w‖ the
    paper's dual at w = u/Σu (or the given dual point): ≥ 0 by weak duality, 0 at the optimum.
    Also returns P (``worst_improvement``) and D (``dual_objective``)."""
    K = A.shape[0]
    b = A.sum(dim=1) / K
    mean_sq = max(float(b.sum()) / K, 0.0)
    radius = c * math.sqrt(mean_sq)
    d_scale = math.sqrt(mean_sq) + radius
    sigma = A.diagonal().clamp_min(0).sqrt()
    r = b + A @ u
    primal = float(r.min())
    distance = math.sqrt(max(float(u @ A @ u), 0.0))
    w = dual_point if dual_point is not None else u / u.sum()
    dual = float(w @ b) + radius * math.sqrt(max(float(w @ A @ w), 0.0))
    active = u > 0
    reference_norm = 0.0
    if not bool(active.any()):
        mu = primal
    elif dual_point is not None:
        mu = 0.0
    else:
        smallest = int(torch.where(active, sigma, torch.inf).argmin())
        mu, reference_norm = float(r[smallest]), float(sigma[smallest])
    scale = ((sigma + reference_norm) * d_scale).clamp_min(torch.finfo(A.dtype).tiny)
    violation = torch.where(active, (r - mu).abs(), (mu - r).clamp_min(0)) / scale
    top = float(sigma.max()) * d_scale
    return {
        "kkt_residual": float(torch.where(sigma > 0, violation, 0.0).max()),
        "ball_residual": (distance - radius) / radius if radius > 0 else 0.0,
        "duality_gap": (dual - primal) / top if top > 0 else 0.0,
        "worst_improvement": primal,
        "dual_objective": dual,
    }


def normalized_gram(gram: Tensor) -> tuple[Tensor, float]:
    """(Γ/tr Γ symmetrised, in float64 on the CPU; tr Γ), with checks that name the problem."""
    return _trace_normalized(host_gram(gram))


def _trace_normalized(G: Tensor) -> tuple[Tensor, float]:
    """(G/tr G symmetrised; tr G) for a float64 G; zeros when tr G = 0."""
    trace = float(G.diagonal().sum())
    if trace == 0:
        return torch.zeros_like(G), 0.0
    A = G / trace
    return (A + A.T) / 2, trace


class CAGradWeighting(Weighting):
    """CAGrad's weights from Γ: 1/K + u with d = g₀ + Jᵀu the conflict-averse direction (see module).

    Args:
        c: radius of the ball around g₀ relative to ‖g₀‖ (≥ 0; 0 gives the mean). Default 0.5.
        rescale: 1 divides d by 1 + c² (authors, LibMTL; default), 0 keeps d (torchjd), 2 divides
            by 1 + c.
        sum_scale: multiply d by K, as the authors' scripts do "to match the sum loss" (default off,
            like LibMTL and torchjd).
        backend: "auto", "torch", "cpp" (the K-space solve in C++) or "triton" (the same algorithm in
            one on-device Triton program, mtlkernels.kernels.solve_cagrad).

    Constants: :data:`CONSTANTS` (:class:`CAGradConstants`), used by every backend.

    Diagnostics: ``kkt_residual``, ``ball_residual`` and ``duality_gap`` (the certificate, see
    :func:`certificate`), ``worst_improvement`` (minᵢ gᵢ·d before rescaling, Γ's units),
    ``dual_objective`` (the paper's dual at our dual point), ``multiplier_sum`` (Σu = √φ/‖g_w‖),
    ``active_set`` (tasks with uᵢ > 0), ``degenerate`` (the μ = 0 projection case), ``iterations``
    (breakpoints of the path).

    Variant: the paper's CAGrad with the authors' rescaling by default; the wrapper
    :class:`mtlkernels.CAGrad` runs the same weighting with the same defaults.
    """

    name = "cagrad"
    constants = CONSTANTS

    def __init__(self, *, c: float = 0.5, rescale: int = 1, sum_scale: bool = False, backend: str = "auto") -> None:
        super().__init__(backend=backend)
        c = check_real("c", c, minimum=0.0)
        if isinstance(rescale, bool):
            raise ValueError(f"rescale={rescale!r} is not supported; choose one of {list(RESCALES)}")
        check_option("rescale", rescale, RESCALES)
        if not isinstance(sum_scale, bool):
            raise ValueError(f"sum_scale={sum_scale!r} must be True or False")
        self.c = float(c)
        self.rescale = int(rescale)
        self.sum_scale = sum_scale

    def options(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale, "sum_scale": self.sum_scale}

    def factor(self, K: int) -> float:
        """The scale of the weights 1/K + u: K when ``sum_scale``, divided by the rescale factor."""
        return (K if self.sum_scale else 1.0) / rescale_factor(self.c, self.rescale)

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        K = gram.shape[0]
        A, trace = _trace_normalized(gram)
        u, facts = solve_normalized(A, self.c, self.constants)
        weights = (1.0 / K + u) * self.factor(K)
        diagnostics: dict[str, Any] = certificate(A, u, self.c, facts.get("dual_point"))
        diagnostics["worst_improvement"] *= trace
        diagnostics["dual_objective"] *= trace
        diagnostics.update(
            multiplier_sum=float(u.sum()),
            active_set=u.nonzero().flatten().tolist(),
            degenerate=bool(facts["degenerate"]),
            iterations=int(facts["iterations"]),
        )
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        return extension().cagrad_solve(gram.numpy(), self.c, self.factor(gram.shape[0]), cpp_constants(self.constants))

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        from ..kernels.solve_cagrad import cagrad_solve

        return Solution(*cagrad_solve(gram, self.c, self.factor(gram.shape[0]), self.constants))
