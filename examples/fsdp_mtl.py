"""A gradient-conflict method on a model sharded by FSDP2 (``fully_shard``): each rank holds a
slice of every parameter, and the wrapper runs the method on the slices — K per-task gradient
slices, a local K×K partial Gram, one all-reduce of K² numbers, the combination written into the
sharded ``.grad``.

    python examples/fsdp_mtl.py [--method cagrad] [--ranks 2] [--steps 5]

Runs on the CPU with the gloo backend (processes started here with torch.multiprocessing; with
``torchrun`` the body of ``train`` is the whole script). On GPUs use the nccl backend and one
device per rank.
"""
from __future__ import annotations

import argparse
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

import mtlkernels as mk

TASKS = ("depth", "seg", "normal")
WRAPPERS = {"pcgrad": mk.PCGrad, "cagrad": mk.CAGrad, "nash_mtl": mk.NashMTL, "imtl": mk.IMTL, "mgda": mk.MGDA}


class TrunkHeads(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(width, 1) for task in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {task: head(z) for task, head in self.heads.items()}  # [B, 1] each (no views out of an FSDP module)


def train(rank: int, world: int, port: int, method: str, steps: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial model on every rank
    model = TrunkHeads()
    fully_shard(model.trunk)  # the trunk, then the root (the heads): every parameter is a sharded DTensor
    fully_shard(model)
    opt = WRAPPERS[method](torch.optim.Adam(model.parameters(), lr=1e-2), task_names=TASKS)
    data = torch.Generator().manual_seed(rank)  # each rank its own batches
    for _ in range(steps):
        x = torch.randn(16, 8, generator=data)
        y = torch.stack([torch.tanh(x[:, 0]), -torch.tanh(x[:, 0] + x[:, 1]), x[:, 2]], 1)
        outputs = model(x)
        losses = {task: nn.functional.mse_loss(outputs[task].squeeze(1), y[:, k]) for k, task in enumerate(TASKS)}
        opt.zero_grad()
        opt.backward(losses)  # per-task gradient slices → Γ = Σ_ranks Γ_rank → weights → sharded .grad
        opt.step()
    flat = opt.diagnostics(flat=True)  # the same on every rank: Γ, the weights and the losses are global
    results[rank] = {key: value for key, value in flat.items() if key.startswith(("weight/", "loss/"))}
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="cagrad", choices=sorted(WRAPPERS), help="the gradient-conflict method")
    parser.add_argument("--ranks", type=int, default=2, help="processes (each holds 1/ranks of every parameter)")
    parser.add_argument("--steps", type=int, default=5, help="training steps")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(train, args=(args.ranks, port, args.method, args.steps, results), nprocs=args.ranks, join=True)
    for rank in sorted(results):
        print(f"rank {rank}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(results[rank].items())))
    return dict(results)


if __name__ == "__main__":
    main()
