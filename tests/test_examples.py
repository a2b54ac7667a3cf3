"""The examples run end to end in their reduced form (--quick): real training on scikit-learn's
digits (two tasks), the CAGrad toy problem (each writing its table as JSON and a PNG plot), and
the timing of the per-task gradient paths."""
import importlib.util
import json
import os
import sys

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_multidigits_quick(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    example = _load("multidigits")
    results = example.main(["--quick", "--out", str(tmp_path)])
    assert set(results) == set(example.METHODS)
    for curves in results.values():
        assert all(0.0 <= a <= 1.0 for a in curves["test_accuracy"][-1])
        assert all(torch.isfinite(torch.tensor(curves["train_loss"])).flatten())
    assert (tmp_path / "multidigits_curves.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "multidigits_results.json").read_text())
    assert saved["args"]["quick"] is True
    assert "left acc" in capsys.readouterr().out


def test_multidigits_pairs_are_composed_from_both_digits():
    pytest.importorskip("sklearn")
    example = _load("multidigits")
    (x, y), (x_test, y_test) = example.load_data(64, 32)
    assert x.shape == (64, 1, 12, 12) and y.shape == (64, 2) and x_test.shape == (32, 1, 12, 12)
    assert bool((x[:, 0, :4, :4].amax(dim=(1, 2)) > 0).all())  # the left digit's own corner
    assert bool((x[:, 0, 8:, 8:].amax(dim=(1, 2)) > 0).all())  # the right digit's own corner
    assert int(y.min()) >= 0 and int(y.max()) <= 9


def test_toy_quick(tmp_path):
    pytest.importorskip("matplotlib")
    example = _load("toy")
    results = example.main(["--quick", "--out", str(tmp_path)])
    assert results["steps"] == 60 and len(results["runs"]) == len(example.METHODS) * len(example.STARTS)
    for run in results["runs"]:
        assert all(map(lambda v: abs(v) < 20, run["final"]))
    assert (tmp_path / "toy_trajectories.png").stat().st_size > 10_000


@pytest.mark.parametrize("x1", [-7.0, 0.0, 3.5, 7.0])
def test_toy_objectives_on_the_lower_half_plane(x1):
    """Below x₂ = 0 only the quadratic bowls count (the paper's formulas, written out again):
    L₁ = ((7 − x₁)² + 0.1·(x₂ + 8)²)/10 − 20 and L₂ = ((x₁ + 7)² + 0.1·(x₂ + 8)²)/10 − 20, × tanh(−x₂/2)."""
    example = _load("toy")
    x2 = -8.3552
    blend = torch.tanh(torch.tensor(-x2 / 2, dtype=torch.float64))
    expected = torch.stack([(((7 - x1) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20) * blend,
                            (((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20) * blend])
    torch.testing.assert_close(example.objectives(torch.tensor([x1, x2], dtype=torch.float64)), expected)


@pytest.mark.parametrize("l1_scale", [1.0, 0.1])
def test_toy_min_norm_gradient_tells_the_front_from_the_valley(l1_scale):
    """≈ 0 on the front (the two gradients point against each other; the line x₂ = FRONT_X2 is the
    Pareto set at x₁ = 0 and within ~0.05 of it elsewhere), not beyond its end (x₁ > 7, both losses
    fall towards x₁ = 7) nor in the log-valley (x₂ > 0)."""
    example = _load("toy")
    front = [example.min_norm_gradient(torch.tensor([x1, example.FRONT_X2]), l1_scale) for x1 in (-6.0, 0.0, 6.0)]
    assert front[1] < 1e-5 and max(front) < 5e-3
    assert example.min_norm_gradient(torch.tensor([9.0, example.FRONT_X2]), l1_scale) > 1e-2
    assert example.min_norm_gradient(torch.tensor([-5.0, 2.6]), l1_scale) > 0.1


def test_toy_famo_setting_quick(tmp_path):
    pytest.importorskip("matplotlib")
    example = _load("toy")
    results = example.main(["--setting", "famo", "--quick", "--methods", "FAMO,mean", "--out", str(tmp_path)])
    assert results["setting"] == "famo" and results["steps"] == 60 and len(results["runs"]) == 2 * 5
    for run in results["runs"]:
        assert all(map(lambda v: abs(v) < 20, run["final"]))
    assert (tmp_path / "toy_famo_trajectories.png").stat().st_size > 10_000
    assert (tmp_path / "toy_famo_losses.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "toy_famo_results.json").read_text())["dtype"] == "torch.float32"


def test_toy_famo_setting_is_the_authors():
    """The FAMO authors' toy trainer: L₁ × 0.1, five starts, 50000 Adam steps of lr 1e-3 in float32;
    FAMO with logit lr 0.025, γ = 0, ε = 1e-8 and bounds (−21·0.1, −21)."""
    example = _load("toy")
    setting = example.SETTINGS["famo"]
    assert setting.starts == [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)]
    assert (setting.steps, setting.lr, setting.dtype) == (50000, 1e-3, torch.float32)
    x = torch.tensor([0.3, 2.0], dtype=torch.float64)
    torch.testing.assert_close(example.objectives(x, setting.l1_scale), example.objectives(x) * torch.tensor([0.1, 1.0], dtype=torch.float64))
    famo = setting.methods["FAMO"](torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=1e-3))
    options = famo.options()
    assert (options["lr"], options["weight_decay"], options["eps"]) == (0.025, 0.0, 1e-8)
    assert options["min_losses"] == pytest.approx([-2.1, -21.0])


def test_toy_famo_follows_the_papers_update_step_by_step():
    """mk.FAMO with the famo setting's options, 300 steps from each of the five starts in float64,
    against the paper's step written with the float64 references: logits updated from the next
    step's losses (famo_logit_step), then Adam on x with the gradient of famo_objective (autograd)."""
    from mtlkernels.reference.loss_weighting import famo_logit_step, famo_objective

    example = _load("toy")
    setting = example.SETTINGS["famo"]
    steps, lr = 300, 1e-3
    bounds = torch.tensor([-2.1, -21.0], dtype=torch.float64)
    for start in setting.starts:
        ours = example.trajectory("FAMO", start, steps, lr, setting, dtype=torch.float64)
        x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        adam = torch.optim.Adam([x], lr=lr)
        logits = torch.zeros(2, dtype=torch.float64)
        moments = (torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0)
        before = None
        for step in range(steps):
            torch.testing.assert_close(ours[step], x.detach(), rtol=0, atol=1e-10, msg=f"start {start}, step {step}")
            losses = example.objectives(x, setting.l1_scale)
            if before is not None:
                logits, moments = famo_logit_step(logits, moments, before, losses.detach(), lr=0.025,
                                                  weight_decay=0.0, min_losses=bounds)
            before = losses.detach()
            adam.zero_grad()
            famo_objective(losses, logits, bounds).backward()
            adam.step()
        torch.testing.assert_close(ours[steps], x.detach(), rtol=0, atol=1e-10)
        assert float(logits.abs().max()) > 1e-2, "the logits moved: the weights were not uniform"


def test_grad_modes_quick(tmp_path):
    example = _load("grad_modes")
    rows = example.main(["--quick", "--out", str(tmp_path)])
    assert len(rows) == 1 and all(rows[0][f"{name}_ms"] > 0 for name in ("forward", "loop", "batched", "features"))
    assert json.loads((tmp_path / "grad_modes.json").read_text())["rows"] == rows


def test_lightning_manual_optimisation_resumes_with_the_method_state(tmp_path):
    pytest.importorskip("lightning")
    example = _load("lightning_mtl")
    result = example.main(["--method", "nash_mtl", "--epochs", "2", "--out", str(tmp_path)])
    # Nash-MTL solves every 3rd step and reuses α in between; 4 steps an epoch: the resumed run
    # starts at step 4 with the α of step 3 — equal steps need the checkpoint's α and counter
    assert result["gap"] == 0.0
    straight, resumed = result["straight"], result["resumed"]  # trainer.optimizers: the wrappers themselves
    assert isinstance(straight, example.mk.NashMTL) and isinstance(resumed, example.mk.NashMTL)
    assert torch.equal(straight.weighting.state_dict()["alpha"], resumed.weighting.state_dict()["alpha"])
    # the wrapper counts the 8 steps (solving or not), the weighting its 3 solves (steps 1, 4, 7)
    assert resumed.state_dict()["update_every"]["step"] == 8 and resumed.weighting.state_dict()["step"] == 3
    assert resumed.task_names == example.TASKS
    # training_step calls backward on Lightning's proxy: the wrapper itself holds the last step
    assert straight.last is not None and straight.last_tasks == list(example.TASKS) and straight.roles is not None
    saved = torch.load(result["checkpoint"], weights_only=False)["optimizer_states"][0]
    assert saved["update_every"]["step"] == 4 and saved["method"]["weighting"]["step"] == 2  # solves: steps 1, 4
    assert saved["task_names"] == list(example.TASKS)
    header = open(result["metrics"]).readline().strip().split(",")
    assert {"weight/depth", "weight/seg", "weight/normal", "cosine/depth_seg", "loss/normal", "solver/residual"} <= set(header)


def test_lightning_every_method_trains(tmp_path):
    pytest.importorskip("lightning")
    example = _load("lightning_mtl")
    for method in sorted(example.WRAPPERS):
        result = example.main(["--method", method, "--epochs", "2", "--out", str(tmp_path / method)])
        assert result["gap"] == 0.0, method


def test_accelerate_loop_saves_and_loads_the_method_state(tmp_path):
    pytest.importorskip("accelerate")
    example = _load("accelerate_mtl")
    result = example.main(["--method", "nash_mtl", "--steps", "10", "--out", str(tmp_path)])
    assert len(result["log"]) == 10 and all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in result["log"])
    # saved after 5 steps; Nash-MTL solved on steps 1 and 4 (update_weights_every=3)
    assert result["restored"]["weighting"]["step"] == result["saved"]["method"]["weighting"]["step"] == 2
    assert torch.equal(result["restored"]["weighting"]["alpha"], result["saved"]["method"]["weighting"]["alpha"])
    assert result["again"] == result["continued"]  # steps 6-10 again from the loaded state: the same
    assert {"weight/depth", "grad_norm/seg", "cosine/seg_normal", "loss/depth"} <= set(result["log"][-1])


@pytest.mark.slow
def test_fsdp_example_ranks_agree(monkeypatch):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    monkeypatch.syspath_prepend(EXAMPLES)  # imported by name: the spawned ranks import it again
    example = importlib.import_module("fsdp_mtl")
    results = example.main(["--method", "nash_mtl", "--steps", "3"])
    assert sorted(results) == [0, 1]
    assert results[0] == results[1]  # Γ, the weights and the losses are global: every rank has the same
    assert {f"weight/{task}" for task in example.TASKS} <= set(results[0])
    assert all(torch.isfinite(torch.tensor(list(results[0].values()))))


@pytest.mark.parametrize("method", ["cagrad", "famo"])
def test_tensorboard_example_logs_every_flat_key_by_task_name(tmp_path, method):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    example = _load("tensorboard_logging")
    log_dir = example.main(["--method", method, "--steps", "3", "--out", str(tmp_path)])
    events = EventAccumulator(log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {f"{kind}/{task}" for kind in ("weight", "loss") for task in example.TASKS}
    if method == "cagrad":
        expected |= {"cosine/depth_seg", "grad_norm/normal", "conflicts", "solver/kkt_residual"}
    assert expected <= tags, expected - tags
    assert not any(tag.rsplit("/", 1)[-1].isdigit() for tag in tags)  # every per-task key is named
    assert [event.step for event in events.Scalars("weight/depth")] == [0, 1, 2]
