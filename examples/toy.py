"""The two-objective toy problem of the CAGrad paper (Liu et al., NeurIPS 2021, Fig. 1; also in
Nash-MTL, ICML 2022): one point x ∈ R² is the shared parameter, L₁ and L₂ pull it to the two ends
of a Pareto front; the plain average gets stuck or slides slowly, the conflict-aware methods reach
the front. Each method runs from the paper's starting points with Adam and its trajectories are
drawn over the contours of ½(L₁ + L₂).

Two settings (``--setting``):

- ``cagrad`` (default): the CAGrad paper's three starts. The paper takes 100000 Adam steps of lr
  1e-3; the default here is 2500 steps of lr 1e-2 (about the same distance, ~40× less time).
- ``famo``: the FAMO paper's variant (Liu, Feng, Stone & Liu, NeurIPS 2023, Fig. 1), as the
  FAMO authors' toy trainer sets it up: L₁ scaled by 0.1, five starts, 50000 Adam steps of lr
  1e-3 in float32; FAMO with logit lr 0.025, no weight decay (γ = 0) and bounds
  b = (−2.1, −21), its logits updated from the next step's losses.

    python examples/toy.py                               # PNG + table + JSON in examples/out/
    python examples/toy.py --lr 1e-3 --steps 100000      # the CAGrad paper's schedule (long)
    python examples/toy.py --setting famo --methods FAMO,mean   # the FAMO paper's toy (long)
    python examples/toy.py --quick                       # 60 steps, for CI
    python examples/toy.py --methods CAGrad              # one method (names as in METHODS)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from mtlkernels.optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, DWA, FairGrad, FAMO, GradNorm, GradVac, IMTL, MGDA,
    MultiTaskOptimizer, NashMTL, PCGrad, RLW, UPGrad, UW,
)

#: where the CAGrad paper starts the three runs
STARTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)]
#: the Pareto front: x₁ ∈ [-7, 7] at this x₂ (the paper's plot); scaling L₁ leaves it where it is
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

#: the FAMO paper's variant: L₁ is multiplied by this
FAMO_L1_SCALE = 0.1
#: where the FAMO authors' toy trainer starts its five runs
FAMO_STARTS = [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)]
#: FAMO's lower bounds in that trainer: (−21·scale, −21), below the infima (−2, −20)
FAMO_MIN_LOSSES = [-21.0 * FAMO_L1_SCALE, -21.0]
#: the methods of the FAMO paper's toy figure, with the options of the FAMO authors' trainer
FAMO_METHODS = {
    # their linear scalarisation sums the losses; with Adam the mean takes the same steps (up to Adam's eps)
    "mean": lambda opt: MultiTaskOptimizer(opt, method="mean"),
    # logit lr 0.025, γ = 0 ("the objective is not changing"), ε = 1e-8; the next step's losses update ξ
    "FAMO": lambda opt: FAMO(opt, min_losses=FAMO_MIN_LOSSES, lr=0.025, weight_decay=0.0, eps=1e-8),
    "MGDA": lambda opt: MGDA(opt),  # no gradient normalisation, as theirs
    # theirs clips before the backward (no effect), hence max_norm=0; the exact fixed point instead of their CCP
    "Nash-MTL": lambda opt: NashMTL(opt, max_norm=0.0),
    "CAGrad": lambda opt: CAGrad(opt, c=0.4, rescale=1),  # c = 0.4, ÷ (1 + c²); clipped to norm 1 (FAMO_CLIP)
}
#: gradient-norm clip after the method's gradient: the FAMO authors' CAGrad clips the combined
#: gradient to norm 1; their FAMO, LS, MGDA and Nash-MTL call the clip before the backward (no effect)
FAMO_CLIP = {"CAGrad": 1.0}


@dataclass(frozen=True)
class Setting:
    """One variant of the toy problem: objectives, starts, schedule and methods."""

    starts: list[tuple[float, float]]
    l1_scale: float
    steps: int
    lr: float
    dtype: torch.dtype
    methods: dict[str, Callable[[torch.optim.Optimizer], MultiTaskOptimizer]]
    loss_shift: dict[str, float] = field(default_factory=dict)
    clip: dict[str, float] = field(default_factory=dict)
    title: str = ""


SETTINGS = {
    "cagrad": Setting(STARTS, 1.0, 2500, 1e-2, torch.float64, METHODS, LOSS_SHIFT,
                      title="Toy problem of CAGrad (NeurIPS 2021)"),
    # float32: the authors' tensors are torch.Tensor (float32)
    "famo": Setting(FAMO_STARTS, FAMO_L1_SCALE, 50000, 1e-3, torch.float32, FAMO_METHODS, clip=FAMO_CLIP,
                    title="Toy problem of FAMO (NeurIPS 2023): L₁ × 0.1"),
}


def objectives(x: torch.Tensor, l1_scale: float = 1.0) -> torch.Tensor:
    """[L₁, L₂] at points x [..., 2]: a log-valley for x₂ > 0 blended into quadratic bowls below;
    L₁ multiplied by ``l1_scale`` (the FAMO paper's variant: 0.1)."""
    x1, x2 = x[..., 0], x[..., 1]
    floor = 5e-6
    valley1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), floor).log() + 6
    valley2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), floor).log() + 6
    bowl1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    bowl2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    upper = torch.clamp(torch.tanh(x2 * 0.5), 0)
    lower = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    L1 = (valley1 * upper + bowl1 * lower) * l1_scale
    return torch.stack([L1, valley2 * upper + bowl2 * lower], dim=-1)


def trajectory(method: str, start: tuple[float, float], steps: int, lr: float,
               setting: Setting = SETTINGS["cagrad"], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The points visited by ``method`` of ``setting`` from ``start``: [steps + 1, 2] (in ``dtype``,
    default the setting's)."""
    x = torch.tensor(start, dtype=dtype or setting.dtype, requires_grad=True)
    opt = setting.methods[method](torch.optim.Adam([x], lr=lr))
    shift, clip = setting.loss_shift.get(method, 0.0), setting.clip.get(method)
    points = torch.empty(steps + 1, 2, dtype=x.dtype)
    for step in range(steps):
        points[step] = x.detach()
        opt.zero_grad(set_to_none=True)
        losses = objectives(x, setting.l1_scale) + shift
        opt.backward(losses.unbind())
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([x], clip)
        opt.step()
        if isinstance(opt, DWA):
            opt.end_epoch()
    points[steps] = x.detach()
    return points


def plot(trajectories: dict[str, list[torch.Tensor]], path: str, setting: Setting = SETTINGS["cagrad"]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-11, 11, 300, dtype=torch.float64)
    X1, X2 = torch.meshgrid(grid, grid, indexing="xy")
    mean_objective = objectives(torch.stack([X1, X2], dim=-1), setting.l1_scale).mean(-1)
    columns = min(4 if len(trajectories) > 9 else 3, len(trajectories))
    rows = -(-len(trajectories) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 4.25 * rows), squeeze=False)
    for ax, (method, paths) in zip(axes.flat, trajectories.items()):
        ax.contour(X1.numpy(), X2.numpy(), mean_objective.numpy(), levels=25, cmap="viridis", linewidths=0.8)
        ax.plot([-7, 7], [FRONT_X2, FRONT_X2], color="gray", linewidth=5, alpha=0.6, label="Pareto front")
        for points in paths:
            points = points.double()
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
    fig.suptitle(f"{setting.title}: trajectories over the contours of ½(L₁+L₂)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(trajectories: dict[str, list[torch.Tensor]], path: str, setting: Setting) -> None:
    """The trajectories in loss space (L₁ across, L₂ up), the front drawn as the losses along
    x₂ = FRONT_X2, x₁ ∈ [−7, 7] — the FAMO paper's view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = torch.stack([torch.linspace(-7, 7, 400, dtype=torch.float64), torch.full((400,), FRONT_X2, dtype=torch.float64)], -1)
    front = objectives(line, setting.l1_scale)
    fig, axes = plt.subplots(1, len(trajectories), figsize=(3.6 * len(trajectories), 3.6), squeeze=False)
    for ax, (method, paths) in zip(axes.flat, trajectories.items()):
        ax.plot(front[:, 0].numpy(), front[:, 1].numpy(), color="gray", linewidth=5, alpha=0.6, label="Pareto front")
        for points in paths:
            losses = objectives(points.double(), setting.l1_scale)
            ax.plot(losses[:, 0].numpy(), losses[:, 1].numpy(), color="tab:red", linewidth=1.2)
            ax.plot(*losses[0].numpy(), "ko", markersize=5)
            ax.plot(*losses[-1].numpy(), "r*", markersize=9)
        ax.set_title(method)
        ax.set_xlabel("L₁")
        ax.set_ylabel("L₂")
    axes.flat[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{setting.title}: the losses along each run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distance_to_front(x: torch.Tensor) -> float:
    """Euclidean distance from x to the Pareto front {x₁ ∈ [−7, 7], x₂ = FRONT_X2}."""
    x = x.double()
    return float(torch.hypot(x[0].clamp(-7, 7) - x[0], x[1] - FRONT_X2))


def min_norm_gradient(x: torch.Tensor, l1_scale: float = 1.0) -> float:
    """min over α ∈ [0, 1] of ‖α∇L₁ + (1 − α)∇L₂‖ at x, in float64: 0 at a Pareto-stationary point
    (no direction lowers both losses). The front's line x₂ = FRONT_X2 is the CAGrad paper's drawing
    of the Pareto set; this measures stationarity wherever the set lies."""
    point = x.detach().double().clone().requires_grad_()
    L1, L2 = objectives(point, l1_scale).unbind()
    (g1,) = torch.autograd.grad(L1, point, retain_graph=True)
    (g2,) = torch.autograd.grad(L2, point)
    gap = float((g1 - g2).square().sum())
    alpha = 0.0 if gap == 0 else min(max(float((g2 - g1) @ g2) / gap, 0.0), 1.0)
    return float((alpha * g1 + (1 - alpha) * g2).norm())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=list(SETTINGS), default="cagrad",
                        help="cagrad: the CAGrad paper's problem; famo: the FAMO paper's variant (L₁ × 0.1, five starts)")
    parser.add_argument("--quick", action="store_true", help="60 steps (CI)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps per run (default: cagrad 2500 — the paper: 100000; famo 50000, the authors')")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam's learning rate (default: cagrad 1e-2 — the paper: 1e-3; famo 1e-3, the authors')")
    parser.add_argument("--methods", type=lambda text: text.split(","), default=None,
                        help="comma-separated subset of the setting's methods: cagrad: " + ", ".join(METHODS)
                        + "; famo: " + ", ".join(FAMO_METHODS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    setting = SETTINGS[args.setting]
    steps = 60 if args.quick else (args.steps if args.steps is not None else setting.steps)
    lr = args.lr if args.lr is not None else setting.lr
    methods = args.methods if args.methods is not None else list(setting.methods)
    unknown = sorted(set(methods) - set(setting.methods))
    if unknown:
        parser.error(f"unknown method(s) {unknown} for --setting {args.setting}; choose from {list(setting.methods)}")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    prefix = "toy" if args.setting == "cagrad" else f"toy_{args.setting}"

    trajectories: dict[str, list[torch.Tensor]] = {}
    rows = []
    print(f"{'method':<10} {'start':>14} {'final x':>20} {'L1':>9} {'L2':>9} {'to front':>9} {'min‖∇‖':>9} {'s':>6}")
    for method in methods:
        trajectories[method] = []
        for start in setting.starts:
            began = time.perf_counter()
            path = trajectory(method, start, steps, lr, setting)
            seconds = time.perf_counter() - began
            end = path[-1]
            L1, L2 = objectives(end.double(), setting.l1_scale).tolist()
            distance = distance_to_front(end)
            stationarity = min_norm_gradient(end, setting.l1_scale)
            trajectories[method].append(path)
            rows.append({"method": method, "start": start, "final": end.tolist(), "L1": L1, "L2": L2,
                         "distance_to_front": distance, "min_norm_gradient": stationarity, "seconds": seconds})
            print(f"{method:<10} {str(start):>14} {str([round(v, 3) for v in end.tolist()]):>20} "
                  f"{L1:9.3f} {L2:9.3f} {distance:9.3f} {stationarity:9.2e} {seconds:6.1f}", flush=True)
    plot(trajectories, os.path.join(args.out, f"{prefix}_trajectories.png"), setting)
    plot_losses(trajectories, os.path.join(args.out, f"{prefix}_losses.png"), setting)
    with open(os.path.join(args.out, f"{prefix}_results.json"), "w") as f:
        json.dump({"setting": args.setting, "steps": steps, "lr": lr, "dtype": str(setting.dtype), "runs": rows}, f, indent=1)
    print(f"wrote {os.path.join(args.out, f'{prefix}_trajectories.png')}")
    return {"setting": args.setting, "steps": steps, "runs": rows}


if __name__ == "__main__":
    main()
