"""Reference MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

u* = argmin ‖u‖ over u ∈ conv{g₁/n₁, …, g_K/n_K}, u* = Σᵢ wᵢ·gᵢ/nᵢ with w on the simplex;
then d = Σᵢ wᵢ·gᵢ ("original", the authors) or d = Σᵢ (wᵢ/nᵢ)·gᵢ = u* ("normalized", LibMTL).

The min-norm point is found on the full vectors by Wolfe's nearest-point algorithm (Wolfe,
"Finding the nearest point in a polytope", Math. Programming 1976): an active-set method whose
subproblem — the nearest point to 0 of the affine hull of the active vectors — is a least-squares
solve on the vectors themselves. Pure torch, float64, slow and readable on purpose.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._result import ReferenceResult

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
COMBINATIONS = ("original", "normalized")

#: Wolfe's optimality test: stop when no vector p has (p·x − ‖x‖²) < −TOLERANCE·m·(‖p‖ + m),
#: with x the current point and m = Σᵢ wᵢ‖pᵢ‖ (the scale of the rounding in p·x and ‖x‖²).
TOLERANCE = 1e-15


def normalizers(J: Tensor, normalization: str, losses: Tensor | None) -> Tensor:
    """nᵢ of the paper's gradient normalisation: 1, ‖gᵢ‖, Lᵢ or Lᵢ·‖gᵢ‖; a zero nᵢ becomes 1."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not supported; choose one of {list(NORMALIZATIONS)}")
    K = J.shape[0]
    if normalization == "none":
        return torch.ones(K, dtype=torch.float64)
    norms = J.norm(dim=1)
    if normalization == "l2":
        n = norms
    else:
        if losses is None:
            raise ValueError(f"normalization={normalization!r} needs the K loss values: pass losses=")
        losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
        if losses.numel() != K:
            raise ValueError(f"got {losses.numel()} losses for K = {K} tasks")
        if bool((losses < 0).any()):
            raise ValueError(f"normalization={normalization!r} divides by the losses; losses {losses.tolist()} include negative values")
        n = losses if normalization == "loss" else losses * norms
    return torch.where(n > 0, n, torch.ones_like(n))


def _affine_minimizer(points: Tensor) -> Tensor:
    """Coefficients α (Σα = 1) of the point of the affine hull of the rows of ``points`` nearest 0.

    With b the shortest row and Δᵢ = pᵢ − p_b: min ‖p_b + Σ βᵢΔᵢ‖ by least squares on the
    unit-normalised Δᵢ (so vectors of very different lengths keep their precision); α_b = 1 − Σβ.
    """
    s = points.shape[0]
    b = int(points.norm(dim=1).argmin())
    others = [i for i in range(s) if i != b]
    alpha = torch.zeros(s, dtype=torch.float64)
    if not others:
        alpha[b] = 1.0
        return alpha
    differences = points[others] - points[b]
    lengths = differences.norm(dim=1)
    beta = torch.linalg.lstsq((differences / lengths[:, None]).T, -points[b][:, None], driver="gelsy").solution[:, 0]
    alpha[others] = beta / lengths
    alpha[b] = 1.0 - alpha[others].sum()
    return alpha


def min_norm_point(P: Tensor, max_steps: int | None = None) -> tuple[Tensor, dict]:
    """Weights w on the simplex of the min-norm point Σᵢ wᵢ·pᵢ of the convex hull of the rows of P.

    Wolfe's algorithm: start from the shortest row; repeat { add the row that most violates
    p·x ≥ ‖x‖²; minor cycles: move towards the affine minimiser of the active rows, dropping
    rows whose weight reaches 0 }. When some rows are 0 the min-norm point is 0: the weight is
    spread equally over the zero rows.
    """
    K = P.shape[0]
    lengths = P.norm(dim=1)
    if bool((lengths == 0).any()):
        zero = (lengths == 0).to(torch.float64)
        return zero / zero.sum(), {"steps": 0}
    max_steps = max_steps if max_steps is not None else 100 * K + 100
    active = [int(lengths.argmin())]
    lam = torch.ones(1, dtype=torch.float64)
    steps = 0
    while steps < max_steps:
        x = lam @ P[active]
        objective = float(x @ x)
        m = float(lam @ lengths[active])
        slack = (P @ x - objective) / (m * (lengths + m))
        j = int(slack.argmin())
        if float(slack[j]) >= -TOLERANCE or j in active:
            break
        previous = (list(active), lam)
        active.append(j)
        lam = torch.cat([lam, torch.zeros(1, dtype=torch.float64)])
        while steps < max_steps:  # minor cycles
            steps += 1
            alpha = _affine_minimizer(P[active])
            if bool((alpha > 0).all()):
                lam = alpha
                break
            blocking = (alpha <= 0).nonzero().flatten()
            ratios = lam[blocking] / (lam[blocking] - alpha[blocking])
            lam = lam + float(ratios.min()) * (alpha - lam)
            lam[blocking[ratios.argmin()]] = 0.0
            keep = (lam > 0).nonzero().flatten().tolist()
            active = [active[i] for i in keep]
            lam = lam[keep] / lam[keep].sum()
        x = lam @ P[active]
        if not float(x @ x) < objective:  # no progress left at this precision: keep the better point
            active, lam = previous
            break
    w = torch.zeros(K, dtype=torch.float64)
    w[active] = lam
    return w, {"steps": steps}


def mgda(
    J: Tensor,
    *,
    normalization: str = "none",
    combination: str = "original",
    losses: Tensor | Sequence[float] | None = None,
) -> ReferenceResult:
    """MGDA on the full gradients J [K, N], in float64.

    Args:
        normalization: nᵢ = 1 ("none"), ‖gᵢ‖ ("l2"), Lᵢ ("loss") or Lᵢ·‖gᵢ‖ ("loss+"); a zero nᵢ
            is replaced by 1; negative losses are refused.
        combination: "original" (d = Σ wᵢgᵢ) or "normalized" (d = Σ wᵢgᵢ/nᵢ).
        losses: the K loss values, for "loss" and "loss+".

    Returns:
        direction d [N]; weights [K] with d = weightsᵀJ (w, or w/n for "normalized"); info:
        "simplex_weights" w, "normalizers" n, "objective" ‖u*‖², "min_norm_vector" u*,
        "steps" (minor cycles).
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r} is not supported; choose one of {list(COMBINATIONS)}")
    J = J.detach().to(device="cpu", dtype=torch.float64)
    n = normalizers(J, normalization, losses)
    P = J / n[:, None]
    w, info = min_norm_point(P)
    u = w @ P
    weights = w if combination == "original" else w / n
    info.update({"simplex_weights": w, "normalizers": n, "objective": float(u @ u), "min_norm_vector": u})
    return ReferenceResult(weights @ J, weights, info)
