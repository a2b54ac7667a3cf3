"""python -m mtlkernels.bench [--suite NAME] [--methods ...] [--K ...] [--N ...] [--dtype ...] [--update-every ...] [--out DIR]"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings

import torch

from . import report, step
from .suites import METHODS, aggregate_case, passes_case

#: suite name → (device, K values, N values, dtypes, seconds of timing per measurement)
SUITES = {
    "tiny": ("cpu", (2, 3), (1_000,), ("float32",), 0.01),
    "cpu-small": ("cpu", (3, 8), (100_000, 1_000_000), ("float32",), 0.2),
    "cpu": ("cpu", (2, 4, 8, 16, 32, 64), (100_000, 1_000_000, 10_000_000), ("float32", "bfloat16"), 0.3),
    "gpu": ("cuda", (2, 8, 32), (1_000_000, 10_000_000, 100_000_000), ("float32", "bfloat16"), 0.3),
    # training steps (mtlkernels/bench/step.py): N = trunk parameters, bfloat16 = autocast
    "step-tiny": ("cpu", (2, 3), (100_000,), ("float32",), 0.01),
    "step-cpu": ("cpu", (2, 4), (10_000_000,), ("float32",), 2.0),
    "step-gpu": ("cuda", (2, 4, 8), (10_000_000, 100_000_000), ("float32", "bfloat16"), 0.5),
}


#: peers' warnings that say nothing about the measurement (cvxpy's, from torchjd's and LibMTL's
#: Nash-MTL; LibMTL's MGDA without features), kept out of the benchmark's output
PEER_WARNINGS = (
    "You are solving a parameterized problem that is not DPP",
    "MGDAUB.backward got no features=",
)


def _progress(i: int, total: int, label: str, started: float) -> None:
    """A progress bar redrawn in place on a terminal; on a file or pipe, one line per case (no
    carriage returns in a redirected log)."""
    elapsed = time.perf_counter() - started
    if sys.stderr.isatty():
        done = int(24 * i / total)
        sys.stderr.write(f"\r[{'#' * done}{'.' * (24 - done)}] {i}/{total} {elapsed:5.0f}s {label:<40}")
        if i == total:
            sys.stderr.write("\n")
    else:
        sys.stderr.write(f"{i}/{total} {elapsed:.0f}s {label}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m mtlkernels.bench", description=__doc__)
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu-small")
    parser.add_argument("--methods", nargs="+", choices=METHODS + tuple(step.LOSS_WEIGHTING),
                        help="default: every method; the step suites add the loss-weighting ones (famo, uw, dwa, rlw, gradnorm)")
    parser.add_argument("--update-every", nargs="*", type=int, default=list(step.UPDATE_EVERY),
                        help="step suite: also time the Gramian wrappers with update_every=n (default 10 50; none to skip)")
    parser.add_argument("--K", nargs="+", type=int, help="override the suite's K values")
    parser.add_argument("--N", nargs="+", type=float, help="override the suite's N values")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "bfloat16", "float16", "float64"))
    parser.add_argument("--passes", action=argparse.BooleanOptionalAction, default=True, help="also time gram and combine alone")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True, help="time torchjd/LibMTL too")
    parser.add_argument("--min-time", type=float, help="seconds of timing per measurement")
    parser.add_argument("--out", default="bench/out", help="folder for results.json, results.csv and PNG plots")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    device_name, Ks, Ns, dtypes, min_time = SUITES[args.suite]
    if device_name == "cuda" and not torch.cuda.is_available():
        parser.error(f"suite {args.suite!r} needs a CUDA device")
    device = torch.device(device_name)
    Ks = args.K or Ks
    Ns = [int(n) for n in (args.N or Ns)]
    dtypes = [getattr(torch, d) for d in (args.dtype or dtypes)]
    min_time = args.min_time if args.min_time is not None else min_time

    methods = args.methods or list(METHODS) + (list(step.LOSS_WEIGHTING) if args.suite.startswith("step") else [])
    if not args.suite.startswith("step") and set(methods) & set(step.LOSS_WEIGHTING):
        parser.error(f"{sorted(set(methods) & set(step.LOSS_WEIGHTING))} need no Gram: only the step suites time them")
    if args.suite.startswith("step"):
        jobs = [(path, m, K, N, dt) for dt in dtypes for N in Ns for K in Ks for path in step.PATHS for m in methods
                if not (m in step.LOSS_WEIGHTING and step.PATHS[path])]  # one loss-weighting row per K
    else:
        jobs = [("aggregate", m, K, N, dt) for dt in dtypes for N in Ns for K in Ks for m in methods]
        if args.passes:
            jobs += [("passes", op, K, N, dt) for dt in dtypes for N in Ns for K in Ks for op in ("gram", "combine")]
    rows, started = [], time.perf_counter()
    for message in PEER_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for i, (suite, name, K, N, dt) in enumerate(jobs):
        _progress(i, len(jobs), f"{suite} {name} K={K} N={N:.0e} {dt}", started)
        if suite == "aggregate":
            row = aggregate_case(name, K, N, dt, device, min_time, with_peers=args.peers)
        elif suite in step.PATHS:
            row = step.step_case(
                name, K, N, dt, device, min_time, with_peers=args.peers, features=step.PATHS[suite],
                update_every=() if step.PATHS[suite] else tuple(args.update_every),
            )
        else:
            row = passes_case(name, K, N, dt, device, min_time)
        rows.append(row.as_dict())
    _progress(len(jobs), len(jobs), "done", started)

    env = report.environment()
    print(f"# {env['date']} · {report.machine_summary()}{' · ' + env['gpu'] if 'gpu' in env else ''} · "
          f"torch {env['torch']} · torchjd {env['torchjd']} · LibMTL {env['LibMTL']}")
    if args.suite.startswith("step"):
        print(step.LEGEND)
    else:
        print("# times are medians; floor = streaming reads of J (2 for aggregate, 1 for a pass), one read")
        print("# measured once per J in this run (best of several); a peer column says how the peer compares to ours")
    print(report.table(rows))
    command = "python -m mtlkernels.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    paths = report.write(rows, args.out, command)
    if not args.no_plots:
        paths += report.plot(rows, args.out)
    print("wrote " + ", ".join(paths))
    return rows


if __name__ == "__main__":
    main()
