"""The shared base of the drop-in multi-task optimizers.

    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-3), c=0.5)
    opt.zero_grad(set_to_none=True)
    opt.backward(losses)      # K scalar losses: shared parameters get d = Σₖ wₖ·gₖ in .grad
    opt.step()                # the wrapped optimizer's step

A step: per-task gradients into a reused [K, N] buffer (:mod:`mtlkernels.jacobian`), Γ = J·Jᵀ
(:func:`mtlkernels.gram.gram_blocks`), the method's K-space solve (its Weighting), d = wᵀJ written
into the shared parameters' ``.grad`` (:func:`mtlkernels.combine.combine`). With
``backward(losses, features=z)`` the Gram is taken over ∂Lₖ/∂z instead (MGDA-UB's "upper bound",
Sener & Koltun 2018) and one backward of Σ wₖ·Lₖ replaces the combination.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_option
from ..aggregate import AggregationResult
from ..combine import combine
from ..gram import gram_blocks
from ..jacobian import GRAD_MODES, check_losses, column_views, common_dtype, fill_task_gradients, resolve_grad_mode
from ..methods import Weighting, make_weighting
from . import distributed as _dist

TASK_SPECIFIC = ("plain", "weighted")
ON_NONFINITE = ("raise", "skip")


class NonFiniteError(FloatingPointError, ValueError):
    """A task's loss or gradient holds NaN/Inf; nothing was changed (see ``on_nonfinite``)."""


@dataclass
class ParameterRoles:
    """Which parameters get the aggregated direction and which their plain gradient.

    Attributes:
        shared: parameters in the Gram/combination (used by two or more tasks, or given).
        private: the other parameters some task uses (heads): they get ∇ Σ Lₖ.
        private_tasks: for each private parameter, the tasks that use it.
    """

    shared: list[Tensor]
    private: list[Tensor]
    private_tasks: list[tuple[int, ...]]

    def by_task(self, K: int) -> list[list[int]]:
        """For each task, the indices of the private parameters it uses."""
        owned: list[list[int]] = [[] for _ in range(K)]
        for j, tasks in enumerate(self.private_tasks):
            for k in tasks:
                owned[k].append(j)
        return owned


class _Workspace:
    """The flat buffers reused across steps: K·N_shared task-gradient rows (or N_shared for the
    direction, features path), N_private plain gradients and K loss values. The rows are in the
    shared parameters' common dtype, the plain gradients in the private ones'; when the two agree
    (the usual case) it is ONE buffer, so data-parallel training averages it with one all-reduce.
    ``buffers`` are what the replicated path averages, ``gradient_parts`` the parts holding
    gradients. Each ``.grad`` is written in its parameter's dtype."""

    def __init__(self, K: int, roles: ParameterRoles, with_rows: bool, key: tuple, device: torch.device) -> None:
        shared_dtype = common_dtype(roles.shared) or common_dtype(roles.private) or torch.float32
        private_dtype = common_dtype(roles.private) or shared_dtype
        n_shared = sum(p.numel() for p in roles.shared)
        n_private = sum(p.numel() for p in roles.private)
        head = K * n_shared if with_rows else n_shared
        self.key = key
        if private_dtype == shared_dtype:
            storage = torch.empty(head + n_private + K, dtype=shared_dtype, device=device)
            front, self.private, self.losses = storage[:head], storage[head : head + n_private], storage[head + n_private :]
            self.buffers, self.gradient_parts = [storage], [storage[: head + n_private]]
        else:
            main = torch.empty(head + K, dtype=shared_dtype, device=device)
            self.private = torch.empty(n_private, dtype=private_dtype, device=device)
            front, self.losses = main[:head], main[head:]
            self.buffers, self.gradient_parts = [main, self.private], [front, self.private]
        self.rows = front.view(K, n_shared) if with_rows else None
        self.direction = None if with_rows else column_views(front.view(1, n_shared), roles.shared)
        self.private_views = [v[0] for v in column_views(self.private.view(1, n_private), roles.private)]


@dataclass
class _RoleEvidence:
    """What the backwards so far showed about the parameters (of ``ids``, in the wrapped
    optimizer's order): used[k, j] — task k's gradient on parameter j was nonzero in some batch;
    reached[k, j] — task k's graph reached it (its gradient was not None) in some batch."""

    ids: tuple[int, ...]
    used: Tensor
    reached: Tensor

    @property
    def complete(self) -> bool:
        """Every task has had a nonzero gradient somewhere: its use of each parameter is known."""
        return bool(self.used.any(1).all())


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
        backend: "auto", "torch", "cpp" or "triton", for the Gram, the solve and the combination.
        **options: the method's options (its Weighting's arguments).

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
        backend: str = "auto",
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
        self.optimizer = optimizer
        if method is not None and type(self) is not MultiTaskOptimizer:
            raise TypeError(f"{type(self).__name__} is {self.method!r}; method= is for MultiTaskOptimizer itself")
        if method is not None:
            self.method = method
        self.weighting: Weighting = make_weighting(self.method, backend=backend, **options)
        self.task_specific = task_specific
        self.grad_mode = grad_mode
        self.on_nonfinite = on_nonfinite
        self.distributed = distributed
        self.process_group = process_group
        self.num_tasks = num_tasks
        self.backend = backend
        #: the last backward's Γ, weights, cosines, conflicts and solver diagnostics (None after a skip)
        self.last: AggregationResult | None = None
        #: the last backward's K loss values (float64; averaged over ranks when data-parallel)
        self.last_losses: Tensor | None = None
        #: how many backward calls were skipped for a non-finite loss or gradient
        self.num_skipped = 0
        self._owned: list[Tensor] = []  # parameters this wrapper adds (IMTL-L log-scales)
        self._shared_ids = None if shared_params is None else self._check_shared(shared_params)
        self._roles: ParameterRoles | None = None
        self._evidence: _RoleEvidence | None = None
        self._workspace: _Workspace | None = None
        self._feature_rows: Tensor | None = None
        self._skip_step = False
        # torch.optim.Optimizer's own bookkeeping; its __init__ is not called because the
        # parameters, groups and state are the wrapped optimizer's (see the properties below)
        self._optimizer_step_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._patch_step_function()
        if num_tasks is not None:
            self._set_num_tasks(num_tasks)

    @property
    def roles(self) -> ParameterRoles | None:
        """The shared and task-specific parameters of the last successful ``backward`` (None before)."""
        return self._roles

    # -- the torch.optim.Optimizer surface, delegated to the wrapped optimizer ------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: dict[Any, Any]) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer; parameter roles are detected again."""
        self.optimizer.add_param_group(param_group)
        self._roles = None
        self._evidence = None
        self._workspace = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The wrapped optimizer's step; does nothing when the last backward was skipped (non-finite)."""
        if self._skip_step:
            self._skip_step = False
            return None
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state_dict plus the method's state (e.g. Nash-MTL's α)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "method": copy.deepcopy(self._method_state()),
            "num_tasks": self.num_tasks,
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: everything is checked first, so a mismatch raises and changes nothing."""
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
        num_skipped = state_dict.get("num_skipped", 0)
        if isinstance(num_skipped, bool) or not isinstance(num_skipped, int) or num_skipped < 0:
            raise ValueError(f"state_dict['num_skipped'] must be an int >= 0; got {num_skipped!r}")
        self._check_optimizer_state(state_dict["optimizer"], self.num_tasks if K is None else K)
        method = copy.deepcopy(state_dict["method"])
        self._check_method_state(method, self.num_tasks if K is None else K)
        if K is not None:
            self._set_num_tasks(K)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._load_method_state(method)
        self.num_skipped = num_skipped

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
        self.__dict__.update(state)

    def __repr__(self) -> str:
        options = {"method": self.weighting.name, **self.weighting.options(), "task_specific": self.task_specific, "grad_mode": self.grad_mode,
                   "on_nonfinite": self.on_nonfinite, "distributed": self.distributed}
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

    def _write_owned_grads(self, losses: Tensor, grad_scale: float) -> None:
        """Write the gradients of the parameters this wrapper owns, from the K loss values."""

    # -- backward ------------------------------------------------------------------------------
    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> AggregationResult | None:
        """Per-task gradients → weights → ``.grad`` (added to what is there, as ``Tensor.backward``).

        Args:
            losses: K scalar losses (a sequence, or a 1-D tensor).
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
        losses = check_losses(losses, self.num_tasks)
        if self._evidence is not None and self._evidence.complete:
            roles, evidence = self._roles, None
        else:
            roles, evidence = self._detect_roles(losses)
        multipliers = self._loss_multipliers()
        differentiated = losses if multipliers is None else [l * m for l, m in zip(losses, multipliers.to(losses[0].device))]
        grad_scale = 1.0
        if grad_scaler is not None and grad_scaler.is_enabled():
            differentiated = [grad_scaler.scale(l) for l in differentiated]
            grad_scale = float(grad_scaler.get_scale())
        values = torch.stack([l.detach().reshape(()).to(torch.float64) for l in losses])
        mode = _dist.resolve_mode(self.distributed, self.process_group)
        grad_mode = resolve_grad_mode(self.grad_mode)
        if features is None:
            return self._backward_parameters(
                differentiated, values, roles, evidence, mode, grad_mode, grad_scale, grad_scaler, retain_graph
            )
        return self._backward_features(
            differentiated, values, features, roles, evidence, mode, grad_mode, grad_scale, grad_scaler, retain_graph
        )

    def _backward_parameters(
        self, losses: list[Tensor], values: Tensor, roles: ParameterRoles, evidence: _RoleEvidence | None, mode: str,
        grad_mode: str, grad_scale: float, grad_scaler: Any, retain_graph: bool,
    ) -> AggregationResult | None:
        K = len(losses)
        if not roles.shared:
            raise ValueError(
                "no parameter is shared by two or more tasks, so there is nothing to aggregate; "
                "pass shared_params= or use the features= path"
            )
        ws = self._workspace_for(K, roles, with_rows=True)
        fill_task_gradients(
            losses, roles.shared, ws.rows, private=roles.by_task(K), private_inputs=roles.private,
            private_out=ws.private_views, mode=grad_mode, retain_graph=retain_graph,
        )
        if mode == "replicated":
            ws.losses.copy_(values)
            for buffer in ws.buffers:
                _dist.all_reduce_mean_(buffer, self.process_group)
            values = ws.losses.to(torch.float64)
        gram = gram_blocks([ws.rows], self.backend)
        if grad_scale != 1.0:
            gram = gram / grad_scale**2
        private_ok = torch.isfinite(ws.private).all()
        if mode == "sharded":  # Γ = Σ over the slices; the finiteness vote travels with it
            packed = _dist.all_reduce_sum_(torch.cat([gram.reshape(-1), (~private_ok).to(gram.dtype).reshape(1)]), self.process_group)
            gram, private_ok = packed[: K * K].view(K, K), packed[K * K] == 0
        problem = self._nonfinite_problem(values, gram, private_ok, ws.private_views, roles)
        if problem is not None:
            return self._give_up(problem, roles, grad_scaler)
        solution = self.weighting(gram, values)
        weights = solution.weights.to(device=ws.rows.device, dtype=torch.float64)
        self._commit(K, roles, evidence)
        self._write_combination(weights, ws.rows, roles.shared)
        self._write_private(weights, ws.private_views, roles)
        self._write_owned_grads(values, grad_scale)
        return self._record(gram, solution, values, roles)

    def _backward_features(
        self, losses: list[Tensor], values: Tensor, features: Tensor | Sequence[Tensor], roles: ParameterRoles,
        evidence: _RoleEvidence | None, mode: str, grad_mode: str, grad_scale: float, grad_scaler: Any, retain_graph: bool,
    ) -> AggregationResult | None:
        K = len(losses)
        if mode == "sharded":
            raise ValueError("the features= path needs whole per-rank batches; use distributed='replicated' or 'none'")
        features = [features] if isinstance(features, Tensor) else list(features)
        for i, z in enumerate(features):
            if not isinstance(z, Tensor) or not z.requires_grad:
                raise ValueError(f"features[{i}] must be a tensor in the losses' autograd graph (requires_grad=True)")
        rows = self._feature_rows_for(K, features)
        ws = self._workspace_for(K, roles, with_rows=False)
        reached = fill_task_gradients(
            losses, features, rows, private=roles.by_task(K), private_inputs=roles.private,
            private_out=ws.private_views, mode=grad_mode, retain_graph=True, reach=True,
        )
        self._check_features_reached(reached)
        gram = gram_blocks([rows], self.backend)
        if grad_scale != 1.0:
            gram = gram / grad_scale**2
        if mode == "replicated":  # L = mean of the rank losses, so ∂L/∂z_rank = ∂L_rank/∂z_rank ÷ R
            ranks = _dist.world_size(self.process_group)
            packed = _dist.all_reduce_sum_(torch.cat([gram.reshape(-1), values.to(gram)]), self.process_group)
            gram, values = packed[: K * K].view(K, K) / ranks**2, packed[K * K :].to(torch.float64) / ranks
        problem = self._nonfinite_problem(values, gram, torch.ones((), dtype=torch.bool), [], roles)
        if problem is not None:
            return self._give_up(problem, roles, grad_scaler)
        saved = copy.deepcopy(self._method_state())
        solution = self.weighting(gram, values)
        weights = solution.weights.to(device=losses[0].device, dtype=torch.float64)
        if roles.shared:
            combined = sum(w.to(torch.promote_types(l.dtype, torch.float32)) * l for w, l in zip(weights, losses))
            grads = torch.autograd.grad(combined, roles.shared, allow_unused=True, retain_graph=retain_graph)
            for out, g in zip(ws.direction, grads):
                out[0].copy_(g) if g is not None else out[0].zero_()
        if mode == "replicated":
            for part in ws.gradient_parts:
                _dist.all_reduce_mean_(part, self.process_group)
        if not all(bool(torch.isfinite(part).all()) for part in ws.gradient_parts):
            self._load_method_state(saved)
            problem = self._nonfinite_problem(
                values, gram, torch.zeros((), dtype=torch.bool), ws.private_views, roles,
                otherwise="the gradient of Σ wₖ·Lₖ over the shared parameters holds NaN/Inf (every ∂Lₖ/∂z is finite)",
            )
            return self._give_up(problem, roles, grad_scaler)
        self._commit(K, roles, evidence)
        self._accumulate(roles.shared, [v[0] for v in ws.direction])
        self._write_private(weights, ws.private_views, roles)
        self._write_owned_grads(values, grad_scale)
        return self._record(gram, solution, values, roles)

    # -- pieces ---------------------------------------------------------------------------------
    def _commit(self, K: int, roles: ParameterRoles, evidence: _RoleEvidence | None) -> None:
        """Keep what a backward established, once it is sure to write: K (fixed by the first
        successful backward, which adds e.g. IMTL-L's log-scales), the roles and their evidence."""
        if self.num_tasks is None:
            self._set_num_tasks(K)
        if evidence is not None:
            self._roles, self._evidence = roles, evidence

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
        owned = {id(p) for p in self._owned}
        seen: set[int] = set()
        params = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in owned and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def _check_shared(self, shared: Sequence[Tensor]) -> set[int]:
        shared = list(shared)
        if not shared:
            raise ValueError("shared_params is empty; leave it out to detect the shared parameters")
        known = {id(p) for p in self._trainable()}
        for i, p in enumerate(shared):
            if not isinstance(p, Tensor) or id(p) not in known:
                raise ValueError(f"shared_params[{i}] is not a trainable parameter of the wrapped optimizer")
        return {id(p) for p in shared}

    def _detect_roles(self, losses: list[Tensor]) -> tuple[ParameterRoles, _RoleEvidence]:
        """The roles from this batch's gradients merged with the evidence of the earlier ones (see
        the class docstring); nothing is kept until the backward succeeds (:meth:`_commit`).

        One extra loop of K ``autograd.grad`` calls over every trainable parameter. Task k uses
        parameter p when ∂Lₖ/∂p was nonzero in some batch: the zero test catches heads that a
        ``torch.cat``/indexing of the outputs connects to every loss. A task that had a zero
        gradient on every parameter in every batch so far (absent: e.g. no labels) counts as
        using what its graph reaches, so that a layer it shares is not taken for another task's
        own; a parameter with only zero gradients falls back to the tasks whose graph reaches
        it. Shared = used by two or more tasks (by K = 1: by the one), or the given
        ``shared_params``."""
        params = self._trainable()
        K = len(losses)
        flags = []
        for loss in losses:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            none = torch.zeros((), dtype=torch.bool, device=loss.device)
            flags.append(torch.tensor([g is not None for g in grads], device=loss.device))
            flags.append(torch.stack([g.ne(0).any().to(loss.device) if g is not None else none for g in grads]))
        counts = torch.stack(flags).view(K, 2, len(params)).to(torch.float64)
        if _dist.resolve_mode(self.distributed, self.process_group) == "replicated":  # same roles on every rank
            _dist.all_reduce_sum_(counts, self.process_group)
        reached, used = (counts > 0).cpu().unbind(1)
        for k in range(K):
            if not bool(reached[k].any()):
                raise ValueError(f"loss of task {k} does not depend on any trainable parameter of the wrapped optimizer")
        ids = tuple(id(p) for p in params)
        prior = self._evidence
        if prior is not None and prior.ids == ids and prior.used.shape[0] == K:
            used, reached = used | prior.used, reached | prior.reached
        evidence = _RoleEvidence(ids, used, reached)
        absent = ~used.any(1)
        owners = used | (absent[:, None] & reached)
        owners = torch.where(owners.any(0), owners, reached)
        shared, private, private_tasks = [], [], []
        for j, p in enumerate(params):
            tasks = tuple(owners[:, j].nonzero().flatten().tolist())
            is_shared = id(p) in self._shared_ids if self._shared_ids is not None else len(tasks) >= min(2, K)
            if is_shared:
                shared.append(p)
            elif tasks:
                if bool(used[:, j].any()):  # owned by the tasks seen using it (matters when pinned)
                    tasks = tuple(used[:, j].nonzero().flatten().tolist())
                if len(tasks) > 1 and self.task_specific == "weighted":
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} is used by tasks {list(tasks)} but is not shared; "
                        "with task_specific='weighted' each non-shared parameter must belong to one task"
                    )
                private.append(p)
                private_tasks.append(tasks)
        devices = {p.device for p in shared + private}
        if len(devices) > 1:
            raise ValueError(f"the parameters are on several devices {sorted(map(str, devices))}; one device per process is supported")
        return ParameterRoles(shared, private, private_tasks), evidence

    def _workspace_for(self, K: int, roles: ParameterRoles, with_rows: bool) -> _Workspace:
        params = roles.shared + roles.private
        device = params[0].device if params else torch.device("cpu")
        layout = [tuple((id(p), p.dtype, p.numel()) for p in group) for group in (roles.shared, roles.private)]
        key = (K, with_rows, *layout, device)
        if self._workspace is None or self._workspace.key != key:
            self._workspace = _Workspace(K, roles, with_rows, key, device)
        return self._workspace

    def _feature_rows_for(self, K: int, features: list[Tensor]) -> Tensor:
        M = sum(z.numel() for z in features)
        dtype = common_dtype(features)
        rows = self._feature_rows
        if rows is None or rows.shape != (K, M) or rows.dtype != dtype or rows.device != features[0].device:
            rows = self._feature_rows = torch.empty(K, M, dtype=dtype, device=features[0].device)
        return rows

    def _nonfinite_problem(
        self, values: Tensor, gram: Tensor, private_ok: Tensor, private_views: list[Tensor], roles: ParameterRoles,
        otherwise: str = "a task-specific gradient on another rank holds NaN/Inf",
    ) -> str | None:
        """None when the losses, Γ's diagonal and the private gradients are finite (one host sync),
        else a message naming the tasks (``otherwise`` when no local value explains it)."""
        if bool(torch.isfinite(values).all() & torch.isfinite(gram.diagonal()).all() & private_ok):
            return None
        parts = [f"task {k}: loss is {values[k].item()}" for k in (~torch.isfinite(values)).nonzero().flatten().tolist()]
        parts += [f"task {k}: gradient holds NaN/Inf" for k in (~torch.isfinite(gram.diagonal())).nonzero().flatten().tolist()]
        for view, tasks in zip(private_views, roles.private_tasks):
            if not bool(torch.isfinite(view).all()):
                parts.append(f"task {'/'.join(map(str, tasks))}: gradient of a task-specific parameter holds NaN/Inf")
        return "; ".join(dict.fromkeys(parts)) if parts else otherwise

    def _give_up(self, problem: str, roles: ParameterRoles, grad_scaler: Any) -> None:
        self.last = None
        self.last_losses = None
        if grad_scaler is not None and grad_scaler.is_enabled():  # let scaler.step see the overflow
            for p in roles.shared + roles.private + self._owned:
                if p.grad is None:
                    p.grad = torch.full_like(p, float("inf"))
                else:
                    p.grad.fill_(float("inf"))
            return None
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"{type(self).__name__}.backward: {problem}; nothing was changed")
        self.num_skipped += 1
        self._skip_step = True
        return None

    def _write_combination(self, weights: Tensor, rows: Tensor, shared: list[Tensor]) -> None:
        """.grad ← d = wᵀJ for the shared parameters (added to existing gradients)."""
        fresh = all(p.grad is None for p in shared)
        for p in shared:
            if p.grad is None:
                p.grad = torch.empty_like(p, memory_format=torch.contiguous_format) if fresh else torch.zeros_like(p)
        combine(weights, rows, out=[p.grad for p in shared], accumulate=not fresh, backend=self.backend)

    def _write_private(self, weights: Tensor, views: list[Tensor], roles: ParameterRoles) -> None:
        if self.task_specific == "weighted":
            for view, tasks in zip(views, roles.private_tasks):
                view.mul_(weights[tasks[0]].to(view.dtype))
        self._accumulate(roles.private, views)

    @staticmethod
    def _accumulate(params: list[Tensor], values: list[Tensor]) -> None:
        for p, v in zip(params, values):
            if p.grad is None:
                p.grad = v.detach().to(dtype=p.dtype, memory_format=torch.contiguous_format, copy=True).view_as(p)
            else:
                p.grad.add_(v.view_as(p.grad))  # rounded to .grad's dtype

    def _record(self, gram: Tensor, solution: Any, values: Tensor, roles: ParameterRoles) -> AggregationResult:
        self.last = AggregationResult([p.grad for p in roles.shared], solution.weights, gram, self.weighting.name, dict(solution.diagnostics))
        self.last_losses = values
        self._skip_step = False  # a skipped backward's pending no-op step is superseded by this one
        return self.last

    def diagnostics(self) -> dict[str, Any]:
        """The last backward's facts as plain Python numbers, for logging (one host sync):
        weights, gradient norms, pairwise cosines, number of conflicting pairs, losses, and the
        solver's scalar diagnostics. Empty after a skipped step."""
        if self.last is None:
            return {}
        facts: dict[str, Any] = {
            "weights": self.last.weights.tolist(),
            "norms": self.last.norms.tolist(),
            "cosine": self.last.cosine.tolist(),
            "conflicts": int(self.last.conflicts),
            "losses": self.last_losses.tolist() if self.last_losses is not None else None,
        }
        for key, value in self.last.diagnostics.items():
            if isinstance(value, (int, float, bool, str)):
                facts[key] = value
            elif isinstance(value, Tensor) and value.numel() == 1:
                facts[key] = value.item()
        return facts
