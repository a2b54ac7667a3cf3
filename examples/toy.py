"""The two-objective toy problem of the CAGrad paper (Liu et al., NeurIPS 2021, Fig. 1; also in
Nash-MTL, ICML 2022): one point x ∈ R² is the shared parameter, L₁ and L₂ pull it to the two ends
of a Pareto front; the plain average gets stuck or slides slowly, the conflict-aware methods reach
the front. Each method runs from the paper's three starting points with Adam and its trajectories
are drawn over the contours of ½(L₁ + L₂). The paper takes 100000 Adam steps of lr 1e-3; the
default here is 2500 steps of lr 1e-2 (about the same distance, ~40× less time):

    python examples/toy.py                               # PNG + table + JSON in examples/out/
    python examples/toy.py --lr 1e-3 --steps 100000      # the paper's schedule (long)
    python examples/toy.py --quick                       # 60 steps, for CI
    python examples/toy.py --methods CAGrad              # one method (names as in METHODS)
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mtlkernels.optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, DWA, FairGrad, FAMO, GradNorm, GradVac, IMTL, MGDA,
    MultiTaskOptimizer, NashMTL, PCGrad, RLW, UPGrad, UW,
)

#: where the paper starts the three runs
STARTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)]
#: the Pareto front: x₁ ∈ [-7, 7] at this x₂ (the paper's plot)
FRONT_X2 = -8.3552

METHODS = {
    "mean": lambda opt: MultiTaskOptimizer(opt, method="mean"),
    "PCGrad": lambda opt: PCGrad(opt, seed=0),
    "CAGrad": lambda opt: CAGrad(opt, c=0.5, rescale=2),  # the authors' toy script: c = 0.5, ÷ (1 + c)
    "Nash-MTL": lambda opt: NashMTL(opt),
    "IMTL-G": lambda opt: IMTL(opt),  # IMTL-G, the default: the losses go negative, so no IMTL-L log-scales
    "MGDA": lambda opt: MGDA(opt),  # no loss normalisation (the default): the losses go negative
    "UPGrad": lambda opt: UPGrad(opt),
    "DualProj": lambda opt: DualProj(opt),
    "GradVac": lambda opt: GradVac(opt, seed=0),
    "FairGrad": lambda opt: FairGrad(opt, alpha=2.0),  # the authors' QM9 setting
    "ConFIG": lambda opt: ConFIG(opt),
    "Aligned-MTL": lambda opt: AlignedMTL(opt),
    # loss weighting, one backward of Σ wₖ·Lₖ: the losses reach −20 (their infimum), so FAMO gets that
    # bound and UW, DWA and GradNorm, which assume positive losses, see Lₖ + 20 (LOSS_SHIFT)
    "FAMO": lambda opt: FAMO(opt, min_losses=[LOWER_BOUND, LOWER_BOUND]),
    "UW": lambda opt: UW(opt),
    "DWA": lambda opt: DWA(opt),  # an epoch is one step here (one deterministic "batch")
    "RLW": lambda opt: RLW(opt, seed=0),
    "GradNorm": lambda opt: GradNorm(opt, layer=opt.param_groups[0]["params"][0]),  # x is the shared layer
}
#: the objectives' infimum (the bowls' −20)
LOWER_BOUND = -20.0
#: added to the losses of the methods that assume positive losses
LOSS_SHIFT = {"UW": -LOWER_BOUND, "DWA": -LOWER_BOUND, "GradNorm": -LOWER_BOUND}


def objectives(x: torch.Tensor) -> torch.Tensor:
    """[L₁, L₂] at points x [..., 2]: a log-valley for x₂ > 0 blended into quadratic bowls below."""
    x1, x2 = x[..., 0], x[..., 1]
    floor = 5e-6
    valley1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), floor).log() + 6
    valley2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), floor).log() + 6
    bowl1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    bowl2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    upper = torch.clamp(torch.tanh(x2 * 0.5), 0)
    lower = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    return torch.stack([valley1 * upper + bowl1 * lower, valley2 * upper + bowl2 * lower], dim=-1)


def trajectory(method: str, start: tuple[float, float], steps: int, lr: float) -> torch.Tensor:
    """The points visited by ``method`` from ``start``: [steps + 1, 2]."""
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = METHODS[method](torch.optim.Adam([x], lr=lr))
    points = torch.empty(steps + 1, 2, dtype=torch.float64)
    for step in range(steps):
        points[step] = x.detach()
        opt.zero_grad(set_to_none=True)
        losses = objectives(x) + LOSS_SHIFT.get(method, 0.0)
        opt.backward(losses.unbind())
        opt.step()
        if isinstance(opt, DWA):
            opt.end_epoch()
    points[steps] = x.detach()
    return points


def plot(trajectories: dict[str, list[torch.Tensor]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-11, 11, 300, dtype=torch.float64)
    X1, X2 = torch.meshgrid(grid, grid, indexing="xy")
    mean_objective = objectives(torch.stack([X1, X2], dim=-1)).mean(-1)
    columns = min(4 if len(trajectories) > 9 else 3, len(trajectories))
    rows = -(-len(trajectories) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 4.25 * rows), squeeze=False)
    for ax, (method, paths) in zip(axes.flat, trajectories.items()):
        ax.contour(X1.numpy(), X2.numpy(), mean_objective.numpy(), levels=25, cmap="viridis", linewidths=0.8)
        ax.plot([-7, 7], [FRONT_X2, FRONT_X2], color="gray", linewidth=5, alpha=0.6, label="Pareto front")
        for points in paths:
            ax.plot(points[:, 0].numpy(), points[:, 1].numpy(), color="tab:red", linewidth=1.5)
            ax.plot(*points[0].numpy(), "ko", markersize=5)
            ax.plot(*points[-1].numpy(), "r*", markersize=10)
        ax.set_title(method)
        ax.set_xlim(-11, 11)
        ax.set_ylim(-11, 11)
        ax.set_aspect("equal")
    for ax in axes.flat[len(trajectories):]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("Toy problem of CAGrad (NeurIPS 2021): trajectories over the contours of ½(L₁+L₂)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 steps (CI)")
    parser.add_argument("--steps", type=int, default=2500, help="Adam steps per run (the paper: 100000)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (the paper: 1e-3)")
    parser.add_argument("--methods", type=lambda text: text.split(","), default=list(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    steps = 60 if args.quick else args.steps
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    trajectories: dict[str, list[torch.Tensor]] = {}
    rows = []
    print(f"{'method':<10} {'start':>14} {'final x':>20} {'L1':>9} {'L2':>9} {'to front':>9} {'s':>6}")
    for method in args.methods:
        trajectories[method] = []
        for start in STARTS:
            began = time.perf_counter()
            path = trajectory(method, start, steps, args.lr)
            seconds = time.perf_counter() - began
            end = path[-1]
            L1, L2 = objectives(end).tolist()
            distance = float(torch.hypot(end[0].clamp(-7, 7) - end[0], end[1] - FRONT_X2))
            trajectories[method].append(path)
            rows.append({"method": method, "start": start, "final": end.tolist(), "L1": L1, "L2": L2,
                         "distance_to_front": distance, "seconds": seconds})
            print(f"{method:<10} {str(start):>14} {str([round(v, 3) for v in end.tolist()]):>20} "
                  f"{L1:9.3f} {L2:9.3f} {distance:9.3f} {seconds:6.1f}")
    plot(trajectories, os.path.join(args.out, "toy_trajectories.png"))
    with open(os.path.join(args.out, "toy_results.json"), "w") as f:
        json.dump({"steps": steps, "lr": args.lr, "runs": rows}, f, indent=1)
    print(f"wrote {os.path.join(args.out, 'toy_trajectories.png')}")
    return {"steps": steps, "runs": rows}


if __name__ == "__main__":
    main()
