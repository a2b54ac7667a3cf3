"""Log a gradient-conflict method's diagnostics to TensorBoard: after each ``opt.backward``,
``opt.diagnostics(flat=True)`` is a flat ``{name: float}`` (per-task weight, gradient norm and
loss, pairwise cosines, conflicts, the solver's certificate) that ``SummaryWriter.add_scalar``
takes one by one, each under its own tag.

    python examples/tensorboard_logging.py [--method cagrad] [--steps 20] [--out examples/out/tensorboard]
    tensorboard --logdir examples/out/tensorboard
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import mtlkernels as mk

TASKS = ("depth", "seg", "normal")
WRAPPERS = {"pcgrad": mk.PCGrad, "cagrad": mk.CAGrad, "nash_mtl": mk.NashMTL, "upgrad": mk.UPGrad, "famo": mk.FAMO}


def main(argv: list[str] | None = None) -> str:
    """Train a small trunk with three heads for ``--steps`` steps; returns the log directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(WRAPPERS), default="cagrad", help="the optimizer wrapper")
    parser.add_argument("--steps", type=int, default=20, help="training steps (one fixed batch of 64)")
    parser.add_argument("--out", default=os.path.join("examples", "out", "tensorboard"), help="the log directory")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
    heads = nn.ModuleDict({task: nn.Linear(32, 1) for task in TASKS})
    opt = WRAPPERS[args.method](torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-2))
    x, y = torch.randn(64, 8), torch.randn(64, len(TASKS))
    writer = SummaryWriter(log_dir=args.out)
    for step in range(args.steps):
        z = trunk(x)
        losses = {task: nn.functional.mse_loss(heads[task](z).squeeze(1), y[:, k]) for k, task in enumerate(TASKS)}
        opt.zero_grad(set_to_none=True)
        opt.backward(losses)  # tasks by name: the keys read weight/depth, cosine/depth_seg, ...
        opt.step()
        for name, value in opt.diagnostics(flat=True).items():
            writer.add_scalar(name, value, step)
    writer.close()
    print(f"{args.method}: {args.steps} steps logged to {args.out} (tensorboard --logdir {args.out})")
    return args.out


if __name__ == "__main__":
    main()
