"""The per-rank half of tests/optim/test_fsdp.py (a module of its own so that spawned processes can
import it): the wrappers on a model sharded by FSDP2's ``fully_shard`` (trunk and root), each rank
on half the global batch, returning its local slices; and a non-finite task on one rank."""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from mtlkernels.optim import CAGrad, IMTL, MGDA, MGDAUB, MultiTaskOptimizer, NashMTL, NonFiniteError, PCGrad
from mtl_model import TrunkHeads, batch, task_losses

#: (name, wrapper, options)
METHODS = [
    ("mean", MultiTaskOptimizer, {}),
    ("pcgrad", PCGrad, {"seed": 1}),
    ("cagrad", CAGrad, {}),
    ("nash_mtl", NashMTL, {}),
    ("nash_mtl_weighted", NashMTL, {"task_specific": "weighted"}),
    ("imtl", IMTL, {}),
    ("imtl_l", IMTL, {"imtl_l": True}),
    ("mgda", MGDA, {}),
    ("mgda_ub_loss+", MGDAUB, {}),
]
#: (name, wrapper, options, dtype, reshard_after_forward, a task absent from the middle step?)
SCENARIOS = [(f"{name}-{str(dtype)[6:]}", w, o, dtype, True, False) for dtype in (torch.float64, torch.float32) for name, w, o in METHODS]
SCENARIOS += [
    ("cagrad-float64-keep_unsharded", CAGrad, {}, torch.float64, False, False),
    ("nash_mtl-float64-task_absent", NashMTL, {}, torch.float64, True, True),
    ("imtl_l-float64-task_absent", IMTL, {"imtl_l": True}, torch.float64, True, True),
]
STEPS = 3
B = 16


def run(wrapper, options, dtype, rank: int | None, world: int, reshard: bool = True, absent: bool = False) -> dict:
    """STEPS steps of SGD with momentum; rank None: one process on the global batch, unsharded.
    ``absent``: task 1 has no loss in the middle step. Returns per step the parameters (this
    rank's slices) and the weights."""
    model = TrunkHeads(K=3, seed=0, dtype=dtype)
    if rank is not None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.trunk, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
    opt = wrapper(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), **options)
    params_by_step, weights = [], []
    for step in range(STEPS):
        x, y = batch(K=3, B=B, seed=20 + step, dtype=dtype)
        if rank is not None:
            x, y = x[rank * B // world:(rank + 1) * B // world], y[rank * B // world:(rank + 1) * B // world]
        opt.zero_grad(set_to_none=True)
        losses, _ = task_losses(model, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MGDAUB's note that it is made for features=
            opt.backward([None if absent and step == 1 and k == 1 else loss for k, loss in enumerate(losses)])
        opt.step()
        params_by_step.append([_local(p).clone() for p in model.parameters()])
        weights.append(opt.last.weights.detach().clone())
    return {"params": params_by_step, "weights": weights}


def nonfinite(rank: int, world: int) -> dict:
    """One good step, then task 1's loss is NaN on rank 1 only: every rank must refuse the step
    and keep its slices, their .grad and the optimizer state exactly."""
    model = TrunkHeads(K=3, seed=0)
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.trunk)
    fully_shard(model)
    opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    x, y = batch(K=3, B=B, seed=20)
    x, y = x[rank * B // world:(rank + 1) * B // world], y[rank * B // world:(rank + 1) * B // world]
    losses, _ = task_losses(model, x, y)
    opt.backward(losses)
    opt.step()
    losses, _ = task_losses(model, x, y)
    if rank == 1:
        losses[1] = losses[1] * float("nan")
    before = _snapshot(model, opt)
    try:
        opt.backward(losses)
        error = None
    except NonFiniteError as exc:
        error = str(exc)
    after = _snapshot(model, opt)
    return {"error": error, "before": before, "after": after}


def refusals(rank: int, world: int) -> dict:
    """What the FSDP path refuses, each before anything changes: features=, grad_scaler=,
    distributed='replicated', update_every > 1, and a model of which only a part is sharded."""
    from torch.distributed.fsdp import fully_shard

    messages = {}
    cases = {
        "features": ({}, {"features": True}),
        "grad_scaler": ({}, {"grad_scaler": torch.amp.GradScaler("cpu", init_scale=2.0)}),
        "replicated": ({"distributed": "replicated"}, {}),
        "update_every": ({"update_every": 2}, {}),
    }
    for name, (options, call) in cases.items():
        model = TrunkHeads(K=3, seed=0)  # a fresh one: after a forward FSDP's root holds unsharded parameters
        fully_shard(model.trunk)
        fully_shard(model)
        opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.05), **options)
        losses, z = task_losses(model, *batch(K=3, B=8))
        try:
            opt.backward(losses, features=z if call.get("features") else None, grad_scaler=call.get("grad_scaler"))
            messages[name] = None
        except ValueError as exc:
            messages[name] = str(exc)
        messages[name + "_grads"] = [p.grad is None for p in opt.param_groups[0]["params"]]
    partial = TrunkHeads(K=3, seed=0)
    fully_shard(partial.trunk)  # the heads stay plain tensors
    opt = CAGrad(torch.optim.SGD(partial.parameters(), lr=0.05))
    try:
        opt.backward(task_losses(partial, *batch(K=3, B=8))[0])
        messages["partial"] = None
    except ValueError as exc:
        messages["partial"] = str(exc)
    return messages


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local().detach() if hasattr(t, "to_local") else t.detach()


def _snapshot(model, opt) -> dict:
    """The sharded parameters (the optimizer's: between a forward and its backward the root
    module's ``parameters()`` are FSDP's unsharded ones), their .grad, and the optimizer state."""
    state = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]
    return {
        "params": [_local(p).clone() for p in params],
        "grads": [None if p.grad is None else _local(p.grad).clone() for p in params],
        "momentum": [_local(s["momentum_buffer"]).clone() for s in state["optimizer"]["state"].values()],
        "alpha": state["method"]["weighting"]["alpha"].clone(),
    }


def worker(rank: int, world: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {name: run(w, o, dtype, rank, world, reshard, absent) for name, w, o, dtype, reshard, absent in SCENARIOS}
        results["nonfinite"] = nonfinite(rank, world)
        results["refusals"] = refusals(rank, world)
        torch.save(results, f"{out_path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
