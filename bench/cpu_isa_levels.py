"""The Gram pass at every CPU instruction-set level this machine runs, in one run, beside one
``J.sum()`` read of the same J (the memory floor). The levels and the read take turns within each
repeat, so a change in the machine's load reaches them all alike.

    python bench/cpu_isa_levels.py [--N 1e7] [--K 8] [--dtype float32] [--repeats 11]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.gram import _gram_cpp


def timed(fn) -> float:
    """Wall time of one call of ``fn``, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=float, default=1e7)
    parser.add_argument("--K", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    J = torch.randn(args.K, int(args.N)).to(getattr(torch, args.dtype))
    start_level = mk.cpu_isa()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"K = {args.K}, N = {int(args.N):.0e}, {args.dtype}, medians of {args.repeats}")
    levels = _extension.cpu_isa_levels()
    times: dict[str, list[float]] = {level: [] for level in [*levels, "J.sum()"]}
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up
            for level in levels:
                _extension.set_cpu_isa(level)
                seconds = timed(lambda: _gram_cpp([J]))
                if repeat:
                    times[level].append(seconds)
            seconds = timed(lambda: J.sum())
            if repeat:
                times["J.sum()"].append(seconds)
    finally:
        _extension.set_cpu_isa(start_level)
    floor = statistics.median(times["J.sum()"])
    print(f"one J.sum(): {floor * 1e3:.1f} ms")
    print("| level | Gram | Gram / J.sum() |\n|---|---|---|")
    for level in levels:
        gram = statistics.median(times[level])
        print(f"| {level} | {gram * 1e3:.1f} ms | {gram / floor:.2f} |")


if __name__ == "__main__":
    main()
