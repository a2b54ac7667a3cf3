"""How long the per-task gradients take on your model: the loop (K × autograd.grad), the batched
path (one autograd.grad with is_grads_batched=True), the features path (K gradients w.r.t. the
shared representation z, then one backward), against one plain backward of Σ Lₖ — each as a
whole optimizer backward (CAGrad) after the same forward, on the CPU.

Times are the median CPU time of the process (``time.process_time``) with one torch thread, so
that they hold on a shared machine; wall time on an idle core is about the same.

    python examples/grad_modes.py            # the table of docs/optimizers.md
    python examples/grad_modes.py --quick    # one tiny configuration, for CI
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkernels.optim import CAGrad


def mlp_trunk(width: int) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    trunk = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
    return trunk, lambda B: torch.randn(B, 64)


def cnn_trunk(width: int) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    trunk = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return trunk, lambda B: torch.randn(B, 3, 16, 16)


TRUNKS = {"mlp": mlp_trunk, "cnn": cnn_trunk}


def measure(kind: str, width: int, K: int, B: int, repeats: int) -> dict:
    torch.manual_seed(0)
    trunk, inputs = TRUNKS[kind](width)
    x = inputs(B)
    features = trunk(x).shape[1]
    heads = nn.ModuleList([nn.Linear(features, 10) for _ in range(K)])
    y = torch.randint(0, 10, (B, K))
    params = list(trunk.parameters()) + list(heads.parameters())

    def losses():
        z = trunk(x)
        return [F.cross_entropy(h(z), y[:, k]) for k, h in enumerate(heads)], z

    optimizers = {mode: CAGrad(torch.optim.SGD(params, lr=0.0), grad_mode=mode) for mode in ("loop", "batched")}
    runs: dict[str, Callable[[], object]] = {
        "forward": lambda: losses(),
        "sum_backward": lambda: sum(losses()[0]).backward(),
        "loop": lambda: optimizers["loop"].backward(losses()[0]),
        "batched": lambda: optimizers["batched"].backward(losses()[0]),
        "features": lambda: (lambda L, z: optimizers["loop"].backward(L, features=z))(*losses()),
    }
    timings = {}
    for name, run in runs.items():
        run()  # warm-up (and the first step's parameter-role detection)
        samples = []
        for _ in range(repeats):
            for p in params:
                p.grad = None
            began = time.process_time()
            run()
            samples.append(time.process_time() - began)
        timings[name] = statistics.median(samples) * 1e3
    forward = timings["forward"]
    row = {"trunk": kind, "width": width, "K": K, "B": B, "N": sum(p.numel() for p in trunk.parameters())}
    row.update({f"{name}_ms": round(value, 3) for name, value in timings.items()})
    row.update({f"{name}_backward_ms": round(timings[name] - forward, 3) for name in ("sum_backward", "loop", "batched", "features")})
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one tiny configuration (CI)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    if args.quick:
        configs, repeats = [("mlp", 32, 2, 16)], 2
    else:
        configs = [(kind, width, K, 128) for kind, width in (("mlp", 256), ("mlp", 1024), ("cnn", 32)) for K in (2, 4, 8)]
        repeats = args.repeats
    rows = []
    print("| trunk | width | N | K | forward ms | ΣL backward ms | loop ms | batched ms | features ms | batched / loop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, width, K, B in configs:
            row = measure(kind, width, K, B, repeats)
            rows.append(row)
            print(f"| {kind} | {width} | {row['N']} | {K} | {row['forward_ms']:.2f} | {row['sum_backward_backward_ms']:.2f} "
                  f"| {row['loop_backward_ms']:.2f} | {row['batched_backward_ms']:.2f} | {row['features_backward_ms']:.2f} "
                  f"| {row['batched_backward_ms'] / row['loop_backward_ms']:.2f} |", flush=True)
    finally:
        torch.set_num_threads(threads)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "grad_modes.json"), "w") as f:
        json.dump({"torch": torch.__version__, "threads": 1, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
