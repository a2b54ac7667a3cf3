"""Dynamic weight average as a drop-in optimizer (Liu, Johns & Davison, CVPR 2019): one backward
of Σₖ wₖ·Lₖ per step."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_real
from .loss_weighting import LossWeighting, StepPlan, check_state_keys, check_state_vector


class DWA(LossWeighting):
    """Dynamic weight average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    λₖ(t) = K·exp(rₖ(t−1)/T) / Σᵢ exp(rᵢ(t−1)/T), rₖ(t−1) = L̄ₖ(t−1)/L̄ₖ(t−2), where L̄ₖ(t) is
    task k's loss averaged over epoch t; λ = 1 during the first two epochs (the paper's
    convention: "initialised to 1 for t = 1, 2"). Call ``opt.end_epoch()`` once at the end of each
    epoch; the losses of every successful ``backward`` of the epoch are averaged.

    Args:
        optimizer: the wrapped torch optimizer.
        temperature: T (paper: 2); larger T gives more uniform weights.
        **options: :class:`LossWeighting`'s arguments.

    State: the running epoch's loss sum and batch count, and the last two epochs' averages.
    """

    name = "dwa"

    def __init__(self, optimizer: torch.optim.Optimizer, *, temperature: float = 2.0, **options: Any) -> None:
        self.temperature = check_real("temperature", temperature, minimum=0.0, strict=True)
        self._loss_sum: Tensor | None = None
        self._batches = 0
        self._averages: list[Tensor] = []  # the last two epochs' average losses, oldest first
        super().__init__(optimizer, **options)

    def options(self) -> dict[str, Any]:
        return {"temperature": self.temperature, **super().options()}

    def end_epoch(self) -> None:
        """Close the epoch: its average loss becomes L̄(t−1), the one before L̄(t−2)."""
        if self._loss_sum is None:
            return
        self._averages = [*self._averages, self._loss_sum / self._batches][-2:]
        self._loss_sum, self._batches = None, 0

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        K = values.shape[0]
        if len(self._averages) < 2:
            weights = torch.ones(K, dtype=torch.float64)
        else:
            rate = self._averages[1] / self._averages[0]
            weights = K * torch.softmax(rate / self.temperature, 0)
        total = values.clone() if self._loss_sum is None else self._loss_sum + values
        return StepPlan(weights, {"loss_sum": total}, facts={"epochs_seen": len(self._averages)})

    def _commit_plan(self, plan: StepPlan) -> None:
        self._loss_sum = plan.state["loss_sum"]
        self._batches += 1

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {
            "loss_sum": None if self._loss_sum is None else self._loss_sum.clone(), "batches": self._batches,
            "averages": [a.clone() for a in self._averages],
        }

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        check_state_keys(state, {"loss_sum", "batches", "averages"}, "DWA")
        check_state_vector(state, "loss_sum", K, optional=True)
        batches, averages = state["batches"], state["averages"]
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0 or (batches == 0) != (state["loss_sum"] is None):
            raise ValueError(f"the DWA state's 'batches' must be an int >= 0, 0 exactly when there is no loss sum; got {batches!r}")
        if not isinstance(averages, list) or len(averages) > 2:
            raise ValueError("the DWA state's 'averages' must be a list of at most two loss averages")
        for i in range(len(averages)):
            check_state_vector({"average": averages[i]}, "average", K)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        total = state["loss_sum"]
        self._loss_sum = None if total is None else total.detach().to("cpu", torch.float64).clone()
        self._batches = state["batches"]
        self._averages = [a.detach().to("cpu", torch.float64).clone() for a in state["averages"]]
