"""MGDA's K-space solve (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018): w = argmin_{w ∈ Δ} wᵀΓ'w with Γ' = Γ/(n·nᵀ), the Gram of the normalised gradients
gᵢ/nᵢ; then d = Σ wᵢgᵢ ("original") or Σ (wᵢ/nᵢ)gᵢ ("normalized").

The simplex QP is solved exactly by Wolfe's nearest-point algorithm (Math. Programming 1976), an
active-set method, run on Γ' alone. Its subproblem — the point of the affine hull of the active
gradients nearest 0 — is solved with the shortest active gradient p_b as base: the differences
Δᵢ = pᵢ − p_b are normalised to unit length (ΔᵢᵀΔⱼ = Γ'ᵢⱼ − Γ'ᵢ_b − Γ'ⱼ_b + Γ'_bb), so gradients whose
norms span 1e-20..1e20 keep their relative precision. The certificate is the KKT residual of the
QP, relative to the scale of its rounding (see :func:`kkt_residual`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option
from .._extension import extension
from .base import Solution, Weighting, cpp_constants

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
COMBINATIONS = ("original", "normalized")


@dataclass(frozen=True)
class MGDAConstants:
    """MGDA's tolerances and iteration cap: read by the torch solve, handed to the C++ solve
    (``mtlkernels._C.MGDAConstants``) and to the Triton kernel (as constexprs).

    Attributes:
        tolerance: Wolfe's optimality test: stop when every gradient p has
            p·x − ‖x‖² ≥ −tolerance·m·(‖p‖ + m), x the current point, m = Σᵢ wᵢ‖pᵢ‖ (the scale of
            the rounding in p·x and ‖x‖²).
        dependent_pivot: an active set whose unit differences have a Cholesky pivot² ≤ this is
            taken as affinely dependent.
        cycles_per_task, cycles_extra: at most cycles_per_task·K + cycles_extra minor cycles.
    """

    tolerance: float = 1e-15
    dependent_pivot: float = 1e-15
    cycles_per_task: int = 50
    cycles_extra: int = 100


#: the constants every MGDA solve uses
CONSTANTS = MGDAConstants()


def _symmetrized(G: Tensor) -> Tensor:
    """(G + Gᵀ)/2."""
    return (G + G.T) / 2


def check_loss_signs(normalization: str, losses: Tensor | None) -> None:
    """Loss normalisations divide by the losses: a negative loss would flip its gradient. Losses on
    the device (CUDA, read by the Triton solve) are not read here: that solve gives NaN weights
    for a negative or non-finite loss instead of making the host wait."""
    if normalization in ("loss", "loss+") and losses is not None and losses.device.type == "cpu":
        negative = (losses < 0).nonzero().flatten().tolist()
        if negative:
            raise ValueError(
                f"normalization={normalization!r} divides each gradient by its loss; the losses of tasks "
                f"{negative} are negative"
            )


def normalizers(gram: Tensor, normalization: str, losses: Tensor | None) -> Tensor:
    """nᵢ = 1 ("none"), ‖gᵢ‖ = √Γᵢᵢ ("l2"), Lᵢ ("loss") or Lᵢ·‖gᵢ‖ ("loss+"); a zero nᵢ becomes 1."""
    K = gram.shape[0]
    if normalization == "none":
        return torch.ones(K, dtype=torch.float64)
    norms = gram.diagonal().sqrt()
    n = norms if normalization == "l2" else losses if normalization == "loss" else losses * norms
    return torch.where(n > 0, n, torch.ones_like(n))


def kkt_residual(Q: Tensor, w: Tensor) -> float:
    """KKT residual of min_{w ∈ Δ} wᵀQw: with g = Qw, λ = wᵀQw, m = Σ wᵢ√Qᵢᵢ, the largest of
    |gᵢ − λ| over the support and max(0, λ − gᵢ) off it, each over m·(√Qᵢᵢ + m). 0 when m = 0.
    Computed in float64, for any solver's weights w [K] on the simplex."""
    Q = Q.to(torch.float64)
    w = w.to(device=Q.device, dtype=torch.float64)
    lengths = Q.diagonal().clamp_min(0).sqrt()
    g = Q @ w
    objective = w @ g
    m = float(w @ lengths)
    if m == 0.0:
        return 0.0
    slack = (g - objective) / (m * (lengths + m))
    violation = torch.where(w > 0, slack.abs(), (-slack).clamp_min(0))
    return float(violation.max())


def _affine_minimizer(Q: Tensor, active: list[int], lengths: list[float], k: MGDAConstants) -> Tensor | None:
    """Coefficients α (Σα = 1, in the order of ``active``) of the point of the affine hull of the
    active gradients nearest 0, or None when they are numerically affinely dependent."""
    base = min(range(len(active)), key=lambda i: (lengths[active[i]], i))
    b = active[base]
    others = torch.tensor([a for a in active if a != b], dtype=torch.long)
    alpha = torch.zeros(len(active), dtype=torch.float64)
    if others.numel() == 0:
        alpha[base] = 1.0
        return alpha
    q_b = Q[others, b]
    M = Q[others][:, others] - q_b[:, None] - q_b[None, :] + Q[b, b]  # Δᵢ·Δⱼ
    squared = M.diagonal()
    if not bool((squared > 0).all()):
        return None
    unit = squared.sqrt()
    M_unit = M / (unit[:, None] * unit[None, :])
    M_unit.diagonal().fill_(1.0)
    L, info = torch.linalg.cholesky_ex(M_unit)
    if int(info) != 0 or float(L.diagonal().square().min()) <= k.dependent_pivot:
        return None
    rhs = -(q_b - Q[b, b]) / unit  # −Δ̂ᵢ·p_b
    beta = torch.cholesky_solve(rhs[:, None], L)[:, 0] / unit
    positions = [i for i in range(len(active)) if i != base]
    alpha[positions] = beta
    alpha[base] = 1.0 - beta.sum()
    return alpha


def min_norm_weights(Q: Tensor, max_cycles: int | None = None, k: MGDAConstants = CONSTANTS) -> tuple[Tensor, int]:
    """w = argmin_{w ∈ Δ} wᵀQw for a PSD Q (float64), by Wolfe's algorithm; returns (w, minor cycles).

    Start from the shortest gradient; repeat { add the gradient most violating p·x ≥ ‖x‖² (scaled as
    in :attr:`MGDAConstants.tolerance`); minor cycles: step towards the affine minimiser of the active set, dropping
    gradients whose weight reaches 0 }. Stops when optimal, when no step lowers ‖x‖² any more, or
    after ``max_cycles`` (default cycles_per_task·K + cycles_extra of ``k``). Zero gradients make the min-norm point 0: the weight
    is then spread equally over them.
    """
    K = Q.shape[0]
    lengths = Q.diagonal().sqrt()
    zero = lengths == 0
    if bool(zero.any()):
        return zero.to(torch.float64) / int(zero.sum()), 0
    max_cycles = max_cycles if max_cycles is not None else k.cycles_per_task * K + k.cycles_extra
    length_values = lengths.tolist()
    active = [int(lengths.argmin())]
    lam = torch.ones(1, dtype=torch.float64)
    g = Q[:, active] @ lam
    objective = float(lam @ g[active])
    cycles = 0
    while cycles < max_cycles:
        m = float(lam @ lengths[active])
        slack = (g - objective) / (m * (lengths + m))
        j = int(slack.argmin())
        if float(slack[j]) >= -k.tolerance or j in active:
            break
        previous = (list(active), lam)
        active.append(j)
        lam = torch.cat([lam, torch.zeros(1, dtype=torch.float64)])
        dependent = False
        while cycles < max_cycles:  # minor cycles
            cycles += 1
            alpha = _affine_minimizer(Q, active, length_values, k)
            if alpha is None:
                dependent = True
                break
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
        if not dependent:
            g_updated = Q[:, active] @ lam
            updated = float(lam @ g_updated[active])
        if dependent or not updated < objective:
            active, lam = previous  # no progress left at this precision: keep the better point
            break
        g, objective = g_updated, updated
    w = torch.zeros(K, dtype=torch.float64)
    w[active] = lam
    return w, cycles


class MGDAWeighting(Weighting):
    """MGDA: the min-norm point of the convex hull of the (normalised) task gradients.

    Args:
        normalization: nᵢ in gᵢ/nᵢ — "none" (default; LibMTL's default), "l2" (‖gᵢ‖), "loss" (Lᵢ) or
            "loss+" (Lᵢ·‖gᵢ‖, the authors' choice in their experiments). The loss ones need
            ``losses=`` (non-negative). A zero nᵢ (zero gradient, zero loss) is replaced by 1.
        combination: "original" (default, the authors: d = Σ wᵢgᵢ) or "normalized" (LibMTL:
            d = Σ (wᵢ/nᵢ)gᵢ, the min-norm vector itself).
        backend: "auto" (C++ on the CPU, Triton on CUDA; torch beyond their K limits), "torch",
            "cpp" or "triton".

    Constants: :data:`CONSTANTS` (:class:`MGDAConstants`), used by every backend.

    Diagnostics: "kkt_residual" (see :func:`kkt_residual`; ~1e-16 at the exact optimum),
    "objective" (wᵀΓ'w = ‖u*‖²), "iterations" (Wolfe's minor cycles), "support" (number of
    wᵢ > 0), "simplex_weights" (w on the simplex, as LibMTL returns them), "normalizers" (n).

    Variant: the paper's MGDA on the given gradients, the normalisation an option, default "none"
    (LibMTL's default). The wrapper :class:`mtlkernels.MGDAUB` runs this weighting on the shared
    representation's gradients (MGDA-UB, ``features=``) with its own default "loss+".
    """

    name = "mgda"
    constants = CONSTANTS

    def __init__(self, *, normalization: str = "none", combination: str = "original", backend: str = "auto") -> None:
        super().__init__(backend=backend)
        check_option("normalization", normalization, NORMALIZATIONS)
        check_option("combination", combination, COMBINATIONS)
        self.normalization = normalization
        self.combination = combination

    @property
    def needs_losses(self) -> bool:
        return self.normalization in ("loss", "loss+")

    def options(self) -> dict[str, Any]:
        return {"normalization": self.normalization, "combination": self.combination, "backend": self.backend}

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        check_loss_signs(self.normalization, losses)

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        G = _symmetrized(gram)
        n = normalizers(G, self.normalization, losses)
        Q = G / n[:, None] / n[None, :]
        w, cycles = min_norm_weights(Q, k=self.constants)
        weights = w if self.combination == "original" else w / n
        diagnostics = {
            "kkt_residual": kkt_residual(Q, w),
            "objective": float(w @ Q @ w),
            "iterations": cycles,
            "support": int((w > 0).sum()),
            "simplex_weights": w,
            "normalizers": n,
        }
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        result = extension().mgda_solve(
            gram.numpy(), cpp_constants(self.constants), self.normalization, self.combination,
            None if losses is None else losses.numpy(),
        )
        result["simplex_weights"] = torch.from_numpy(result["simplex_weights"])
        result["normalizers"] = torch.from_numpy(result["normalizers"])
        return result.pop("weights"), result

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        from ..kernels.solve_mgda import mgda_solve

        out = mgda_solve(gram, losses, self.normalization, self.combination, self.constants)
        return Solution(out.pop("weights"), out)
