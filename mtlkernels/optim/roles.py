"""Parameter roles: which parameters get the aggregated direction (shared) and which their plain
gradient (task-specific), detected from the tasks' gradients and merged over batches.

Task k uses parameter p when ∂Lₖ/∂p was nonzero in some batch (a head that a ``torch.cat`` or
indexing of the outputs connects to every loss gets exact zeros from the other tasks, so it stays
its task's own); a parameter two or more tasks use is shared. A task with a zero gradient on every
parameter (no labels in the batch) shows nothing about its use: until every task has had a nonzero
gradient, each batch is examined again, what it shows is merged with the earlier batches, and a
task not yet seen counts as using every parameter its graph reaches — so no layer the absent task
may share is taken for another task's own, and the roles kept in the end do not depend on which
batch came first. ``shared_params=`` pins the shared set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


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


@dataclass
class RoleEvidence:
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


def trainable_parameters(param_groups: list[dict], exclude: Sequence[Tensor] = ()) -> list[Tensor]:
    """The parameters of ``param_groups`` that require grad, once each, in order, without ``exclude``."""
    seen = {id(p) for p in exclude}
    params = []
    for group in param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def check_shared(shared: Sequence[Tensor], trainable: list[Tensor]) -> set[int]:
    """The ids of the given ``shared_params``; each must be one of the ``trainable`` parameters."""
    shared = list(shared)
    if not shared:
        raise ValueError("shared_params is empty; leave it out to detect the shared parameters")
    known = {id(p) for p in trainable}
    for i, p in enumerate(shared):
        if not isinstance(p, Tensor) or id(p) not in known:
            raise ValueError(f"shared_params[{i}] is not a trainable parameter of the wrapped optimizer")
    return {id(p) for p in shared}


def detect_roles(
    losses: list[Tensor],
    params: list[Tensor],
    prior: RoleEvidence | None,
    *,
    shared_ids: set[int] | None,
    one_owner: bool,
    reduce: Callable[[Tensor], Tensor] | None = None,
    present: Sequence[int] | None = None,
    num_tasks: int | None = None,
) -> tuple[ParameterRoles, RoleEvidence]:
    """The roles from this batch's gradients merged with the ``prior`` evidence (see the module
    docstring); changes nothing, the caller keeps the result once its backward succeeds.

    One loop of K ``autograd.grad`` calls over ``params`` (the graph is retained). A parameter
    with only zero gradients falls back to the tasks whose graph reaches it. Shared = used by two
    or more tasks (by K = 1: by the one), or in ``shared_ids`` when given. ``one_owner``: every
    non-shared parameter must belong to one task. ``reduce`` sums the [K, 2, P] evidence counts
    over data-parallel ranks, so that every rank finds the same roles. ``present``: the tasks (of
    ``num_tasks``) that ``losses`` belong to, in a step where the others are absent; an absent task
    shows nothing, and one never present counts as using the parameters every task seen so far
    uses (the trunk, not another task's head) and as owning those no task uses (its own head).
    """
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
    return roles_from_gradients(
        grads, params, prior, shared_ids=shared_ids, one_owner=one_owner, reduce=reduce, present=present,
        num_tasks=num_tasks, device=losses[0].device,
    )


def roles_from_gradients(
    grads: Sequence[Sequence[Tensor | None]],
    params: list[Tensor],
    prior: RoleEvidence | None,
    *,
    shared_ids: set[int] | None,
    one_owner: bool,
    reduce: Callable[[Tensor], Tensor] | None = None,
    present: Sequence[int] | None = None,
    num_tasks: int | None = None,
    device: torch.device | None = None,
) -> tuple[ParameterRoles, RoleEvidence]:
    """:func:`detect_roles` from the tasks' gradients ``grads[k][j]`` on ``params[j]`` (None: not
    reached), however they were taken (e.g. this rank's shards under FSDP, with ``reduce``
    summing the counts over the ranks)."""
    K = len(grads)
    flags = []
    for task_grads in grads:
        none = torch.zeros((), dtype=torch.bool, device=device)
        flags.append(torch.tensor([g is not None for g in task_grads], device=device))
        flags.append(torch.stack([g.ne(0).any().to(device) if g is not None else none for g in task_grads]))
    counts = torch.stack(flags).view(K, 2, len(params)).to(torch.float64)
    if reduce is not None:
        counts = reduce(counts)
    reached, used = (counts > 0).cpu().unbind(1)
    for k in range(K):
        if not bool(reached[k].any()):
            task = k if present is None else present[k]
            raise ValueError(f"loss of task {task} does not depend on any trainable parameter of the wrapped optimizer")
    if present is not None:  # the absent tasks' rows: nothing seen
        K = num_tasks
        rows = torch.tensor(list(present))
        used = torch.zeros(K, len(params), dtype=torch.bool).index_copy_(0, rows, used)
        reached = torch.zeros(K, len(params), dtype=torch.bool).index_copy_(0, rows, reached)
    ids = tuple(id(p) for p in params)
    if prior is not None and prior.ids == ids and prior.used.shape[0] == K:
        used, reached = used | prior.used, reached | prior.reached
    evidence = RoleEvidence(ids, used, reached)
    absent = ~used.any(1)
    owners = used | (absent[:, None] & reached)
    fallback, never, seen = reached, ~reached.any(1), ~absent
    if bool(never.any()) and bool(seen.any()):
        # a task never present uses what every task seen uses (the trunk), and owns the parameters
        # no task uses (e.g. its head, which the others reach through a torch.cat)
        owners |= never[:, None] & used[seen].all(0)
        fallback = never[:, None] & reached.any(0)
    owners = torch.where(owners.any(0), owners, fallback)
    shared, private, private_tasks = [], [], []
    for j, p in enumerate(params):
        tasks = tuple(owners[:, j].nonzero().flatten().tolist())
        is_shared = id(p) in shared_ids if shared_ids is not None else len(tasks) >= min(2, K)
        if is_shared:
            shared.append(p)
        elif tasks:
            if bool(used[:, j].any()):  # owned by the tasks seen using it (matters when pinned)
                tasks = tuple(used[:, j].nonzero().flatten().tolist())
            if len(tasks) > 1 and one_owner:
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
