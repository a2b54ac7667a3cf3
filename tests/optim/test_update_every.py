"""``update_every=n`` for the Gramian wrappers: a solve on every n-th step (the usual per-task
path), ONE backward of Σ wₖ·Lₖ with the last weights on the others; which kind ran is in the
diagnostics; the counter and the weights round-trip through ``state_dict()``; a non-finite
reusing step changes nothing."""
import copy
import io

import pytest
import torch

from mtlkernels.optim import CAGrad, IMTL, MGDAUB, NashMTL, NonFiniteError, PCGrad
from mtl_model import TrunkHeads, batch, same_state, snapshot, task_losses

K = 3


def _losses(model, seed):
    x, y = batch(K=K, seed=seed)
    return task_losses(model, x, y)


@pytest.mark.parametrize("task_specific", ["plain", "weighted"])
@pytest.mark.parametrize("wrapper, options", [(CAGrad, {"c": 0.4}), (NashMTL, {}), (PCGrad, {"seed": 2}), (IMTL, {})],
                         ids=["CAGrad", "NashMTL", "PCGrad", "IMTL"])
def test_reusing_steps_take_one_weighted_backward(wrapper, options, task_specific):
    model = TrunkHeads(K=K, seed=4)
    opt = wrapper(torch.optim.SGD(model.parameters(), lr=0.05), update_every=3, task_specific=task_specific, **options)
    kinds = []
    for step in range(7):
        losses, _ = _losses(model, step)
        if step % 3 == 0:  # a solving step: what the same wrapper without update_every writes
            # (PCGrad's generator has advanced once per solve, a fresh twin's has not: step 0 only)
            twin = copy.deepcopy(model)
            twin_opt = wrapper(torch.optim.SGD(twin.parameters(), lr=0.05), task_specific=task_specific, **options)
            twin_opt.backward(_losses(twin, step)[0])
            expected = [p.grad for p in twin.parameters()] if step == 0 or wrapper is not PCGrad else []
        else:  # a reusing step: ∇ Σ wₖLₖ with the last solve's weights; heads by task_specific
            w = solved
            trunk, heads = list(model.trunk.parameters()), list(model.heads)
            expected = list(torch.autograd.grad(sum(float(wk) * l for wk, l in zip(w, losses)), trunk, retain_graph=True))
            for k, head in enumerate(heads):
                factor = 1.0 if task_specific == "plain" else float(w[k])
                expected += [factor * g for g in torch.autograd.grad(losses[k], list(head.parameters()), retain_graph=True)]
        opt.zero_grad()
        result = opt.backward(losses)
        kinds.append(opt.last_reused)
        assert opt.diagnostics()["reused"] == opt.last_reused
        assert opt.diagnostics(flat=True)["reused"] == float(opt.last_reused)
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
        solved = result.weights
        opt.step()
    assert kinds == [False, True, True, False, True, True, False]


def test_nash_mtl_update_weights_every_is_an_alias():
    runs = []
    for options in ({"update_weights_every": 3}, {"update_every": 3}, {"update_every": 3, "update_weights_every": 3}):
        model = TrunkHeads(K=K, seed=5)
        opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.05), **options)
        for step in range(5):
            opt.zero_grad()
            opt.backward(_losses(model, step)[0])
            opt.step()
        assert opt.update_every == 3 and "update_every=3" in repr(opt) and "update_weights_every" not in repr(opt)
        runs.append([p.detach().clone() for p in model.parameters()])
    for run in runs[1:]:
        for p, q in zip(runs[0], run):
            assert torch.equal(p, q)
    with pytest.raises(ValueError, match="alias"):
        NashMTL(torch.optim.SGD(TrunkHeads(K=K).parameters(), lr=0.1), update_every=2, update_weights_every=3)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="update_every"):
            CAGrad(torch.optim.SGD(TrunkHeads(K=K).parameters(), lr=0.1), update_every=bad)


def test_features_path_reuses_too():
    model = TrunkHeads(K=K, seed=6)
    opt = MGDAUB(torch.optim.SGD(model.parameters(), lr=0.05), update_every=2)
    for step in range(4):
        losses, z = _losses(model, step)
        opt.zero_grad()
        opt.backward(losses, features=z)
        assert opt.last_reused == (step % 2 == 1)
        opt.step()


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        opt.backward(_losses(model, 100 + step)[0])
        opt.step()


def test_state_dict_round_trip_inside_a_reuse_window():
    model = TrunkHeads(K=K, seed=1)
    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-2), update_every=4)
    _train(model, opt, 2, 0)
    state = opt.state_dict()
    assert state["update_every"]["step"] == 2 and state["update_every"]["weights"].shape == (K,)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": state}, buffer)
    _train(model, opt, 5, 2)
    resumed = TrunkHeads(K=K, seed=9)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    resumed.load_state_dict(checkpoint["model"])
    opt2 = CAGrad(torch.optim.Adam(resumed.parameters(), lr=1e-2), update_every=4)
    opt2.load_state_dict(checkpoint["optimizer"])
    _train(resumed, opt2, 5, 2)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    same_state(opt.state_dict(), opt2.state_dict())
    bad = copy.deepcopy(checkpoint["optimizer"])
    bad["update_every"]["weights"] = torch.ones(K + 1, dtype=torch.float64)
    before = copy.deepcopy(opt2.state_dict())
    with pytest.raises(ValueError, match="update_every"):
        opt2.load_state_dict(bad)
    same_state(before, opt2.state_dict())


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("case", ["nan_loss", "nan_gradient"])
def test_nonfinite_reusing_step_changes_nothing(case, on_nonfinite):
    model = TrunkHeads(K=K, seed=3)
    opt = NashMTL(torch.optim.Adam(model.parameters(), lr=1e-2), update_every=5, on_nonfinite=on_nonfinite)
    _train(model, opt, 2, 0)
    losses, _ = _losses(model, 50)
    opt.backward(losses)  # a reusing step: gradients present before the bad call
    before = snapshot(model, opt)
    losses, _ = _losses(model, 50)
    b = model.trunk[0].bias
    bad, message = {
        "nan_loss": ([losses[0], losses[1] * float("nan"), losses[2]], "task 1: loss is nan"),
        "nan_gradient": ([losses[0], losses[1], losses[2] + (b - b.detach()).abs().sqrt().sum()], "reused weights holds NaN"),
    }[case]
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteError, match=message):
            opt.backward(bad)
    else:
        assert opt.backward(bad) is None
        opt.step()
    after = snapshot(model, opt)
    assert after["optimizer"].pop("num_skipped") == (1 if on_nonfinite == "skip" else 0)
    before["optimizer"].pop("num_skipped")
    same_state(before, after)


@pytest.mark.parametrize("wrapper, options", [(CAGrad, {}), (IMTL, {"imtl_l": True})], ids=["CAGrad", "IMTL-L"])
def test_grad_scaler_reusing_steps_equal_unscaled_ones(wrapper, options):
    """A power-of-two scale: solving and reusing steps (and IMTL-L's log-scales) equal the unscaled run."""
    plain_model, scaled_model = TrunkHeads(K=K, seed=2, dtype=torch.float32), TrunkHeads(K=K, seed=2, dtype=torch.float32)
    plain = wrapper(torch.optim.SGD(plain_model.parameters(), lr=0.05), update_every=2, **options)
    scaled = wrapper(torch.optim.SGD(scaled_model.parameters(), lr=0.05), update_every=2, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    for step in range(4):
        x, y = batch(K=K, seed=step, dtype=torch.float32)
        plain.zero_grad()
        plain.backward(task_losses(plain_model, x, y)[0])
        plain.step()
        scaled.zero_grad()
        scaled.backward(task_losses(scaled_model, x, y)[0], grad_scaler=scaler)
        scaler.step(scaled)
        scaler.update()
        assert scaled.last_reused == (step % 2 == 1)
    for p, q in zip(plain_model.parameters(), scaled_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(plain._owned, scaled._owned):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_state_dict_without_the_update_every_entry_loads():
    """Checkpoints written before ``update_every`` existed: the counter starts again at 0."""
    model = TrunkHeads(K=K, seed=1)
    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-2), update_every=3)
    _train(model, opt, 2, 0)
    old = opt.state_dict()
    del old["update_every"]
    fresh = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-2), update_every=3)
    fresh.load_state_dict(old)
    assert fresh.state_dict()["update_every"] == {"step": 0, "weights": None}
    fresh.backward(_losses(model, 7)[0])
    assert not fresh.last_reused  # no weights yet: this step solves


def test_a_step_with_an_absent_task_solves_instead_of_reusing():
    model = TrunkHeads(K=K, seed=6)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.05), update_every=5)
    full = opt.backward(_losses(model, 0)[0]).weights.clone()
    assert not opt.last_reused
    losses, _ = _losses(model, 1)
    opt.zero_grad()
    result = opt.backward([losses[0], None, losses[2]])  # due to reuse, but task 1 is absent
    assert not opt.last_reused and opt.last_tasks == [0, 2] and result.weights.shape == (2,)
    losses, _ = _losses(model, 2)
    trunk = list(model.trunk.parameters())
    expected = torch.autograd.grad(sum(float(w) * l for w, l in zip(full, losses)), trunk, retain_graph=True)
    opt.zero_grad()
    opt.backward(losses)  # all present again: the counter goes on, this step reuses the last FULL solve's weights
    assert opt.last_reused
    for p, g in zip(trunk, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def test_a_reusing_step_reports_the_weights_it_applied_and_a_load_forgets_the_old_run():
    model = TrunkHeads(K=K, seed=7)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.05), update_every=3, task_names=["a", "b", "c"])
    solved = opt.backward(_losses(model, 0)[0]).weights
    assert opt.diagnostics(flat=True)["reused"] == 0.0 and "grad_norm/a" in opt.diagnostics(flat=True)
    state = copy.deepcopy(opt.state_dict())
    losses, _ = _losses(model, 1)
    opt.zero_grad()
    opt.backward(losses)
    flat = opt.diagnostics(flat=True)
    assert flat == {"weight/a": float(solved[0]), "weight/b": float(solved[1]), "weight/c": float(solved[2]),
                    "loss/a": float(losses[0]), "loss/b": float(losses[1]), "loss/c": float(losses[2]), "reused": 1.0}
    assert opt.diagnostics()["weights"] == solved.tolist() and opt.diagnostics()["tasks"] == ["a", "b", "c"]
    opt.load_state_dict(state)
    assert opt.last is None and opt.diagnostics() == {}
