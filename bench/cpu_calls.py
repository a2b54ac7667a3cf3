"""Per-call costs on the CPU, in one run: ``aggregate()`` of every method on a small J (where the
Python layer and the native calls, not J, set the time), ``gram()``/``combine()`` beside torch's
``J @ J.T``/``w @ J``, and the mean's one pass over a large J beside one ``J.sum()`` read.

    python bench/cpu_calls.py [--K 8] [--N 256] [--passes-N 1e5] [--mean-bytes 160e6] [--repeats 2000]
                              [--threads 2] [--clock wall]

Small calls are medians of ``--repeats`` wall-clock calls; the mean's pass and the read are the
best of 7, taking turns, on ``--clock`` (``thread``: CPU time of this thread, with ``--threads 1``,
which the other programs of a shared machine do not inflate).
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

import mtlkernels as mk
from mtlkernels.bench.report import machine_summary
from mtlkernels.bench.timing import median_us
from mtlkernels.bench.suites import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=8)
    parser.add_argument("--N", type=int, default=256, help="columns of the small J")
    parser.add_argument("--passes-N", type=float, default=1e5, help="columns for gram()/combine() vs torch")
    parser.add_argument("--mean-bytes", type=float, default=160e6, help="size of J for the mean's one pass (0: skip)")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenMP threads (default: torch's)")
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"], help="clock of the mean's table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        parser.error("--clock thread counts this thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    print(f"{machine_summary()}; {torch.get_num_threads()} threads; {datetime.date.today()}")

    generator = torch.Generator().manual_seed(0)
    J = torch.randn(args.K, args.N, generator=generator)
    J[1::2] -= 1.5 * J[0]  # conflicting tasks, so that the solves have work to do
    print(f"\naggregate(J, method), K = {args.K}, N = {args.N}, float32, median of {args.repeats} calls")
    print("| method | aggregate() | Aggregator(J) |\n|---|---|---|")
    for method in METHODS:
        aggregator = mk.Aggregator(method)
        one_call = median_us(lambda: mk.aggregate(J, method), args.repeats)
        kept = median_us(lambda: aggregator(J), args.repeats)
        print(f"| {method} | {one_call:.1f} µs | {kept:.1f} µs |")

    print(f"\nthe passes alone, float32, median of {args.repeats // 10} calls")
    print("| K | N | mk.gram(J) | J @ J.T | mk.combine(w, J) | w @ J |\n|---|---|---|---|---|---|")
    for N in (args.N, int(args.passes_N)):
        J = torch.randn(args.K, N, generator=generator)
        w = torch.rand(args.K, generator=generator)
        r = args.repeats // 10
        cells = [median_us(fn, r) for fn in (lambda: mk.gram(J), lambda: J @ J.T, lambda: mk.combine(w, J), lambda: w @ J)]
        print(f"| {args.K} | {N:.0e} | " + " | ".join(f"{c:.1f} µs" for c in cells) + " |")

    if args.mean_bytes:
        N = int(args.mean_bytes / (4 * args.K))
        J = torch.randn(args.K, N, generator=generator)
        out = torch.empty(N)
        unchecked, checked = mk.Aggregator("mean", check_finite=False), mk.Aggregator("mean")
        calls = {
            "one J.sum() (the floor)": lambda: J.sum(),
            "mean, out= given, check_finite=False (one pass)": lambda: unchecked(J, out=[out]),
            "mean, fresh output (one pass)": lambda: checked(J),
            "mean, out= given, finite check (two passes)": lambda: checked(J, out=[out]),
            "J.mean(0) (torchjd's mean)": lambda: J.mean(0),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for repeat in range(8):
            for name, fn in calls.items():
                start = clock()
                fn()
                if repeat:
                    times[name].append(clock() - start)
        floor = min(times["one J.sum() (the floor)"])
        print(f"\nthe mean on a large J: K = {args.K}, N = {N:.3g}, float32, best of 7, {args.clock} clock")
        print("| call | time | ÷ one read |\n|---|---|---|")
        for name, values in times.items():
            print(f"| {name} | {min(values) * 1e3:.2f} ms | {min(values) / floor:.2f} |")


if __name__ == "__main__":
    main()
