"""Tasks by name, and steps in which some tasks are absent.

``opt.backward({"depth": l_depth, "seg": l_seg})`` names the tasks; ``opt.backward([l0, None, l2])``
or a dict without a key runs the method over the tasks present (a batch without labels for a
task). K — the number of tasks, fixed for the optimizer's life — comes from, in this order:
``task_names=`` (K = its length), ``num_tasks=``, or the first successful ``backward`` (the length
of the list, or the keys of the dict, in their order). A dict may then leave tasks out only once
the names are known; a key that is not a known name is an error.

A step over the present tasks P ⊂ {1..K}: their gradients, the |P|×|P| Gram and the method's solve
on it, d = Σ_{k∈P} wₖ·gₖ. The absent tasks' own parameters (heads) get nothing, and each
method's per-task state (Nash-MTL's warm-start α; IMTL-L's log-scales) keeps its absent entries:
:func:`restricted` hands the solve the present entries and writes them back afterwards.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..methods import Weighting
from .roles import ParameterRoles


def check_task_names(names: Any) -> tuple[str, ...]:
    """``task_names=`` as a tuple of distinct non-empty strings."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(f"task_names must be a sequence of strings; got {type(names).__name__}")
    names = tuple(names)
    if not names:
        raise ValueError("task_names is empty: name K >= 1 tasks")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"task names must be non-empty strings; got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task names must be distinct; repeated: {repeated}")
    return names


def split_losses(
    losses: Any, names: tuple[str, ...] | None, K: int | None
) -> tuple[list[Tensor | None], tuple[str, ...] | None]:
    """The losses in task order (None for an absent task) and the names they imply.

    A mapping is read by name: with known ``names`` each key must be one of them (missing keys are
    absent tasks); without, its keys become the names (all present). A sequence or a 1-D tensor is
    read by position (``None`` entries are absent tasks). Nothing else is checked here.
    """
    if not isinstance(losses, Mapping):
        if isinstance(losses, (list, tuple)) and any(loss is None for loss in losses):
            return list(losses), names
        return losses, names
    for key in losses:
        if not isinstance(key, str):
            raise TypeError(f"the losses dict's keys must be task names (str); got {key!r}")
    if names is None:
        if K is not None and len(losses) != K:
            raise ValueError(
                f"got {len(losses)} named losses {list(losses)} but K = {K}: the first dict names every task "
                "(or build the optimizer with task_names=[...])"
            )
        return list(losses.values()), tuple(losses)
    unknown = [key for key in losses if key not in names]
    if unknown:
        raise ValueError(f"unknown task name{'s' if len(unknown) > 1 else ''} {unknown}; the tasks are {list(names)}")
    return [losses.get(name) for name in names], names


def present_tasks(losses: list[Tensor | None]) -> list[int]:
    """The positions of the tasks given a loss; at least one."""
    present = [k for k, loss in enumerate(losses) if loss is not None]
    if not present:
        raise ValueError("every task is absent (all losses are None): there is nothing to step on")
    return present


def restrict_roles(roles: ParameterRoles, present: list[int]) -> ParameterRoles:
    """The roles of a step over the ``present`` tasks: the shared parameters as they are; each
    task-specific parameter that a present task uses, its tasks renumbered to positions in
    ``present``; the absent tasks' own parameters left out (their ``.grad`` is not touched)."""
    position = {k: i for i, k in enumerate(present)}
    private, private_tasks = [], []
    for p, tasks in zip(roles.private, roles.private_tasks):
        kept = tuple(position[k] for k in tasks if k in position)
        if kept:
            private.append(p)
            private_tasks.append(kept)
    return ParameterRoles(list(roles.shared), private, private_tasks)


@contextlib.contextmanager
def restricted(weighting: Weighting, present: list[int], K: int) -> Iterator[None]:
    """Run ``weighting`` on the present tasks only: its per-task state entries
    (``weighting.per_task_state``, 1-D tensors [K]) are narrowed to ``present`` for the solve and
    written back into the full [K] entries afterwards, so the absent tasks' entries are kept. An
    entry not yet set (None) becomes the present tasks' values with the absent ones filled by
    their mean. A solve that raises leaves the state as it was."""
    keys = getattr(weighting, "per_task_state", ())
    if not keys or len(present) == K:
        yield
        return
    full = weighting.state_dict()
    index = torch.tensor(present)
    narrowed = {key: (value if value is None else value[index.to(value.device)]) for key, value in full.items() if key in keys}
    weighting.load_state_dict({**full, **narrowed})
    try:
        yield
    except BaseException:
        weighting.load_state_dict(full)
        raise
    solved = weighting.state_dict()
    merged = dict(solved)
    for key in keys:
        new, old = solved[key], full[key]
        if new is None:
            merged[key] = old
            continue
        base = old.to(new) if old is not None else new.mean().expand(K).clone()
        base = base.clone()
        base[index.to(base.device)] = new
        merged[key] = base
    weighting.load_state_dict(merged)


def check_pcgrad_order(weighting: Weighting, present: list[int], K: int) -> None:
    """A fixed PCGrad ``order=`` is [K, K]; a step over fewer tasks has no order to use."""
    if len(present) < K and getattr(weighting, "order", None) is not None:
        raise ValueError(
            f"PCGrad with a fixed order= needs all K = {K} tasks in every step; tasks {sorted(set(range(K)) - set(present))} are absent"
        )


def name_keys(scalars: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """Flat diagnostics with the per-task keys (``weight/{k}``, ``grad_norm/{k}``, ``loss/{k}``,
    any other ``{fact}/{k}``, ``cosine/{i}_{j}``) named by the task names of the step's tasks, in order."""
    named: dict[str, float] = {}
    for key, value in scalars.items():
        kind, _, rest = key.partition("/")
        if rest.isdigit() and int(rest) < len(names):
            key = f"{kind}/{names[int(rest)]}"
        elif kind == "cosine":
            i, j = rest.split("_")
            key = f"cosine/{names[int(i)]}_{names[int(j)]}"
        named[key] = value
    return named


_TASK_REFERENCE = re.compile(r"\b(tasks?) (\[?\d+(?:(?:, |/)\d+)*\]?)")


def relabel(message: str, labels: Sequence[Any]) -> str:
    """An error message about the step's tasks by position ("task 1", "task 0/2", "tasks [0, 1]")
    rewritten with their labels: names (``task 'seg'``) or positions among the K."""
    def rewrite(match: re.Match) -> str:
        numbers = re.sub(r"\d+", lambda n: repr(labels[int(n.group())]) if int(n.group()) < len(labels) else n.group(), match.group(2))
        return f"{match.group(1)} {numbers}"

    return _TASK_REFERENCE.sub(rewrite, message)


def describe_present(present: list[int], names: Sequence[str] | None) -> list[Any]:
    """The step's tasks as names when the tasks are named, else as positions."""
    return [names[k] for k in present] if names is not None else list(present)


__all__ = [
    "check_pcgrad_order",
    "check_task_names",
    "describe_present",
    "name_keys",
    "present_tasks",
    "relabel",
    "restrict_roles",
    "restricted",
    "split_losses",
]
