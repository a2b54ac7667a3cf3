"""The training-step benchmark (``python -m mtlkernels.bench --suite step-tiny``): every method and
path present, every number sane, the files written; and the harness itself checked — each way of
stepping computes the gradients it claims (the peers driven on the real model agree with ours),
the trunk has the size asked for, the memory probe counts what a step holds. (Speed itself is
measured by the benchmark, never asserted in tests.)"""
import json
import math
import random
import warnings

import pytest
import torch

from _devices import requires_cuda
from mtlkernels.testing.peers import LIBMTL_CLASSES
from peers import installed_peers, require_peers
from mtlkernels.bench import report, step
from mtlkernels.bench.__main__ import main
from mtlkernels.bench.suites import METHODS

CPU = torch.device("cpu")
TINY = ["--suite", "step-tiny", "--K", "3", "--N", "20000", "--min-time", "0.002", "--update-every", "3"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("step")
    rows = main([*TINY, "--out", str(out)])
    return rows, out


def test_every_method_on_both_paths(tiny_run):
    rows, _ = tiny_run
    expected = [(p, m) for p in step.PATHS for m in METHODS] + [("step", m) for m in step.LOSS_WEIGHTING]
    assert sorted((r["suite"], r["method"]) for r in rows) == sorted(expected)
    # update_every=3 beside update_every=1 for the Gramian methods on the parameter path only
    assert all(("tax_every3" in r) == (r["suite"] == "step" and r["method"] in METHODS) for r in rows)
    counted = sum(p.numel() for p in step.MultiTaskMLP(3, step.trunk_width(20_000)).trunk.parameters())
    assert all(r["K"] == 3 and r["N"] == counted and r["batch"] == step.BATCH["cpu"] for r in rows)


def test_every_number_finite_and_positive(tiny_run):
    rows, _ = tiny_run
    for r in rows:
        numbers = {k: v for k, v in r.items() if k.endswith(("_s", "_bytes")) or k.startswith(("ratio_", "speedup_vs_", "tax_"))}
        assert {"plain_step_s", "per_task_backward_s", "mtlkernels_s", "tax_mtlkernels", "peak_mtlkernels_bytes"} <= set(numbers)
        assert all(math.isfinite(v) and v > 0 for v in numbers.values()), r


def test_taxes_are_the_ratios_of_the_times(tiny_run):
    rows, _ = tiny_run
    for r in rows:
        assert r["floor_s"] == r["plain_step_s"] and r["tax_mtlkernels"] == pytest.approx(r["ratio_to_floor"])
        assert r["ratio_to_per_task_backward"] == pytest.approx(r["mtlkernels_s"] / r["per_task_backward_s"])
        for name in ("mtlkernels", "libmtl", "torchjd", "per_task_backward", "every3"):
            if f"{name}_s" in r:
                assert r[f"tax_{name}"] == pytest.approx(r[f"{name}_s"] / r["plain_step_s"])
    # the baselines are timed in every row (interleaved with its ways); their memory once per configuration
    assert len({(r["peak_plain_bytes"], r["peak_per_task_backward_bytes"]) for r in rows}) == 1


def test_peers_present_where_they_implement_the_method(tiny_run):
    rows, _ = tiny_run
    by = {(r["suite"], r["method"]): r for r in rows}
    have = installed_peers()
    for method in METHODS:
        params, features = by["step", method], by["step-features", method]
        if have["torchjd"]:
            assert "torchjd_s" in params and "peak_torchjd_bytes" in params
            assert "torchjd_s" not in features and "Jacobian" in features["skipped"]["torchjd"]
        if have["libmtl"]:
            assert ("libmtl_s" in params) == (method in LIBMTL_CLASSES)
            assert ("libmtl_s" in features) == (method in step.LIBMTL_FEATURES)
            if method in ("pcgrad", "cagrad"):
                assert "rep_grad" in features["skipped"]["libmtl"]


def test_memory_sees_the_task_gradient_buffers(tiny_run):
    """Every way that holds K task gradients over the trunk (our [K, N] workspace, LibMTL's buffer,
    torchjd's .jac) peaks at least K·N floats above the model; the plain step does not need to."""
    rows, _ = tiny_run
    for r in rows:
        if r["suite"] == "step":
            for name in ("mtlkernels", "libmtl", "torchjd"):
                if f"peak_{name}_bytes" in r:
                    assert r[f"peak_{name}_bytes"] >= r["K"] * r["N"] * 4, (r["method"], name)


def test_files_and_table(tiny_run):
    rows, out = tiny_run
    data = json.loads((out / "results.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows)) and data["command"].endswith("--out " + str(out))
    csv_text = (out / "results.csv").read_text()
    assert csv_text.count("\n") == len(rows) + 1 and "tax_mtlkernels" in csv_text.splitlines()[0]
    table = report.table(rows).splitlines()
    assert len(table) == len(rows) + 2 and "step-features" in table[-1]


def test_step_suite_prints_its_legend(tmp_path, capsys):
    main(["--suite", "step-tiny", "--K", "2", "--N", "5000", "--min-time", "0.001", "--methods", "mean",
          "--no-peers", "--no-plots", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "multi-task tax" in printed and "streaming reads of J" not in printed


@pytest.mark.parametrize("N", [1, 100, 20_000, 99_999, 10_000_000])
def test_trunk_width_is_the_smallest_reaching_N(N):
    width = step.trunk_width(N)
    counted = sum(p.numel() for p in step.MultiTaskMLP(1, width).trunk.parameters()) if N < 1e6 else step.trunk_parameters(width)
    assert counted == step.trunk_parameters(width) >= N
    assert width == 1 or step.trunk_parameters(width - 1) < N


def test_default_cpu_trunk_is_at_least_ten_million():
    from mtlkernels.bench.__main__ import SUITES

    assert min(SUITES["step-cpu"][2]) >= 10_000_000 and step.trunk_parameters(step.trunk_width(10_000_000)) >= 10_000_000


def test_peak_memory_counts_what_a_step_holds():
    """Step 1 creates a 2 MB buffer that stays; every step allocates 4 MB, then 1 MB, frees both.
    Steady-state peak = 2 + 4 + 1 MB; a tensor made before the window and freed in it is ignored."""
    kept, before = [], [torch.empty(3_000_000)]

    def fake_step():
        transient = torch.empty(1_000_000)
        more = torch.empty(250_000)
        del transient, more
        if not kept:
            kept.append(torch.empty(500_000))
        before.clear()

    peak = step.peak_step_bytes(fake_step, CPU)
    assert 7_000_000 <= peak < 7_000_000 + 65_536


def _grads(training_step):
    training_step()
    trunk = torch.cat([p.grad.reshape(-1) for p in training_step.model.trunk.parameters()])
    heads = torch.cat([p.grad.reshape(-1) for p in training_step.model.heads.parameters()])
    return trunk, heads


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=[2, 3], ids=["K2", "K3"])
def problem_and_plain(request):
    problem = step.StepProblem.build(request.param, 20_000, torch.float32, CPU)
    return problem, _grads(step.plain_step(problem))


def test_baselines_compute_the_summed_gradient(problem_and_plain):
    problem, (trunk, heads) = problem_and_plain
    per_task_trunk, per_task_heads = _grads(step.per_task_backward_step(problem))
    assert _rel(per_task_trunk, trunk) < 1e-5 and _rel(per_task_heads, heads) < 1e-5
    assert trunk.norm() > 0 and heads.norm() > 0


@pytest.mark.parametrize("features", [False, True], ids=["params", "features"])
def test_ours_mean_is_the_summed_gradient_over_K(problem_and_plain, features):
    """mean: the trunk gets (1/K)·Σ gₖ on both paths; every head its own task's gradient."""
    problem, (trunk, heads) = problem_and_plain
    ours_trunk, ours_heads = _grads(step.mtlkernels_step(problem, "mean", features))
    assert _rel(ours_trunk * problem.K, trunk) < 1e-5 and _rel(ours_heads, heads) < 1e-6


@pytest.mark.parametrize("method", [m for m in METHODS if m != "mean"])
def test_peers_step_computes_our_direction(problem_and_plain, method):
    """On the real model, the peers' steps give the trunk our direction (up to each peer's
    documented convention and solver accuracy) and the heads the same gradient: the timings
    compare the same step."""
    problem, _ = problem_and_plain
    random.seed(0)  # LibMTL's PCGrad draws its orders from Python's random, torchjd's from torch's
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_trunk, ours_heads = _grads(step.mtlkernels_step(problem, method, False))
        skipped = {}
        ways = {name: make() for name, make in step.peer_steps(problem, method, False, skipped).items()}
        if not ways:
            require_peers("torchjd", "libmtl")
            pytest.skip(f"no peer step for {method} at K = {problem.K}: {skipped}")
        for name, way in ways.items():
            trunk, heads = _grads(way)
            if name == "torchjd" and method == "cagrad":
                trunk = trunk / (1 + 0.5**2)  # torchjd does not rescale by 1/(1+c²) (our rescale=0)
            # PCGrad K > 2: each draws its own projection order; LibMTL's CAGrad solves with SLSQP,
            # torchjd's MGDA iterates to a tolerance
            tolerance = 1e-5 if problem.K == 2 else 3e-3
            assert _rel(trunk, ours_trunk) < tolerance, name
            assert _rel(heads, ours_heads) < 1e-6, name


def test_peer_failure_is_reported_not_fatal(monkeypatch):
    def broken(problem, method, features, skipped):
        def make():
            def fail():
                raise RuntimeError("cannot run here")
            return step.TrainingStep(problem.model, fail)
        return {"libmtl": make}

    monkeypatch.setattr(step, "peer_steps", broken)
    row = step.step_case("pcgrad", 2, 5_000, torch.float32, CPU, 0.001).as_dict()
    assert row["skipped"]["libmtl"] == "failed: RuntimeError: cannot run here" and "libmtl_s" not in row


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_step_rows(dtype):
    for features in (False, True):
        row = step.step_case("cagrad", 3, 200_000, dtype, torch.device("cuda"), 0.01, features=features).as_dict()
        assert row["device"] == "cuda" and row["peak_mtlkernels_bytes"] > 0 and math.isfinite(row["tax_mtlkernels"])
