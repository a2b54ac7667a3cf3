"""Uncertainty weighting as a drop-in optimizer (Kendall, Gal & Cipolla, CVPR 2018): one backward
of Σₖ wₖ·Lₖ per step."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_real
from .loss_weighting import LossWeighting, StepPlan, check_state_keys, check_state_vector


class UW(LossWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
    Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    The objective Σₖ ½e^{−sₖ}·Lₖ + ½sₖ, with learned log-variances sₖ = log σₖ² (the paper's
    1/(2σ²)·L + log σ, written for every task in its regression form, as LibMTL and torchjd do):
    the network gets ∇ Σₖ wₖ·Lₖ with wₖ = ½e^{−sₖ}, and s gets ∂/∂sₖ = ½ − ½e^{−sₖ}·Lₖ from
    the loss values (no graph through s). s [K] joins the wrapped optimizer as a new parameter
    group once K is known (``num_tasks=`` or the first successful ``backward``): create LR
    schedulers after that, or pass ``num_tasks=``.

    Args:
        optimizer: the wrapped torch optimizer.
        init: the initial sₖ (default 0: σ² = 1, torchjd's; LibMTL's is −0.5).
        variance_group: extra options of s's parameter group (e.g. ``{"lr": 1e-2}``).
        **options: :class:`LossWeighting`'s arguments.

    State: s's values (its moments are in the wrapped optimizer's state).
    """

    name = "uw"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, init: float = 0.0, variance_group: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.init = check_real("init", init)
        self.variance_group = dict(variance_group or {})
        if "params" in self.variance_group:
            raise ValueError("variance_group holds the group's options; its parameter is the log-variances")
        #: the log-variances s [K] (None until K is known)
        self.log_variances: Tensor | None = None
        super().__init__(optimizer, **options)

    def options(self) -> dict[str, Any]:
        return {"init": self.init, "variance_group": self.variance_group, **super().options()}

    def _set_num_tasks(self, K: int) -> None:
        super()._set_num_tasks(K)
        if self.log_variances is None:
            self.log_variances = self._add_owned(K, self.init, self.variance_group)

    def _groups_added(self, K: int | None) -> list[int]:
        return [1] if self.log_variances is None and K is not None else []

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        s = torch.full_like(values, self.init) if self.log_variances is None else self.log_variances.detach().to(torch.float64)
        half_precision = 0.5 * torch.exp(-s)
        grad = (0.5 - half_precision * values.to(s.device)) * grad_scale
        return StepPlan(half_precision, {}, owned_grad=grad, facts={"log_variance": s})

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {"log_variances": None if self.log_variances is None else self.log_variances.detach().clone()}

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        check_state_keys(state, {"log_variances"}, "UW")
        check_state_vector(state, "log_variances", K, optional=True)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        if state["log_variances"] is not None:
            with torch.no_grad():
                self.log_variances.copy_(state["log_variances"])
