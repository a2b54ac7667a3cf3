"""The loss-weighting wrappers (FAMO, UW, DWA, RLW, GradNorm), step by step against torchjd's
scalarizers (FAMO, UW, DWA) and the float64 objectives of the papers
(:mod:`mtlkernels.reference.loss_weighting`, differentiated by autograd); their optimizer
contract: checkpoint round trip, non-finite steps that change nothing, GradScaler, errors."""
import copy
import io

import pytest
import torch

import mtlkernels as mk
from mtlkernels.optim import DWA, FAMO, RLW, UW, GradNorm, NonFiniteError
from mtlkernels.reference import loss_weighting as ref
from mtl_model import TrunkHeads, batch, same_state, snapshot, task_losses

K = 3


def _losses(model, seed):
    x, y = batch(K=K, seed=seed)
    return task_losses(model, x, y)[0]


def _params_close(a, b, rtol=1e-6, atol=1e-8):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q.to(p.dtype), rtol=rtol, atol=atol)


# -- FAMO ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_losses", [None, [0.05, 0.1, 0.0]], ids=["no_bound", "bounds"])
def test_famo_matches_torchjd_with_same_batch_updates(min_losses):
    """FAMO's paper loop — backward, step, losses recomputed on the same batch, update — against
    torchjd's FAMO scalarizer (which differentiates the log-loss objective itself) for 8 steps."""
    from torchjd.scalarization import FAMO as TorchjdFAMO

    ours, theirs = TrunkHeads(K=K, seed=4), TrunkHeads(K=K, seed=4)
    opt = FAMO(torch.optim.SGD(ours.parameters(), lr=0.05), min_losses=min_losses)
    bounds = None if min_losses is None else torch.tensor(min_losses, dtype=torch.float32)
    scalarizer = TorchjdFAMO(K, min_losses=bounds)
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.05)
    for step in range(8):
        x, y = batch(K=K, seed=step)
        opt.zero_grad()
        opt.backward(task_losses(ours, x, y)[0])
        opt.step()
        with torch.no_grad():
            opt.update(task_losses(ours, x, y)[0])
        sgd.zero_grad()
        scalarizer(torch.stack(task_losses(theirs, x, y)[0])).backward()
        sgd.step()
        with torch.no_grad():
            scalarizer.update(torch.stack(task_losses(theirs, x, y)[0]).float())
        _params_close(ours, theirs, rtol=1e-5, atol=1e-6)  # torchjd keeps ξ in float32
        torch.testing.assert_close(opt.logits, scalarizer._w.detach().double(), rtol=1e-4, atol=1e-6)


def test_famo_next_step_convention_follows_the_paper_objective_and_adam():
    """Default convention: the next backward's losses are Lₖ⁺. Each step's .grad equals autograd on
    the reference objective with the reference logits, which follow the reference Adam update."""
    model = TrunkHeads(K=K, seed=5)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=0.05), lr=0.1, weight_decay=1e-2)
    logits, moments, before = torch.zeros(K, dtype=torch.float64), (torch.zeros(K), torch.zeros(K), 0), None
    for step in range(6):
        losses = _losses(model, step)
        values = torch.stack([l.detach() for l in losses])
        if before is not None:
            logits, moments = ref.famo_logit_step(logits, moments, before, values, lr=0.1, weight_decay=1e-2)
        expected = torch.autograd.grad(ref.famo_objective(torch.stack(losses), logits), list(model.parameters()), retain_graph=True)
        opt.zero_grad()
        result = opt.backward(losses)
        assert result.diagnostics["logits_updated"] == (step > 0)
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.logits, logits, rtol=1e-10, atol=1e-12)
        assert float(result.weights.sum()) == pytest.approx(1.0)
        opt.step()
        before = values


def test_famo_rejects_losses_at_or_below_their_bound_naming_the_task():
    model = TrunkHeads(K=K)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=0.1))
    losses = _losses(model, 1)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"task 1: loss -0\.5 ≤ min_losses 0.*min_losses="):
        opt.backward([losses[0], losses[1] * 0 - 0.5, losses[2]])
    same_state(before, snapshot(model, opt))
    opt2 = FAMO(torch.optim.SGD(model.parameters(), lr=0.1), min_losses=[-1.0, -1.0, -1.0])
    opt2.backward([losses[0], losses[1] * 0 - 0.5, losses[2]])  # a bound below makes it valid
    with pytest.raises(ValueError, match="min_losses has 2 entries"):
        FAMO(torch.optim.SGD(model.parameters(), lr=0.1), min_losses=[0.0, 0.0], num_tasks=3)
    with pytest.raises(ValueError, match="FAMO.update needs the losses before the step"):
        FAMO(torch.optim.SGD(model.parameters(), lr=0.1)).update([1.0, 2.0, 3.0])


def test_famo_update_with_a_nonfinite_loss_leaves_the_logits():
    model = TrunkHeads(K=K)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.backward(_losses(model, 1))
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(NonFiniteError, match="task 2: loss is nan"):
        opt.update([1.0, 1.0, float("nan")])
    same_state(state, opt.state_dict())


# -- UW -----------------------------------------------------------------------------------------------
def test_uw_matches_torchjd_and_the_paper_objective():
    from torchjd.scalarization import UW as TorchjdUW

    ours, theirs = TrunkHeads(K=K, seed=6), TrunkHeads(K=K, seed=6)
    opt = UW(torch.optim.Adam(ours.parameters(), lr=0.02))
    scalarizer = TorchjdUW(K).double()
    adam = torch.optim.Adam([*theirs.parameters(), *scalarizer.parameters()], lr=0.02)
    for step in range(6):
        losses = _losses(ours, step)
        s = (torch.zeros(K, dtype=torch.float64) if opt.log_variances is None else opt.log_variances.detach().clone()).requires_grad_()
        expected = torch.autograd.grad(ref.uw_objective(torch.stack(losses), s), [*ours.parameters(), s], retain_graph=True)
        opt.zero_grad()
        opt.backward(losses)
        for p, g in zip([*ours.parameters(), opt.log_variances], expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
        opt.step()
        adam.zero_grad()
        scalarizer(torch.stack(_losses(theirs, step))).backward()
        adam.step()
        _params_close(ours, theirs, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.log_variances.detach(), scalarizer.log_var.detach(), rtol=1e-10, atol=1e-12)


# -- DWA ----------------------------------------------------------------------------------------------
def test_dwa_matches_torchjd_and_the_paper_over_epochs():
    from torchjd.scalarization import DWA as TorchjdDWA

    ours, theirs = TrunkHeads(K=K, seed=7), TrunkHeads(K=K, seed=7)
    opt = DWA(torch.optim.SGD(ours.parameters(), lr=0.05), temperature=0.5)
    scalarizer = TorchjdDWA(temperature=0.5)
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.05)
    averages = []
    for epoch in range(5):
        epoch_losses = []
        for b in range(3):
            result = opt.backward(_losses(ours, 10 * epoch + b))
            assert result.weights.tolist() == pytest.approx(ref.dwa_weights(averages, 0.5, K), rel=1e-12)
            epoch_losses.append(result.losses.tolist())
            opt.step()
            opt.zero_grad()
            sgd.zero_grad()
            scalarizer(torch.stack(_losses(theirs, 10 * epoch + b))).backward()
            sgd.step()
            _params_close(ours, theirs, rtol=1e-10, atol=1e-12)
        averages.append([sum(col) / 3 for col in zip(*epoch_losses)])
        opt.end_epoch()
        scalarizer.step()
    assert result.diagnostics["epochs_seen"] == 2


# -- RLW ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_draws_reproducible_simplex_weights(distribution):
    model = TrunkHeads(K=K)
    first = RLW(torch.optim.SGD(model.parameters(), lr=0.0), distribution=distribution, seed=3)
    second = RLW(torch.optim.SGD(model.parameters(), lr=0.0), distribution=distribution, seed=3)
    draws = []
    for step in range(200):
        a = first.backward(_losses(model, step % 3)).weights
        b = second.backward(_losses(model, step % 3)).weights
        assert torch.equal(a, b) and (a > 0).all() and float(a.sum()) == pytest.approx(1.0)
        draws.append(a)
    draws = torch.stack(draws)
    assert torch.allclose(draws.mean(0), torch.full((K,), 1 / K, dtype=torch.float64), atol=0.03)  # exchangeable
    if distribution == "dirichlet":  # Dirichlet(1): each weight is Beta(1, K−1), variance (K−1)/(K²(K+1))
        assert float(draws.var(0).mean()) == pytest.approx((K - 1) / (K * K * (K + 1)), rel=0.25)
    if distribution == "normal":  # softmax(N(0, I)) against a direct draw with the same generator
        g = torch.Generator().manual_seed(3)
        torch.testing.assert_close(draws[0], torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0))


# -- GradNorm -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_gradnorm_follows_the_paper_step_by_step(alpha):
    """The network's .grad is ∇ Σ wᵢLᵢ; w's gradient is ∂L_grad/∂w of the reference objective
    (autograd), with ‖∇_W Lᵢ‖ by autograd on W; after the step Σ w = K."""
    model = TrunkHeads(K=K, seed=8)
    layer = model.trunk[2].weight
    opt = GradNorm(torch.optim.SGD(model.parameters(), lr=0.05), layer=layer, alpha=alpha, weight_group={"lr": 0.1})
    w, initial = torch.ones(K, dtype=torch.float64), None
    for step in range(6):
        losses = _losses(model, step)
        values = torch.stack([l.detach() for l in losses])
        initial = values if initial is None else initial
        norms = torch.stack([torch.autograd.grad(l, layer, retain_graph=True)[0].norm() for l in losses])
        w_var = w.clone().requires_grad_()
        (w_grad,) = torch.autograd.grad(ref.gradnorm_loss(w_var, norms, values, initial, alpha), w_var)
        expected = torch.autograd.grad(sum(wi * l for wi, l in zip(w, losses)), list(model.parameters()), retain_graph=True)
        opt.zero_grad()
        result = opt.backward(losses)
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.task_weights.grad, w_grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.diagnostics["layer_grad_norm"], norms, rtol=1e-10, atol=1e-12)
        opt.step()
        w = w - 0.1 * w_grad
        w = K * w / w.sum()
        torch.testing.assert_close(opt.task_weights.detach(), w, rtol=1e-12, atol=1e-14)
        assert float(opt.task_weights.sum()) == pytest.approx(K)


def test_gradnorm_layer_must_be_an_optimized_parameter():
    model = TrunkHeads(K=K)
    with pytest.raises(ValueError, match="layer\\[0\\] is not a parameter of the wrapped optimizer"):
        GradNorm(torch.optim.SGD(model.heads.parameters(), lr=0.1), layer=model.trunk[0].weight)
    with pytest.raises(ValueError, match="layer must be"):
        GradNorm(torch.optim.SGD(model.parameters(), lr=0.1), layer=[])


# -- the optimizer contract ---------------------------------------------------------------------------
def _gradnorm(params, **kw):
    params = list(params)
    return GradNorm(torch.optim.Adam(params, lr=1e-2), layer=params[2], **kw)


WRAPPERS = {
    "FAMO": lambda params, **kw: FAMO(torch.optim.Adam(params, lr=1e-2), **kw),
    "UW": lambda params, **kw: UW(torch.optim.Adam(params, lr=1e-2), **kw),
    "DWA": lambda params, **kw: DWA(torch.optim.Adam(params, lr=1e-2), **kw),
    "RLW": lambda params, **kw: RLW(torch.optim.Adam(params, lr=1e-2), seed=4, **kw),
    "GradNorm": _gradnorm,
}


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        opt.backward(_losses(model, 100 + step))
        opt.step()
        if isinstance(opt, DWA) and step % 2 == 1:
            opt.end_epoch()


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_state_dict_round_trip_continues_bit_identically(name):
    model = TrunkHeads(K=K, seed=1)
    opt = WRAPPERS[name](model.parameters())
    _train(model, opt, 5, 0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    _train(model, opt, 4, 5)
    resumed = TrunkHeads(K=K, seed=99)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    resumed.load_state_dict(checkpoint["model"])
    opt2 = WRAPPERS[name](resumed.parameters())
    opt2.load_state_dict(checkpoint["optimizer"])
    _train(resumed, opt2, 4, 5)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    same_state(opt.state_dict(), opt2.state_dict())
    with pytest.raises(ValueError):  # a state for other K changes nothing
        WRAPPERS[name](TrunkHeads(K=2).parameters(), num_tasks=2).load_state_dict(checkpoint["optimizer"])


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("case", ["nan_loss", "inf_loss", "nan_gradient"])
@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_nonfinite_step_changes_nothing(name, case, on_nonfinite):
    model = TrunkHeads(K=K, seed=3)
    opt = WRAPPERS[name](model.parameters(), on_nonfinite=on_nonfinite)
    _train(model, opt, 3, 0)
    opt.backward(_losses(model, 50))  # gradients present before the bad call
    before = snapshot(model, opt)
    generator_state = opt.generator.get_state() if isinstance(opt, RLW) else None
    losses = _losses(model, 50)
    b = model.trunk[0].bias
    bad, message = {
        "nan_loss": ([losses[0], losses[1] * float("nan"), losses[2]], "task 1: loss is nan"),
        "inf_loss": ([losses[0], losses[1], losses[2] + float("inf")], "task 2: loss is inf"),
        "nan_gradient": ([losses[0], losses[1], losses[2] + (b - b.detach()).abs().sqrt().sum()], "gradient of Σ wₖ·Lₖ holds NaN"),
    }[case]
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteError, match=message):
            opt.backward(bad)
    else:
        assert opt.backward(bad) is None and opt.diagnostics() == {}
        opt.step()  # does nothing
    after = snapshot(model, opt)
    assert after["optimizer"].pop("num_skipped") == (1 if on_nonfinite == "skip" else 0)
    before["optimizer"].pop("num_skipped")
    same_state(before, after)
    if generator_state is not None:
        assert torch.equal(opt.generator.get_state(), generator_state)
    _train(model, opt, 1, 10)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_grad_scaler_scaled_step_equals_the_unscaled_one(name):
    """A power-of-two scale: the scaled step (then unscaled by scaler.step) equals the plain one,
    learned weights included; an overflowing scale skips the step and leaves them."""
    plain_model, scaled_model = TrunkHeads(K=K, seed=2, dtype=torch.float32), TrunkHeads(K=K, seed=2, dtype=torch.float32)
    plain, scaled = WRAPPERS[name](plain_model.parameters()), WRAPPERS[name](scaled_model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    for step in range(3):
        x, y = batch(K=K, seed=step, dtype=torch.float32)
        plain.zero_grad()
        plain.backward(task_losses(plain_model, x, y)[0])
        plain.step()
        scaled.zero_grad()
        scaled.backward(task_losses(scaled_model, x, y)[0], grad_scaler=scaler)
        scaler.step(scaled)
        scaler.update()
    _params_close(plain_model, scaled_model, rtol=1e-5, atol=1e-6)
    for p, q in zip(plain._owned, scaled._owned):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    state = copy.deepcopy(scaled.state_dict()["method"])
    params = [p.detach().clone() for p in scaled_model.parameters()]
    overflow = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    scaled.zero_grad()
    x, y = batch(K=K, seed=9, dtype=torch.float32)
    scaled.backward([l * 1e10 for l in task_losses(scaled_model, x, y)[0]], grad_scaler=overflow)
    overflow.step(scaled)
    overflow.update()
    assert overflow.get_scale() == 2.0**126
    same_state(state, scaled.state_dict()["method"])
    for p, q in zip(scaled_model.parameters(), params):
        assert torch.equal(p, q)


def test_exports_and_errors():
    assert mk.FAMO is FAMO and mk.UW is UW and mk.DWA is DWA and mk.RLW is RLW and mk.GradNorm is GradNorm
    model = TrunkHeads(K=K)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="single scalar loss"):
        opt.backward(sum(_losses(model, 1)))
    with pytest.raises(ValueError, match="distributed='auto', 'none' or 'replicated'"):
        UW(torch.optim.SGD(model.parameters(), lr=0.1), distributed="sharded")
    with pytest.raises(ValueError, match="temperature"):
        DWA(torch.optim.SGD(model.parameters(), lr=0.1), temperature=0.0)
    with pytest.raises(ValueError, match="distribution"):
        RLW(torch.optim.SGD(model.parameters(), lr=0.1), distribution="bernoulli")
    with pytest.raises(ValueError, match="lr"):
        FAMO(torch.optim.SGD(model.parameters(), lr=0.1), lr=-1.0)
    assert "FAMO(min_losses=None, lr=0.025" in repr(opt)
    opt.backward(_losses(model, 1))
    flat = opt.diagnostics(flat=True)
    assert set(flat) >= {"weight/0", "loss/2", "task_weight/1", "logits_updated"}


def test_all_finite_tells_overflowing_sums_from_nonfinite_entries():
    from mtlkernels.optim.nonfinite import all_finite

    huge = torch.full((8,), 3e38)  # finite entries whose float32 sum overflows
    assert all_finite([huge, torch.ones(3, dtype=torch.float64)])
    assert not all_finite([huge, torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("inf"), -float("inf")], dtype=torch.bfloat16)])
    assert all_finite([])


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_one_task(name):
    model = TrunkHeads(K=1, seed=2)
    opt = WRAPPERS[name](model.parameters())
    x, y = batch(K=1, seed=3)
    for _ in range(3):
        opt.zero_grad()
        losses = task_losses(model, x, y)[0]
        expected = torch.autograd.grad(losses[0], list(model.parameters()), retain_graph=True)
        result = opt.backward(losses)
        w = float(result.weights[0])
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, w * g, rtol=1e-12, atol=1e-14)
        opt.step()
        if isinstance(opt, DWA):
            opt.end_epoch()


def test_famo_with_losses_twelve_orders_apart_and_a_constant_task():
    """Adversarial scales: losses multiplied by 1e-6 and 1e6, and a task whose loss does not
    depend on the parameters (zero gradient): .grad still equals autograd on the objective."""
    model = TrunkHeads(K=K, seed=9)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=1e-9))
    logits, moments, before = torch.zeros(K, dtype=torch.float64), (torch.zeros(K), torch.zeros(K), 0), None
    for step in range(3):
        base = _losses(model, step)
        anchor = sum(p.sum() for p in model.parameters()) * 0  # in the graph, gradient zero
        losses = [base[0] * 1e-6, base[1] * 1e6, anchor + 2.0]
        values = torch.stack([l.detach() for l in losses])
        if before is not None:
            logits, moments = ref.famo_logit_step(logits, moments, before, values, lr=0.025, weight_decay=1e-3)
        expected = torch.autograd.grad(ref.famo_objective(torch.stack(losses), logits), list(model.parameters()), retain_graph=True)
        opt.zero_grad()
        opt.backward(losses)
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-20)
        opt.step()
        before = values


@pytest.mark.parametrize("wrapper, options", [(FAMO, {}), (UW, {}), (DWA, {}), (RLW, {"seed": 0})],
                         ids=["FAMO", "UW", "DWA", "RLW"])
def test_named_losses_give_the_same_steps_as_a_list_and_named_diagnostics(wrapper, options):
    names = ["a", "b", "c"]
    by_name, by_position = TrunkHeads(K=K, seed=8), TrunkHeads(K=K, seed=8)
    named = wrapper(torch.optim.SGD(by_name.parameters(), lr=0.05), **options)
    plain = wrapper(torch.optim.SGD(by_position.parameters(), lr=0.05), **options)
    for step in range(3):
        losses = _losses(by_name, step)
        named.zero_grad()
        pairs = list(zip(names, losses))
        named.backward(dict(pairs if step == 0 else reversed(pairs)))  # the first dict's order fixes the tasks
        named.step()
        plain.zero_grad()
        plain.backward(_losses(by_position, step))
        plain.step()
        _params_close(by_name, by_position, rtol=0, atol=0)
    assert named.task_names == ("a", "b", "c") and named.state_dict()["task_names"] == names
    flat = named.diagnostics(flat=True)
    assert {"weight/a", "loss/c"} <= set(flat) and not any(key.endswith("/0") for key in flat)
    before = snapshot(by_name, named)
    with pytest.raises(ValueError, match=r"no loss for task\(s\) \['b'\]"):
        named.backward({"a": losses[2], "c": losses[0]})
    with pytest.raises(ValueError, match="unknown task name"):
        named.backward({"a": losses[0], "b": losses[1], "x": losses[2]})
    same_state(before, snapshot(by_name, named))


def test_famo_update_takes_the_losses_by_name():
    model = TrunkHeads(K=K, seed=9)
    opt = FAMO(torch.optim.SGD(model.parameters(), lr=0.05), task_names=["a", "b", "c"])
    twin_model = copy.deepcopy(model)
    twin = FAMO(torch.optim.SGD(twin_model.parameters(), lr=0.05))
    for o, m in ((opt, model), (twin, twin_model)):
        o.zero_grad()
        o.backward(_losses(m, 0))
        o.step()
    after = _losses(model, 0)
    with pytest.raises(ValueError, match="needs every task's loss"):
        opt.update({"a": after[0]})
    opt.update({"c": after[2], "a": after[0], "b": after[1]})
    twin.update(_losses(twin_model, 0))
    torch.testing.assert_close(opt.logits, twin.logits, rtol=0, atol=0)
