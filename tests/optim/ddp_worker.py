"""The per-rank half of tests/optim/test_distributed.py (a module of its own so that spawned
processes can import it): the same steps, on half the batch per rank (replicated, under
DistributedDataParallel) or on half the shared parameters per rank (sharded)."""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from mtlkernels.optim import FAMO, RLW, UW, CAGrad, GradNorm, IMTL, MGDAUB, NashMTL, PCGrad
from mtl_model import TrunkHeads, batch, task_losses

#: (name, wrapper, options, features path?, the heads' dtype (None: the trunk's, float64))
SCENARIOS = [
    ("cagrad", CAGrad, {}, False, None),
    ("mgda_loss+", MGDAUB, {"normalization": "loss+"}, False, None),
    ("mgda_features", MGDAUB, {"normalization": "loss+"}, True, None),
    ("nash_features", NashMTL, {}, True, None),
    ("imtl", IMTL, {}, False, None),
    ("pcgrad_batched", PCGrad, {"seed": 1, "grad_mode": "batched"}, False, None),
    ("cagrad_float32_heads", CAGrad, {}, False, torch.float32),  # two buffers, two all-reduces
    ("mgda_features_float32_heads", MGDAUB, {"normalization": "loss+"}, True, torch.float32),
    ("cagrad_update_every", CAGrad, {"update_every": 2}, False, None),  # the second step reuses
    ("famo", FAMO, {"lr": 0.5}, False, None),  # the second step updates the logits
    ("uw", UW, {}, False, None),
    ("rlw", RLW, {"seed": 3}, False, None),
    ("gradnorm", GradNorm, {"layer": 2}, False, None),  # layer: the index of the parameter
]
STEPS = 2
B = 16


def run_scenario(
    wrapper, options, features, heads_dtype, rank: int | None, world: int, sharded: bool = False
) -> dict:
    """Two steps; rank None = one process on the full batch. Returns the parameters and the
    last step's gradients (model order) and weights."""
    model = TrunkHeads(K=3, seed=0)
    if heads_dtype is not None:
        model.heads.to(heads_dtype)
    params = list(model.parameters())
    trunk = list(model.trunk.parameters())
    if "layer" in options:
        options = {**options, "layer": params[options["layer"]]}
    if sharded and rank is not None:  # this rank owns every other trunk tensor, and the heads
        owned = trunk[rank::world] + list(model.heads.parameters())
        opt = wrapper(torch.optim.SGD(owned, lr=0.05), distributed="sharded", **options)
        net = model
    else:
        opt = wrapper(torch.optim.SGD(params, lr=0.05), **options)
        net = nn.parallel.DistributedDataParallel(model) if rank is not None else model
    for step in range(STEPS):
        x, y = batch(K=3, B=B, seed=20 + step)
        if rank is not None and not sharded:
            x, y = x[rank * B // world : (rank + 1) * B // world], y[rank * B // world : (rank + 1) * B // world]
        opt.zero_grad(set_to_none=True)
        z, out = net(x)
        losses = [((out[:, k] - y[:, k]) ** 2).mean() for k in range(3)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MGDAUB's note when features= is missing
            opt.backward(losses, features=z if features else None)
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        weights = opt.last.weights.clone()
        opt.step()
        if sharded and rank is not None:  # gather the updated slices, as ZeRO/FSDP do after a step
            with torch.no_grad():
                for i, p in enumerate(trunk):
                    dist.broadcast(p, src=i % world)
    return {"params": [p.detach().clone() for p in params], "grads": grads, "weights": weights}


def run_named_with_an_absent_task(rank: int | None, world: int) -> dict:
    """Nash-MTL with named tasks under DDP: a full step, then a step without "seg" (the same on
    every rank), then a full one; rank None = one process on the full batch."""
    model = TrunkHeads(K=3, seed=0)
    opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.05), task_names=("depth", "seg", "normal"))
    net = nn.parallel.DistributedDataParallel(model) if rank is not None else model
    weights = []
    for step in range(3):
        x, y = batch(K=3, B=B, seed=30 + step)
        if rank is not None:
            x, y = x[rank * B // world : (rank + 1) * B // world], y[rank * B // world : (rank + 1) * B // world]
        opt.zero_grad(set_to_none=True)
        _, out = net(x)
        losses = {name: ((out[:, k] - y[:, k]) ** 2).mean() for k, name in enumerate(opt.task_names)}
        if step == 1:
            del losses["seg"]
        opt.backward(losses)
        weights.append(opt.last.weights.clone())
        opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "weights": weights,
            "alpha": opt.weighting.state_dict()["alpha"].clone()}


def worker(rank: int, world: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {name: run_scenario(w, o, f, h, rank, world) for name, w, o, f, h in SCENARIOS}
        results["sharded"] = run_scenario(CAGrad, {}, False, None, rank, world, sharded=True)
        results["absent"] = run_named_with_an_absent_task(rank, world)
        torch.save(results, f"{out_path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
