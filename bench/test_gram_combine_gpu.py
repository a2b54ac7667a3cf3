"""GPU benchmark of the Triton passes over J against torch and the measured copy bandwidth.

    bash bench/run_gpu.sh 1          # GPU tests + the headline cases (marked ``headline``)
    bash bench/run_gpu.sh 2          # the other cases;   bash bench/run_gpu.sh 3: the sweep
    python -m pytest -q -s bench/test_gram_combine_gpu.py

Cases: gram (vs ``J @ J.T``) and combine (vs ``w @ J``) at K ∈ (2, 8, 32), N ∈ (1e7, 1e8),
float32 and bfloat16, J one [K, N] tensor. Each case times, in the same run, ours, torch, and a
device-to-device copy of J's bytes (the roof) with :func:`mtlkernels.bench.timing.measure_graph`:
calls captured in a CUDA graph and replayed, each after an overwrite of 256 MB that flushes L2, so
the time is the device's and not the host's launch cost (a Gram pass at N = 1e7, K = 2 runs
~25 µs). Bytes moved: gram reads J once (K·N·s); combine reads J and writes d (K·N·s + N·s).
Reported: median/p20/p80 times, GB/s, % of the copy's GB/s (target ≥ 85%), speed-up over torch,
and ours' error against float64.

A sweep at N = 1e8 times other launch shapes (warps, programs per SM, bytes per step, half and
twice the default) and, for float32 J, the other tl.dot precisions of the Gram, so the defaults can
be checked on the device. Results go to $MTLK_BENCH_RESULTS (default bench/results) as JSON and
Markdown, rewritten after every case, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from datetime import datetime, timezone

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")

KS = (2, 8, 32)
NS = (10**7, 10**8)
DTYPES = (torch.float32, torch.bfloat16)
SWEEP_N = 10**8
TARGET = 0.85
RESULTS: dict[str, list[dict]] = {"cases": [], "sweep": []}


def make_J(K: int, N: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(K * 7 + N % 1000)
    J = torch.empty(K, N, dtype=dtype, device="cuda")
    for k in range(K):  # row by row: no float32 temporary of J's full size
        J[k] = torch.randn(N, generator=g, device="cuda")
    return J


def reference_gram(J: torch.Tensor) -> torch.Tensor:
    G = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64, device=J.device)
    for start in range(0, J.shape[1], 1 << 24):
        chunk = J[:, start : start + (1 << 24)].double()
        G += chunk @ chunk.T
    return G


def gram_error(G: torch.Tensor, ref: torch.Tensor) -> float:
    """max |Γ̂ᵢⱼ − Γᵢⱼ| / (‖gᵢ‖‖gⱼ‖)."""
    norms = ref.diagonal().sqrt()
    return ((G.double() - ref).abs() / (norms[:, None] * norms[None, :])).max().item()


def combine_error(d: torch.Tensor, w: torch.Tensor, J: torch.Tensor) -> float:
    """max |d̂ − wᵀJ| / (|w|ᵀ|J|), from float64 over chunks."""
    worst = 0.0
    w64 = w.double()
    for start in range(0, J.shape[1], 1 << 24):
        chunk = J[:, start : start + (1 << 24)].double()
        exact = w64 @ chunk
        scale = w64.abs() @ chunk.abs()
        worst = max(worst, ((d[start : start + (1 << 24)].double() - exact).abs() / scale.clamp_min(1e-300)).max().item())
    return worst


def timed(fn) -> dict[str, float]:
    """Device time of one call, launches captured in a CUDA graph (no host launch cost)."""
    from mtlkernels.bench.timing import measure_graph

    t = measure_graph(fn, torch.device("cuda"), calls=10, replays=7, warmup=2)
    return {"median_s": t.median_s, "p20_s": t.p20_s, "p80_s": t.p80_s, "repeats": t.repeats}


def row(op: str, K: int, N: int, dtype: torch.dtype, ours: dict, torch_t: dict, copy: dict, bytes_moved: int, error: float) -> dict:
    copy_gbps = 2 * K * N * dtype.itemsize / copy["median_s"] / 1e9
    gbps = bytes_moved / ours["median_s"] / 1e9
    return {
        "op": op, "K": K, "N": N, "dtype": str(dtype).removeprefix("torch."), "bytes": bytes_moved,
        "ours": ours, "torch": torch_t, "copy": copy,
        "ours_GBps": gbps, "torch_GBps": bytes_moved / torch_t["median_s"] / 1e9, "copy_GBps": copy_gbps,
        "pct_of_copy": gbps / copy_gbps, "speedup_vs_torch": torch_t["median_s"] / ours["median_s"],
        "meets_target": gbps / copy_gbps >= TARGET, "error_vs_float64": error,
    }


#: the cases of the first stage (4 kernel specialisations of the Gram and combine passes)
HEADLINE = {(8, 10**8, torch.float32), (8, 10**8, torch.bfloat16), (2, 10**7, torch.float32)}
CASES = [
    pytest.param(K, N, dt, marks=[pytest.mark.headline] if (K, N, dt) in HEADLINE else [],
                 id=f"K{K}-N{N:.0e}-{str(dt).removeprefix('torch.')}")
    for N in NS for K in KS for dt in DTYPES
]


@pytest.mark.parametrize("K, N, dtype", CASES)
def test_gram_and_combine(K, N, dtype):
    from mtlkernels.kernels.combine import triton_combine
    from mtlkernels.kernels.gram import triton_gram

    J = make_J(K, N, dtype)
    copy_dst = torch.empty_like(J)
    copy = timed(lambda: copy_dst.copy_(J))
    del copy_dst
    w = torch.rand(K, device="cuda")
    w_j = w.to(dtype)
    out = torch.empty(N, dtype=dtype, device="cuda")

    G = triton_gram([J])
    error = gram_error(G, reference_gram(J))
    gram_row = row("gram", K, N, dtype, timed(lambda: triton_gram([J])), timed(lambda: J @ J.T), copy, K * N * dtype.itemsize, error)
    triton_combine(w, [J], [out])
    error = combine_error(out, w, J)
    combine_row = row(
        "combine", K, N, dtype, timed(lambda: triton_combine(w, [J], [out])), timed(lambda: w_j @ J), copy,
        (K + 1) * N * dtype.itemsize, error,
    )
    for r in (gram_row, combine_row):
        RESULTS["cases"].append(r)
        print(
            f"\n{r['op']:7s} K={K:2d} N={N:.0e} {r['dtype']:8s} ours {r['ours']['median_s'] * 1e3:8.3f} ms "
            f"{r['ours_GBps']:7.0f} GB/s = {100 * r['pct_of_copy']:5.1f}% of copy ({r['copy_GBps']:.0f} GB/s); "
            f"torch {r['torch']['median_s'] * 1e3:8.3f} ms (×{r['speedup_vs_torch']:.2f}); error {r['error_vs_float64']:.1e}"
        )
    save_results()
    assert gram_row["error_vs_float64"] < 1e-4 and combine_row["error_vs_float64"] < 1e-2


#: the sweep's (K, dtype): ~8 compilations each
SWEEP_CASES = [(2, torch.float32), (8, torch.float32), (8, torch.bfloat16), (32, torch.bfloat16)]


@pytest.mark.parametrize("K, dtype", SWEEP_CASES, ids=[f"K{K}-{str(dt).removeprefix('torch.')}" for K, dt in SWEEP_CASES])
def test_sweep_launch_shapes(K, dtype):
    from mtlkernels.kernels.combine import combine_config, triton_combine
    from mtlkernels.kernels.gram import gram_config, triton_gram

    J = make_J(K, SWEEP_N, dtype)
    device = J.device
    ref = reference_gram(J)
    read_bytes = K * SWEEP_N * dtype.itemsize
    variants = []
    for per_sm in (1, 2, 4):
        base = gram_config(K, dtype, device, programs_per_sm=per_sm)
        for num_warps in (4, 8):
            for step_scale in (0.5, 1, 2):
                config = replace(base, num_warps=num_warps, segment=max(16, int(base.segment * step_scale)))
                variants.append(("gram", asdict(config), None, lambda c=config: triton_gram([J], config=c)))
    if dtype == torch.float32:
        for precision in ("ieee", "tf32"):
            variants.append(("gram", asdict(gram_config(K, dtype, device)), precision, lambda p=precision: triton_gram([J], precision=p)))
    w = torch.rand(K, device=device)
    out = torch.empty(SWEEP_N, dtype=dtype, device=device)
    for per_sm in (2, 4, 8):
        for num_warps in (4, 8):
            config = replace(combine_config(K, dtype, device, programs_per_sm=per_sm), num_warps=num_warps)
            variants.append(("combine", asdict(config), None, lambda c=config: triton_combine(w, [J], [out], config=c)))
    for op, config, precision, fn in variants:
        result = fn()
        error = gram_error(result, ref) if op == "gram" else None
        t = timed(fn)
        moved = read_bytes if op == "gram" else read_bytes + SWEEP_N * dtype.itemsize
        RESULTS["sweep"].append({
            "op": op, "K": K, "N": SWEEP_N, "dtype": str(dtype).removeprefix("torch."), "config": config,
            "precision": precision, **t, "GBps": moved / t["median_s"] / 1e9, "error_vs_float64": error,
        })
    best = {}
    for r in RESULTS["sweep"]:
        if r["K"] == K and r["dtype"] == str(dtype).removeprefix("torch.") and r["precision"] is None:
            if r["op"] not in best or r["GBps"] > best[r["op"]]["GBps"]:
                best[r["op"]] = r
    for op, r in best.items():
        print(f"\nbest {op:7s} K={K:2d} {r['dtype']:8s} {r['GBps']:7.0f} GB/s with {r['config']}")
    save_results()


#: one pair of result files per run, named by the run's start
STAMP = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def save_results() -> None:
    """(Re)write this run's JSON and Markdown with everything measured so far."""
    from mtlkernels.bench.report import environment

    directory = os.environ.get("MTLK_BENCH_RESULTS", os.path.join(os.path.dirname(__file__), "results"))
    os.makedirs(directory, exist_ok=True)
    env = environment()
    env["command"] = os.environ.get("MTLK_BENCH_COMMAND", "python -m pytest -q -s bench/test_gram_combine_gpu.py")
    env["multiprocessors"] = torch.cuda.get_device_properties(0).multi_processor_count
    name = os.path.join(directory, f"gram_combine_gpu_{STAMP}")
    with open(name + ".json", "w") as f:
        json.dump({"environment": env, **RESULTS}, f, indent=1)
    with open(name + ".md", "w") as f:
        f.write(markdown(env))


def markdown(env: dict) -> str:
    lines = [
        f"# gram / combine on {env.get('gpu')} ({env['date']})",
        "",
        f"Command: `{env['command']}`; torch {env['torch']}, triton {env['triton']}.",
        "Times are medians of CUDA-graph replays (no host launch cost), L2 flushed before each call;",
        "% of copy = our GB/s over a device-to-device",
        f"copy of J's bytes (read + write) in the same run; target ≥ {TARGET:.0%}.",
        "",
        "| op | K | N | dtype | ours ms | GB/s | % of copy | torch ms | × torch | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in RESULTS["cases"]:
        lines.append(
            f"| {r['op']} | {r['K']} | {r['N']:.0e} | {r['dtype']} | {r['ours']['median_s'] * 1e3:.3f} | "
            f"{r['ours_GBps']:.0f} | {100 * r['pct_of_copy']:.1f}% | {r['torch']['median_s'] * 1e3:.3f} | "
            f"{r['speedup_vs_torch']:.2f} | {r['error_vs_float64']:.1e} |"
        )
    if RESULTS["sweep"]:
        lines += ["", f"Sweep at N = {SWEEP_N:.0e} (GB/s; config fields as in GramConfig / CombineConfig):", "",
                  "| op | K | dtype | precision | GB/s | error | config |", "|---|---|---|---|---|---|---|"]
        for r in sorted(RESULTS["sweep"], key=lambda r: (r["op"], r["K"], r["dtype"], -r["GBps"])):
            error = "" if r["error_vs_float64"] is None else f"{r['error_vs_float64']:.1e}"
            lines.append(f"| {r['op']} | {r['K']} | {r['dtype']} | {r['precision'] or 'default'} | {r['GBps']:.0f} | {error} | {r['config']} |")
    return "\n".join(lines) + "\n"
