"""The shared base of the drop-in multi-task optimizers.

    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-3), c=0.5)
    opt.zero_grad(set_to_none=True)
    opt.backward(losses)      # K scalar losses: shared parameters get d = Σₖ wₖ·gₖ in .grad
    opt.step()                # the wrapped optimizer's step

A step: per-task gradients into a reused [K, N] buffer (autograd adds each task's gradient into
its row in place, :func:`.workspace.fill_rows_through_grad`; under a process group or a
post-accumulate-grad hook, ``autograd.grad`` and a copy, :mod:`mtlkernels.jacobian`), then the
steps of :class:`mtlkernels.Aggregator` — Γ = J·Jᵀ, the finiteness check (:mod:`.nonfinite`), the
method's K-space solve, d = wᵀJ written into the shared parameters' ``.grad`` — with the
data-parallel reductions (:mod:`.distributed`) between Γ and the solve. Which parameters are
shared is detected from the gradients (:mod:`.roles`). With ``backward(losses, features=z)`` the
Gram is taken over ∂Lₖ/∂z instead (MGDA-UB's "upper bound", Sener & Koltun 2018) and one backward
replaces the combination: of z with wᵀ·(∂Lₖ/∂z) when the losses reach the shared parameters only
through z, else of Σ wₖ·Lₖ.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_option
from ..aggregate import AggregationResult, Aggregator
from ..jacobian import GRAD_MODES, check_losses, column_views, fill_task_gradients, reaches, resolve_grad_mode
from ..methods import Weighting, diagnostics_to_python, make_weighting
from . import distributed as _dist
from . import fsdp as _fsdp
from . import tasks as _tasks
from .nonfinite import ON_NONFINITE, NonFiniteError, all_finite, find_nonfinite, flag_overflow
from .roles import ParameterRoles, RoleEvidence, check_shared, detect_roles, trainable_parameters
from .workspace import (
    Buffers, accumulate_fresh_grads, accumulate_grads, fill_rows_through_grad, grad_outputs, private_gradient_views,
    rows_through_grad,
)

__all__ = ["MultiTaskOptimizer", "NonFiniteError", "ParameterRoles"]

TASK_SPECIFIC = ("plain", "weighted")


class _Step(NamedTuple):
    """What a backward step is over and what it establishes, kept by ``_commit_step`` once the
    step is sure to write: K, the present tasks (None: all K), the names, the parameter roles
    over all K tasks and their evidence (None: the roles were known already)."""

    num_tasks: int
    present: list[int] | None
    names: tuple[str, ...] | None
    roles: ParameterRoles | None
    evidence: RoleEvidence | None


class MultiTaskOptimizer(torch.optim.Optimizer):
    """Wraps a torch optimizer; ``backward(losses)`` writes the method's direction into ``.grad``.

    It is a ``torch.optim.Optimizer`` sharing the wrapped optimizer's ``param_groups``,
    ``state`` and ``defaults``, so LR schedulers, ``GradScaler`` and checkpointing work on it.

    Args:
        optimizer: the torch optimizer that applies the update (any ``torch.optim.Optimizer``).
        method: any name of :data:`mtlkernels.METHODS` (default "mean", plain averaging); the
            subclasses PCGrad, CAGrad, NashMTL, IMTL and MGDAUB fix it and name its options.
        shared_params: the parameters that get the aggregated direction. Default: those two or
            more tasks use (see "Roles" below). Other reached parameters get the plain gradient of
            Σ Lₖ (the authors' convention).
        task_specific: "plain" (default, ∇ Σ Lₖ) or "weighted" (wₖ·∇Lₖ, as a backward of Σ wₖLₖ
            gives: Nash-MTL's and MGDA-UB's code) for the parameters only one task reaches.
        grad_mode: "auto" (default, = "loop"), "loop" (K ``autograd.grad`` calls) or "batched" (one
            call with ``is_grads_batched=True``); see :func:`mtlkernels.jacobian.resolve_grad_mode`.
        on_nonfinite: "raise" (default: :class:`NonFiniteError` naming the task) or "skip" (the
            next ``step()`` does nothing unless a successful ``backward`` comes first);
            parameters, ``.grad`` and state are left untouched.
        distributed: "auto", "none", "replicated" (DDP) or "sharded"; see
            :mod:`mtlkernels.optim.distributed`.
        process_group: the torch.distributed group (default: the world).
        num_tasks: K, checked on every ``backward`` (default: set by the first successful one).
        task_names: names of the K tasks (K = their number), for ``backward({name: loss})`` and the
            diagnostics; default: the keys of the first dict passed, or none (tasks by position).
        backend: "auto", "torch", "cpp" or "triton", for the Gram, the solve and the combination.
        update_every: n ≥ 1 (default 1). Solve for the weights on every n-th successful
            ``backward`` (the first, and whenever the roles are not known yet); on the others take
            ONE backward of Σₖ wₖ·Lₖ with the last weights (see "Reusing the weights" below).
        **options: the method's options (its Weighting's arguments).

    Tasks by name, absent tasks: ``backward({"depth": l1, "seg": l2})`` names the tasks; a dict
    that lacks a name, or a ``None`` in the list, makes that task absent from the step: the method
    runs over the present tasks and keeps the absent ones' state (see :mod:`.tasks`).

    Reusing the weights (``update_every=n``, as the Nash-MTL authors' ``update_weights_every``):
    a reusing step costs one backward pass and no [K, N] buffer. The shared parameters get
    ∇ Σₖ wₖ·Lₖ with the weights w of the last solving step (Nash-MTL's clip scale included, as
    solved on that step's Γ); the task-specific parameters follow ``task_specific`` as on a solving
    step ("plain": ∇ Σₖ Lₖ, "weighted": wₖ·∇Lₖ). ``self.last`` stays the last solving step's
    result, ``self.last_reused`` says which kind of step ran (also ``reused`` in
    :meth:`diagnostics`); the counter and the weights are in ``state_dict()``. A step with absent tasks solves (weights
    are reused only when every task is present); under FSDP every step solves.

    Roles: task k uses parameter p when ∂Lₖ/∂p was nonzero in some batch (a head that a
    ``torch.cat`` or indexing of the outputs connects to every loss gets exact zeros from the
    other tasks, so it stays its task's own); a parameter two or more tasks use is shared. A task
    with a zero gradient on every parameter (no labels in the batch) shows nothing about its use:
    until every task has had a nonzero gradient, each ``backward`` detects again (K extra gradient
    passes), merges what it sees with the earlier batches, and counts a task not yet seen as using
    every parameter its graph reaches — so no layer the absent task may share is taken for another
    task's own, and the roles kept in the end do not depend on which batch came first. Only a
    successful ``backward`` keeps anything; ``shared_params=`` pins the shared set.
    """

    method: ClassVar[str] = "mean"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        method: str | None = None,
        *,
        shared_params: Sequence[Tensor] | None = None,
        task_specific: str = "plain",
        grad_mode: str = "auto",
        on_nonfinite: str = "raise",
        distributed: str = "auto",
        process_group: dist.ProcessGroup | None = None,
        num_tasks: int | None = None,
        task_names: Sequence[str] | None = None,
        backend: str = "auto",
        update_every: int = 1,
        **options: Any,
    ) -> None:
        if isinstance(optimizer, MultiTaskOptimizer):
            raise TypeError(f"{type(optimizer).__name__} is already a multi-task optimizer; wrap the base optimizer once")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        check_option("task_specific", task_specific, TASK_SPECIFIC)
        check_option("grad_mode", grad_mode, GRAD_MODES)
        check_option("on_nonfinite", on_nonfinite, ON_NONFINITE)
        check_option("distributed", distributed, _dist.DISTRIBUTED_MODES)
        if num_tasks is not None and (not isinstance(num_tasks, int) or num_tasks < 1):
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        if task_names is not None:
            task_names = _tasks.check_task_names(task_names)
            if num_tasks not in (None, len(task_names)):
                raise ValueError(f"num_tasks={num_tasks} but {len(task_names)} task_names are given")
            num_tasks = len(task_names)
        if method is not None and type(self) is not MultiTaskOptimizer:
            raise TypeError(f"{type(self).__name__} is {self.method!r}; method= is for MultiTaskOptimizer itself")
        if method is not None:
            self.method = method
        #: the steps Γ → solve → combine, shared with the functional API (the check is the wrapper's own)
        self.aggregator = Aggregator(make_weighting(self.method, backend=backend, **options), backend=backend)
        # torch.optim.Optimizer's own set-up (hooks, step patching) on copies of the wrapped
        # optimizer's groups, which validates them; then the groups, state and defaults are the
        # wrapped optimizer's own objects (see _share_wrapped)
        super().__init__([dict(group) for group in optimizer.param_groups], optimizer.defaults)
        self.optimizer = optimizer
        self._share_wrapped()
        optimizer.register_load_state_dict_post_hook(self._share_wrapped)
        self.task_specific = task_specific
        self.grad_mode = grad_mode
        self.on_nonfinite = on_nonfinite
        self.distributed = distributed
        self.process_group = process_group
        self.num_tasks = num_tasks
        #: the task names (None: tasks by position); fixed like K
        self.task_names: tuple[str, ...] | None = task_names
        self.backend = backend
        #: the last backward's Γ, weights, cosines, conflicts and solver diagnostics (None after a skip)
        self.last: AggregationResult | None = None
        #: the last backward's K loss values (float64; averaged over ranks when data-parallel)
        self.last_losses: Tensor | None = None
        #: the tasks of the last backward (names, or positions when unnamed), in the order of its weights
        self.last_tasks: list[Any] | None = None
        #: how many backward calls were skipped for a non-finite loss or gradient
        self.num_skipped = 0
        self._owned: list[Tensor] = []  # parameters this wrapper adds (IMTL-L log-scales)
        self._shared_ids = None if shared_params is None else check_shared(shared_params, self._trainable())
        self._roles: ParameterRoles | None = None
        self._evidence: RoleEvidence | None = None
        self._buffers = Buffers()
        self._skip_step = False
        self._fully_sharded: bool | None = None  # are the parameters sharded by FSDP2? (found at the first backward)
        self._labels: Sequence[Any] | None = None
        self._init_reuse(update_every)
        if num_tasks is not None:
            self._set_num_tasks(num_tasks)

    @property
    def weighting(self) -> Weighting:
        """The method's K-space solve (its options and state)."""
        return self.aggregator.weighting

    @property
    def roles(self) -> ParameterRoles | None:
        """The shared and task-specific parameters of the last successful ``backward`` (None before)."""
        return self._roles

    # -- the torch.optim.Optimizer surface, shared with the wrapped optimizer ---------------------
    def _share_wrapped(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Make ``param_groups``, ``state`` and ``defaults`` the wrapped optimizer's objects; run
        again after the wrapped optimizer's ``load_state_dict``, which replaces them."""
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = self.optimizer.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer; parameter roles are detected again."""
        if "optimizer" not in self.__dict__:  # torch.optim.Optimizer.__init__ registering the copies
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)
        self._roles = None
        self._evidence = None
        self._fully_sharded = None
        self._buffers.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``. With ``set_to_none``, ``self.last`` lets go of the
        old ``.grad`` tensors as well (its ``direction`` becomes ``[]``), so that they are freed
        before the next backward instead of living through it."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        if set_to_none and isinstance(self.last, AggregationResult) and len(self.last.direction):
            self.last = dataclasses.replace(self.last, direction=[])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The wrapped optimizer's step; does nothing when the last backward was skipped (non-finite)."""
        if self._skip_step:
            self._skip_step = False
            return None
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state_dict plus the method's state (e.g. Nash-MTL's α); the
        hooks of ``register_state_dict_pre_hook``/``register_state_dict_post_hook`` run around it."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "method": copy.deepcopy(self._method_state()),
            "num_tasks": self.num_tasks,
            "num_skipped": self.num_skipped,
            "task_names": None if self.task_names is None else list(self.task_names),
            "update_every": self._reuse_state(),
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: everything is checked first, so a mismatch raises and changes
        nothing. The hooks of ``register_load_state_dict_pre_hook``/``..._post_hook`` run around it."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict; got {type(state_dict).__name__}")
        missing = {"optimizer", "method", "num_tasks"} - set(state_dict)
        if missing:
            raise ValueError(
                f"not a state_dict of {type(self).__name__}: missing {sorted(missing)} "
                "(a plain optimizer's state_dict goes to the wrapped optimizer: opt.optimizer.load_state_dict)"
            )
        K = state_dict["num_tasks"]
        if K is not None and (isinstance(K, bool) or not isinstance(K, int) or K < 1):
            raise ValueError(f"state_dict['num_tasks'] must be None or a positive int; got {K!r}")
        if self.num_tasks is not None and K not in (None, self.num_tasks):
            raise ValueError(f"the state_dict is for K = {K} tasks; this optimizer has K = {self.num_tasks}")
        names = state_dict.get("task_names")
        if names is not None:
            names = _tasks.check_task_names(names)
            if len(names) != (K if K is not None else len(names)) or (self.task_names not in (None, names)):
                raise ValueError(f"the state_dict's task names {list(names)} differ from this optimizer's {list(self.task_names or ())}")
        num_skipped = state_dict.get("num_skipped", 0)
        if isinstance(num_skipped, bool) or not isinstance(num_skipped, int) or num_skipped < 0:
            raise ValueError(f"state_dict['num_skipped'] must be an int >= 0; got {num_skipped!r}")
        self._check_optimizer_state(state_dict["optimizer"], self.num_tasks if K is None else K)
        method = copy.deepcopy(state_dict["method"])
        self._check_method_state(method, self.num_tasks if K is None else K)
        reuse = self._check_reuse_state(state_dict.get("update_every"), self.num_tasks if K is None else K)
        if K is not None:
            self._set_num_tasks(K)
        if names is not None:
            self.task_names = names
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._load_method_state(method)
        self._load_reuse_state(reuse)
        self.num_skipped = num_skipped
        # the last step's facts belong to the run before the load, not to the loaded state
        self.last, self.last_losses, self.last_tasks, self.last_reused = None, None, None, False
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_optimizer_state(self, state: Any, K: int | None) -> None:
        """The wrapped optimizer's part has its groups (as the wrapped optimizer checks, counting
        the groups that K adds, e.g. IMTL-L's log-scales), so that loading it cannot fail midway."""
        if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
            raise ValueError("state_dict['optimizer'] is not a torch optimizer's state_dict (keys 'state' and 'param_groups')")
        sizes = [len(group["params"]) for group in self.param_groups] + self._groups_added(K)
        saved = [len(group["params"]) for group in state["param_groups"]]
        if saved != sizes:
            raise ValueError(
                f"state_dict['optimizer'] has parameter groups of sizes {saved}; this optimizer's are {sizes}"
            )

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy (``copy.deepcopy``, pickling) shares its own wrapped optimizer's objects again:
        that optimizer's hooks are not copied, so the sharing hook is registered anew."""
        self.__dict__.update(state)
        self._share_wrapped()
        self.optimizer.register_load_state_dict_post_hook(self._share_wrapped)

    def __repr__(self) -> str:
        options = {"method": self.weighting.name, **self.weighting.options(), "task_specific": self.task_specific, "grad_mode": self.grad_mode,
                   "on_nonfinite": self.on_nonfinite, "distributed": self.distributed}
        if self.update_every > 1:  # the wrapper's reuse; the weighting's own then stays at 1, unshown
            options["update_every"] = self.update_every
            if options.get("update_weights_every") == 1:
                del options["update_weights_every"]
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items() if k != "backend")
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}({shown}, backend={self.backend!r}) wrapping\n{inner}"

    # -- hooks for the methods ---------------------------------------------------------------
    def _method_state(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict()}

    def _check_method_state(self, state: Any, K: int | None) -> None:
        """Raise if :meth:`_load_method_state` would reject ``state``; changes nothing (the
        weighting's part is tried on a copy of the weighting)."""
        if not isinstance(state, dict) or "weighting" not in state:
            raise ValueError("state_dict['method'] must be a dict with the key 'weighting'")
        copy.deepcopy(self.weighting).load_state_dict(copy.deepcopy(state["weighting"]))

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state["weighting"])

    def _groups_added(self, K: int | None) -> list[int]:
        """Sizes of the parameter groups :meth:`_set_num_tasks` (K) would add to the wrapped optimizer."""
        return []

    def _set_num_tasks(self, K: int) -> None:
        """Called with K when it becomes known (constructor, first backward, load_state_dict)."""
        self.num_tasks = K

    def _loss_multipliers(self) -> Tensor | None:
        """Per-task factors mₖ (detached) applied to the losses before differentiation (IMTL-L)."""
        return None

    def _write_owned_grads(self, losses: Tensor, grad_scale: float, present: list[int] | None) -> None:
        """Write the gradients of the parameters this wrapper owns, from the loss values of the
        step's tasks (``present``: their positions among the K, None: all K)."""

    # -- backward ------------------------------------------------------------------------------
    def backward(
        self,
        losses: Sequence[Tensor | None] | Tensor | Mapping[str, Tensor | None],
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> AggregationResult | None:
        """Per-task gradients → weights → ``.grad`` (added to what is there, as ``Tensor.backward``).

        Args:
            losses: K scalar losses (a sequence, or a 1-D tensor), or a dict {task name: loss}. A
                single 0-d loss is an error (the sum of the task losses is the usual slip) unless
                the optimizer has ``num_tasks=1``. A ``None`` entry, or a name the dict lacks
                (once the names are known), is a task absent from this step (see :mod:`.tasks`).
            features: the shared representation z (a tensor or several): the weights come from the
                Gram of ∂Lₖ/∂z (full inner product over batch × features), then ONE backward of
                Σ wₖ·Lₖ gives the shared parameters d = Σ wₖ·gₖ; no [K, N] parameter buffer.
            grad_scaler: a ``torch.amp.GradScaler``; pass the *unscaled* losses. The gradients are
                taken of the scaled losses, Γ is unscaled (÷ scale²) before the solve, ``.grad``
                holds scaled gradients for ``scaler.step(opt)`` to unscale; on Inf/NaN every
                ``.grad`` is set to Inf so that ``scaler.step`` skips the step, as GradScaler does.
            retain_graph: keep the autograd graph after the last backward pass.

        Returns:
            ``self.last``: the Gram, the weights, cosines, conflicts and solver diagnostics; None
            when the step was skipped.
        """
        if "aggregator" not in self.__dict__:  # a proxy that took this class, e.g. Lightning's LightningOptimizer
            inner = getattr(self, "_optimizer", None)
            if not isinstance(inner, MultiTaskOptimizer):
                raise TypeError(f"{type(self).__name__}.backward: call it on the multi-task optimizer itself")
            return inner.backward(losses, features=features, grad_scaler=grad_scaler, retain_graph=retain_graph)
        if isinstance(losses, Tensor) and losses.dim() == 0 and self.num_tasks != 1:
            expected = "" if self.num_tasks is None else f"; expected K = {self.num_tasks}"
            raise ValueError(
                f"{type(self).__name__}.backward got a single scalar loss{expected}: pass the K task losses as a list "
                "or a 1-D tensor, not their sum (for one task, build the optimizer with num_tasks=1 or pass [loss])"
            )
        split, names = _tasks.split_losses(losses, self.task_names, self.num_tasks)
        present = None
        if isinstance(split, list) and any(loss is None for loss in split):
            if self.num_tasks is not None and len(split) != self.num_tasks:
                raise ValueError(f"got {len(split)} losses; expected K = {self.num_tasks} (one per task, None for an absent one)")
            present = _tasks.present_tasks(split)
            _tasks.check_pcgrad_order(self.weighting, present, len(split))
        # the step's tasks in messages: their names, or their positions among the K (None: as they are)
        self._labels = _tasks.describe_present(present, names) if present is not None else names
        try:
            losses = check_losses(split if present is None else [split[k] for k in present], None if present else self.num_tasks)
        except (TypeError, ValueError) as error:
            if self._labels is None:
                raise
            raise type(error)(_tasks.relabel(str(error), self._labels)) from None
        K = len(split) if present is not None else len(losses)
        step = _Step(K, present, names, None, None)
        mode = _dist.resolve_mode(self.distributed, self.process_group)
        if self._fully_sharded is None:
            self._fully_sharded = _fsdp.fully_sharded(self._trainable())
        if self._fully_sharded:
            if features is not None:
                raise ValueError("features= with FSDP-sharded parameters is not supported; pass the losses alone")
            if self.distributed in ("none", "replicated"):
                raise ValueError(f"the parameters are sharded by FSDP (fully_shard); distributed={self.distributed!r} "
                                 "does not fit them: use distributed='auto' (or 'sharded')")
            if self.update_every > 1:
                raise ValueError("update_every > 1 with FSDP-sharded parameters is not supported: every step solves")
            return _fsdp.backward(self, losses, step, retain_graph, grad_scaler)
        reuse = present is None and self._reuse_due()
        if (self._evidence is not None and self._evidence.complete) or (reuse and self._roles is not None):
            roles, evidence = self._roles, None
        else:
            roles, evidence = self._detect_roles(losses, present, K)
        step = step._replace(roles=roles, evidence=evidence)
        step_roles = roles if present is None else _tasks.restrict_roles(roles, present)
        multipliers = self._loss_multipliers()
        if multipliers is not None and present is not None:
            multipliers = multipliers[present]
        differentiated = losses if multipliers is None else [l * m for l, m in zip(losses, multipliers.to(losses[0].device))]
        grad_scale = 1.0
        if grad_scaler is not None and grad_scaler.is_enabled():
            differentiated = [grad_scaler.scale(l) for l in differentiated]
            grad_scale = float(grad_scaler.get_scale())
        values = torch.stack([l.detach().reshape(()).to(torch.float64) for l in losses])
        grad_mode = resolve_grad_mode(self.grad_mode)
        if reuse:
            return self._backward_reusing(differentiated, values, roles, step, mode, grad_scale, grad_scaler, retain_graph)
        if features is None:
            return self._backward_parameters(
                differentiated, values, step_roles, step, mode, grad_mode, grad_scale, grad_scaler, retain_graph
            )
        return self._backward_features(
            differentiated, values, features, step_roles, step, mode, grad_mode, grad_scale, grad_scaler, retain_graph
        )

    def _backward_parameters(
        self, losses: list[Tensor], values: Tensor, roles: ParameterRoles, step: _Step, mode: str,
        grad_mode: str, grad_scale: float, grad_scaler: Any, retain_graph: bool,
    ) -> AggregationResult | None:
        K = len(losses)
        if not roles.shared:
            raise ValueError(
                "no parameter is shared by two or more tasks, so there is nothing to aggregate; "
                "pass shared_params= or use the features= path"
            )
        ws = self._buffers.workspace(K, roles, with_rows=True)
        if grad_mode == "loop" and rows_through_grad(roles.shared + roles.private):  # no copy into the rows
            fill_rows_through_grad(
                losses, roles.shared, ws.rows, ws.blocks, private=roles.by_task(K), private_inputs=roles.private,
                private_out=ws.private_views, retain_graph=retain_graph,
            )
        else:
            fill_task_gradients(
                losses, roles.shared, ws.rows, private=roles.by_task(K), private_inputs=roles.private,
                private_out=ws.private_views, mode=grad_mode, retain_graph=retain_graph,
            )
        if mode == "replicated":
            values = _dist.average_workspace_(ws, values, self.process_group)
        gram = self.aggregator.gram([ws.rows])
        if grad_scale != 1.0:
            gram = gram / grad_scale**2
        private_ok = torch.isfinite(ws.private).all()
        if mode == "sharded":
            gram, private_ok = _dist.sum_sharded_gram(gram, private_ok, self.process_group)
        gram, problem = find_nonfinite(
            values, gram, private_ok, ws.private_views, roles.private_tasks,
            blocks=None if mode == "sharded" else [ws.rows], scale=grad_scale,
        )
        if problem is not None:
            return self._give_up(problem, roles, grad_scaler)
        solution, weights = self._solve(gram, values, ws.rows.device, step)
        self._commit_step(step)
        outs, accumulate = grad_outputs(roles.shared)
        self.aggregator.combine(weights, ws.blocks, outs, accumulate)
        self._write_private(weights, ws.private_views, roles)
        self._write_owned_grads(values, grad_scale, step.present)
        return self._record(gram, solution, values, [p.grad for p in roles.shared], step)

    def _backward_features(
        self, losses: list[Tensor], values: Tensor, features: Tensor | Sequence[Tensor], roles: ParameterRoles,
        step: _Step, mode: str, grad_mode: str, grad_scale: float, grad_scaler: Any, retain_graph: bool,
    ) -> AggregationResult | None:
        """The features path: rows[k] = ∂Lₖ/∂z (K passes that stop at z, the heads' gradients
        summed on the way), Γ over the rows, the solve, then the shared parameters get
        d = Σₖ wₖ·gₖ from ONE backward: of z with the gradient ∂(Σₖ wₖLₖ)/∂z = wᵀ·rows when every
        path from the losses to the shared parameters goes through z (the heads are not
        traversed again), else of Σₖ wₖLₖ. The new gradients are tested for NaN/Inf before any is
        written, then handed over to ``.grad`` without a copy where there is none (a replicated
        step averages them in the workspace first)."""
        K = len(losses)
        if mode == "sharded":
            raise ValueError("the features= path needs whole per-rank batches; use distributed='replicated' or 'none'")
        features = [features] if isinstance(features, Tensor) else list(features)
        for i, z in enumerate(features):
            if not isinstance(z, Tensor) or not z.requires_grad:
                raise ValueError(f"features[{i}] must be a tensor in the losses' autograd graph (requires_grad=True)")
        rows = self._buffers.feature_rows(K, features)
        ws = self._buffers.workspace(K, roles, with_rows=False) if mode == "replicated" else None
        private_views = ws.private_views if ws is not None else private_gradient_views(roles.private)
        # through z alone: no loss reaches a shared parameter by a path around the features
        through_z = not any(any(found) for found in reaches(losses, roles.shared, around=features))
        reached = fill_task_gradients(
            losses, features, rows, private=roles.by_task(K), private_inputs=roles.private,
            private_out=private_views, mode=grad_mode, retain_graph=True, reach=True,
        )
        self._check_features_reached(reached)
        gram = self.aggregator.gram([rows])
        if grad_scale != 1.0:
            gram = gram / grad_scale**2
        if mode == "replicated":
            gram, values = _dist.average_feature_gram(gram, values, self.process_group)
        gram, problem = find_nonfinite(
            values, gram, torch.ones((), dtype=torch.bool), [], [],
            blocks=None if mode == "replicated" else [rows], scale=grad_scale,
        )
        if problem is not None:
            return self._give_up(problem, roles, grad_scaler)
        saved = copy.deepcopy(self._method_state())
        solution, weights = self._solve(gram, values, losses[0].device, step)
        grads = self._combined_gradients(losses, features, rows, weights, roles.shared, through_z, retain_graph)
        if ws is not None:  # replicated: the direction and the heads' gradients averaged in one all-reduce
            for out, g in zip(ws.direction, grads):
                out[0].copy_(g)
            for part in ws.gradient_parts:
                _dist.all_reduce_mean_(part, self.process_group)
            grads = [out[0] for out in ws.direction]
        if not all_finite([*grads, *private_views]):
            self._load_method_state(saved)
            _, problem = find_nonfinite(
                values, gram, torch.zeros((), dtype=torch.bool), private_views, roles.private_tasks,
                otherwise="the gradient of Σ wₖ·Lₖ over the shared parameters holds NaN/Inf (every ∂Lₖ/∂z is finite)",
            )
            return self._give_up(problem, roles, grad_scaler)
        self._commit_step(step)
        if ws is not None:
            accumulate_grads(roles.shared, grads)
        else:
            accumulate_fresh_grads(roles.shared, grads)
        self._write_private(weights, private_views, roles, fresh=ws is None)
        self._write_owned_grads(values, grad_scale, step.present)
        return self._record(gram, solution, values, [p.grad for p in roles.shared], step)

    def _combined_gradients(
        self, losses: list[Tensor], features: list[Tensor], rows: Tensor, weights: Tensor, shared: list[Tensor],
        through_z: bool, retain_graph: bool,
    ) -> list[Tensor]:
        """∂(Σₖ wₖLₖ)/∂θ for the shared parameters θ, as new tensors: backpropagated from the
        features with the gradient wᵀ·rows when ``through_z``, else from Σₖ wₖLₖ (zeros where
        nothing reaches θ)."""
        if not shared:
            return []
        if through_z:
            direction = torch.empty(1, rows.shape[1], dtype=rows.dtype, device=rows.device)
            self.aggregator.combine(weights, [rows], [direction], False)
            grad_z = [v[0].to(z.dtype) for v, z in zip(column_views(direction, features), features)]
            grads = torch.autograd.grad(features, shared, grad_outputs=grad_z, allow_unused=True, retain_graph=retain_graph)
        else:
            combined = sum(w.to(torch.promote_types(l.dtype, torch.float32)) * l for w, l in zip(weights, losses))
            grads = torch.autograd.grad(combined, shared, allow_unused=True, retain_graph=retain_graph)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(shared, grads)]

    # -- pieces ---------------------------------------------------------------------------------
    def _solve(self, gram: Tensor, values: Tensor, device: torch.device, step: _Step) -> tuple[Any, Tensor]:
        """The method's solve over the step's tasks (the absent ones' state kept)."""
        if step.present is None:
            return self.aggregator.solve(gram, values, device)
        with _tasks.restricted(self.weighting, step.present, step.num_tasks):
            return self.aggregator.solve(gram, values, device)

    def _commit_step(self, step: _Step) -> None:
        """Keep what a backward established, once it is sure to write: K (fixed by the first
        successful backward, which adds e.g. IMTL-L's log-scales), the names, the roles and their
        evidence."""
        if self.num_tasks is None:
            self._set_num_tasks(step.num_tasks)
        self.task_names = step.names
        if step.evidence is not None:
            self._roles, self._evidence = step.roles, step.evidence

    @staticmethod
    def _check_features_reached(reached: list[list[bool]]) -> None:
        """Every loss must reach some feature and every feature some loss through autograd (a
        reached feature whose gradient is zero in this batch is fine: the task adds nothing)."""
        lost = [k for k, row in enumerate(reached) if not any(row)]
        if lost:
            tasks = ", ".join(map(str, lost))
            raise ValueError(
                f"the loss of task{'s' if len(lost) > 1 else ''} {tasks} does not reach the features through "
                "autograd (its gradient is None, not zero): pass as features= the tensor the heads are computed "
                "from (not a detached copy, nor a second output of a compiled forward beside the heads' outputs)"
            )
        unused = [i for i in range(len(reached[0])) if not any(row[i] for row in reached)]
        if unused:
            named = ", ".join(f"features[{i}]" for i in unused)
            raise ValueError(f"{named} reached by no task's loss through autograd: every feature must feed some task")

    def _trainable(self) -> list[Tensor]:
        return trainable_parameters(self.param_groups, exclude=self._owned)

    def _detect_roles(self, losses: list[Tensor], present: list[int] | None, K: int) -> tuple[ParameterRoles, RoleEvidence]:
        """This batch's roles merged with the earlier evidence (:func:`.roles.detect_roles`); every
        rank finds the same when data-parallel. Nothing is kept until the backward succeeds."""
        reduce = None
        if _dist.resolve_mode(self.distributed, self.process_group) == "replicated":
            reduce = lambda counts: _dist.all_reduce_sum_(counts, self.process_group)  # noqa: E731
        return detect_roles(
            losses, self._trainable(), self._evidence, shared_ids=self._shared_ids,
            one_owner=self.task_specific == "weighted", reduce=reduce, present=present, num_tasks=K,
        )

    def _give_up(self, problem: str, roles: ParameterRoles, grad_scaler: Any) -> None:
        """A non-finite backward changes nothing but this: GradScaler's overflow signal, or the
        error, or the skip of the next step (see :mod:`.nonfinite`)."""
        self.last = None
        self.last_losses = None
        self.last_tasks = None
        if grad_scaler is not None and grad_scaler.is_enabled():  # let scaler.step see the overflow
            flag_overflow(roles.shared + roles.private + self._owned)
            return None
        if self._labels is not None:
            problem = _tasks.relabel(problem, self._labels)
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"{type(self).__name__}.backward: {problem}; nothing was changed")
        self.num_skipped += 1
        self._skip_step = True
        return None

    def _write_private(self, weights: Tensor, views: list[Tensor], roles: ParameterRoles, fresh: bool = False) -> None:
        """The task-specific parameters' gradients ``views`` (× wₖ with ``task_specific="weighted"``)
        added to ``.grad``; ``fresh``: the views are this step's own, taken as ``.grad`` where there is none."""
        if self.task_specific == "weighted":
            for view, tasks in zip(views, roles.private_tasks):
                view.mul_(weights[tasks[0]].to(view.dtype))
        (accumulate_fresh_grads if fresh else accumulate_grads)(roles.private, views)

    def _record(self, gram: Tensor, solution: Any, values: Tensor, direction: list[Tensor], step: _Step) -> AggregationResult:
        self.last = AggregationResult(direction, solution.weights, gram, self.weighting.name, dict(solution.diagnostics))
        self.last_losses = values
        self.last_tasks = _tasks.describe_present(list(range(step.num_tasks)) if step.present is None else step.present, self.task_names)
        self._skip_step = False  # a skipped backward's pending no-op step is superseded by this one
        self._count_update(solution.weights, reused=False, partial=step.present is not None)
        return self.last

    def diagnostics(self, flat: bool = False) -> dict[str, Any]:
        """The last backward's facts as plain Python numbers, for logging (one host sync):
        weights, gradient norms, pairwise cosines, number of conflicting pairs, losses, and the
        solver's scalar diagnostics. Empty after a skipped step.

        With ``flat=True``, a flat ``{name: float}`` ready for ``SummaryWriter.add_scalars`` or
        ``wandb.log``: ``weight/{k}``, ``grad_norm/{k}``, ``cosine/{i}_{j}`` (i < j),
        ``conflicts``, ``loss/{k}`` and ``solver/{name}`` — ``self.last.scalars(self.last_losses)``
        (:meth:`mtlkernels.AggregationResult.scalars`), read from the device once. Per-task keys
        name the task (``weight/depth``) when the tasks are named, else its position among the K;
        a step with absent tasks has keys for the present ones only. A step that reused the
        weights (``update_every``) reports what it did: the weights it applied, its losses and
        ``reused`` (there is no Γ on such a step).
        """
        if self.last_reused:
            return self._reused_facts(flat)
        if self.last is None:
            return {}
        if flat:
            scalars = self.last.scalars(self.last_losses)
            if self.update_every > 1:
                scalars["reused"] = 0.0
            if self.last_tasks == list(range(len(self.last_tasks))):
                return scalars
            return _tasks.name_keys(scalars, [str(task) for task in self.last_tasks])
        facts: dict[str, Any] = {
            "tasks": list(self.last_tasks),
            "weights": self.last.weights.tolist(),
            "norms": self.last.norms.tolist(),
            "cosine": self.last.cosine.tolist(),
            "conflicts": int(self.last.conflicts),
            "losses": self.last_losses.tolist() if self.last_losses is not None else None,
        }
        for key, value in diagnostics_to_python(self.last.diagnostics).items():
            if isinstance(value, (int, float, bool, str)):
                facts[key] = value
        if self.update_every > 1:
            facts["reused"] = False
        return facts

    def _reused_facts(self, flat: bool) -> dict[str, Any]:
        """The diagnostics of a step that reused the weights: weights, losses, ``reused``."""
        weights, losses = self._reused_weights.tolist(), self.last_losses.tolist()
        tasks = _tasks.describe_present(list(range(len(weights))), self.task_names)
        if not flat:
            return {"tasks": tasks, "weights": weights, "losses": losses, "reused": True}
        scalars = {f"weight/{k}": float(w) for k, w in enumerate(weights)}
        scalars.update({f"loss/{k}": float(v) for k, v in enumerate(losses)}, reused=1.0)
        return scalars if self.task_names is None else _tasks.name_keys(scalars, [str(task) for task in tasks])

    # -- update_every: steps that reuse the last weights ------------------------------------------
    def _init_reuse(self, update_every: int) -> None:
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every={update_every!r} must be an integer >= 1")
        self.update_every = update_every
        #: whether the last successful backward reused the weights (one backward of Σ wₖ·Lₖ)
        self.last_reused = False
        self._updates = 0  # successful backward calls, solving or reusing
        self._reused_weights: Tensor | None = None  # [K] float64 where the last solve left them

    def _reuse_due(self) -> bool:
        """Whether this backward reuses the last weights: not every n-th call, and only once a
        solve has fixed the weights (the roles are detected again after a ``load_state_dict``)."""
        return self.update_every > 1 and self._reused_weights is not None and self._updates % self.update_every != 0

    def _count_update(self, weights: Tensor, *, reused: bool, partial: bool = False) -> None:
        """Count a successful step; a full solve's weights become the reused ones (a solve over
        some of the tasks leaves the last full solve's in place)."""
        self._updates += 1
        self.last_reused = reused
        if not reused and not partial and self.update_every > 1:  # kept on the solve's device: no host sync
            self._reused_weights = weights.detach().to(torch.float64).clone()

    def _reuse_state(self) -> dict[str, Any]:
        weights = self._reused_weights
        return {"step": self._updates, "weights": None if weights is None else weights.to("cpu", copy=True)}

    @staticmethod
    def _check_reuse_state(state: Any, K: int | None) -> dict[str, Any]:
        if state is None:  # a state_dict saved before update_every existed
            return {"step": 0, "weights": None}
        if not isinstance(state, dict) or set(state) != {"step", "weights"}:
            raise ValueError("state_dict['update_every'] must be a dict with the keys 'step' and 'weights'")
        step, weights = state["step"], state["weights"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state_dict['update_every']['step'] must be an int >= 0; got {step!r}")
        if weights is not None and (
            not isinstance(weights, Tensor) or weights.dim() != 1 or (K is not None and weights.shape[0] != K)
            or not bool(torch.isfinite(weights).all())
        ):
            raise ValueError(f"state_dict['update_every']['weights'] must be None or K = {K} finite weights")
        return state

    def _load_reuse_state(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        self._updates = state["step"]
        self._reused_weights = None if weights is None else weights.detach().to("cpu", torch.float64).clone()

    def _backward_reusing(
        self, losses: list[Tensor], values: Tensor, roles: ParameterRoles, step: _Step, mode: str,
        grad_scale: float, grad_scaler: Any, retain_graph: bool,
    ) -> AggregationResult | None:
        """One backward of Σₖ wₖ·Lₖ with the last solved weights (task-specific parameters: ∇ Σ Lₖ,
        a backward through the heads only, with ``task_specific="plain"``); nothing is written
        unless the losses and the gradients are finite."""
        weights = self._reused_weights.to(losses[0].device)
        combined = sum(w.to(torch.promote_types(l.dtype, torch.float32)) * l for w, l in zip(weights, losses))
        plain_private = bool(roles.private) and self.task_specific == "plain"
        weighted = roles.shared + ([] if plain_private else roles.private)
        private_grads = (
            torch.autograd.grad(sum(losses), roles.private, allow_unused=True, retain_graph=True) if plain_private else ()
        )
        grads = [*torch.autograd.grad(combined, weighted, allow_unused=True, retain_graph=retain_graph), *private_grads]
        params = weighted + (roles.private if plain_private else [])
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if mode == "replicated":
            values = _dist.all_reduce_mean_(values.clone(), self.process_group)
            for g in grads:
                _dist.all_reduce_mean_(g, self.process_group)
        finite = torch.tensor(bool(torch.isfinite(values).all()) and all_finite(grads), device=values.device)
        if mode == "sharded":
            finite = _dist.all_reduce_sum_((~finite).to(torch.float64).reshape(1), self.process_group)[0] == 0
        if not bool(finite):
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            problem = "; ".join(f"task {k}: loss is {values[k].item()}" for k in bad) or (
                "the gradient of Σ wₖ·Lₖ with the reused weights holds NaN/Inf"
            )
            return self._give_up(problem, roles, grad_scaler)
        self._commit_step(step)
        accumulate_fresh_grads(params, grads)
        self._write_owned_grads(values, grad_scale, None)
        self.last_losses = values
        self._skip_step = False
        self._count_update(self._reused_weights, reused=True)
        return self.last
