"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): the method on local shards.

Under FSDP2 every parameter is a DTensor of which each rank holds a slice (``Shard(0)``), and a
backward pass leaves in ``.grad`` this rank's slice of the gradient, reduce-scattered (averaged)
over the ranks — the slice of the global-batch gradient. A step:

1. K backward passes, ``L_k.backward(retain_graph=True)`` one task at a time, each leaving task
   k's gradient slice in ``.grad``; it is copied into row k of a local [K, n_local] buffer (n_local:
   this rank's slice of the parameters) and ``.grad`` is put back as it was.
2. The local partial Gram Γ_r = J_r·J_rᵀ over this rank's slice of the shared parameters; ONE
   all-reduce of K² numbers (with the K loss values and a finiteness vote packed in) gives
   Γ = Σ_r Γ_r, the Gram of the full gradients, on every rank.
3. The K-space solve, replicated (every rank solves the same Γ to the same weights).
4. d_r = wᵀJ_r into the shared parameters' sharded ``.grad``; the task-specific parameters
   (heads) get their plain gradient Σₖ gₖ (or wₖ·gₖ with ``task_specific="weighted"``).

Memory per rank: the K rows of task-gradient slices, K × (shared parameters ÷ ranks) values, the
task-specific parameters' K slices and the direction's slice — never K × the whole model; FSDP's
unsharded gradient of one backward pass exists only during that pass. (While the roles are still
being detected — the first step, or until every task has been seen — the K slices of every
parameter are kept until the rows are filled: twice that for the shared part.) The parameter roles come from the same K passes (their nonzero flags summed over the
ranks), so no pass is added to detect them. A 1-D device mesh only: HSDP (a 2-D mesh of
replicated groups of shards) raises.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..aggregate import AggregationResult
from ..jacobian import common_dtype
from . import distributed as _dist
from .nonfinite import find_nonfinite
from .roles import roles_from_gradients
from .tasks import restrict_roles

if TYPE_CHECKING:
    from .base import MultiTaskOptimizer, _Step


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def fully_sharded(params: list[Tensor]) -> bool:
    """Whether the wrapper is under FSDP2: some parameter is a DTensor sharded over a mesh
    dimension (``fully_shard``); then every one must be."""
    DTensor = _dtensor_type()
    if DTensor is None:
        return False
    sharded = [isinstance(p, DTensor) and any(placement.is_shard() for placement in p.placements) for p in params]
    if not any(sharded):
        return False
    if not all(sharded):
        plain = [tuple(p.shape) for p, s in zip(params, sharded) if not s]
        raise ValueError(
            f"some parameters are sharded by FSDP (fully_shard) and {len(plain)} are not (shapes {plain[:4]}): "
            "apply fully_shard to the root module too, so that every trainable parameter is sharded"
        )
    return True


def shard_group(param: Tensor, group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    """The process group over which ``param``'s slices add up: ``group`` when given, else the
    group of its 1-D device mesh."""
    if param.device_mesh.ndim != 1:
        raise ValueError(
            f"the parameters are sharded over a {param.device_mesh.ndim}-D device mesh (HSDP); the wrappers take "
            "FSDP over a 1-D mesh only"
        )
    return group if group is not None else param.device_mesh.get_group(0)


def backward(
    opt: MultiTaskOptimizer, losses: list[Tensor], step: _Step, retain_graph: bool, grad_scaler: Any,
) -> AggregationResult | None:
    """One step of ``opt`` on FSDP2-sharded parameters (see the module docstring)."""
    if grad_scaler is not None and grad_scaler.is_enabled():
        raise ValueError("grad_scaler= with FSDP-sharded parameters is not supported; use FSDP's MixedPrecisionPolicy (bf16) instead")
    params = opt._trainable()
    group = shard_group(params[0], opt.process_group)
    multipliers = opt._loss_multipliers()
    if multipliers is not None and step.present is not None:
        multipliers = multipliers[step.present]
    differentiated = losses if multipliers is None else [l * m for l, m in zip(losses, multipliers.to(losses[0].device))]
    K = len(losses)
    index = {id(p): j for j, p in enumerate(params)}
    known = opt._roles if opt._evidence is not None and opt._evidence.complete else None
    rows = None
    if known is not None:  # the roles are known: each pass's shared slices go straight into the rows
        shared = [index[id(p)] for p in known.shared]
        rows = _empty_rows(K, [params[j] for j in shared])
    saved = [p.grad for p in params]
    grads: list[list[Tensor | None]] = []
    try:  # K passes, each leaving its reduce-scattered slice in .grad; .grad is put back after
        for k, loss in enumerate(differentiated):
            for p in params:
                p.grad = None
            loss.backward(retain_graph=retain_graph or k < K - 1)
            grads.append([None if p.grad is None else p.grad.to_local().detach() for p in params])
            if rows is not None:
                _fill_row(rows[k], grads[k], shared, params)
                for j in shared:
                    grads[k][j] = None  # kept once, in the rows
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    if known is not None:
        roles, evidence = known, None
    else:
        roles, evidence = roles_from_gradients(
            grads, params, opt._evidence, shared_ids=opt._shared_ids, one_owner=opt.task_specific == "weighted",
            reduce=lambda counts: _dist.all_reduce_sum_(counts, group), present=step.present,
            num_tasks=step.num_tasks, device=losses[0].device,
        )
    step = step._replace(roles=roles, evidence=evidence)
    if step.present is not None:
        roles = restrict_roles(roles, step.present)
    if not roles.shared:
        raise ValueError("no parameter is shared by two or more tasks, so there is nothing to aggregate; pass shared_params=")
    if rows is None:
        shared = [index[id(p)] for p in roles.shared]
        rows = _empty_rows(K, roles.shared)
        for k in range(K):
            _fill_row(rows[k], grads[k], shared, params)
    private = [_task_sum(grads, index[id(p)], tasks, p) for p, tasks in zip(roles.private, roles.private_tasks)]
    private_ok = torch.ones((), dtype=torch.bool)
    for g in private:
        private_ok &= torch.isfinite(g).all().cpu()
    values = torch.stack([l.detach().reshape(()).to(torch.float64) for l in losses])
    gram, values, private_ok = _sum_gram(opt.aggregator.gram([rows]), values, private_ok, group)
    gram, problem = find_nonfinite(values, gram, private_ok, private, [tuple(t) for t in roles.private_tasks])
    if problem is not None:
        return opt._give_up(problem, roles, None)
    solution, weights = opt._solve(gram, values, rows.device, step)
    opt._commit_step(step)
    direction = torch.empty(rows.shape[1], dtype=rows.dtype, device=rows.device)
    opt.aggregator.combine(weights, [rows], [direction.view(1, -1)], False)
    start = 0
    for p in roles.shared:
        n = p.to_local().numel()
        _add_local_grad(p, direction[start:start + n])
        start += n
    for p, tasks, g in zip(roles.private, roles.private_tasks, private):
        if opt.task_specific == "weighted":
            g = g * weights[tasks[0]].to(g.dtype)
        _add_local_grad(p, g)
    opt._write_owned_grads(values, 1.0, step.present)
    return opt._record(gram, solution, values, [direction], step)


def _empty_rows(K: int, params: list[Tensor]) -> Tensor:
    """[K, n_local] for the local slices of ``params``, in their common dtype."""
    locals_ = [p.to_local() for p in params]
    dtype = common_dtype(locals_) or torch.float32
    return torch.empty(K, sum(t.numel() for t in locals_), dtype=dtype, device=locals_[0].device if locals_ else None)


def _fill_row(row: Tensor, task_grads: list[Tensor | None], columns: list[int], params: list[Tensor]) -> None:
    """row ← one task's local gradient slices of ``params`` (at ``columns`` of ``task_grads``;
    zeros where the task has none)."""
    start = 0
    for j in columns:
        n, g = params[j].to_local().numel(), task_grads[j]
        if g is None:
            row[start:start + n].zero_()
        else:
            row[start:start + n].copy_(g.reshape(-1))
        start += n


def _task_sum(grads: list[list[Tensor | None]], j: int, tasks: tuple[int, ...], param: Tensor) -> Tensor:
    """Σ_{k ∈ tasks} gₖ over ``param``'s local slice."""
    total = torch.zeros_like(param.to_local())
    for k in tasks:
        if grads[k][j] is not None:
            total += grads[k][j]
    return total


def _sum_gram(gram: Tensor, values: Tensor, private_ok: Tensor, group: dist.ProcessGroup) -> tuple[Tensor, Tensor, Tensor]:
    """Γ = Σ_ranks Γ_rank, the loss values averaged over the ranks, and "every rank's
    task-specific gradients are finite", in one all-reduce."""
    K, ranks = gram.shape[0], dist.get_world_size(group)
    packed = torch.cat([gram.reshape(-1), values.to(gram), (~private_ok).to(gram).reshape(1)])
    _dist.all_reduce_sum_(packed, group)
    return packed[: K * K].view(K, K), packed[K * K : K * K + K].to(torch.float64) / ranks, packed[-1] == 0


def _add_local_grad(param: Tensor, local: Tensor) -> None:
    """``param.grad += local`` on this rank's slice, making a sharded ``.grad`` when there is none."""
    local = local.detach().view_as(param.to_local()).to(param.dtype)
    if param.grad is None:
        DTensor = _dtensor_type()
        param.grad = DTensor.from_local(
            local.clone(), param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
        )
    else:
        param.grad.to_local().add_(local)
