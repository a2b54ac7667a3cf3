"""The small-K K-space solves against torchjd, and what a Python call into the extension costs at
least, side by side in one run: where "≥ 100× torchjd" is out of reach, these are the numbers that
show it.

    python bench/solve_floor.py [--Ks 2,4,8,16] [--repeats 3000]

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0) and Γ = J·Jᵀ.
For UPGrad, DualProj, Aligned-MTL and ConFIG, medians (µs) of:

- ``torchjd``: its weighting on Γ (ConFIG: ``ConFIG()`` on J; it has no Gram form);
- ``ours``: ``make_weighting(method, backend="cpp")(Γ)``, the public call end to end (checks,
  dispatch, the C++ solve with its certificate, weights as a tensor, diagnostics); for ConFIG also
  ``mk.aggregate(J, …)`` on J, like for like with torchjd;
- ``C++ alone``: the extension's solve on NumPy arrays prepared beforehand (``_C.<method>_solve``),
  i.e. the native call without the Python layer;
- ``budget``: torchjd / 100, the time a 100× speed-up allows.

Then the floor of any Python call that takes Γ as a CPU tensor and returns the weights as one:
``Γ.numpy()`` (the zero-copy view the extension reads), ``torch.from_numpy(w)`` (the tensor
around its result), and the extension's cheapest solve call (DualProj at K = 1), each alone.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import mtlkernels as mk  # noqa: E402
from mtlkernels._extension import extension  # noqa: E402
from mtlkernels.bench.report import machine_summary  # noqa: E402
from mtlkernels.bench.timing import median_us  # noqa: E402
from mtlkernels.methods import make_weighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.testing.cases import against_first_J  # noqa: E402
from peers import torchjd_aggregation  # noqa: E402

N = 1000
METHODS = ("upgrad", "dualproj", "aligned_mtl", "config")


def calls(method: str, J: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The timed calls of one method on J (and its Γ)."""
    gram = J @ J.T
    tj = torchjd_aggregation()
    ours = make_weighting(method, backend="cpp")
    C, G = extension(), gram.numpy()
    constants = cpp_constants(ours.constants)
    if method == "config":
        peer = tj.ConFIG()
        return {"torchjd": lambda: peer(J), "ours": lambda: ours(gram), "ours on J": lambda: mk.aggregate(J, ours),
                "C++ alone": lambda: C.config_solve(G, constants, None)}
    peer = {"upgrad": tj.UPGradWeighting, "dualproj": tj.DualProjWeighting, "aligned_mtl": tj.AlignedMTLWeighting}[method]()
    native = {
        "upgrad": lambda: C.upgrad_solve(G, None, constants),
        "dualproj": lambda: C.dualproj_solve(G, None, constants),
        "aligned_mtl": lambda: C.aligned_mtl_solve(G, constants, None, "min"),
    }[method]
    return {"torchjd": lambda: peer(gram), "ours": lambda: ours(gram), "C++ alone": native}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--Ks", default="2,4,8,16")
    parser.add_argument("--repeats", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# K-space solves at small K against torchjd, and the Python call floor ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print(f"# {machine_summary()}; torch {torch.__version__}, single thread; medians of {args.repeats} calls, µs\n")
    print("| method | K | torchjd | ours | speed-up | C++ alone | speed-up | 100× budget |")
    print("|---|---|---|---|---|---|---|---|")
    for method in METHODS:
        for K in (int(k) for k in args.Ks.split(",")):
            timed = {name: median_us(fn, args.repeats) for name, fn in calls(method, against_first_J(K, N)).items()}
            peer = timed["torchjd"]
            for label in ("ours", "ours on J"):
                if label in timed:
                    name = method if label == "ours" else f"{method} (aggregate on J)"
                    print(f"| {name} | {K} | {peer:.1f} | {timed[label]:.2f} | {peer / timed[label]:.0f}× | "
                          f"{timed['C++ alone']:.2f} | {peer / timed['C++ alone']:.0f}× | {peer / 100:.2f} |")
    gram = torch.eye(1, dtype=torch.float64) * 2.0
    weights, G = np.empty(1), gram.numpy()
    constants = cpp_constants(make_weighting("dualproj").constants)
    floor = {
        "Γ.numpy()": median_us(lambda: gram.numpy(), args.repeats),
        "torch.from_numpy(w)": median_us(lambda: torch.from_numpy(weights), args.repeats),
        "_C.dualproj_solve at K = 1": median_us(lambda: extension().dualproj_solve(G, None, constants), args.repeats),
    }
    print("\n| floor of one call | µs |\n|---|---|")
    for name, us in floor.items():
        print(f"| {name} | {us:.2f} |")
    print(f"| sum | {sum(floor.values()):.2f} |")


if __name__ == "__main__":
    main()
