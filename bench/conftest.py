"""Shared scaffolding of the microbenchmarks: the peer oracles of tests/peers.py (and LibMTL loaded
as the tests load it), torch single-threaded per module, and :func:`record` for the numbers each
benchmark reports, :func:`time_solve` for the K-space solve benchmarks and their (K, solver) grid
(:func:`pytest_generate_tests`)."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from peers import load_libmtl_without_torchvision  # noqa: E402

load_libmtl_without_torchvision()

#: median seconds of every benchmark recorded so far, by (benchmark group, solver)
MEDIANS_S: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def single_thread():
    """torch single-threaded for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``),
    restored after: on K×K operands its thread pool only adds synchronisation, and on a shared
    machine its spin-waits dominate the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def record(capsys) -> Callable[..., None]:
    """``record(benchmark, solver, baselines=(...), **facts)`` after a benchmark has run: puts
    ``median_us``, the facts and ``speedup_vs_<baseline>`` (for each baseline timed before in the
    same group) into ``benchmark.extra_info`` and prints them on one line."""

    def record_numbers(benchmark, solver: str, baselines: tuple[str, ...] = (), **facts: float) -> None:
        median_s = benchmark.stats.stats.median
        MEDIANS_S[benchmark.group, solver] = median_s
        benchmark.extra_info["median_us"] = median_s * 1e6
        benchmark.extra_info.update(facts)
        for baseline in baselines:
            if baseline != solver and (benchmark.group, baseline) in MEDIANS_S:
                benchmark.extra_info[f"speedup_vs_{baseline}"] = MEDIANS_S[benchmark.group, baseline] / median_s
        info = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in benchmark.extra_info.items())
        with capsys.disabled():
            print(f"\n{benchmark.group} {solver:18s} {info}")

    return record_numbers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A benchmark taking ``K`` and ``solver`` runs for every K in its module's ``KS`` × every
    solver in its ``SOLVERS``, with ids ``K<K>-<solver>``."""
    if {"K", "solver"} <= set(metafunc.fixturenames):
        grid = [(K, solver) for K in metafunc.module.KS for solver in metafunc.module.SOLVERS]
        metafunc.parametrize("K, solver", grid, ids=[f"K{K}-{solver}" for K, solver in grid])


@pytest.fixture
def time_solve(benchmark, record) -> Callable[..., Any]:
    """``time_solve(group, solver, solve, *args, baselines=(...), facts=result → dict)``: times
    ``solve(*args)`` in benchmark group ``group``, then :func:`record`s it with ``facts(result)``;
    returns the result."""

    def timed(group: str, solver: str, solve: Callable[..., Any], *args: Any, baselines: tuple[str, ...] = (),
              facts: Callable[[Any], dict[str, float]] = lambda result: {}) -> Any:
        benchmark.group = group
        result = benchmark(solve, *args)
        record(benchmark, solver, baselines, **facts(result))
        return result

    return timed
