"""How we measure: warm up, then time many calls and keep the median (and p20/p80).

CPU: a host clock around each call. CUDA (:func:`measure`): device events around each call, after
writing a buffer larger than L2 so every timed call reads its inputs from device memory, not from
cache. That time includes what the host spends launching the call (Python, the launcher's checks,
the driver), which at small sizes is more than the kernels: a Gram pass over 80 MB of J takes
~25 µs at 3 TB/s. :func:`measure_graph` excludes it: the calls are captured in a CUDA graph and
replayed, so the device runs them back to back.
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


def median_us(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after a warm-up (host clock), in µs: for
    calls short enough that the Python layer, not the data, sets their time."""
    for _ in range(min(50, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


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


def measure_graph(fn: Callable[[], object], device: torch.device, *, calls: int = 20, replays: int = 10,
                  warmup: int = 2, flush_bytes: int = 256 * 2**20) -> Timing:
    """Device time of one call of ``fn`` without the host's launch cost (CUDA only).

    ``fn`` is run ``warmup`` times (compiling its kernels, filling caches), then captured in a CUDA
    graph ``calls`` times, each call after an overwrite of ``flush_bytes`` (> L2, so each call
    reads its inputs from device memory); a second graph holds the ``calls`` overwrites alone. Each
    graph is replayed ``replays`` times between device events, alternating; one sample is
    (time of the first − time of the second) / ``calls``, the device time of one call in a stream
    of calls. ``fn`` must be capturable: no host synchronisation, no allocation whose address it
    keeps between calls (its outputs come from the graph's memory pool and are rewritten by every
    replay).
    """
    if device.type != "cuda":
        raise ValueError(f"measure_graph times CUDA graphs; got device {device}")
    flush = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    calls_graph, flush_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(calls_graph):
        for _ in range(calls):
            flush.zero_()
            fn()
    with torch.cuda.graph(flush_graph):
        for _ in range(calls):
            flush.zero_()
    start, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    times: list[float] = []
    calls_graph.replay()  # first replays upload the graphs
    flush_graph.replay()
    for _ in range(replays):
        start.record()
        calls_graph.replay()
        middle.record()
        flush_graph.replay()
        end.record()
        end.synchronize()
        times.append(max(0.0, start.elapsed_time(middle) - middle.elapsed_time(end)) / 1e3 / calls)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times) * calls, min(times))
