"""FAMO as a drop-in optimizer (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS 2023): one backward of Σₖ wₖ·Lₖ per step."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .._checks import check_real
from . import distributed as _dist
from . import tasks as _tasks
from .loss_weighting import LossWeighting, StepPlan, check_state_keys, check_state_vector
from .nonfinite import NonFiniteError


ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def famo_logit_gradient(logits: Tensor, delta: Tensor) -> Tensor:
    """∂/∂ξ of zᵀδ with z = softmax(ξ): z ⊙ (δ − zᵀδ) (the Jacobian of the softmax applied to δ)."""
    z = torch.softmax(logits, 0)
    return z * (delta - (z * delta).sum())


class FAMO(LossWeighting):
    """FAMO, Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023).

    Each step differentiates c·Σₖ zₖ·log(Lₖ − bₖ + ε), z = softmax(ξ), with the normalising
    constant c = (Σₖ zₖ/(Lₖ − bₖ + ε))⁻¹ held fixed — the same gradient as Σₖ wₖ·Lₖ with
    wₖ = c·zₖ/(Lₖ − bₖ + ε) (Σ wₖ = 1), which is what is differentiated here. The logits ξ learn
    from how much each log-loss fell across a step, δₖ = log(Lₖ⁻ − bₖ + ε) − log(Lₖ⁺ − bₖ + ε):
    one Adam step (lr, L2 ``weight_decay`` γ, betas (0.9, 0.999), eps 1e-8) on ξ with gradient
    z ⊙ (δ − zᵀδ).

    The losses after the step (Lₖ⁺):

    - default: the next ``backward``'s losses, on the next batch — free; the logits are updated
      at the start of that backward, before its weights are formed;
    - ``opt.update(losses)`` after ``opt.step()``, with the losses recomputed on the same batch
      (one more forward, no backward): what the authors' training scripts do (their toy script,
      where every step sees the same objective, uses the next step's losses). Once called, the next ``backward`` makes no update of its own.

    Args:
        optimizer: the wrapped torch optimizer (it does not see ξ: FAMO steps ξ itself).
        min_losses: bₖ, a lower bound of each loss (default zeros: every loss must be > 0).
        lr: the logits' Adam learning rate (paper and authors: 0.025).
        weight_decay: the logits' L2 weight decay γ (default 1e-3, torchjd's; the authors'
            standalone ``famo.py`` defaults to 0.01, their experiments set it per dataset).
        eps: ε inside the logarithms (1e-8).
        **options: :class:`LossWeighting`'s arguments.

    A loss at or below its bound (Lₖ − bₖ + ε ≤ 0) has no logarithm: ``backward`` and ``update``
    raise a ValueError naming the task and change nothing (the paper assumes Lₖ > bₖ ≥ 0).

    State (``state_dict()``): the logits ξ, their Adam moments and step count, and the shifted
    losses Lₖ⁻ − bₖ + ε waiting for their update (all float64 on the CPU).
    Diagnostics: ``logits_updated`` (whether this backward updated ξ) and ``task_weight/{k}`` (z).
    """

    name = "famo"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        min_losses: Sequence[float] | Tensor | None = None,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        eps: float = 1e-8,
        **options: Any,
    ) -> None:
        self.lr = check_real("lr", lr, minimum=0.0)
        self.weight_decay = check_real("weight_decay", weight_decay, minimum=0.0)
        self.eps = check_real("eps", eps, minimum=0.0)
        if min_losses is not None:
            min_losses = torch.as_tensor(min_losses, dtype=torch.float64).detach().cpu().reshape(-1).clone()
            if not bool(torch.isfinite(min_losses).all()):
                raise ValueError(f"min_losses must be finite; got {min_losses.tolist()}")
        self.min_losses: Tensor | None = min_losses
        self._reset_famo()
        super().__init__(optimizer, **options)
        if min_losses is not None and self.num_tasks is not None and min_losses.numel() != self.num_tasks:
            raise ValueError(f"min_losses has {min_losses.numel()} entries; num_tasks is {self.num_tasks}")

    def _reset_famo(self) -> None:
        self._logits: Tensor | None = None  # ξ [K]
        self._exp_avg: Tensor | None = None
        self._exp_avg_sq: Tensor | None = None
        self._adam_steps = 0
        self._before: Tensor | None = None  # Lₖ⁻ − bₖ + ε of the last step, not yet used

    @property
    def logits(self) -> Tensor | None:
        """ξ [K] (None before K is known); the task weights are softmax(ξ)."""
        return self._logits

    def options(self) -> dict[str, Any]:
        min_losses = None if self.min_losses is None else self.min_losses.tolist()
        return {"min_losses": min_losses, "lr": self.lr, "weight_decay": self.weight_decay, "eps": self.eps, **super().options()}

    def _shifted(self, values: Tensor, where: str) -> Tensor:
        """Lₖ − bₖ + ε, after checking that it is positive (the logarithm's domain)."""
        K = values.shape[0]
        bound = torch.zeros(K, dtype=torch.float64) if self.min_losses is None else self.min_losses
        if bound.shape[0] != K:
            raise ValueError(f"FAMO: min_losses has {bound.shape[0]} entries but {where} got K = {K} losses")
        shifted = values - bound + self.eps
        bad = (shifted <= 0).nonzero().flatten().tolist()
        if bad:
            named = "; ".join(f"task {k}: loss {values[k].item():.6g} ≤ min_losses {bound[k].item():.6g}" for k in bad)
            raise ValueError(
                f"FAMO.{where} takes log(Lₖ − bₖ + eps), which needs every loss above its bound: {named}. "
                "Pass min_losses= (a lower bound of each loss, e.g. its minimum value) for losses that are not positive"
            )
        return shifted

    def _check_values(self, values: Tensor) -> None:
        self._shifted(values, "backward")

    def _adam(self, delta: Tensor) -> dict[str, Any]:
        """One Adam step of ξ on the gradient z ⊙ (δ − zᵀδ) + weight_decay·ξ (torch.optim.Adam's
        L2 form); returns the new logits, moments and step count."""
        logits = self._logits if self._logits is not None else torch.zeros_like(delta)
        m = self._exp_avg if self._exp_avg is not None else torch.zeros_like(delta)
        v = self._exp_avg_sq if self._exp_avg_sq is not None else torch.zeros_like(delta)
        beta1, beta2 = ADAM_BETAS
        grad = famo_logit_gradient(logits, delta) + self.weight_decay * logits
        t = self._adam_steps + 1
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        denom = (v / (1 - beta2**t)).sqrt() + ADAM_EPS
        logits = logits - self.lr / (1 - beta1**t) * m / denom
        return {"logits": logits, "exp_avg": m, "exp_avg_sq": v, "adam_steps": t}

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        shifted = self._shifted(values, "backward")
        state: dict[str, Any] = {"before": shifted}
        if self._before is not None:
            state.update(self._adam(self._before.log() - shifted.log()))
        logits = state.get("logits", self._logits)
        if logits is None:
            logits = torch.zeros_like(values)
        z = torch.softmax(logits, 0)
        weights = z / shifted / (z / shifted).sum()
        facts = {"logits_updated": "logits" in state, "task_weight": z}
        return StepPlan(weights, state, facts=facts)

    def _commit_plan(self, plan: StepPlan) -> None:
        self._apply(plan.state)

    def _apply(self, state: dict[str, Any]) -> None:
        if "logits" in state:
            self._logits, self._exp_avg, self._exp_avg_sq = state["logits"], state["exp_avg"], state["exp_avg_sq"]
            self._adam_steps = state["adam_steps"]
        elif self._logits is None:
            self._logits = torch.zeros_like(state["before"])
            self._exp_avg, self._exp_avg_sq = torch.zeros_like(self._logits), torch.zeros_like(self._logits)
        self._before = state["before"]

    @torch.no_grad()
    def update(self, losses: Sequence[Tensor] | Sequence[float] | Tensor | Mapping[str, Tensor]) -> None:
        """Update ξ from the losses recomputed on the same batch after ``step()`` (as the authors'
        training scripts do): δ = log(Lₖ⁻ − bₖ + ε) − log(Lₖ⁺ − bₖ + ε), one Adam step. The next
        ``backward`` then makes no update of its own. Under DDP the losses are averaged over ranks.
        A non-finite loss follows ``on_nonfinite`` (the logits are left as they are)."""
        if self._before is None:
            raise ValueError(
                "FAMO.update needs the losses before the step: call it after a successful backward and step, "
                "once per step (the next backward already updated the logits, or none ran yet)"
            )
        if isinstance(losses, Mapping):  # by name, as backward takes them
            losses, _ = _tasks.split_losses(losses, self.task_names, self.num_tasks)
            if any(loss is None for loss in losses):
                raise ValueError(f"FAMO.update needs every task's loss; the tasks are {list(self.task_names or ())}")
        if isinstance(losses, Tensor):
            values = losses.detach().reshape(-1).to(torch.float64)
        else:
            values = torch.stack([torch.as_tensor(l).detach().reshape(()).to(torch.float64).cpu() for l in losses])
        if values.shape[0] != self._before.shape[0]:
            raise ValueError(f"FAMO.update got {values.shape[0]} losses; expected K = {self._before.shape[0]}")
        if _dist.resolve_mode(self.distributed, self.process_group) == "replicated":
            values = _dist.all_reduce_mean_(values.clone(), self.process_group)
        values = values.cpu()
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            if self.on_nonfinite == "raise":
                named = "; ".join(f"task {k}: loss is {values[k].item()}" for k in bad)
                raise NonFiniteError(f"FAMO.update: {named}; the logits were not changed")
            self.num_skipped += 1
            return
        new = self._adam(self._before.log() - self._shifted(values, "update").log())
        self._logits, self._exp_avg, self._exp_avg_sq = new["logits"], new["exp_avg"], new["exp_avg_sq"]
        self._adam_steps = new["adam_steps"]
        self._before = None

    def _loss_weighting_state(self) -> dict[str, Any]:
        def copied(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "logits": copied(self._logits), "exp_avg": copied(self._exp_avg), "exp_avg_sq": copied(self._exp_avg_sq),
            "adam_steps": self._adam_steps, "before": copied(self._before),
        }

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        check_state_keys(state, {"logits", "exp_avg", "exp_avg_sq", "adam_steps", "before"}, "FAMO")
        for key in ("logits", "exp_avg", "exp_avg_sq", "before"):
            check_state_vector(state, key, K, optional=True)
        steps = state["adam_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"the FAMO state's 'adam_steps' must be an int >= 0; got {steps!r}")

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        def host(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to("cpu", torch.float64).clone()

        self._logits, self._exp_avg, self._exp_avg_sq = host(state["logits"]), host(state["exp_avg"]), host(state["exp_avg_sq"])
        self._adam_steps, self._before = state["adam_steps"], host(state["before"])
