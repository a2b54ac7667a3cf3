"""Loss-weighting methods as drop-in optimizers: ONE backward of Σₖ wₖ·Lₖ per step.

    opt = FAMO(torch.optim.Adam(model.parameters(), lr=1e-3))
    opt.zero_grad(set_to_none=True)
    opt.backward(losses)      # K scalar losses: every parameter gets ∇ Σₖ wₖ·Lₖ in .grad
    opt.step()

The weights w come from the K loss values alone (FAMO, UW, DWA, RLW) or from the task gradients of
one chosen shared layer (GradNorm): no per-task gradients over the network, no [K, N] buffer, so a
step costs what the plain step costs (one backward of a weighted sum).

Every wrapper here is a :class:`~mtlkernels.optim.base.MultiTaskOptimizer` and keeps its contract:
its learned parameters (FAMO's logits and their Adam moments, UW's log-variances, GradNorm's
weights, DWA's loss history, RLW's generator) are in ``state_dict()`` and round-trip; the losses are
averaged over ranks under DDP (``distributed="replicated"``) before the weights are computed, so
every rank holds the same weights, and the gradients of Σ wₖ·Lₖ are averaged with them; with a
``GradScaler`` the scaled sum is differentiated; a step whose losses or gradients hold NaN/Inf
changes nothing — parameters, ``.grad``, the wrapped optimizer's state and the learned weights —
and then follows ``on_nonfinite`` (or flags the overflow for ``scaler.step``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_option, check_real
from ..jacobian import check_losses
from . import distributed as _dist
from .base import MultiTaskOptimizer
from .nonfinite import NonFiniteError, all_finite, flag_overflow
from .workspace import accumulate_fresh_grads, accumulate_grads

__all__ = ["DWA", "FAMO", "GradNorm", "LossWeighting", "LossWeightingStep", "RLW", "UW"]


@dataclass
class LossWeightingStep:
    """What one loss-weighting backward did.

    Attributes:
        weights: [K] float64 weights wₖ of the differentiated sum Σₖ wₖ·Lₖ.
        losses: [K] float64 loss values (averaged over ranks under DDP).
        method: the method's name.
        diagnostics: the method's facts (e.g. FAMO's ``logits_updated``, GradNorm's layer norms).
    """

    weights: Tensor
    losses: Tensor
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    """A backward's weights and the method state it would keep; kept only if the step succeeds."""

    weights: Tensor
    state: dict[str, Any]
    owned_grad: Tensor | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    layer_ok: Tensor | None = None  # GradNorm: the layer's task gradients are finite (0-d bool)


class LossWeighting(MultiTaskOptimizer):
    """The shared machinery of the loss-weighting wrappers (not used directly).

    Args:
        optimizer: the wrapped torch optimizer.
        on_nonfinite: "raise" (default: :class:`~mtlkernels.optim.NonFiniteError` naming the task)
            or "skip" (the next ``step()`` does nothing); nothing is changed either way.
        distributed: "auto", "none" or "replicated" (DDP: the losses and the gradients of
            Σ wₖ·Lₖ are averaged over ranks). "sharded" is not supported.
        process_group: the torch.distributed group (default: the world).
        num_tasks: K, checked on every ``backward`` (default: set by the first successful one).
        backend: the Gram's backend where one is taken (GradNorm's layer).

    Subclasses give :meth:`_plan` (the weights of a step from the loss values, without changing
    anything) and the state they keep.
    """

    name: ClassVar[str] = "loss_weighting"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        on_nonfinite: str = "raise",
        distributed: str = "auto",
        process_group: dist.ProcessGroup | None = None,
        num_tasks: int | None = None,
        backend: str = "auto",
    ) -> None:
        if distributed == "sharded":
            raise ValueError(
                f"{type(self).__name__} supports distributed='auto', 'none' or 'replicated', not 'sharded': its "
                "gradients come from one torch.autograd.grad of Σ wₖ·Lₖ, which does not run FSDP's reduce-scatter"
            )
        super().__init__(
            optimizer, on_nonfinite=on_nonfinite, distributed=distributed, process_group=process_group,
            num_tasks=num_tasks, backend=backend,
        )
        #: the last successful backward's weights, losses and facts (None before, and after a skip)
        self.last: LossWeightingStep | None = None  # type: ignore[assignment]

    # -- what a method provides ---------------------------------------------------------------------
    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
        """The weights of this step from the host loss values [K] float64, and the state to keep
        if it succeeds; must change nothing."""
        raise NotImplementedError

    def _check_values(self, values: Tensor) -> None:
        """Method-specific checks of the (finite) host loss values; raise ValueError naming the task."""

    def _commit_plan(self, plan: _Plan) -> None:
        """Keep the state a successful backward planned."""

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {}

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        """Raise if :meth:`_load_loss_weighting_state` would reject ``state``; change nothing."""

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_loss_weighting_state` returned."""

    # -- backward ---------------------------------------------------------------------------------
    def backward(  # type: ignore[override]
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> LossWeightingStep | None:
        """The weights w from the losses, then ONE backward of Σₖ wₖ·Lₖ into ``.grad`` (added to
        what is there, as ``Tensor.backward``).

        Args:
            losses: K scalar losses (a sequence, or a 1-D tensor).
            features: accepted so that a training loop written for the Gramian wrappers runs
                unchanged, and unused: the weights need no gradients.
            grad_scaler: a ``torch.amp.GradScaler``; pass the *unscaled* losses: the scaled sum is
                differentiated, and on overflow every ``.grad`` is set to Inf for ``scaler.step``.
            retain_graph: keep the autograd graph after the backward.

        Returns:
            ``self.last`` (weights, losses, facts); None when the step was skipped.
        """
        if isinstance(losses, Tensor) and losses.dim() == 0 and self.num_tasks != 1:
            raise ValueError(
                f"{type(self).__name__}.backward got a single scalar loss: pass the K task losses as a list or a "
                "1-D tensor, not their sum (for one task, build the optimizer with num_tasks=1 or pass [loss])"
            )
        losses = check_losses(losses, self.num_tasks)
        mode = _dist.resolve_mode(self.distributed, self.process_group)
        values = torch.stack([l.detach().reshape(()).to(torch.float64) for l in losses])
        if mode == "replicated":
            values = _dist.all_reduce_mean_(values, self.process_group)
        values = values.cpu()
        params = [p for p in self._trainable() if p.requires_grad]
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            return self._reject("; ".join(f"task {k}: loss is {values[k].item()}" for k in bad), params, grad_scaler)
        self._check_values(values)
        grad_scale = 1.0
        scaled = losses
        if grad_scaler is not None and grad_scaler.is_enabled():
            scaled = [grad_scaler.scale(l) for l in losses]
            grad_scale = float(grad_scaler.get_scale())
        plan = self._plan(scaled, values, grad_scale, mode)
        weights = plan.weights.to(losses[0].device)
        combined = sum(w.to(torch.promote_types(l.dtype, torch.float32)) * l for w, l in zip(weights, scaled))
        grads = torch.autograd.grad(combined, params, allow_unused=True, retain_graph=retain_graph)
        if mode == "replicated":  # the same list on every rank: a parameter this rank did not reach sends zeros
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            for g in grads:
                _dist.all_reduce_mean_(g, self.process_group)
        reached = [(p, g) for p, g in zip(params, grads) if g is not None]
        layer_ok = plan.layer_ok is None or bool(plan.layer_ok)
        if not (layer_ok and all_finite([g for _, g in reached])):
            return self._reject("the gradient of Σ wₖ·Lₖ holds NaN/Inf (every loss is finite)", params, grad_scaler)
        if self.num_tasks is None:
            self._set_num_tasks(len(losses))
        accumulate_fresh_grads([p for p, _ in reached], [g for _, g in reached])
        self._commit_plan(plan)
        if plan.owned_grad is not None:
            accumulate_grads(self._owned, [plan.owned_grad.to(self._owned[0])])
        self.last = LossWeightingStep(plan.weights.detach().to("cpu", torch.float64), values, self.name, plan.facts)
        self.last_losses = values
        self._skip_step = False
        return self.last

    def _reject(self, problem: str, params: list[Tensor], grad_scaler: Any) -> None:
        """A non-finite step changes nothing but GradScaler's overflow signal, or the error, or the
        skip of the next step."""
        self.last = None
        self.last_losses = None
        if grad_scaler is not None and grad_scaler.is_enabled():
            flag_overflow(params + self._owned)
            return None
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"{type(self).__name__}.backward: {problem}; nothing was changed")
        self.num_skipped += 1
        self._skip_step = True
        return None

    # -- state ------------------------------------------------------------------------------------
    def _method_state(self) -> dict[str, Any]:
        return {"weighting": {}, self.name: self._loss_weighting_state()}

    def _check_method_state(self, state: Any, K: int | None) -> None:
        if not isinstance(state, dict) or self.name not in state or not isinstance(state[self.name], dict):
            raise ValueError(f"state_dict['method'] is not a {type(self).__name__} state (no {self.name!r} entry)")
        self._check_loss_weighting_state(state[self.name], K)

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self._load_loss_weighting_state(state[self.name])

    # -- owned parameters (UW's log-variances, GradNorm's weights) ----------------------------------
    def _add_owned(self, K: int, value: float, group: dict[str, Any]) -> Tensor:
        """A [K] parameter this wrapper owns, filled with ``value``, as a new parameter group of the
        wrapped optimizer (on the model's device, in its dtype)."""
        reference = next((p for g in self.param_groups for p in g["params"]), None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
        owned = torch.full((K,), float(value), dtype=dtype, device=device, requires_grad=True)
        self._owned.append(owned)
        self.optimizer.add_param_group({**group, "params": [owned]})
        return owned

    # -- logging ----------------------------------------------------------------------------------
    def diagnostics(self, flat: bool = False) -> dict[str, Any]:
        """The last backward's weights, losses and the method's facts as plain Python numbers;
        with ``flat=True`` a flat ``{name: float}`` (``weight/{k}``, ``loss/{k}``, the facts).
        Empty after a skipped step."""
        if self.last is None:
            return {}
        facts = {k: v for k, v in self.last.diagnostics.items() if isinstance(v, (int, float, bool))}
        if not flat:
            return {"weights": self.last.weights.tolist(), "losses": self.last.losses.tolist(), **facts}
        out = {f"weight/{k}": w for k, w in enumerate(self.last.weights.tolist())}
        out.update({f"loss/{k}": l for k, l in enumerate(self.last.losses.tolist())})
        for key, value in self.last.diagnostics.items():
            if isinstance(value, Tensor) and value.dim() == 1:
                out.update({f"{key}/{k}": v for k, v in enumerate(value.tolist())})
        out.update({key: float(v) for key, v in facts.items()})
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}({shown}) wrapping\n{inner}"

    def options(self) -> dict[str, Any]:
        """The constructor options, for ``repr`` and logging."""
        return {"on_nonfinite": self.on_nonfinite, "distributed": self.distributed}


def _float_vector(state: dict[str, Any], key: str, K: int | None, optional: bool = False) -> None:
    value = state.get(key)
    if value is None and optional:
        return
    if not isinstance(value, Tensor) or value.dim() != 1 or not value.is_floating_point():
        raise ValueError(f"the state's {key!r} must be a 1-D float tensor; got {type(value).__name__}")
    if K is not None and value.shape[0] != K:
        raise ValueError(f"the state's {key!r} has {value.shape[0]} entries; this optimizer has K = {K}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"the state's {key!r} has a non-finite entry")


def _check_keys(state: dict[str, Any], keys: set[str], name: str) -> None:
    if set(state) != keys:
        raise ValueError(f"{name} state needs the keys {sorted(keys)}; got {sorted(state)}")


# --------------------------------------------------------------------------------------------------
# FAMO
# --------------------------------------------------------------------------------------------------
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

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
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
        return _Plan(weights, state, facts=facts)

    def _commit_plan(self, plan: _Plan) -> None:
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
    def update(self, losses: Sequence[Tensor] | Sequence[float] | Tensor) -> None:
        """Update ξ from the losses recomputed on the same batch after ``step()`` (as the authors'
        training scripts do): δ = log(Lₖ⁻ − bₖ + ε) − log(Lₖ⁺ − bₖ + ε), one Adam step. The next
        ``backward`` then makes no update of its own. Under DDP the losses are averaged over ranks.
        A non-finite loss follows ``on_nonfinite`` (the logits are left as they are)."""
        if self._before is None:
            raise ValueError(
                "FAMO.update needs the losses before the step: call it after a successful backward and step, "
                "once per step (the next backward already updated the logits, or none ran yet)"
            )
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
        _check_keys(state, {"logits", "exp_avg", "exp_avg_sq", "adam_steps", "before"}, "FAMO")
        for key in ("logits", "exp_avg", "exp_avg_sq", "before"):
            _float_vector(state, key, K, optional=True)
        steps = state["adam_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"the FAMO state's 'adam_steps' must be an int >= 0; got {steps!r}")

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        def host(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to("cpu", torch.float64).clone()

        self._logits, self._exp_avg, self._exp_avg_sq = host(state["logits"]), host(state["exp_avg"]), host(state["exp_avg_sq"])
        self._adam_steps, self._before = state["adam_steps"], host(state["before"])


# --------------------------------------------------------------------------------------------------
# UW
# --------------------------------------------------------------------------------------------------
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

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
        s = torch.full_like(values, self.init) if self.log_variances is None else self.log_variances.detach().to(torch.float64)
        half_precision = 0.5 * torch.exp(-s)
        grad = (0.5 - half_precision * values.to(s.device)) * grad_scale
        return _Plan(half_precision, {}, owned_grad=grad, facts={"log_variance": s})

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {"log_variances": None if self.log_variances is None else self.log_variances.detach().clone()}

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        _check_keys(state, {"log_variances"}, "UW")
        _float_vector(state, "log_variances", K, optional=True)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        if state["log_variances"] is not None:
            with torch.no_grad():
                self.log_variances.copy_(state["log_variances"])


# --------------------------------------------------------------------------------------------------
# DWA
# --------------------------------------------------------------------------------------------------
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

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
        K = values.shape[0]
        if len(self._averages) < 2:
            weights = torch.ones(K, dtype=torch.float64)
        else:
            rate = self._averages[1] / self._averages[0]
            weights = K * torch.softmax(rate / self.temperature, 0)
        total = values.clone() if self._loss_sum is None else self._loss_sum + values
        return _Plan(weights, {"loss_sum": total}, facts={"epochs_seen": len(self._averages)})

    def _commit_plan(self, plan: _Plan) -> None:
        self._loss_sum = plan.state["loss_sum"]
        self._batches += 1

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {
            "loss_sum": None if self._loss_sum is None else self._loss_sum.clone(), "batches": self._batches,
            "averages": [a.clone() for a in self._averages],
        }

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        _check_keys(state, {"loss_sum", "batches", "averages"}, "DWA")
        _float_vector(state, "loss_sum", K, optional=True)
        batches, averages = state["batches"], state["averages"]
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0 or (batches == 0) != (state["loss_sum"] is None):
            raise ValueError(f"the DWA state's 'batches' must be an int >= 0, 0 exactly when there is no loss sum; got {batches!r}")
        if not isinstance(averages, list) or len(averages) > 2:
            raise ValueError("the DWA state's 'averages' must be a list of at most two loss averages")
        for i in range(len(averages)):
            _float_vector({"average": averages[i]}, "average", K)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        total = state["loss_sum"]
        self._loss_sum = None if total is None else total.detach().to("cpu", torch.float64).clone()
        self._batches = state["batches"]
        self._averages = [a.detach().to("cpu", torch.float64).clone() for a in state["averages"]]


# --------------------------------------------------------------------------------------------------
# RLW
# --------------------------------------------------------------------------------------------------
def _softmax_normal(K: int, generator: torch.Generator) -> Tensor:
    return torch.softmax(torch.randn(K, generator=generator, dtype=torch.float64), 0)


def _softmax_uniform(K: int, generator: torch.Generator) -> Tensor:
    return torch.softmax(torch.rand(K, generator=generator, dtype=torch.float64), 0)


def _dirichlet(K: int, generator: torch.Generator) -> Tensor:
    """Dirichlet(1, …, 1): K Exponential(1) draws −log(1 − U), normalised."""
    e = -torch.log1p(-torch.rand(K, generator=generator, dtype=torch.float64))
    return e / e.sum()


#: the weights' distribution: softmax of a standard normal (the paper's main choice, LibMTL's),
#: softmax of U(0, 1), or Dirichlet(1) (already on the simplex)
RLW_DISTRIBUTIONS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "normal": _softmax_normal, "uniform": _softmax_uniform, "dirichlet": _dirichlet,
}


class RLW(LossWeighting):
    """Random loss weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022).

    Each step draws fresh weights on the simplex (Σ wₖ = 1): ``distribution="normal"`` (default,
    the paper's main variant and LibMTL's) w = softmax(λ̃), λ̃ ~ N(0, I); ``"uniform"``
    w = softmax(λ̃), λ̃ ~ U(0, 1)ᴷ; ``"dirichlet"`` w ~ Dirichlet(1, …, 1) (normalised
    exponentials). The draws come from a CPU ``torch.Generator``: seeded identically on every rank
    (the default ``seed=0``), every rank draws the same weights; a rejected step draws nothing.

    Args:
        optimizer: the wrapped torch optimizer.
        distribution: "normal", "uniform" or "dirichlet".
        seed: the generator's seed (default 0), or ``generator=`` a CPU ``torch.Generator``.
        **options: :class:`LossWeighting`'s arguments.

    State: the generator's state.
    """

    name = "rlw"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, distribution: str = "normal", seed: int = 0,
        generator: torch.Generator | None = None, **options: Any,
    ) -> None:
        check_option("distribution", distribution, tuple(RLW_DISTRIBUTIONS))
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator; got one on {generator.device}")
        self.distribution = distribution
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        super().__init__(optimizer, **options)

    def options(self) -> dict[str, Any]:
        return {"distribution": self.distribution, **super().options()}

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
        before = self.generator.get_state()
        weights = RLW_DISTRIBUTIONS[self.distribution](values.shape[0], self.generator)
        after = self.generator.get_state()
        self.generator.set_state(before)  # drawn again for good by _commit_plan
        return _Plan(weights, {"generator": after})

    def _commit_plan(self, plan: _Plan) -> None:
        self.generator.set_state(plan.state["generator"])

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        _check_keys(state, {"generator"}, "RLW")
        trial = torch.Generator()
        try:
            trial.set_state(state["generator"])
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"the RLW state's 'generator' is not a CPU generator state: {error}") from None

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


# --------------------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------------------
def gradnorm_weight_gradient(weights: Tensor, norms: Tensor, values: Tensor, initial: Tensor, alpha: float) -> Tensor:
    """∂L_grad/∂wᵢ for L_grad = Σᵢ |wᵢ·nᵢ − Ḡ·rᵢ^α| with the target Ḡ·rᵢ^α held constant:
    sign(wᵢnᵢ − Ḡrᵢ^α)·nᵢ, where nᵢ = ‖∇_W Lᵢ‖, Ḡ = mean(wᵢnᵢ), rᵢ = L̃ᵢ/mean(L̃), L̃ᵢ = Lᵢ/Lᵢ(0)."""
    G = weights * norms
    ratio = values / initial
    target = G.mean() * (ratio / ratio.mean()) ** alpha
    return torch.sign(G - target) * norms


class GradNorm(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

    The network gets ∇ Σₖ wₖ·Lₖ; the weights w [K] (ones at first) are parameters that descend
    L_grad = Σᵢ |Gᵢ − Ḡ·rᵢ^α|, Gᵢ = ‖∇_W wᵢLᵢ‖ = wᵢ·‖∇_W Lᵢ‖ on the chosen shared layer W,
    Ḡ = mean(G), rᵢ = L̃ᵢ/mean(L̃) the relative inverse training rate (L̃ᵢ = Lᵢ/Lᵢ(0), Lᵢ(0) the
    first step's losses), with the target Ḡ·rᵢ^α held constant; ``alpha`` is the restoring force.
    ‖∇_W Lᵢ‖² is the diagonal of W's Gram matrix: K gradients of W only (backward passes that stop
    at W, cheap for the last shared layer), one Gram. After each ``step()`` w is renormalised to
    Σ wᵢ = K (the paper). w joins the wrapped optimizer as a new parameter group once K is known.

    Args:
        optimizer: the wrapped torch optimizer.
        layer: the parameters of W (a tensor or several), usually the last shared layer's weight.
        alpha: the restoring force α (paper: 0.12–3 by task; LibMTL's default 1.5).
        weight_group: extra options of w's parameter group (e.g. ``{"lr": 0.025}``).
        **options: :class:`LossWeighting`'s arguments.

    State: w's values and the initial losses Lᵢ(0). Diagnostics: ``layer_grad_norm/{k}`` (‖∇_W Lₖ‖).
    """

    name = "gradnorm"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, layer: Tensor | Sequence[Tensor], alpha: float = 1.5,
        weight_group: dict[str, Any] | None = None, **options: Any,
    ) -> None:
        self.alpha = check_real("alpha", alpha, minimum=0.0)
        self.layer = [layer] if isinstance(layer, Tensor) else list(layer)
        if not self.layer or not all(isinstance(p, Tensor) and p.requires_grad for p in self.layer):
            raise ValueError("layer must be one or more parameters (tensors that require grad) of the shared layer W")
        self.weight_group = dict(weight_group or {})
        if "params" in self.weight_group:
            raise ValueError("weight_group holds the group's options; its parameter is GradNorm's weights")
        #: the task weights w [K] (None until K is known)
        self.task_weights: Tensor | None = None
        self._initial: Tensor | None = None  # Lᵢ(0), float64 on the CPU
        super().__init__(optimizer, **options)
        known = {id(p) for p in self._trainable()}
        missing = [i for i, p in enumerate(self.layer) if id(p) not in known]
        if missing:
            raise ValueError(f"layer[{', '.join(map(str, missing))}] is not a parameter of the wrapped optimizer")

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "weight_group": self.weight_group, **super().options()}

    def _set_num_tasks(self, K: int) -> None:
        super()._set_num_tasks(K)
        if self.task_weights is None:
            self.task_weights = self._add_owned(K, 1.0, self.weight_group)

    def _groups_added(self, K: int | None) -> list[int]:
        return [1] if self.task_weights is None and K is not None else []

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> _Plan:
        K = values.shape[0]
        rows = torch.empty(K, sum(p.numel() for p in self.layer), dtype=self.layer[0].dtype, device=self.layer[0].device)
        for k, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, self.layer, allow_unused=True, retain_graph=True)
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(self.layer, grads)], out=rows[k])
        if mode == "replicated":
            _dist.all_reduce_mean_(rows, self.process_group)
        gram = self.aggregator.gram([rows])
        norms = gram.diagonal().to("cpu", torch.float64).clamp_min(0).sqrt() / grad_scale
        w = torch.ones(K, dtype=torch.float64) if self.task_weights is None else self.task_weights.detach().to("cpu", torch.float64)
        initial = values if self._initial is None else self._initial
        grad = gradnorm_weight_gradient(w, norms, values, initial, self.alpha) * grad_scale
        facts = {"layer_grad_norm": norms}
        return _Plan(w, {"initial": initial}, owned_grad=grad, facts=facts, layer_ok=torch.isfinite(gram.diagonal()).all())

    def _commit_plan(self, plan: _Plan) -> None:
        self._initial = plan.state["initial"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The wrapped optimizer's step, then w ← K·w/Σw (the paper's renormalisation)."""
        result = super().step(closure)
        if self.task_weights is not None:
            self.task_weights.mul_(self.task_weights.numel() / self.task_weights.sum())
        return result

    def _check_values(self, values: Tensor) -> None:
        initial = self._initial if self._initial is not None else values
        bad = (initial == 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"GradNorm divides by the initial losses Lᵢ(0): task {', '.join(map(str, bad))} has Lᵢ(0) = 0"
            )

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {
            "task_weights": None if self.task_weights is None else self.task_weights.detach().clone(),
            "initial_losses": None if self._initial is None else self._initial.clone(),
        }

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        _check_keys(state, {"task_weights", "initial_losses"}, "GradNorm")
        _float_vector(state, "task_weights", K, optional=True)
        _float_vector(state, "initial_losses", K, optional=True)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        if state["task_weights"] is not None:
            with torch.no_grad():
                self.task_weights.copy_(state["task_weights"])
        initial = state["initial_losses"]
        self._initial = None if initial is None else initial.detach().to("cpu", torch.float64).clone()
