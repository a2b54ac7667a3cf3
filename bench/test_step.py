"""The end-to-end training step under pytest-benchmark: the cases of
``python -m mtlkernels.bench --suite step-cpu`` (``step-gpu`` sizes on a CUDA machine).

    python -m pytest bench/test_step.py --benchmark-only -q -s
    MTLK_STEP_N=100000 MTLK_STEP_K=2,3 python -m pytest bench/test_step.py --benchmark-only -q -s   # smaller

One synthetic batch and one model (:class:`mtlkernels.bench.step.MultiTaskMLP`, a trunk of N
parameters and K heads) per K; every way of stepping trains its own copy (same initial weights)
with Adam. Ways: the baselines ``plain`` (one backward of Σ Lₖ) and ``per_task_backward`` (K
backward passes, no aggregation), then per method ``mtlkernels`` (``opt.backward(losses)``),
``mtlkernels_features`` (``opt.backward(losses, features=z)``), the loss-weighting wrappers
(FAMO, UW, DWA, RLW, GradNorm: ``mtlkernels`` only), ``libmtl`` / ``libmtl_features``
(LibMTL's weighting on the model, ``rep_grad`` False / True) and ``torchjd`` (``mtl_backward`` +
``jac_to_grad``); a way a peer does not offer is skipped with the reason.

``extra_info``: ``median_s``, ``tax`` (÷ the plain step of the same K, timed first),
``ratio_to_per_task_backward``, ``peak_bytes`` (see :func:`mtlkernels.bench.step.peak_step_bytes`).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from mtlkernels.bench import step
from mtlkernels.bench.suites import METHODS
from peers import require_peers

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KS = tuple(int(k) for k in os.environ.get("MTLK_STEP_K", "2,4").split(","))
N = int(float(os.environ.get("MTLK_STEP_N", "1e7" if DEVICE.type == "cpu" else "1e8")))
BASELINES = ("plain", "per_task_backward")
WAYS = ("mtlkernels", "mtlkernels_features", "libmtl", "libmtl_features", "torchjd")
CASES = [(K, "-", way) for K in KS for way in BASELINES] + [(K, m, way) for K in KS for m in METHODS for way in WAYS]
CASES += [(K, m, "mtlkernels") for K in KS for m in step.LOSS_WEIGHTING]  # one backward of Σ wₖLₖ
PROBLEMS: dict[int, step.StepProblem] = {}
MEDIANS_S: dict[tuple[int, str], float] = {}


def problem_for(K: int) -> step.StepProblem:
    if K not in PROBLEMS:
        PROBLEMS.clear()  # one model in memory at a time
        PROBLEMS[K] = step.StepProblem.build(K, N, torch.float32, DEVICE)
    return PROBLEMS[K]


def training_step(problem: step.StepProblem, method: str, way: str) -> step.TrainingStep:
    if way == "plain":
        return step.plain_step(problem)
    if way == "per_task_backward":
        return step.per_task_backward_step(problem)
    features = way.endswith("_features")
    if way.startswith("mtlkernels"):
        return step.mtlkernels_step(problem, method, features)
    skipped: dict[str, str] = {}
    peer = way.removesuffix("_features")
    make = step.peer_steps(problem, method, features, skipped).get(peer)
    if make is None:
        require_peers(peer)
        pytest.skip(skipped.get(peer) or f"mtlkernels.testing.peers does not drive {peer}'s {method}")
    return make()


@pytest.mark.parametrize("K, method, way", CASES, ids=[f"K{K}-{m}-{w}" for K, m, w in CASES])
def test_step(benchmark, K, method, way):
    problem = problem_for(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = training_step(problem, method, way)
        peak = step.peak_step_bytes(run, DEVICE)  # also the warm-up
        benchmark.group = f"training step K={K} N={problem.N:.2g} {DEVICE.type}"
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    median_s = benchmark.stats.stats.median
    MEDIANS_S[K, way if method == "-" else f"{method}/{way}"] = median_s
    benchmark.extra_info.update(median_s=median_s, peak_bytes=peak, N=problem.N, batch=len(problem.inputs))
    if (K, "plain") in MEDIANS_S:
        benchmark.extra_info["tax"] = median_s / MEDIANS_S[K, "plain"]
    if (K, "per_task_backward") in MEDIANS_S:
        benchmark.extra_info["ratio_to_per_task_backward"] = median_s / MEDIANS_S[K, "per_task_backward"]
    info = ", ".join(f"{k}={v:.3g}" for k, v in benchmark.extra_info.items())
    print(f"\nK={K} {method:8s} {way:20s} {info}")
