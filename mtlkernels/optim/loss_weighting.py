"""The shared machinery of the loss-weighting wrappers (:mod:`.famo`, :mod:`.uw`, :mod:`.dwa`,
:mod:`.rlw`, :mod:`.gradnorm`): ONE backward of Σₖ wₖ·Lₖ per step.

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
from typing import Any, ClassVar, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..jacobian import check_losses
from . import distributed as _dist
from . import tasks as _tasks
from .base import MultiTaskOptimizer
from .nonfinite import NonFiniteError, all_finite, flag_overflow
from .workspace import accumulate_fresh_grads, accumulate_grads

__all__ = ["LossWeighting", "LossWeightingStep", "StepPlan", "check_state_keys", "check_state_vector"]


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
class StepPlan:
    """A backward's weights and the method state it would keep; kept only if the step succeeds
    (:meth:`LossWeighting._plan` makes it, :meth:`LossWeighting._commit_plan` keeps it)."""

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
        task_names: Sequence[str] | None = None,
        backend: str = "auto",
    ) -> None:
        if distributed == "sharded":
            raise ValueError(
                f"{type(self).__name__} supports distributed='auto', 'none' or 'replicated', not 'sharded': its "
                "gradients come from one torch.autograd.grad of Σ wₖ·Lₖ, which does not run FSDP's reduce-scatter"
            )
        super().__init__(
            optimizer, on_nonfinite=on_nonfinite, distributed=distributed, process_group=process_group,
            num_tasks=num_tasks, task_names=task_names, backend=backend,
        )
        #: the last successful backward's weights, losses and facts (None before, and after a skip)
        self.last: LossWeightingStep | None = None  # type: ignore[assignment]

    # -- what a method provides ---------------------------------------------------------------------
    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        """The weights of this step from the host loss values [K] float64, and the state to keep
        if it succeeds; must change nothing."""
        raise NotImplementedError

    def _check_values(self, values: Tensor) -> None:
        """Method-specific checks of the (finite) host loss values; raise ValueError naming the task."""

    def _commit_plan(self, plan: StepPlan) -> None:
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
            losses: K scalar losses (a sequence, or a 1-D tensor), or a dict naming them
                (``{"depth": l1, "seg": l2}``: the names are fixed by ``task_names=`` or the first
                dict, and key the diagnostics). Every task needs its loss on every step.
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
        losses, names = _tasks.split_losses(losses, self.task_names, self.num_tasks)
        if isinstance(losses, list) and any(loss is None for loss in losses):
            absent = [names[k] if names else k for k, loss in enumerate(losses) if loss is None]
            raise ValueError(
                f"{type(self).__name__} weights every task's loss on every step; no loss for task(s) {absent} "
                "(absent tasks are supported by the Gramian wrappers)"
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
        self.task_names = names
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
        return out if self.task_names is None else _tasks.name_keys(out, self.task_names)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}({shown}) wrapping\n{inner}"

    def options(self) -> dict[str, Any]:
        """The constructor options, for ``repr`` and logging."""
        return {"on_nonfinite": self.on_nonfinite, "distributed": self.distributed}


def check_state_vector(state: dict[str, Any], key: str, K: int | None, optional: bool = False) -> None:
    """Raise unless ``state[key]`` is a finite 1-D float tensor of K entries (or None, if ``optional``)."""
    value = state.get(key)
    if value is None and optional:
        return
    if not isinstance(value, Tensor) or value.dim() != 1 or not value.is_floating_point():
        raise ValueError(f"the state's {key!r} must be a 1-D float tensor; got {type(value).__name__}")
    if K is not None and value.shape[0] != K:
        raise ValueError(f"the state's {key!r} has {value.shape[0]} entries; this optimizer has K = {K}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"the state's {key!r} has a non-finite entry")


def check_state_keys(state: dict[str, Any], keys: set[str], name: str) -> None:
    """Raise unless the method state ``state`` has exactly ``keys``."""
    if set(state) != keys:
        raise ValueError(f"{name} state needs the keys {sorted(keys)}; got {sorted(state)}")
