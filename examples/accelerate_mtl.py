"""A Hugging Face accelerate training loop with a gradient-conflict method: the wrapper goes
through ``accelerator.prepare`` like any optimizer, ``opt.backward(losses)`` takes the place of
``accelerator.backward(loss)``, and ``accelerator.save_state``/``load_state`` carry the method's
state. Run on several processes (``accelerate launch``), the wrapper averages the per-task
gradients over the ranks itself (``distributed="auto"``).

    python examples/accelerate_mtl.py [--method cagrad] [--steps 10] [--out examples/out/accelerate]

Logs the flat diagnostics to a plain list of dicts (any logger takes them: ``accelerator.log``,
``wandb.log``, ``SummaryWriter.add_scalars``), written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
        return {task: head(z).squeeze(1) for task, head in self.heads.items()}


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    a = torch.randn(8, 3, generator=g)
    a[:, 1] = -a[:, 0] + 0.3 * a[:, 1]
    return TensorDataset(x, torch.tanh(x @ a) * torch.tensor([1.0, 2.0, 0.5]))


def train(model: nn.Module, opt: Any, loader: DataLoader, steps: int) -> list[dict]:
    """``steps`` multi-task steps with ``opt``, accelerate's optimizer around the wrapper; returns
    the flat diagnostics of each."""
    log = []
    batches = iter(())
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        outputs = model(x)
        losses = {task: nn.functional.mse_loss(outputs[task], y[:, k]) for k, task in enumerate(TASKS)}
        opt.zero_grad()
        opt.optimizer.backward(losses)  # opt is accelerate's AcceleratedOptimizer; .optimizer is the wrapper
        opt.step()
        log.append(opt.optimizer.diagnostics(flat=True))
    return log


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="nash_mtl", choices=sorted(WRAPPERS), help="the gradient-conflict method")
    parser.add_argument("--steps", type=int, default=10, help="training steps (batches of 16); saved and reloaded halfway")
    parser.add_argument("--out", default=os.path.join("examples", "out", "accelerate"), help="the saved state and the log")
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = TrunkHeads()
    # update_weights_every=3: Nash-MTL reuses α between solves, so its state decides the steps after a reload
    options = {"pcgrad": {"seed": 0}, "nash_mtl": {"update_weights_every": 3}}.get(args.method, {})
    opt = WRAPPERS[args.method](torch.optim.Adam(model.parameters(), lr=1e-2), task_names=TASKS, **options)
    loader = DataLoader(make_data(), batch_size=16, shuffle=False)
    model, opt, loader = accelerator.prepare(model, opt, loader)

    log = train(model, opt, loader, args.steps // 2)
    state_dir = os.path.join(args.out, "halfway")
    accelerator.save_state(state_dir)
    saved = {"params": [p.detach().clone() for p in model.parameters()], "method": opt.optimizer.state_dict()["method"]}
    continued = train(model, opt, loader, args.steps - args.steps // 2)
    accelerator.load_state(state_dir)  # back to halfway: parameters, Adam's moments and the method's state
    restored = opt.optimizer.state_dict()["method"]
    again = train(model, opt, loader, args.steps - args.steps // 2)  # the second half once more
    log += continued
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"{args.method}: {len(log)} steps; last: " + ", ".join(f"{k}={v:.3g}" for k, v in log[-1].items() if k.startswith("weight/")))
    print(f"second half run again from the saved state: the same steps: {again == continued}")
    return {"log": log, "saved": saved, "restored": restored, "continued": continued, "again": again}


if __name__ == "__main__":
    main()
