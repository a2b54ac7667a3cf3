"""Reference CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021).

The update maximises the worst local improvement in a ball around the mean gradient g₀:
    d = argmax_{‖d − g₀‖ ≤ √φ} minᵢ gᵢ·d,   φ = c²‖g₀‖²,
through the paper's dual over the simplex Δ (on the full vectors, as the paper writes it):
    w* = argmin_{w∈Δ} g_w·g₀ + √φ‖g_w‖,  g_w = Σᵢ wᵢgᵢ,   d = g₀ + (√φ/‖g_w‖)·g_w,
so the weights are 1/K + (√φ/‖g_w‖)·w*; then d is divided by 1+c² (rescale=1), 1 (0) or 1+c (2)
and multiplied by K when ``sum_scale``.

Solvers (generic, on the full vectors; scipy is imported inside the functions that need it):
the dual by an active-set Newton method on the faces of the simplex (adding and dropping tasks
until the KKT conditions hold to rounding, an exact pairwise line search where Newton stalls),
started from the vertex of least F and, until one start is certified, from the next vertices.

The degenerate case: when 0 ∈ conv{gᵢ} and the ball constraint is slack at the optimum, g_w* = 0,
the formula is 0/0 and every d of the ball with minᵢ gᵢ·d = 0 is optimal. The reference then
returns the optimal d nearest g₀ — the projection of g₀ onto {d : gᵢ·d ≥ 0 ∀i}, d = g₀ + Σᵢ uᵢgᵢ
with u = argmin_{u≥0} ‖g₀ + Jᵀu‖ (scipy's NNLS on the full vectors), weights 1/K + u. When the
mean is already conflict-free that is the mean itself (u = 0).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._result import ReferenceResult

RESCALES = (0, 1, 2)

#: 0 ∈ conv{gᵢ} when the distance from 0 to the hull of the unit vectors ĝᵢ is below this
HULL_TOLERANCE = 1e-7
#: KKT conditions of the dual, per task relative to ‖gᵢ‖·(‖g₀‖ + √φ)
KKT_TOLERANCE = 1e-13


def rescale_factor(c: float, rescale: int) -> float:
    """The divisor of d: 1 (rescale=0), 1 + c² (1), 1 + c (2)."""
    return {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]


def check_options(c: float, rescale: int, sum_scale: bool) -> None:
    """A ValueError naming the option when c, rescale or sum_scale is out of range."""
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not np.isfinite(c) or c < 0:
        raise ValueError(f"c={c!r} must be a finite number ≥ 0")
    if rescale not in RESCALES or isinstance(rescale, bool):
        raise ValueError(f"rescale={rescale!r} is not supported; choose one of {list(RESCALES)}")
    if not isinstance(sum_scale, bool):
        raise ValueError(f"sum_scale={sum_scale!r} must be True or False")


def _dual(J: np.ndarray, g0: np.ndarray, radius: float, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """F(w) = g_w·g₀ + √φ‖g_w‖, its gradient (gᵢ·d(w) with d(w) = g₀ + √φ·g_w/‖g_w‖), and g_w."""
    g_w = w @ J
    norm = float(np.linalg.norm(g_w))
    direction = g0 + (radius / norm) * g_w if norm > 0 else g0
    return float(g_w @ g0) + radius * norm, J @ direction, g_w


def _newton_step(
    J_face: np.ndarray, w_face: np.ndarray, g_w: np.ndarray, radius: float, gradient: np.ndarray
) -> np.ndarray:
    """Minimiser Δ of the dual's quadratic model on the face of the simplex (𝟙ᵀΔ = 0).

    Hessian (√φ/‖g_w‖)·(G − qqᵀ/‖g_w‖²), G = J_face·J_faceᵀ, q = J_face·g_w; F is linear along w,
    so the step is taken in the null-space coordinates Δ = Σ yᵢ(eᵢ − e_r) (r the largest weight),
    Jacobi-scaled so tasks of any gradient scale keep their precision, least squares if singular."""
    norm = float(np.linalg.norm(g_w))
    q = J_face @ g_w
    hessian = (radius / norm) * (J_face @ J_face.T - np.outer(q, q) / norm**2)
    s = hessian.shape[0]
    step = np.zeros(s)
    if s == 1:
        return step
    r = int(np.argmax(w_face))
    others = [i for i in range(s) if i != r]
    Z = np.zeros((s, s - 1))
    Z[others, range(s - 1)] = 1.0
    Z[r, :] = -1.0
    reduced = Z.T @ hessian @ Z
    diagonal = np.diag(reduced)
    scale = np.where(diagonal > 0, 1.0 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0)), 1.0)
    y = np.linalg.lstsq(reduced * scale[:, None] * scale[None, :], -(Z.T @ gradient) * scale, rcond=1e-14)[0]
    return Z @ (y * scale)


def _pairwise_step(
    J: np.ndarray, g0: np.ndarray, radius: float, w: np.ndarray, active: np.ndarray, gradient: np.ndarray
) -> np.ndarray:
    """Move weight t ∈ [0, wᵢ] from the active task i of largest gᵢ·d to the task j of smallest,
    t minimising F exactly (bisection on the sign of F's derivative gⱼ·d − gᵢ·d along the move);
    updates ``active`` in place."""
    i = int(np.argmax(np.where(active, gradient, -np.inf)))
    j = int(np.argmin(gradient))
    move = np.zeros_like(w)
    move[i], move[j] = -1.0, 1.0

    def slope(t: float) -> float:
        g = _dual(J, g0, radius, w + t * move)[1]
        return float(g[j] - g[i])

    whole = float(w[i])
    low, high = 0.0, whole
    if slope(whole) <= 0:
        low = whole
    else:
        for _ in range(200):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if slope(middle) <= 0 else (low, middle)
    w = np.clip(w + low * move, 0.0, None)
    active[j] = True
    if low == whole:
        w[i] = 0.0
        active[i] = False
    return w / w.sum()


def _polish(J: np.ndarray, g0: np.ndarray, radius: float, w: np.ndarray) -> tuple[np.ndarray, dict]:
    """Active-set Newton on the dual from w: Newton steps on the current face (dropping tasks whose
    weight reaches 0) until gᵢ·d is equal over the face, then add the task that most violates
    gᵢ·d ≥ F(w), until none does. Residuals are per task, relative to ‖gᵢ‖·(‖g₀‖ + √φ)."""
    K = J.shape[0]
    row_scale = np.maximum(np.linalg.norm(J, axis=1) * (np.linalg.norm(g0) + radius), np.finfo(float).tiny)
    active = w > 1e-9 * w.max()
    w = np.where(active, w, 0.0)
    w = w / w.sum()
    steps = 0
    for _ in range(4 * K + 20):
        for _ in range(100):
            value, gradient, g_w = _dual(J, g0, radius, w)
            residual = np.abs(gradient - value) / row_scale
            if np.linalg.norm(g_w) == 0 or residual[active].max() <= KKT_TOLERANCE:
                break
            idx = np.flatnonzero(active)
            step = np.zeros(K)
            step[idx] = _newton_step(J[idx], w[idx], g_w, radius, gradient[idx])
            shrinking = step < 0
            limits = np.where(shrinking, -w / np.where(shrinking, step, -1.0), np.inf)
            blocking = int(np.argmin(limits))
            alpha = min(1.0, float(limits[blocking]))
            for _ in range(60):  # accept a decrease of F, or of the face residual once F is flat to rounding
                candidate = np.clip(w + alpha * step, 0.0, None)
                candidate = candidate / candidate.sum()
                value_c, gradient_c, _ = _dual(J, g0, radius, candidate)
                residual_c = np.abs(gradient_c - value_c) / row_scale
                if value_c < value or residual_c[active].max() < 0.5 * residual[active].max():
                    break
                alpha *= 0.5
            else:  # Newton stalled: an exact line search moving weight between two tasks instead
                w = _pairwise_step(J, g0, radius, w, active, gradient)
                steps += 1
                continue
            steps += 1
            if alpha == float(limits[blocking]):
                candidate[blocking] = 0.0
                active[blocking] = False
            w = candidate / candidate.sum()
        value, gradient, _ = _dual(J, g0, radius, w)
        violation = np.where(active, 0.0, (value - gradient) / row_scale)
        worst = int(np.argmax(violation))
        if violation[worst] <= KKT_TOLERANCE:
            break
        active[worst] = True
    value, gradient, _ = _dual(J, g0, radius, w)
    kkt = np.where(active, np.abs(gradient - value), np.maximum(value - gradient, 0.0)) / row_scale
    return w, {"newton_steps": steps, "kkt_residual": float(kkt.max())}


def _hull_zero_point(J: np.ndarray) -> np.ndarray | None:
    """w on the simplex with Σᵢ wᵢgᵢ = 0 when 0 ∈ conv{gᵢ}, else None. A zero row is such a
    point; otherwise scipy's NNLS on the unit vectors ĝᵢ: min_{v≥0} ‖Σᵢ vᵢĝᵢ‖² + (Σᵢvᵢ − 1)² has
    residual ≈ the distance from 0 to conv{ĝᵢ}, and 0 when Σᵢ vᵢĝᵢ = 0 with Σᵢvᵢ = 1."""
    from scipy.optimize import nnls

    norms = np.linalg.norm(J, axis=1)
    if (norms == 0).any():
        return (norms == 0) / float((norms == 0).sum())
    K = J.shape[0]
    system = np.vstack([(J / norms[:, None]).T, np.ones((1, K))])
    target = np.zeros(system.shape[0])
    target[-1] = 1.0
    v, residual = nnls(system, target, maxiter=50 * K)
    if residual > HULL_TOLERANCE or v.sum() == 0:
        return None
    w = v / norms  # Σ vᵢ·gᵢ/‖gᵢ‖ = 0 ⇒ Σ (vᵢ/‖gᵢ‖)·gᵢ = 0
    return w / w.sum()


def cagrad(J: Tensor, *, c: float = 0.5, rescale: int = 1, sum_scale: bool = False) -> ReferenceResult:
    """CAGrad on the full gradients J [K, N], computed in float64.

    Args:
        J: task gradients, one per row.
        c: radius of the ball around g₀, relative to ‖g₀‖ (c = 0 gives the mean).
        rescale: divide d by 1 + c² (1, the authors and LibMTL), 1 (0, torchjd) or 1 + c (2).
        sum_scale: multiply d by K (the authors' scripts, "to match the sum loss").

    Returns:
        direction d [N]; weights [K] with d = Σᵢ weightsᵢ·gᵢ; info: "dual_weights" (w* on the
        simplex, the degenerate case's hull point when found), "dual_objective" (F(w*)),
        "worst_improvement" (minᵢ gᵢ·d before rescaling), "ball_distance" (‖d − g₀‖ before
        rescaling, ≤ √φ), "radius" (√φ), "degenerate" (True when the projection was used), and
        outside the degenerate case "kkt_residual" (the dual's KKT conditions on the full
        vectors, per task relative to ‖gᵢ‖·(‖g₀‖ + √φ)) and "newton_steps".
    """
    check_options(c, rescale, sum_scale)
    J64 = J.detach().to(torch.float64).cpu()
    K = J64.shape[0]
    rows = J64.numpy()
    g0 = rows.mean(axis=0)
    radius = float(c * np.linalg.norm(g0))

    multipliers = np.zeros(K)
    dual_weights = np.eye(K)[int(np.argmin(rows @ g0))]  # the dual's minimiser when √φ = 0
    degenerate = False
    info: dict = {}
    if radius > 0:
        hull_point = _hull_zero_point(rows)
        if hull_point is not None:
            from scipy.optimize import nnls

            u, _ = nnls(rows.T, -g0, maxiter=50 * K)
            degenerate = float(np.linalg.norm(u @ rows)) <= radius * (1 + 1e-10)
            if degenerate:
                multipliers, dual_weights = u, hull_point
        if not degenerate:
            polished = []
            for vertex in np.eye(K)[np.argsort([_dual(rows, g0, radius, e)[0] for e in np.eye(K)])]:
                polished.append(_polish(rows, g0, radius, vertex))
                if polished[-1][1]["kkt_residual"] <= KKT_TOLERANCE:
                    break
            dual_weights, info = min(
                polished, key=lambda p: (p[1]["kkt_residual"] > KKT_TOLERANCE, _dual(rows, g0, radius, p[0])[0])
            )
            g_w = dual_weights @ rows
            multipliers = (radius / np.linalg.norm(g_w)) * dual_weights

    multipliers_t = torch.from_numpy(multipliers)
    direction = J64.mean(dim=0) + multipliers_t @ J64
    worst = float((J64 @ direction).min())
    distance = float((multipliers_t @ J64).norm())
    factor = (K if sum_scale else 1.0) / rescale_factor(c, rescale)
    weights = (torch.full((K,), 1.0 / K, dtype=torch.float64) + multipliers_t) * factor
    info.update(
        dual_weights=torch.from_numpy(dual_weights),
        dual_objective=_dual(rows, g0, radius, dual_weights)[0],
        worst_improvement=worst,
        ball_distance=distance,
        radius=radius,
        degenerate=degenerate,
    )
    return ReferenceResult(direction * factor, weights, info)
