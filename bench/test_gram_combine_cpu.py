"""CPU benchmark of the C++ passes over J against torch and a memory-read floor, in the same run.

    python -m pytest bench/test_gram_combine_cpu.py --benchmark-only -s
    MTLK_BENCH_TINY=1 python -m pytest bench/test_gram_combine_cpu.py --benchmark-only   # N = 1e4

Cases: K ∈ (2, 8, 32), N ∈ (1e6, 1e7), J float32 and bfloat16 (one [K, N] tensor); each case is
timed for ``gram`` (ours ``mk.gram(J, backend="cpp")`` → float64 Γ; torch ``J @ J.T``) and for
``combine`` (ours ``mk.combine(w, J, out=[d], backend="cpp")``; torch ``torch.mv(J.T, w, out=d)``, i.e. w @ J).
The floor is one read of J, the faster of ``J.sum()`` and the extension's streaming read
(``_C.read_floor_cpu``), measured in the same run right before the case. The Gram pass reads J
once; the combination reads J once and writes d (N elements), so both are compared with one read.
``extra_info`` and the printed line carry: median ms of ours, of torch and of the floor, the ratio
of ours to the floor and the speed-up of ours over torch (medians of ``ROUNDS`` timed calls), and
the same ratios from the minima (``*_min``: on a shared machine, the least disturbed calls).
"""
from __future__ import annotations

import os
import statistics
import time
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
ROUNDS = 3 if TINY else 9


def timings_s(fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, float]:
    """(median, min) seconds of ``rounds`` timed calls after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def read_floor_s(J: torch.Tensor) -> tuple[float, float]:
    """One streaming read of J, (median, min) seconds: the faster of torch's sum and the extension's read."""
    ext = _extension.extension()
    cpp_read = lambda: ext.read_floor_cpu([J.data_ptr()], [J.shape[1]], [J.stride(0)], J.shape[0], CPP_DTYPES[J.dtype])
    torch_read = lambda: J.sum(dtype=torch.float32)
    return min(timings_s(cpp_read), timings_s(torch_read))


def make_J(K: int, N: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(K * 7 + N % 1000)
    return torch.randn(K, N, generator=g).to(dtype)


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
    else:
        ours = lambda: mk.combine(w, J, out=[d], backend="cpp")
        theirs = lambda: torch.mv(J.T, w, out=d)
    floor, floor_min = read_floor_s(J)
    torch_s, torch_min = timings_s(theirs)
    benchmark.pedantic(ours, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ours_s, ours_min = benchmark.stats.stats.median, benchmark.stats.stats.min
    info = {
        "op": op, "K": K, "N": N, "dtype": CPP_DTYPES[dtype], "threads": torch.get_num_threads(),
        "bytes": J.numel() * J.element_size(),
        "ours_ms": 1e3 * ours_s, "torch_ms": 1e3 * torch_s, "floor_ms": 1e3 * floor,
        "ratio_to_floor": ours_s / floor, "speedup_vs_torch": torch_s / ours_s,
        "ours_min_ms": 1e3 * ours_min, "torch_min_ms": 1e3 * torch_min, "floor_min_ms": 1e3 * floor_min,
        "ratio_to_floor_min": ours_min / floor_min, "speedup_vs_torch_min": torch_min / ours_min,
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{op:7s} K={K:2d} N={N:.0e} {info['dtype']:8s} median: ours {info['ours_ms']:8.2f} ms"
        f"  torch {info['torch_ms']:8.2f}  floor {info['floor_ms']:7.2f}  ours/floor {info['ratio_to_floor']:5.2f}"
        f"  torch/ours {info['speedup_vs_torch']:5.2f} | min: ours/floor {info['ratio_to_floor_min']:5.2f}"
        f"  torch/ours {info['speedup_vs_torch_min']:5.2f}"
    )
