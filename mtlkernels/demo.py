"""Demo: aggregate real task gradients of a small multi-task model with every method.

    python -m mtlkernels.demo [--tasks 4] [--width 256] [--seed 0] [--repeats 20]

A shared MLP trunk with K regression heads is fit to synthetic tasks drawn to conflict; the K
per-task gradients of the shared parameters form J. Every method aggregates the same J; the table
shows the weights, the cosine of the direction with each task gradient (negative: that task's loss
goes up to first order) and the time per aggregate() call.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from . import METHODS, aggregate


def task_gradients(K: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """J [K, N] over the trunk's parameters, and the K losses, for one batch."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 32, generator=gen)
    directions = torch.randn(32, K, generator=gen)
    directions[:, 1::2] = -directions[:, 0:1] + 0.5 * directions[:, 1::2]  # conflicting task pairs
    targets = torch.tanh(x @ directions) * torch.logspace(0, 1, K)  # different loss scales
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(K))
    z = trunk(x)
    losses = torch.stack([((head(z).squeeze(1) - targets[:, k]) ** 2).mean() for k, head in enumerate(heads)])
    shared = list(trunk.parameters())
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
    return torch.stack(rows), losses.detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mtlkernels.demo", description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=4, help="K, the number of regression tasks (heads)")
    parser.add_argument("--width", type=int, default=256,
                        help="hidden width of the shared trunk (N, the shared parameters, grows as width²)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the model's initialisation")
    parser.add_argument("--repeats", type=int, default=20, help="aggregate() calls timed per method (the ms/call column)")
    args = parser.parse_args(argv)

    J, losses = task_gradients(args.tasks, args.width, args.seed)
    K, N = J.shape
    print(f"J: K={K} tasks x N={N:,} shared parameters; losses {[round(v, 3) for v in losses.tolist()]}")
    res = aggregate(J)
    print(f"task-gradient cosine similarities (conflicting pairs: {int(res.conflicts)}):")
    for row in res.cosine.tolist():
        print("   " + " ".join(f"{v:+.2f}" for v in row))
    header = f"{'method':<10} {'weights':<{9 * K}} {'cos(d, g_k)':<{7 * K}} {'|d|':>9} {'ms/call':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    norms = J.norm(dim=1)
    for method in METHODS:
        options = {"losses": losses} if method == "mgda" else {}
        res = aggregate(J, method, **options)
        start = time.perf_counter()
        for _ in range(args.repeats):
            aggregate(J, method, **options)
        ms = (time.perf_counter() - start) / args.repeats * 1e3
        d = res.direction
        cos = (J @ d) / (norms * d.norm()).clamp_min(1e-30)
        w = " ".join(f"{v:8.3g}" for v in res.weights.tolist())
        c = " ".join(f"{v:+6.2f}" for v in cos.tolist())
        print(f"{method:<10} {w:<{9 * K}} {c:<{7 * K}} {float(d.norm()):9.3g} {ms:8.2f}")


if __name__ == "__main__":
    main()
