"""End-to-end training step: what a multi-task method costs inside a real step.

One step = ``zero_grad`` → forward of a shared trunk and K heads on a synthetic batch → gradients →
``optimizer.step()`` (Adam). Per (method, K, N) the same step is timed, on fresh copies of the same
model (same initial weights, same batch), as:

- ``plain``: one backward of Σₖ Lₖ — the single-task baseline; tax = step time ÷ this;
- ``per_task_backward``: K backward passes of the Lₖ (autograd sums them into ``.grad``) and no
  aggregation — the floor of every method that needs the K task gradients over the trunk;
- ``mtlkernels``: the drop-in wrapper, ``opt.backward(losses)`` (rows of suite ``step``) or
  ``opt.backward(losses, features=z)`` (suite ``step-features``), then ``opt.step()``; for the
  loss-weighting methods (FAMO, UW, DWA, RLW, GradNorm) one backward of Σ wₖ·Lₖ whatever the suite;
- ``every<n>``: the Gramian wrapper with ``update_every=n`` (suite ``step``): one call runs n
  steps — one solving, n − 1 reusing the weights — and its time is divided by n, so the median is
  the amortised cost of a step;
- ``libmtl``: LibMTL 1.1.5's weighting driven as its trainer drives it: its ``backward(losses)``
  runs K ``loss.backward`` passes into its own [K, N] buffer over the trunk's parameters
  (``get_share_params``) and writes the combination into their ``.grad``; on the features path
  its ``rep_grad=True`` mode (gradients w.r.t. detached copies of z, then ``z.backward``);
- ``torchjd``: torchjd 0.18's autojac, ``mtl_backward(losses, features=z)`` (the trunk's Jacobian
  into ``.jac``, vmapped over the K rows) then ``jac_to_grad(trunk.parameters(), aggregator)``.

The ways of one row are timed round-robin, the baselines included (:func:`measure_interleaved`),
so each tax is a ratio of times taken under the same machine load.

Peak memory (``peak_<way>_bytes``): the largest number of bytes held by tensors that the steps
allocated, above the model, the batch and the optimizer's construction, over steady-state steps
(the persistent buffers a first step creates — Adam moments, the [K, N] workspace — count).
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes
allocated before the first step. CPU: torch's profiler records every allocation and free of the
CPU allocator (``profile_memory=True``); the running sum over steps 1–3 is taken and its maximum
over steps 2–3 reported — exact tensor bytes, not RSS (allocator caching and Python objects are
not counted).
"""
from __future__ import annotations

import copy
import functools
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..testing import peers
from ..optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, DWA, FairGrad, FAMO, GradNorm, GradVac, IMTL, MGDAUB,
    MultiTaskOptimizer, NashMTL, PCGrad, RLW, UPGrad, UW,
)
from .suites import Row
from .timing import Timing, _quantile

#: suite name of each path: parameter gradients (the exact path) and the shared representation
PATHS = {"step": False, "step-features": True}

#: printed above the table of a step suite
LEGEND = (
    "# one training step (forward, gradients, aggregation, Adam step); times are medians;\n"
    "# floor = the plain step (one backward of the summed loss), so ours/floor = the multi-task tax;\n"
    "# <peer>/ours = how many times slower the peer's way of doing the same step is"
)

WRAPPERS: dict[str, Callable[..., MultiTaskOptimizer]] = {
    "mean": MultiTaskOptimizer, "pcgrad": PCGrad, "cagrad": CAGrad, "nash_mtl": NashMTL, "imtl": IMTL, "mgda": MGDAUB,
    "upgrad": UPGrad, "dualproj": DualProj, "gradvac": GradVac,
    "fairgrad": FairGrad, "config": ConFIG, "aligned_mtl": AlignedMTL,
}
#: the loss-weighting wrappers (one backward of Σ wₖ·Lₖ; GradNorm's layer: the trunk's last Linear)
LOSS_WEIGHTING: dict[str, Callable[..., MultiTaskOptimizer]] = {
    "famo": lambda opt, model: FAMO(opt), "uw": lambda opt, model: UW(opt), "dwa": lambda opt, model: DWA(opt),
    "rlw": lambda opt, model: RLW(opt), "gradnorm": lambda opt, model: GradNorm(opt, layer=model.trunk[-1].linear.weight),
}
#: the Gramian wrappers' update_every values timed beside update_every=1 (suite ``step``)
UPDATE_EVERY = (10, 50)
#: options that make our wrapper do the peers' math (see docs/optimizers.md)
WRAPPER_OPTIONS: dict[str, dict[str, Any]] = {
    "pcgrad": {"seed": 0}, "imtl": {"imtl_l": True}, "mgda": {"normalization": "none"},
    "upgrad": {"reg_eps": 1e-4, "norm_eps": 1e-4}, "dualproj": {"reg_eps": 1e-4, "norm_eps": 1e-4}, "gradvac": {"seed": 0},
}
#: keyword arguments of LibMTL's ``backward`` (its trainer's defaults for these methods)
LIBMTL_KWARGS: dict[str, dict[str, Any]] = {"cagrad": {"calpha": 0.5, "rescale": 1}, "mgda": {"mgda_gn": "none"}, "gradvac": {"beta": 0.5}}
#: LibMTL weightings that accept ``rep_grad=True`` (the others raise)
LIBMTL_FEATURES = ("mgda", "imtl")

INPUT_DIM, DEPTH, HEAD_WIDTH, CLASSES = 128, 3, 128, 10
BATCH = {"cpu": 64, "cuda": 256}
LEARNING_RATE = 1e-4
MEMORY_STEPS = 3


class _ResidualBlock(nn.Module):
    """x + GELU(W·LayerNorm(x) + b)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(self.linear(self.norm(x)))


class MultiTaskMLP(nn.Module):
    """Shared trunk z = blocks(Linear(x)) with ``depth`` residual blocks of width H, and K heads
    Linear(H, 128) → GELU → Linear(128, classes), one cross-entropy loss per head."""

    def __init__(self, K: int, width: int, depth: int = DEPTH, input_dim: int = INPUT_DIM) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(input_dim, width), *(_ResidualBlock(width) for _ in range(depth)))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width, HEAD_WIDTH), nn.GELU(), nn.Linear(HEAD_WIDTH, CLASSES)) for _ in range(K)
        )

    def losses(self, reps: list[Tensor], targets: Tensor) -> list[Tensor]:
        """Lₖ = cross-entropy(headₖ(repₖ), targets[:, k]), in float32."""
        return [F.cross_entropy(head(rep).float(), targets[:, k]) for k, (head, rep) in enumerate(zip(self.heads, reps))]


def trunk_parameters(width: int, depth: int = DEPTH, input_dim: int = INPUT_DIM) -> int:
    """Parameters of the trunk: (input_dim + 1)·H + depth·(H² + 3H)."""
    return (input_dim + 1) * width + depth * (width * width + 3 * width)


def trunk_width(N: int, depth: int = DEPTH, input_dim: int = INPUT_DIM) -> int:
    """The smallest width H whose trunk has at least N parameters."""
    b = input_dim + 1 + 3 * depth
    width = max(1, math.floor((-b + math.sqrt(b * b + 4 * depth * N)) / (2 * depth)))
    while trunk_parameters(width, depth, input_dim) < N:
        width += 1
    return width


@dataclass
class StepProblem:
    """A model with its initial weights and one synthetic batch; :meth:`fresh` copies the model."""

    model: MultiTaskMLP
    inputs: Tensor
    targets: Tensor
    autocast: torch.dtype | None

    @classmethod
    def build(cls, K: int, N: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> "StepProblem":
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = MultiTaskMLP(K, trunk_width(N)).to(device)
        batch = BATCH[device.type]
        inputs = torch.randn(batch, INPUT_DIM, generator=generator).to(device)
        targets = torch.randint(0, CLASSES, (batch, K), generator=generator).to(device)
        return cls(model, inputs, targets, None if dtype == torch.float32 else dtype)

    @property
    def K(self) -> int:
        return len(self.model.heads)

    @property
    def N(self) -> int:
        return sum(p.numel() for p in self.model.trunk.parameters())

    def fresh(self) -> MultiTaskMLP:
        return copy.deepcopy(self.model)

    def trunk_forward(self, model: MultiTaskMLP) -> Tensor:
        with torch.autocast(self.inputs.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            return model.trunk(self.inputs)

    def losses(self, model: MultiTaskMLP, reps: list[Tensor]) -> list[Tensor]:
        with torch.autocast(self.inputs.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            return model.losses(reps, self.targets)


@dataclass
class TrainingStep:
    """One way of training: its own copy of the model, and ``run`` doing one whole step."""

    model: MultiTaskMLP
    run: Callable[[], None]

    def __call__(self) -> None:
        self.run()


def _adam(params: Any) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=LEARNING_RATE)


def plain_step(problem: StepProblem) -> TrainingStep:
    """One backward of Σₖ Lₖ, then Adam."""
    model = problem.fresh()
    opt = _adam(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        z = problem.trunk_forward(model)
        torch.stack(problem.losses(model, [z] * problem.K)).sum().backward()
        opt.step()

    return TrainingStep(model, step)


def per_task_backward_step(problem: StepProblem) -> TrainingStep:
    """K backward passes (Lₖ one at a time, summed into ``.grad``), then Adam: no aggregation."""
    model = problem.fresh()
    opt = _adam(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        z = problem.trunk_forward(model)
        losses = problem.losses(model, [z] * problem.K)
        for k, loss in enumerate(losses):
            loss.backward(retain_graph=k < len(losses) - 1)
        opt.step()

    return TrainingStep(model, step)


def mtlkernels_step(problem: StepProblem, method: str, features: bool, update_every: int = 1) -> TrainingStep:
    """The drop-in wrapper: ``opt.backward(losses[, features=z])``, then ``opt.step()``; with
    ``update_every=n`` one call runs n such steps."""
    model = problem.fresh()
    if method in LOSS_WEIGHTING:
        opt = LOSS_WEIGHTING[method](_adam(model.parameters()), model)
    else:
        opt = WRAPPERS[method](_adam(model.parameters()), update_every=update_every, **WRAPPER_OPTIONS.get(method, {}))

    def step() -> None:
        for _ in range(update_every):
            opt.zero_grad(set_to_none=True)
            z = problem.trunk_forward(model)
            opt.backward(problem.losses(model, [z] * problem.K), features=z if features else None)
            opt.step()

    return TrainingStep(model, step)


def libmtl_step(problem: StepProblem, method: str, features: bool) -> TrainingStep:
    """LibMTL's weighting on the real model, as LibMTL's trainer runs a step.

    The trainer's model returns the encoder's parameters as ``get_share_params`` and zeroes them
    with ``encoder.zero_grad()`` between the K passes; under torch ≥ 2 that sets them to None and
    LibMTL's ``_reset_grad`` then fails, so they are zeroed in place here.
    """
    model = problem.fresh()
    K, device = problem.K, problem.inputs.device
    weighting_class = peers.libmtl_weighting(peers.LIBMTL_CLASSES[method])

    class OnTheModel(weighting_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num, self.device, self.rep_grad = K, device, features
            self.task_name = [f"task{k}" for k in range(K)]
            self.init_param()

        def get_share_params(self):
            return model.trunk.parameters()

        def zero_grad_share_params(self) -> None:
            model.trunk.zero_grad(set_to_none=False)

    weighting = OnTheModel()
    opt = _adam([*model.parameters(), *weighting.parameters()])  # IMTL's loss scales train too
    kwargs = LIBMTL_KWARGS.get(method, {})

    def step() -> None:
        opt.zero_grad()
        z = problem.trunk_forward(model)
        if features:  # LibMTL's _prepare_rep: each head reads its own detached copy of z
            weighting.rep = z
            weighting.rep_tasks = {name: z.detach().clone().requires_grad_() for name in weighting.task_name}
            reps = list(weighting.rep_tasks.values())
        else:
            reps = [z] * K
        weighting.backward(torch.stack(problem.losses(model, reps)), **kwargs)
        opt.step()

    return TrainingStep(model, step)


def torchjd_step(problem: StepProblem, method: str) -> TrainingStep:
    """torchjd's autojac: ``mtl_backward(losses, features=z)``, ``jac_to_grad(trunk, aggregator)``."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    model = problem.fresh()
    opt = _adam(model.parameters())
    aggregator = peers.torchjd_aggregator(method, problem.K)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        z = problem.trunk_forward(model)
        mtl_backward(problem.losses(model, [z] * problem.K), features=z)
        jac_to_grad(model.trunk.parameters(), aggregator)
        opt.step()

    return TrainingStep(model, step)


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> float:
    """Peak bytes held by tensors the steps allocated, over steps 2..3 of the first three."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(MEMORY_STEPS - 1):
            step()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function("steady_steps"):
            for _ in range(MEMORY_STEPS - 1):
                step()
    events, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    steady_from = math.inf
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.ptr, event.extra_fields.alloc_size))
        elif event.name == "steady_steps":
            steady_from = min(steady_from, event.start_time_ns)
    live: dict[int, int] = {}
    held = peak = 0
    for time_ns, ptr, size in sorted(events):
        if size > 0:
            live[ptr] = size
            held += size
        elif ptr in live:  # frees of blocks allocated before the window are not ours to count
            held -= live.pop(ptr)
        if time_ns >= steady_from:
            peak = max(peak, held)
    return float(peak)


@dataclass
class StepRow(Row):
    """A :class:`Row` whose floor is the plain step; adds the per-task-backward floor, the tax of
    every way of stepping and their peak memory."""

    per_task_backward: Timing | None = None
    peak_bytes: dict[str, float] = field(default_factory=dict)
    batch: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out["batch"] = self.batch
        out["plain_step_s"] = self.floor_s
        out["per_task_backward_s"] = self.per_task_backward.median_s
        out["tax_per_task_backward"] = self.per_task_backward.median_s / self.floor_s
        for name, t in self.times.items():
            out[f"tax_{name}"] = t.median_s / self.floor_s
        out["ratio_to_per_task_backward"] = self.times["mtlkernels"].median_s / self.per_task_backward.median_s
        for name, size in self.peak_bytes.items():
            out[f"peak_{name}_bytes"] = size
        return out


def measure_interleaved(
    steps: dict[str, Callable[[], None]], device: torch.device, min_time_s: float, max_rounds: int = 50
) -> dict[str, Timing]:
    """Time several ways of stepping round-robin — one call of each per round — until every way has
    run ``min_time_s`` (at least 3 rounds) or ``max_rounds``; their ratios then see the same machine
    load, which on a shared machine drifts far more over a minute than within a round. CUDA: device
    events around each call, after overwriting a buffer larger than L2 (as :func:`.timing.measure`)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device=device) if device.type == "cuda" else None
    for _ in range(max_rounds):
        for name, run in steps.items():
            if flush is not None:
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        if len(times[next(iter(steps))]) >= 3 and all(sum(t) >= min_time_s for t in times.values()):
            break
    return {name: Timing(statistics.median(t), _quantile(t, 0.2), _quantile(t, 0.8), len(t)) for name, t in times.items()}


@functools.lru_cache(maxsize=1)
def _problem_and_baselines(K: int, N: int, dtype: torch.dtype, device: torch.device) -> tuple[StepProblem, dict[str, TrainingStep], dict[str, float]]:
    """The model and batch of a configuration, its two baseline steps (warm, reused by every
    method's rows) and their peak memory."""
    problem = StepProblem.build(K, N, dtype, device)
    baselines = {"plain": plain_step(problem), "per_task_backward": per_task_backward_step(problem)}
    return problem, baselines, {name: peak_step_bytes(run, device) for name, run in baselines.items()}


def step_case(
    method: str, K: int, N: int, dtype: torch.dtype, device: torch.device, min_time_s: float,
    with_peers: bool = True, features: bool = False, update_every: tuple[int, ...] = (),
) -> StepRow:
    """Time one training step of ``method`` our way and the peers' ways, interleaved with the two
    baselines (:func:`measure_interleaved`), and the peak memory of each.

    N is the trunk's target size (the row carries the actual parameter count); ``features``
    selects the features path (suite ``step-features``) instead of the parameter path (``step``);
    ``update_every`` adds the ways ``every<n>`` for a Gramian method (n > 1; amortised per step).
    """
    problem, baselines, baseline_peaks = _problem_and_baselines(K, N, dtype, device)
    suite = "step-features" if features else "step"
    row = StepRow(suite, method, K, problem.N, str(dtype).removeprefix("torch."), device.type, batch=len(problem.inputs))
    row.peak_bytes.update(baseline_peaks)
    makers: dict[str, Callable[[], TrainingStep]] = {"mtlkernels": lambda: mtlkernels_step(problem, method, features)}
    steps_per_call = {f"every{n}": n for n in update_every if n > 1 and method in WRAPPERS}
    for name, n in steps_per_call.items():
        makers[name] = functools.partial(mtlkernels_step, problem, method, features, n)
    if with_peers:
        makers.update(peer_steps(problem, method, features, row.skipped))
    ways: dict[str, TrainingStep] = dict(baselines)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MGDAUB.backward got no features=")
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")  # torchjd's NashMTL
        for name, make in makers.items():
            run = make()
            if name in steps_per_call:  # n steps per call: warm up without the profiler
                run()
                ways[name] = run
                continue
            try:
                row.peak_bytes[name] = peak_step_bytes(run, device)  # also the warm-up
            except Exception as error:  # a peer that cannot run this configuration is reported, not fatal
                if name == "mtlkernels":
                    raise
                row.skipped[name] = f"failed: {type(error).__name__}: {error}"
                continue
            ways[name] = run
        timings = measure_interleaved(ways, device, min_time_s)
    for name, n in steps_per_call.items():  # one call ran n steps: the amortised time of one
        t = timings[name]
        timings[name] = Timing(t.median_s / n, t.p20_s / n, t.p80_s / n, t.repeats)
    row.floor_s = timings.pop("plain").median_s
    row.per_task_backward = timings.pop("per_task_backward")
    row.times = timings
    return row


def peer_steps(problem: StepProblem, method: str, features: bool, skipped: dict[str, str]) -> dict[str, Callable[[], TrainingStep]]:
    """The peers' ways of doing the same step, and in ``skipped`` why a peer was left out."""
    steps: dict[str, Callable[[], TrainingStep]] = {}
    have = peers.installed()
    if method in peers.LIBMTL_CLASSES and have["libmtl"]:
        if method == "cagrad" and problem.K != 3:
            skipped["libmtl"] = "LibMTL 1.1.5 hard-codes K = 3 in CAGrad"
        elif features and method not in LIBMTL_FEATURES:
            skipped["libmtl"] = f"LibMTL's {peers.LIBMTL_CLASSES[method]} does not support rep_grad=True"
        else:
            steps["libmtl"] = lambda: libmtl_step(problem, method, features)
    if method in peers.TORCHJD_CLASSES and have["torchjd"]:
        if features:
            skipped["torchjd"] = "torchjd's mtl_backward always forms the Jacobian over the shared parameters"
        else:
            steps["torchjd"] = lambda: torchjd_step(problem, method)
    for peer, classes in (("torchjd", peers.TORCHJD_CLASSES), ("libmtl", peers.LIBMTL_CLASSES)):
        if method in classes and not have[peer]:
            skipped[peer] = peers.missing_reason(peer) or "not importable"
    return steps
