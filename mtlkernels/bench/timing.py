"""How we measure: warm up, then time many calls and keep the median (and p20/p80).

CPU: a host clock around each call. CUDA: device events around each call, after writing a
buffer larger than L2 so every timed call reads its inputs from device memory, not from cache.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    best_s: float = float("nan")


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(fn: Callable[[], object], device: torch.device, *, min_time_s: float = 0.2, max_repeats: int = 200, warmup: int = 2) -> Timing:
    """Time ``fn`` on ``device``: ``warmup`` untimed calls, then until ``min_time_s`` or ``max_repeats``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        flush = torch.empty(64 * 2**20, dtype=torch.int32, device=device)  # 256 MB > any L2
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        while len(times) < max_repeats and sum(times) < min_time_s:
            flush.zero_()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        while len(times) < max_repeats and sum(times) < min_time_s:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times), min(times))
