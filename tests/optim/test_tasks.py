"""Tasks by name and steps with absent tasks: ``backward({"a": l_a, ...})`` equals the positional
call; a step without some tasks equals the float64 reference of the method on the present tasks'
gradients (heads of the present tasks: their plain gradient; absent heads: untouched); stateful
methods keep the absent tasks' state; unknown names and bad steps raise with nothing changed."""
import pytest
import torch

from mtlkernels import reference
from mtlkernels.optim import CAGrad, IMTL, MultiTaskOptimizer, NashMTL, NonFiniteError, PCGrad
from mtl_model import grads_of, same_state, snapshot, task_losses, wrapped_model

NAMES = ("depth", "seg", "normal")


def _expected_partial(model, x, y, present, direction):
    """.grad after a step over the ``present`` tasks: the trunk gets direction(J_present); the
    present heads their plain gradient; the absent heads nothing (None)."""
    losses, _ = task_losses(model, x, y)
    trunk = list(model.trunk.parameters())
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[k], trunk, retain_graph=True)])
                     for k in present])
    d = direction(J)
    expected, start = [], 0
    for p in trunk:
        expected.append(d[start:start + p.numel()].view_as(p))
        start += p.numel()
    for k, head in enumerate(model.heads):
        grads = torch.autograd.grad(losses[k], list(head.parameters()), retain_graph=True) if k in present else (None, None)
        expected += list(grads)
    return expected


def _assert_grads(actual, expected):
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_named_losses_equal_the_positional_call_and_name_the_diagnostics():
    model, x, y, opt = wrapped_model(CAGrad)
    model2, _, _, opt2 = wrapped_model(CAGrad)
    losses, _ = task_losses(model, x, y)
    opt.backward(dict(zip(NAMES, losses)))
    opt2.backward(task_losses(model2, x, y)[0])
    _assert_grads(grads_of(model), grads_of(model2))
    assert opt.task_names == NAMES and opt.num_tasks == 3 and opt.last_tasks == list(NAMES)
    flat, flat2 = opt.diagnostics(flat=True), opt2.diagnostics(flat=True)
    assert flat["weight/seg"] == flat2["weight/1"] and flat["cosine/depth_normal"] == flat2["cosine/0_2"]
    assert flat["loss/normal"] == flat2["loss/2"] and flat["conflicts"] == flat2["conflicts"]
    assert not any(key.startswith(("weight/0", "loss/0")) for key in flat)
    assert opt.diagnostics()["tasks"] == list(NAMES) and opt2.diagnostics()["tasks"] == [0, 1, 2]


@pytest.mark.parametrize("how", ["dict", "none"])
@pytest.mark.parametrize("absent", [[1], [0, 2]])
def test_absent_tasks_run_the_method_over_the_present_ones(how, absent):
    model, x, y, opt = wrapped_model(CAGrad, task_names=NAMES)
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))  # a full step: the heads are known as their tasks' own
    opt.zero_grad()
    present = [k for k in range(3) if k not in absent]
    expected = _expected_partial(model, x, y, present, lambda J: reference.cagrad(J, c=0.5, rescale=1).direction)
    losses, _ = task_losses(model, x, y)
    if how == "dict":
        opt.backward({NAMES[k]: losses[k] for k in present})
    else:
        opt.backward([None if k in absent else losses[k] for k in range(3)])
    _assert_grads(grads_of(model), expected)
    assert opt.last_tasks == [NAMES[k] for k in present] and opt.last.weights.shape == (len(present),)
    flat = opt.diagnostics(flat=True)
    assert {key for key in flat if key.startswith("weight/")} == {f"weight/{NAMES[k]}" for k in present}


def test_absent_tasks_unnamed_keep_their_positions_in_the_diagnostics():
    model, x, y, opt = wrapped_model(CAGrad)
    losses, _ = task_losses(model, x, y)
    opt.backward([losses[0], None, losses[2]])
    assert opt.num_tasks == 3 and opt.task_names is None and opt.last_tasks == [0, 2]
    flat = opt.diagnostics(flat=True)
    assert {"weight/0", "weight/2", "cosine/0_2", "loss/2"} <= set(flat) and "weight/1" not in flat


def test_nash_mtl_keeps_the_absent_tasks_warm_start():
    model, x, y, opt = wrapped_model(NashMTL, task_names=NAMES)
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    alpha = opt.weighting.state_dict()["alpha"].clone()
    opt.zero_grad()
    expected = _expected_partial(model, x, y, [0, 2], lambda J: reference.nash_mtl(J, max_norm=1.0).direction)
    losses, _ = task_losses(model, x, y)
    opt.backward({"depth": losses[0], "normal": losses[2]})
    _assert_grads(grads_of(model), expected)
    after = opt.weighting.state_dict()["alpha"]
    assert after.shape == (3,) and after[1] == alpha[1]  # the absent task's α, bit for bit
    assert not torch.equal(after[[0, 2]], alpha[[0, 2]])  # the present ones solved anew (a 2-task problem)
    # the next full step starts from the kept state and solves the 3-task problem
    opt.zero_grad()
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    torch.testing.assert_close(opt.weighting.state_dict()["alpha"], alpha, rtol=1e-9, atol=1e-12)


def test_nash_mtl_first_step_with_an_absent_task():
    model, x, y, opt = wrapped_model(NashMTL, task_names=NAMES)
    losses, _ = task_losses(model, x, y)
    opt.backward({"depth": losses[0], "seg": losses[1]})
    alpha = opt.weighting.state_dict()["alpha"]
    assert alpha.shape == (3,) and torch.isfinite(alpha).all() and alpha[2] == alpha[:2].mean()


def test_imtl_l_absent_task_log_scale_gets_no_gradient():
    model, x, y, opt = wrapped_model(IMTL, imtl_l=True, num_tasks=3)
    losses, _ = task_losses(model, x, y)
    opt.backward([losses[0], None, losses[2]])
    grad = opt.log_scales.grad
    assert grad[1] == 0
    torch.testing.assert_close(grad[[0, 2]], torch.stack([losses[0], losses[2]]).detach() - 1)  # s = 0: e⁰L − 1


def test_pcgrad_fixed_order_needs_every_task():
    model, x, y, opt = wrapped_model(PCGrad, order=torch.arange(3).repeat(3, 1))
    losses, _ = task_losses(model, x, y)
    with pytest.raises(ValueError, match=r"fixed order= needs all K = 3 tasks in every step; tasks \[1\] are absent"):
        opt.backward([losses[0], None, losses[2]])


def test_k_fixed_by_the_first_dict_then_subsets_are_allowed():
    model, x, y, opt = wrapped_model(MultiTaskOptimizer)
    losses, _ = task_losses(model, x, y)
    opt.backward(dict(zip(NAMES, losses)))
    opt.zero_grad()
    losses, _ = task_losses(model, x, y)
    opt.backward({"seg": losses[1], "depth": losses[0]})  # any key order; positions follow the names
    assert opt.last_tasks == ["depth", "seg"]


@pytest.mark.parametrize("bad, message", [
    (lambda l: {"depth": l[0], "sgmentation": l[1]}, r"unknown task name \['sgmentation'\]; the tasks are \['depth', 'seg', 'normal'\]"),
    (lambda l: [None, None, None], "every task is absent"),
    (lambda l: {}, "every task is absent"),
    (lambda l: [l[0], None], r"got 2 losses; expected K = 3 \(one per task, None for an absent one\)"),
    (lambda l: {0: l[0]}, r"keys must be task names \(str\)"),
])
def test_bad_task_steps_raise_and_change_nothing(bad, message):
    model, x, y, opt = wrapped_model(NashMTL, task_names=NAMES)
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    opt.step()
    losses, _ = task_losses(model, x, y)
    before = snapshot(model, opt)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.backward(bad(losses))
    after = snapshot(model, opt)
    same_state(after, before)
    assert opt.last_tasks == list(NAMES)


def test_non_finite_present_task_is_rejected_with_the_absent_state_kept():
    model, x, y, opt = wrapped_model(NashMTL, task_names=NAMES)
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    opt.step()
    losses, _ = task_losses(model, x, y)
    before = snapshot(model, opt)
    with pytest.raises(NonFiniteError, match="task 'normal': loss is nan"):
        opt.backward({"depth": losses[0], "normal": losses[2] * float("nan")})
    same_state(snapshot(model, opt), before)
    losses, _ = task_losses(model, x, y)  # the refused step used up the graph
    with pytest.raises(NonFiniteError, match=r"task 'normal': loss is nan"):  # by position: still named
        opt.backward([losses[0], None, losses[2] * float("nan")])
    losses, _ = task_losses(model, x, y)
    with pytest.raises(ValueError, match="loss of task 'seg' is not a scalar"):
        opt.backward({"depth": losses[0], "seg": torch.stack([losses[1], losses[1]])})
    same_state(snapshot(model, opt), before)


def test_unnamed_absent_step_errors_give_the_position_among_the_k():
    model, x, y, opt = wrapped_model(NashMTL)
    opt.backward(task_losses(model, x, y)[0])
    losses, _ = task_losses(model, x, y)
    with pytest.raises(NonFiniteError, match=r"task 2: loss is nan"):
        opt.backward([losses[0], None, losses[2] * float("nan")])


def test_first_dict_must_name_k_tasks_and_task_names_must_agree():
    model, x, y, opt = wrapped_model(CAGrad, num_tasks=3)
    losses, _ = task_losses(model, x, y)
    with pytest.raises(ValueError, match=r"got 2 named losses \['a', 'b'\] but K = 3"):
        opt.backward({"a": losses[0], "b": losses[1]})
    assert opt.task_names is None
    with pytest.raises(ValueError, match="num_tasks=2 but 3 task_names"):
        CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), num_tasks=2, task_names=NAMES)
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), task_names=["a", "a"])


def test_state_dict_keeps_the_names():
    model, x, y, opt = wrapped_model(NashMTL)
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    state = opt.state_dict()
    assert state["task_names"] == list(NAMES)
    model2, _, _, fresh = wrapped_model(NashMTL)
    fresh.load_state_dict(state)
    assert fresh.task_names == NAMES and fresh.num_tasks == 3
    model3, _, _, other = wrapped_model(NashMTL, task_names=["a", "b", "c"])
    before = snapshot(model3, other)
    with pytest.raises(ValueError, match="task names"):
        other.load_state_dict(state)
    same_state(snapshot(model3, other), before)


def test_first_step_with_an_absent_task_detects_the_heads_as_their_tasks_own():
    model, x, y, opt = wrapped_model(CAGrad, task_names=NAMES)
    losses, _ = task_losses(model, x, y)
    opt.backward({"depth": losses[0], "seg": losses[1]})
    assert {id(p) for p in opt.roles.shared} == {id(p) for p in model.trunk.parameters()}
    assert opt._evidence is not None and not opt._evidence.complete  # "normal" not yet seen: detected again next time
    # its head, which the other losses reach through torch.cat but do not use, is taken for its own: untouched
    assert model.heads[2].weight.grad is None and model.heads[2].bias.grad is None
    opt.zero_grad()
    opt.backward(dict(zip(NAMES, task_losses(model, x, y)[0])))
    assert opt._evidence.complete


def test_absent_task_on_the_features_path():
    from mtlkernels.optim import MGDAUB
    model, x, y, opt = wrapped_model(MGDAUB, task_names=NAMES)
    losses, z = task_losses(model, x, y)
    opt.backward(dict(zip(NAMES, losses)), features=z)
    opt.zero_grad()
    losses, z = task_losses(model, x, y)
    present = [0, 2]
    Jz = torch.stack([torch.autograd.grad(losses[k], z, retain_graph=True)[0].reshape(-1) for k in present])
    values = torch.stack([losses[k].detach() for k in present])
    w = reference.mgda(Jz, normalization="loss+", losses=values).weights
    trunk = list(model.trunk.parameters())
    expected = list(torch.autograd.grad(sum(float(wk) * losses[k] for wk, k in zip(w, present)), trunk, retain_graph=True))
    for k, head in enumerate(model.heads):
        expected += list(torch.autograd.grad(losses[k], list(head.parameters()), retain_graph=True)) if k in present else [None, None]
    opt.backward({"depth": losses[0], "normal": losses[2]}, features=z)
    _assert_grads(grads_of(model), expected)
    assert opt.last_tasks == ["depth", "normal"]
