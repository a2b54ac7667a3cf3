"""The Gram pass at every CPU instruction-set level this machine runs, beside one ``J.sum()`` read
of the same J (the memory floor) and torch's ``J @ J.T``, for several K in one run. J holds about
``--bytes`` bytes (N = bytes / (K · element size)) unless ``--N`` fixes N. Within each repeat the
read, the levels and torch take turns, so a change in the machine's load reaches them all alike;
every time is the best of the repeats (the floor too: one floor per J).

    python bench/cpu_isa_levels.py [--K 2,4,8,16,32,64] [--bytes 160e6 | --N 1e5] [--dtype float32]
                                   [--levels avx2,avx512] [--repeats 7] [--threads 2] [--clock wall]

Run it with another build's package first on PYTHONPATH to compare builds (the same script, the
same table).
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.bench.report import machine_summary
from mtlkernels.gram import _gram_cpp


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def timed(fn, clock=time.perf_counter) -> float:
    """Time of one call of ``fn`` on ``clock``, in seconds."""
    start = clock()
    fn()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", default="2,4,8,16,32,64", help="comma-separated task counts")
    parser.add_argument("--bytes", type=float, default=160e6, help="size of J (sets N per K)")
    parser.add_argument("--N", type=float, default=None, help="fixed N instead of --bytes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: every level this CPU runs)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenMP threads (default: torch's)")
    parser.add_argument(
        "--clock", default="wall", choices=sorted(CLOCKS),
        help="wall: elapsed time; thread: CPU time of this thread (with --threads 1: time the other "
        "programs of a shared machine took from it is not counted)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        parser.error("--clock thread counts this thread only: use it with --threads 1")
    clock = CLOCKS[args.clock]
    dtype = getattr(torch, args.dtype)
    levels = args.levels.split(",") if args.levels else _extension.cpu_isa_levels()
    start_level = mk.cpu_isa()
    print(f"{machine_summary()}; {torch.get_num_threads()} threads; {datetime.date.today()}")
    print(f"{args.dtype}, best of {args.repeats}, {args.clock} clock; floor = one J.sum() of the same J")
    print("| K | N | floor | " + " | ".join(f"{level} (÷ floor)" for level in levels) + " | torch J @ J.T |")
    print("|---" * (len(levels) + 4) + "|")
    try:
        for K in (int(k) for k in args.K.split(",")):
            N = int(args.N) if args.N else int(args.bytes / (K * torch.finfo(dtype).bits // 8))
            J = torch.randn(K, N).to(dtype)
            times: dict[str, list[float]] = {name: [] for name in [*levels, "floor", "torch"]}
            for repeat in range(args.repeats + 1):  # the first round warms up
                seconds = {"floor": timed(lambda: J.sum(), clock)}
                for level in levels:
                    _extension.set_cpu_isa(level)
                    seconds[level] = timed(lambda: _gram_cpp([J]), clock)
                seconds["torch"] = timed(lambda: J @ J.T, clock)
                if repeat:
                    for name, value in seconds.items():
                        times[name].append(value)
            best = {name: min(values) for name, values in times.items()}
            cells = [f"{best[level] * 1e3:.2f} ms ({best[level] / best['floor']:.2f})" for level in levels]
            print(f"| {K} | {N:.3g} | {best['floor'] * 1e3:.2f} ms | " + " | ".join(cells) + f" | {best['torch'] * 1e3:.2f} ms |")
    finally:
        _extension.set_cpu_isa(start_level)


if __name__ == "__main__":
    main()
