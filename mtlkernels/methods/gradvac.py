"""GradVac's K-space solve (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021, Algorithm 1).

Each task's gradient is corrected towards an adaptive cosine target for every other task, in
turn; the targets are exponential moving averages of the cosines seen, kept between steps.
gᵢ' = cᵢᵀJ starts at cᵢ = eᵢ; for j in order[i] (j ≠ i), with φ = cos(gᵢ', gⱼ) and φ̂ = φ̂ᵢⱼ:

    φ = gᵢ'·gⱼ / (‖gᵢ'‖‖gⱼ‖ + eps),   gᵢ'·gⱼ = (Γcᵢ)ⱼ,  ‖gᵢ'‖² = cᵢᵀΓcᵢ
    if φ < φ̂:  cᵢ[j] += ‖gᵢ'‖·(φ̂·√(1−φ²) − φ·√(1−φ̂²)) / (‖gⱼ‖·√(1−φ̂²) + eps)
    φ̂ᵢⱼ ← (1 − β)·φ̂ᵢⱼ + β·φ

(the correction makes cos(gᵢ', gⱼ) = φ̂ exactly when eps = 0); weights w = Σᵢ cᵢ. With the
targets at 0 (the first step) the correction is PCGrad's projection.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option, check_real
from .._extension import extension
from .base import Solution, Weighting
from .pcgrad import VisitingOrders

TARGET_UPDATES = ("always", "corrected")


def _target_residual(gram: Tensor, c: Tensor, inner: Tensor, j: int, norm_j: float, target: float) -> float:
    """How far cos(gᵢ', gⱼ) = φ̂ is from holding, in squared form (no square root to amplify the
    rounding of a vanishing ‖gᵢ'‖): |a|a| − φ̂|φ̂|·‖gᵢ'‖²‖gⱼ‖²| over T² + φ̂²‖gⱼ‖²·S, with a = gᵢ'·gⱼ =
    (Γcᵢ)ⱼ, T = Σₖ|Γⱼₖcₖ| and S = Σₐ_b|cₐΓₐ_bc_b| the sizes of the terms a and ‖gᵢ'‖² sum: 0 up to
    rounding right after a correction with eps = 0."""
    a = float(inner[j])
    squared_norm_i = max(float(c @ inner), 0.0)
    terms = float((gram[j] * c).abs().sum())
    squares = float(c.abs() @ gram.abs() @ c.abs())
    magnitude = terms**2 + target**2 * norm_j**2 * squares
    if magnitude == 0:
        return 0.0
    return abs(a * abs(a) - target * abs(target) * squared_norm_i * norm_j**2) / magnitude


def correct_task(
    gram: Tensor, order_i: list[int], i: int, targets: Tensor, beta: float, eps: float, always: bool
) -> tuple[Tensor, int, float]:
    """Task i's corrections: returns (cᵢ, corrections made, the largest :func:`_target_residual`
    right after one); updates row i of ``targets`` in place."""
    K = gram.shape[0]
    c = torch.zeros(K, dtype=torch.float64)
    c[i] = 1.0
    inner = gram[i].clone()  # (Γcᵢ)ₖ = gᵢ'·gₖ
    corrections, residual = 0, 0.0
    for j in order_i:
        if j == i:
            continue
        norm_i = math.sqrt(max(float(c @ inner), 0.0))
        norm_j = math.sqrt(max(float(gram[j, j]), 0.0))
        denominator = norm_i * norm_j + eps
        cosine = float(inner[j]) / denominator if denominator > 0 else 0.0
        target = float(targets[i, j])
        corrected = False
        if cosine < target:
            bound = norm_j * math.sqrt(max(1.0 - target * target, 0.0)) + eps
            if bound > 0:
                step = norm_i * (target * math.sqrt(max(1.0 - cosine * cosine, 0.0)) - cosine * math.sqrt(max(1.0 - target * target, 0.0))) / bound
                c[j] += step
                inner += step * gram[j]
                corrections += 1
                corrected = True
                residual = max(residual, _target_residual(gram, c, inner, j, norm_j, target))
        if always or corrected:
            targets[i, j] = (1.0 - beta) * target + beta * cosine
    return c, corrections, residual


class GradVacWeighting(VisitingOrders, Weighting):
    """GradVac: correct each task gradient towards EMA cosine targets with the others; sum them.

    Args:
        beta: the EMA rate β ∈ [0, 1] of the targets (default 0.5: torchjd's and LibMTL's).
        eps: added to the two denominators (default 0: the paper's formulas, exact and scale-free;
            torchjd adds 1e-8, pass eps=1e-8 to match it). With eps = 0 a pair with a zero
            gradient has cosine 0, and a target of exactly ±1 (no finite correction reaches it)
            corrects nothing.
        target_update: "always" (default: the paper's Algorithm 1 and torchjd: every visited pair
            updates its target) or "corrected" (LibMTL: only pairs that were corrected).
        order, generator: the visiting orders, as :class:`~mtlkernels.methods.pcgrad.PCGradWeighting`
            (row i: a permutation of 0..K-1; task i itself is skipped wherever it stands).
        backend: "auto", "torch", "cpp" or "triton" (one on-device program, K ≤ 64; the targets
            then stay on the device).

    State (``state_dict``): ``targets`` (φ̂ [K, K] float64, None before the first call).

    Diagnostics: "corrections" (number made), "target_residual" (max over corrections of how far
    cos(gᵢ', gⱼ) = φ̂ᵢⱼ is from holding right after it, relative to the size of its terms, see
    :func:`_target_residual`: 0 up to rounding when eps = 0), "order" (the [K, K] orders used).

    Variant: the paper's GradVac on the whole gradient (one group; LibMTL and the paper can apply
    it per layer group, which is not a function of Γ), summed.
    """

    name = "gradvac"

    def __init__(
        self,
        *,
        beta: float = 0.5,
        eps: float = 0.0,
        target_update: str = "always",
        order: Any = None,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(backend=backend)
        beta = check_real("beta", beta, minimum=0.0)
        if beta > 1.0:
            raise ValueError(f"beta={beta!r} must be in [0, 1]")
        self.beta = beta
        self.eps = check_real("eps", eps, minimum=0.0)
        check_option("target_update", target_update, TARGET_UPDATES)
        self.target_update = target_update
        self.set_visiting_orders(order, generator)
        self.reset()

    def options(self) -> dict[str, Any]:
        return {
            "beta": self.beta, "eps": self.eps, "target_update": self.target_update, "order": self.order,
            "generator": self.generator, "backend": self.backend,
        }

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"targets": None if self._targets is None else self._targets.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"targets"}:
            raise ValueError(f"GradVacWeighting state needs the key ['targets']; got {sorted(state)}")
        targets = state["targets"]
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.shape[0] != targets.shape[1] or not targets.is_floating_point():
                raise ValueError("state['targets'] must be None or a square float tensor [K, K]")
            if not bool(torch.isfinite(targets).all()) or bool((targets.abs() > 1).any()):
                raise ValueError("state['targets'] must hold cosines: finite values in [-1, 1]")
            targets = targets.detach().to("cpu", torch.float64).clone()
        self._targets = targets

    def reset(self) -> None:
        self._targets: Tensor | None = None

    # -- one call ---------------------------------------------------------------------------
    def _targets_for(self, K: int, device: torch.device | str = "cpu") -> Tensor:
        """A float64 copy of the stored targets on ``device`` (zeros before the first call),
        checked against K. The targets live where the last solve ran (on the GPU after a Triton
        solve)."""
        self._check_targets(K)
        if self._targets is None:
            return torch.zeros(K, K, dtype=torch.float64, device=device)
        return self._targets.to(device=device, copy=True)

    def _check_targets(self, K: int) -> None:
        """A ValueError when the stored targets are for another number of tasks (reads only the
        shape: no copy, no device synchronisation)."""
        if self._targets is not None and self._targets.shape[0] != K:
            raise ValueError(
                f"gradvac: the stored targets are for K = {self._targets.shape[0]} tasks but the Gram matrix "
                f"has K = {K}; call reset() when the tasks change"
            )

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        self._check_targets(gram.shape[0])

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        K = gram.shape[0]
        G = (gram + gram.T) / 2
        order = self.visiting_orders(K)
        targets = self._targets_for(K)
        weights = torch.zeros(K, dtype=torch.float64)
        corrections, residual = 0, 0.0
        rows = order.tolist()
        for i in range(K):
            c, made, worst = correct_task(G, rows[i], i, targets, self.beta, self.eps, self.target_update == "always")
            weights += c
            corrections += made
            residual = max(residual, worst)
        self._targets = targets
        return Solution(weights, {"corrections": corrections, "target_residual": residual, "order": order})

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        K = gram.shape[0]
        order = self.visiting_orders(K)
        targets = self._targets_for(K)
        weights, diagnostics = extension().gradvac_solve(
            gram.numpy(), order.numpy(), targets.numpy(), self.beta, self.eps, self.target_update == "always"
        )
        self._targets = targets  # updated in place by the solve
        diagnostics["order"] = order
        return weights, diagnostics

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """One program, no host sync; the targets stay on the device; orders drawn there when no
        generator is given."""
        from ..kernels.solve_gradvac import gradvac_solve

        K = gram.shape[0]
        order = self.visiting_orders(K, gram.device)
        targets = self._targets_for(K, gram.device)
        weights, diagnostics = gradvac_solve(gram, order, targets, self.beta, self.eps, self.target_update == "always")
        self._targets = targets
        diagnostics["order"] = order
        return Solution(weights, diagnostics)
