"""The torch-optimizer contract: param_groups/state shared with the wrapped optimizer, LR
schedulers, add_param_group, state_dict round trip (bit-identical continuation), repr; the
non-finite step that leaves everything untouched; clear errors on bad input."""
import copy
import io
import warnings

import pytest
import torch

from mtlkernels.optim import CAGrad, GradVac, IMTL, MGDAUB, MultiTaskOptimizer, NashMTL, NonFiniteError, PCGrad, UPGrad
from mtl_model import TrunkHeads, batch, same_state, snapshot, task_losses


def _train(model, opt, steps, start, features=False):
    for step in range(start, start + steps):
        x, y = batch(K=3, seed=100 + step)
        opt.zero_grad(set_to_none=True)
        losses, z = task_losses(model, x, y)
        opt.backward(losses, features=z if features else None)
        opt.step()


STATEFUL = [
    (PCGrad, {"seed": 11}, False),
    (NashMTL, {"update_weights_every": 2}, False),
    (IMTL, {"imtl_l": True}, False),
    (CAGrad, {"c": 0.4}, False),
    (MGDAUB, {}, True),
    (GradVac, {"seed": 12}, False),
    (GradVac, {"seed": 13}, True),
    (UPGrad, {}, True),
]


@pytest.mark.parametrize("wrapper, options, features", STATEFUL, ids=[f"{w.__name__}-{'features' if f else 'parameters'}" for w, _, f in STATEFUL])
def test_state_dict_round_trip_continues_bit_identically(wrapper, options, features):
    model = TrunkHeads(K=3, seed=1)
    opt = wrapper(torch.optim.Adam(model.parameters(), lr=1e-2), **options)
    _train(model, opt, 3, 0, features)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    _train(model, opt, 3, 3, features)

    resumed = TrunkHeads(K=3, seed=99)  # different initial values, overwritten by the checkpoint
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    resumed.load_state_dict(checkpoint["model"])
    opt2 = wrapper(torch.optim.Adam(resumed.parameters(), lr=1e-2), **options)
    opt2.load_state_dict(checkpoint["optimizer"])
    _train(resumed, opt2, 3, 3, features)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    same_state(opt.state_dict(), opt2.state_dict())


def test_is_a_torch_optimizer_sharing_groups_and_state():
    model = TrunkHeads(K=3)
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = CAGrad(inner, c=0.5)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state and opt.defaults is inner.defaults
    _train(model, opt, 1, 0)
    assert len(inner.state) == len(list(model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    calls = []
    handle = opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    _train(model, opt, 2, 1)
    handle.remove()
    assert calls == [opt, opt]
    text = repr(opt)
    assert text.startswith("CAGrad(method='cagrad'") and "c=0.5" in text and "Adam" in text


def test_lr_schedulers_drive_the_wrapped_optimizer():
    model = TrunkHeads(K=3)
    opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for step in range(5):
            _train(model, opt, 1, step)
            step_lr.step()
            lrs.append(opt.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    plateau.step(1.0)
    plateau.step(2.0)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    restored = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    restored.load_state_dict(step_lr.state_dict())
    assert restored.last_epoch == 5


def test_imtl_log_scales_group_and_add_param_group():
    model = TrunkHeads(K=3)
    opt = IMTL(torch.optim.SGD(model.trunk.parameters(), lr=0.1), num_tasks=3, imtl_l=True, scale_group={"lr": 0.5})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.5
    opt.add_param_group({"params": list(model.heads.parameters())})  # roles are detected again
    s_before = opt.log_scales.detach().clone()
    _train(model, opt, 1, 0)
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.equal(opt.log_scales.detach(), s_before)
    assert {id(p) for p in opt.roles.shared} == {id(p) for p in model.trunk.parameters()}


def _nan_in_trunk(model):
    """A term that is 0 with gradient NaN in the trunk's first bias, not through z."""
    b = model.trunk[0].bias
    return (b - b.detach()).abs().sqrt().sum()


def _nan_in_head(model, k):
    w = model.heads[k].weight
    return (w - w.detach()).abs().sqrt().sum()


BAD_STEPS = {
    "nan_loss": (lambda model, losses: [losses[0], losses[1] * float("nan"), losses[2]], "task 1: loss is nan"),
    "inf_loss": (lambda model, losses: [losses[0], losses[1], losses[2] + float("inf")], "task 2: loss is inf"),
    "nan_shared_gradient": (lambda model, losses: [losses[0], losses[1], losses[2] + _nan_in_trunk(model)], "task 2: gradient"),
    "nan_head_gradient": (lambda model, losses: [losses[0] + _nan_in_head(model, 0), losses[1], losses[2]], "task 0: gradient of a task-specific"),
}


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("case", sorted(BAD_STEPS))
@pytest.mark.parametrize("wrapper, options", [(NashMTL, {}), (PCGrad, {"seed": 5}), (IMTL, {"imtl_l": True})], ids=["NashMTL", "PCGrad", "IMTL"])
def test_nonfinite_step_leaves_everything_untouched(wrapper, options, case, on_nonfinite, features):
    model = TrunkHeads(K=3, seed=3)
    opt = wrapper(torch.optim.Adam(model.parameters(), lr=1e-2), on_nonfinite=on_nonfinite, **options)
    _train(model, opt, 2, 0, features)
    x, y = batch(K=3, seed=50)
    losses, z = task_losses(model, x, y)
    opt.backward(losses, features=z if features else None)  # gradients present before the bad call
    before = snapshot(model, opt)
    corrupt, message = BAD_STEPS[case]
    losses, z = task_losses(model, x, y)
    bad = corrupt(model, losses)
    if features and case == "nan_shared_gradient":
        message = "shared parameters holds NaN/Inf"  # ∂L/∂z is finite: seen after the solve, undone
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteError, match=message):
            opt.backward(bad, features=z if features else None)
    else:
        assert opt.backward(bad, features=z if features else None) is None
        assert opt.num_skipped == 1 and opt.last is None and opt.diagnostics() == {}
        opt.step()  # does nothing
    after = snapshot(model, opt)
    assert after["optimizer"].pop("num_skipped") == (1 if on_nonfinite == "skip" else 0)
    before["optimizer"].pop("num_skipped")
    same_state(before, after)
    _train(model, opt, 1, 10, features)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_errors_name_the_problem():
    model = TrunkHeads(K=3)
    x, y = batch(K=3)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    losses, z = task_losses(model, x, y)
    with pytest.raises(ValueError, match="task 1 is not a scalar"):
        opt.backward([losses[0], torch.stack(losses), losses[2]])
    with pytest.raises(ValueError, match="task 2 does not require grad"):
        opt.backward([losses[0], losses[1], losses[2].detach()])
    free = torch.ones((), requires_grad=True) * 2  # requires grad but uses no parameter
    with pytest.raises(ValueError, match="task 1 does not depend on any trainable parameter"):
        opt.backward([losses[0], free, losses[2]])
    opt.backward(task_losses(model, x, y)[0])
    with pytest.raises(ValueError, match="got 2 losses; expected K = 3"):
        opt.backward(task_losses(model, x, y)[0][:2])
    losses, z = task_losses(model, x, y)
    with pytest.raises(ValueError, match="features"):
        opt.backward(losses, features=z.detach())
    with pytest.raises(TypeError, match="already a multi-task optimizer"):
        PCGrad(opt)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        PCGrad(model.parameters())
    with pytest.raises(ValueError, match="shared_params\\[0\\] is not a trainable parameter"):
        PCGrad(torch.optim.SGD(model.heads.parameters(), lr=0.1), shared_params=list(model.trunk.parameters()))
    for option, value in [("grad_mode", "vmap"), ("task_specific", "scaled"), ("on_nonfinite", "ignore"), ("distributed", "ring")]:
        with pytest.raises(ValueError, match=option):
            CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), **{option: value})
    with pytest.raises(TypeError, match="bogus"):
        CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), bogus=1)
    with pytest.raises(ValueError, match="not a state_dict of CAGrad"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="unknown method"):
        MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), method="nope")


def test_step_and_state_dict_hooks_run_with_an_lr_scheduler():
    model = TrunkHeads(K=3)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    calls = []
    opt.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append(("pre", optimizer.param_groups[0]["lr"])))
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(("post", optimizer.param_groups[0]["lr"])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for step in range(3):
            _train(model, opt, 1, step)
            scheduler.step()
    assert calls == [("pre", 0.1), ("post", 0.1), ("pre", 0.05), ("post", 0.05), ("pre", 0.025), ("post", 0.025)]
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)

    seen = []
    opt.register_state_dict_pre_hook(lambda optimizer: seen.append("save pre"))
    opt.register_state_dict_post_hook(lambda optimizer, state: {**state, "note": "kept"})
    opt.register_load_state_dict_pre_hook(lambda optimizer, state: seen.append(("load pre", state["note"])))
    opt.register_load_state_dict_post_hook(lambda optimizer: seen.append("load post"))
    state = opt.state_dict()
    assert state["note"] == "kept" and seen == ["save pre"]
    opt.load_state_dict(state)
    assert seen == ["save pre", ("load pre", "kept"), "load post"]


def test_grad_scaler_unscale_then_clip():
    model = TrunkHeads(K=3, seed=2, dtype=torch.float32)
    opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batch(K=3, dtype=torch.float32, seed=4)
    losses, _ = task_losses(model, x, y)
    opt.backward(losses, grad_scaler=scaler)
    scaled = [p.grad.clone() for p in model.parameters()]
    scaler.unscale_(opt)
    for p, g in zip(model.parameters(), scaled):
        torch.testing.assert_close(p.grad, g / 2.0**10, rtol=0, atol=0)  # a power of two: exact
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b - 0.1 * p.grad, rtol=1e-6, atol=1e-7)


def test_groups_and_state_stay_shared_after_loads_and_copies():
    model = TrunkHeads(K=3)
    opt = PCGrad(torch.optim.Adam(model.parameters(), lr=1e-2), seed=1)
    _train(model, opt, 1, 0)
    opt.optimizer.load_state_dict(opt.optimizer.state_dict())  # replaces the wrapped lists and dicts
    assert opt.param_groups is opt.optimizer.param_groups and opt.state is opt.optimizer.state
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups is opt.optimizer.param_groups and opt.state is opt.optimizer.state
    twin = copy.deepcopy(opt)
    assert twin.param_groups is twin.optimizer.param_groups and twin.param_groups is not opt.param_groups
    twin.optimizer.load_state_dict(opt.optimizer.state_dict())
    assert twin.param_groups is twin.optimizer.param_groups and twin.state is twin.optimizer.state
