"""CPU benchmark of the C++ passes over J against torch and a memory-read floor, in the same run.

    python -m pytest bench/test_gram_combine_cpu.py --benchmark-only -s
    MTLK_BENCH_RESULTS=bench/results python -m pytest bench/test_gram_combine_cpu.py --benchmark-only -s
    MTLK_BENCH_TINY=1 python -m pytest bench/test_gram_combine_cpu.py --benchmark-only   # N = 1e4

Cases: K ∈ (2, 8, 32), N ∈ (1e6, 1e7), J float32 and bfloat16 (one [K, N] tensor); each case is
timed for ``gram`` (ours ``mk.gram(J, backend="cpp")`` → float64 Γ; torch ``J @ J.T``) and for
``combine`` (ours ``mk.combine(w, J, out=[d], backend="cpp")``; torch ``torch.mv(J.T, w, out=d)``,
i.e. w @ J). The floor is one read of J, the faster of ``J.sum()`` and the extension's streaming
read (``_C.read_floor_cpu``), measured in the same run right before the case. The Gram pass reads
J once; the combination reads J once and writes d (N elements): both are compared with one read.
Before each timed call of ours, the floor and torch are timed once (pytest-benchmark's ``setup``),
so the three share the machine's state; each is summarised by its median over ``ROUNDS`` rounds.

``extra_info`` and the printed line carry: median ms of ours, of torch and of the floor, the ratio
of ours to the floor and the speed-up of ours over torch, the
same ratios from the minima (``*_min``: on a shared machine, the least disturbed calls), and the
error of ours and of torch against float64 (Γ: max |Γ̂ᵢⱼ − Γᵢⱼ|/(‖gᵢ‖‖gⱼ‖); d: max |d̂ − d|/(|w|ᵀ|J|)).
With ``MTLK_BENCH_RESULTS`` set, the table is also written to ``$MTLK_BENCH_RESULTS/cpu_kernels.md``.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Callable

import pytest
import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.gram import CPP_DTYPES

pytestmark = pytest.mark.skipif(not _extension.available, reason=f"C++ extension not built: {_extension.import_error}")

TINY = os.environ.get("MTLK_BENCH_TINY", "0") not in ("", "0")
KS = (2, 8, 32)
NS = (10**4,) if TINY else (10**6, 10**7)
DTYPES = (torch.float32, torch.bfloat16)
ROUNDS = 3 if TINY else 11
REFERENCE_CHUNK = 1 << 20  # columns per float64 chunk of the reference (bounds its memory)
ROWS: list[dict] = []


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_floor(J: torch.Tensor) -> Callable[[], float]:
    """Times one streaming read of J: the faster of torch's sum and the extension's read."""
    ext = _extension.extension()
    cpp_read = lambda: ext.read_floor_cpu([J.data_ptr()], [J.shape[1]], [J.stride(0)], J.shape[0], CPP_DTYPES[J.dtype])
    torch_read = lambda: J.sum(dtype=torch.float32)
    return lambda: min(seconds(cpp_read), seconds(torch_read))


def make_J(K: int, N: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(K * 7 + N % 1000)
    return torch.randn(K, N, generator=g).to(dtype)


def gram_error(G: torch.Tensor, J: torch.Tensor) -> float:
    """max |Γ̂ᵢⱼ − Γᵢⱼ| / (‖gᵢ‖‖gⱼ‖) against float64, the reference summed over column chunks."""
    ref = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64)
    for start in range(0, J.shape[1], REFERENCE_CHUNK):
        chunk = J[:, start : start + REFERENCE_CHUNK].double()
        ref += chunk @ chunk.T
    norms = ref.diagonal().sqrt()
    return ((G.double() - ref).abs() / (norms[:, None] * norms[None, :])).max().item()


def combine_error(d: torch.Tensor, w: torch.Tensor, J: torch.Tensor) -> float:
    """max |d̂ − wᵀJ| / (|w|ᵀ|J|) against float64, over column chunks."""
    w64, worst = w.double(), 0.0
    for start in range(0, J.shape[1], REFERENCE_CHUNK):
        chunk = J[:, start : start + REFERENCE_CHUNK].double()
        error = (d[start : start + REFERENCE_CHUNK].double() - w64 @ chunk).abs() / (w64.abs() @ chunk.abs())
        worst = max(worst, error.max().item())
    return worst


@pytest.fixture(scope="module", autouse=True)
def results_file():
    """Write the table to $MTLK_BENCH_RESULTS/cpu_kernels.md after the module, when asked to."""
    yield
    folder = os.environ.get("MTLK_BENCH_RESULTS")
    if not folder or not ROWS:
        return
    os.makedirs(folder, exist_ok=True)
    lines = [
        "# CPU passes over J: C++ kernels vs torch vs one read of J",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · torch {torch.__version__} · {torch.get_num_threads()} threads · "
        f"load average at the end {os.getloadavg()[0]:.2f}",
        "",
        "Command: `MTLK_BENCH_RESULTS=bench/results python -m pytest bench/test_gram_combine_cpu.py --benchmark-only -s`",
        "",
        f"Medians of {ROUNDS} timed calls (min-based ratios in parentheses: the least disturbed calls on a shared "
        "machine). floor = one streaming read of J. Errors against float64: Γ max |Γ̂ᵢⱼ − Γᵢⱼ|/(‖gᵢ‖‖gⱼ‖), "
        "d max |d̂ − d|/(|w|ᵀ|J|).",
        "",
        "| pass | K | N | dtype | ours ms | torch ms | floor ms | ours/floor | torch/ours | ours error | torch error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        lines.append(
            f"| {r['op']} | {r['K']} | {r['N']:.0e} | {r['dtype']} | {r['ours_ms']:.2f} | {r['torch_ms']:.2f} | "
            f"{r['floor_ms']:.2f} | {r['ratio_to_floor']:.2f} ({r['ratio_to_floor_min']:.2f}) | "
            f"{r['speedup_vs_torch']:.2f} ({r['speedup_vs_torch_min']:.2f}) | {r['ours_error']:.1e} | {r['torch_error']:.1e} |"
        )
    with open(os.path.join(folder, "cpu_kernels.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("N", NS, ids=lambda n: f"N{n:.0e}")
@pytest.mark.parametrize("K", KS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("op", ("gram", "combine"))
def test_pass(benchmark, op, K, N, dtype):
    J = make_J(K, N, dtype)
    w = torch.randn(K, generator=torch.Generator().manual_seed(1)).to(dtype)
    d = torch.empty(N, dtype=dtype)
    if op == "gram":
        ours = lambda: mk.gram(J, backend="cpp", dtype=torch.float64)
        theirs = lambda: J @ J.T
        error = lambda result: gram_error(result, J)
    else:
        ours = lambda: mk.combine(w, J, out=[d], backend="cpp")[0]
        theirs = lambda: torch.mv(J.T, w, out=d)
        error = lambda result: combine_error(result, w, J)
    time_floor, floor_times, torch_times = read_floor(J), [], []

    def time_floor_and_torch() -> None:  # before each timed call of ours: all three see the same load
        floor_times.append(time_floor())
        torch_times.append(seconds(theirs))

    torch_error = error(theirs())
    benchmark.pedantic(ours, setup=time_floor_and_torch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ours_s, ours_min = benchmark.stats.stats.median, benchmark.stats.stats.min
    floor, floor_min = statistics.median(floor_times), min(floor_times)
    torch_s, torch_min = statistics.median(torch_times), min(torch_times)
    info = {
        "op": op, "K": K, "N": N, "dtype": CPP_DTYPES[dtype], "threads": torch.get_num_threads(),
        "bytes": J.numel() * J.element_size(),
        "ours_ms": 1e3 * ours_s, "torch_ms": 1e3 * torch_s, "floor_ms": 1e3 * floor,
        "ratio_to_floor": ours_s / floor, "speedup_vs_torch": torch_s / ours_s,
        "ours_min_ms": 1e3 * ours_min, "torch_min_ms": 1e3 * torch_min, "floor_min_ms": 1e3 * floor_min,
        "ratio_to_floor_min": ours_min / floor_min, "speedup_vs_torch_min": torch_min / ours_min,
        "ours_error": error(ours()), "torch_error": torch_error,
    }
    benchmark.extra_info.update(info)
    ROWS.append(info)
    print(
        f"\n{op:7s} K={K:2d} N={N:.0e} {info['dtype']:8s} median: ours {info['ours_ms']:8.2f} ms"
        f"  torch {info['torch_ms']:8.2f}  floor {info['floor_ms']:7.2f}  ours/floor {info['ratio_to_floor']:5.2f}"
        f"  torch/ours {info['speedup_vs_torch']:5.2f} | min: ours/floor {info['ratio_to_floor_min']:5.2f}"
        f"  torch/ours {info['speedup_vs_torch_min']:5.2f} | error ours {info['ours_error']:.1e} torch {info['torch_error']:.1e}"
    )
