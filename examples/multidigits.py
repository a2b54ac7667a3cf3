"""A real multi-task training run on real data, on the CPU: two overlapping handwritten digits per
image (MultiMNIST-style, Sabour et al. 2017, built from scikit-learn's 8×8 digits, which ship with
the package), one task per digit: left digit (top-left) and right digit (bottom-right). A small
CNN trunk is shared, each task has its own linear head. Every method (and the plain summed loss)
trains the same initial network on the same batches; the script prints per-task test accuracy and
saves the learning curves.

    python examples/multidigits.py            # 6 epochs per method (PNG + JSON in examples/out/)
    python examples/multidigits.py --quick    # 1 short epoch, for CI
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mtlkernels.optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, DWA, FairGrad, FAMO, GradNorm, GradVac, IMTL, MGDAUB,
    NashMTL, PCGrad, RLW, UPGrad, UW,
)

CANVAS = 12  # the two 8×8 digits sit at (0, 0) and (4, 4) of a 12×12 canvas and overlap
SHIFT = CANVAS - 8


def digit_pairs(count: int, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` images [count, 1, 12, 12] (pixel-wise max of the two placed digits) and labels [count, 2]."""
    left = torch.randint(len(images), (count,), generator=generator)
    right = torch.randint(len(images), (count,), generator=generator)
    canvas = torch.zeros(count, 1, CANVAS, CANVAS)
    canvas[:, 0, :8, :8] = images[left]
    canvas[:, 0, SHIFT:, SHIFT:] = torch.maximum(canvas[:, 0, SHIFT:, SHIFT:], images[right])
    return canvas, torch.stack([labels[left], labels[right]], dim=1)


def load_data(train_pairs: int, test_pairs: int, seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Pairs drawn from disjoint halves of the 1797 digits: no test digit is seen in training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    cut = int(0.75 * len(images))
    train, test = order[:cut], order[cut:]
    return (digit_pairs(train_pairs, images[train], labels[train], g),
            digit_pairs(test_pairs, images[test], labels[test], g))


class TwoDigitNet(nn.Module):
    """Shared CNN trunk → representation z [B, 64] → one 10-way head per digit."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (CANVAS // 2) ** 2, 64), nn.ReLU(),
        )
        self.heads = nn.ModuleList([nn.Linear(64, 10), nn.Linear(64, 10)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z) for head in self.heads]


class SummedLoss:
    """The baseline: one backward of L₁ + L₂ and the plain optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def backward(self, losses: list[Tensor], features: Tensor | None = None) -> None:
        sum(losses).backward()

    def step(self) -> None:
        self.optimizer.step()


#: name → (wrap the Adam optimizer of the model, pass the representation z to backward?)
METHODS: dict[str, tuple[Callable[[torch.optim.Optimizer, "TwoDigitNet"], object], bool]] = {
    "sum": (lambda opt, model: SummedLoss(opt), False),
    "PCGrad": (lambda opt, model: PCGrad(opt, seed=0), False),
    "CAGrad": (lambda opt, model: CAGrad(opt, c=0.4), False),
    "CAGrad/10": (lambda opt, model: CAGrad(opt, c=0.4, update_every=10), False),  # solve every 10th step
    "Nash-MTL": (lambda opt, model: NashMTL(opt), False),
    "IMTL": (lambda opt, model: IMTL(opt, num_tasks=2, imtl_l=True), False),  # IMTL-L+G, LibMTL's hybrid
    "MGDA-UB": (lambda opt, model: MGDAUB(opt), True),
    "UPGrad": (lambda opt, model: UPGrad(opt), False),
    "DualProj": (lambda opt, model: DualProj(opt), False),
    "GradVac": (lambda opt, model: GradVac(opt, seed=0), False),
    "FairGrad": (lambda opt, model: FairGrad(opt, alpha=2.0), False),
    "ConFIG": (lambda opt, model: ConFIG(opt), False),
    "Aligned-MTL": (lambda opt, model: AlignedMTL(opt), False),
    # loss weighting: one backward of Σ wₖ·Lₖ per step
    "FAMO": (lambda opt, model: FAMO(opt), False),
    "UW": (lambda opt, model: UW(opt, num_tasks=2), False),
    "DWA": (lambda opt, model: DWA(opt), False),
    "RLW": (lambda opt, model: RLW(opt, seed=0), False),
    "GradNorm": (lambda opt, model: GradNorm(opt, layer=model.trunk[6].weight, num_tasks=2), False),
}


@torch.no_grad()
def accuracy(model: TwoDigitNet, data: tuple[Tensor, Tensor]) -> list[float]:
    x, y = data
    _, logits = model(x)
    return [float((out.argmax(1) == y[:, k]).float().mean()) for k, out in enumerate(logits)]


def train(method: str, data, epochs: int, batch_size: int, lr: float, seed: int = 0) -> dict:
    """Train a fresh network (same initial weights and batches for every method)."""
    (x, y), test = data
    torch.manual_seed(seed)
    model = TwoDigitNet()
    wrap, use_features = METHODS[method]
    opt = wrap(torch.optim.Adam(model.parameters(), lr=lr), model)
    batches = torch.Generator().manual_seed(seed + 1)
    curves: dict[str, list] = {"train_loss": [], "test_accuracy": [], "seconds": []}
    for _ in range(epochs):
        began = time.perf_counter()
        totals = torch.zeros(2)
        for idx in torch.randperm(len(x), generator=batches).split(batch_size):
            z, logits = model(x[idx])
            losses = [F.cross_entropy(out, y[idx, k]) for k, out in enumerate(logits)]
            opt.zero_grad(set_to_none=True)
            opt.backward(losses, features=z if use_features else None)
            opt.step()
            totals += torch.stack([l.detach() for l in losses]) * len(idx)
        if isinstance(opt, DWA):
            opt.end_epoch()
        curves["seconds"].append(time.perf_counter() - began)
        curves["train_loss"].append((totals / len(x)).tolist())
        curves["test_accuracy"].append(accuracy(model, test))
    return curves


def plot(results: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    titles = ["train loss, left digit", "train loss, right digit", "test accuracy, left digit", "test accuracy, right digit"]
    for method, curves in results.items():
        epochs = range(1, len(curves["train_loss"]) + 1)
        for task in range(2):
            axes[task].plot(epochs, [row[task] for row in curves["train_loss"]], marker="o", label=method)
            axes[2 + task].plot(epochs, [row[task] for row in curves["test_accuracy"]], marker="o", label=method)
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[3].legend(fontsize=8)
    fig.suptitle("Two overlapping sklearn digits, one task per digit (shared CNN trunk, Adam)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 512 pairs (CI)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-pairs", type=int, default=6000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_pairs, args.test_pairs = 1, 512, 256
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args.train_pairs, args.test_pairs)

    results = {method: train(method, data, args.epochs, args.batch_size, args.lr) for method in args.methods}
    print(f"{'method':<10} {'left acc':>9} {'right acc':>10} {'mean':>7} {'s/epoch':>8}")
    for method, curves in results.items():
        left, right = curves["test_accuracy"][-1]
        seconds = sum(curves["seconds"]) / len(curves["seconds"])
        print(f"{method:<10} {left:9.3f} {right:10.3f} {(left + right) / 2:7.3f} {seconds:8.2f}")
    plot(results, os.path.join(args.out, "multidigits_curves.png"))
    with open(os.path.join(args.out, "multidigits_results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {os.path.join(args.out, 'multidigits_curves.png')}")
    return results


if __name__ == "__main__":
    main()
