"""Training patterns and inputs that used to give wrong gradients or partial writes: a skipped
step followed by a good one, a state_dict that does not fit, losses that are not a sequence,
features the losses do not reach, roles seen on a batch where a task is absent, parameters of
several dtypes. Each bad input raises naming the problem and leaves everything bit-identical."""
import copy

import pytest
import torch
import torch.nn as nn

from mtlkernels import reference
from mtlkernels.optim import CAGrad, IMTL, MGDAUB, NashMTL, PCGrad
from mtl_model import TrunkHeads, batch, same_state, snapshot, task_losses


def _train(model, opt, steps, seed=0, K=3):
    for step in range(steps):
        x, y = batch(K=K, seed=seed + step)
        opt.zero_grad(set_to_none=True)
        opt.backward(task_losses(model, x, y)[0])
        opt.step()


def _wrapper_facts(opt):
    """The wrapper's own bookkeeping that a rejected call must leave as it was."""
    return {
        "num_tasks": opt.num_tasks,
        "groups": [len(group["params"]) for group in opt.param_groups],
        "roles": None if opt.roles is None else (
            [id(p) for p in opt.roles.shared], [id(p) for p in opt.roles.private], list(opt.roles.private_tasks)
        ),
        "skip": opt._skip_step,
        "num_skipped": opt.num_skipped,
    }


# -- on_nonfinite="skip" ----------------------------------------------------------------------------
def test_a_good_backward_after_a_skipped_one_steps():
    model = TrunkHeads(K=3, seed=1)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), on_nonfinite="skip")
    x, y = batch(K=3, seed=2)
    losses, _ = task_losses(model, x, y)
    assert opt.backward([losses[0], losses[1] * float("nan"), losses[2]]) is None  # skipped: `continue`
    opt.zero_grad(set_to_none=True)
    assert opt.backward(task_losses(model, x, y)[0]) is not None
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g, rtol=1e-12, atol=1e-15)  # plain SGD: p ← p − lr·g
    assert opt.num_skipped == 1


def test_a_skipped_backward_still_skips_the_next_step():
    model = TrunkHeads(K=3, seed=1)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), on_nonfinite="skip")
    _train(model, opt, 1)
    x, y = batch(K=3, seed=2)
    losses, _ = task_losses(model, x, y)
    assert opt.backward([losses[0], losses[1], losses[2] + float("inf")]) is None
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(model.parameters(), before))


# -- load_state_dict -------------------------------------------------------------------------------
def _trained_pair(wrapper, options, other_options=None):
    """Two wrappers over equal models trained differently: loading b's state into a changes it."""
    a_model, b_model = TrunkHeads(K=3, seed=4), TrunkHeads(K=3, seed=4)
    a = wrapper(torch.optim.Adam(a_model.parameters(), lr=1e-2), **options)
    b = wrapper(torch.optim.Adam(b_model.parameters(), lr=3e-2), **(options if other_options is None else other_options))
    _train(a_model, a, 2, seed=0)
    _train(b_model, b, 3, seed=10)
    return a_model, a, b


def _corrupt(state, where, value):
    state = copy.deepcopy(state)
    target = state
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return state


_NAN_ALPHA = torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)
#: (wrapper, its options, the source's options (None: the same), the entry to corrupt (None: the
#: source's state as is), the value put there, the expected message)
LOAD_CASES = {
    "nash_alpha_nonfinite": (NashMTL, {}, None, ("method", "weighting", "alpha"), _NAN_ALPHA, "non-finite"),
    "nash_bad_step": (NashMTL, {}, None, ("method", "weighting", "step"), -1, "step"),
    "pcgrad_generator_garbage": (PCGrad, {"seed": 3}, None, ("method", "generator"), torch.zeros(3, dtype=torch.uint8),
                                 "generator state"),
    "pcgrad_without_generator": (PCGrad, {}, {"seed": 3}, None, None, "global RNG"),
    "imtl_scales_shape": (IMTL, {"imtl_l": True}, None, ("method", "log_scales"), torch.zeros(4, dtype=torch.float64), r"shape \(3,\)"),
    "imtl_g_gets_scales": (IMTL, {}, {"imtl_l": True}, None, None, "parameter groups of sizes"),
    "bad_num_skipped": (CAGrad, {}, None, ("num_skipped",), -2, "num_skipped"),
    "method_not_a_dict": (CAGrad, {}, None, ("method",), [], "'weighting'"),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_load_state_dict_that_does_not_fit_changes_nothing(case):
    wrapper, options, other_options, where, value, message = LOAD_CASES[case]
    model, opt, source = _trained_pair(wrapper, options, other_options)
    state = source.state_dict() if where is None else _corrupt(source.state_dict(), where, value)
    before, facts = snapshot(model, opt), _wrapper_facts(opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    same_state(snapshot(model, opt), before)
    assert _wrapper_facts(opt) == facts
    _train(model, opt, 1, seed=20)  # and it trains on


def test_load_state_dict_before_k_is_known_changes_nothing():
    """IMTL-L adds its log-scales group once K is known: a rejected state must not add it."""
    model, _, source = _trained_pair(IMTL, {"imtl_l": True})
    fresh = IMTL(torch.optim.Adam(model.parameters(), lr=1e-2), imtl_l=True)
    bad = _corrupt(source.state_dict(), ("method", "weighting"), {"alpha": None})
    before, facts = snapshot(model, fresh), _wrapper_facts(fresh)
    with pytest.raises(ValueError, match="stateless"):
        fresh.load_state_dict(bad)
    same_state(snapshot(model, fresh), before)
    assert _wrapper_facts(fresh) == facts and fresh.log_scales is None and len(fresh.param_groups) == 1
    fresh.load_state_dict(source.state_dict())  # the good one loads whole
    assert fresh.num_tasks == 3 and len(fresh.param_groups) == 2
    assert torch.equal(fresh.log_scales.detach(), source.log_scales.detach())
    same_state(fresh.state_dict(), source.state_dict())


# -- losses that are not a sequence of tensors -----------------------------------------------------
@pytest.mark.parametrize("losses, error, message", [
    (1.0, TypeError, "sequence of K scalar tensors or a 1-D tensor; got a float"),
    (None, TypeError, "got a NoneType"),
])
def test_losses_that_are_not_a_sequence(losses, error, message):
    model = TrunkHeads(K=3, seed=5)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    _train(model, opt, 1)
    before, facts = snapshot(model, opt), _wrapper_facts(opt)
    with pytest.raises(error, match=message):
        opt.backward(losses)
    x, y = batch(K=3)
    with pytest.raises(ValueError, match="single scalar loss; expected K = 3: pass the K task losses as a list"):
        opt.backward(sum(task_losses(model, x, y)[0]))  # the summed loss, a 0-d tensor
    same_state(snapshot(model, opt), before)
    assert _wrapper_facts(opt) == facts


# -- features the losses do not reach --------------------------------------------------------------
class _SideBySide(torch.autograd.Function):
    """z and the heads' outputs as two outputs of one node, as a compiled forward returns them."""

    @staticmethod
    def forward(ctx, z, out):
        return z.clone(), out.clone()

    @staticmethod
    def backward(ctx, grad_z, grad_out):
        return grad_z, grad_out


def _side_by_side(model, x, y):
    z, out = _SideBySide.apply(*model(x))
    return [((out[:, k] - y[:, k]) ** 2).mean() for k in range(y.shape[1])], z


def _detached(model, x, y):
    losses, z = task_losses(model, x, y)
    return losses, z.detach().requires_grad_()


def _one_task_around_z(model, x, y):
    losses, z = task_losses(model, x, y)
    losses[2] = (model.trunk[0].weight ** 2).sum()  # uses the trunk, but not through z
    return losses, z


UNREACHED = {
    "detached": (_detached, "tasks 0, 1, 2 does not reach the features"),
    "side_by_side": (_side_by_side, "tasks 0, 1, 2 does not reach the features"),
    "one_task_around": (_one_task_around_z, "task 2 does not reach the features"),
}


@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
@pytest.mark.parametrize("case", sorted(UNREACHED))
@pytest.mark.parametrize("wrapper", [NashMTL, MGDAUB, CAGrad, IMTL])
@pytest.mark.parametrize("trained", [False, True], ids=["first", "later"])
def test_features_the_losses_do_not_reach(wrapper, case, grad_mode, trained):
    model = TrunkHeads(K=3, seed=6)
    opt = wrapper(torch.optim.Adam(model.parameters(), lr=1e-2), grad_mode=grad_mode)
    if trained:
        for step in range(2):
            x, y = batch(K=3, seed=30 + step)
            opt.zero_grad(set_to_none=True)
            losses, z = task_losses(model, x, y)
            opt.backward(losses, features=z)
            opt.step()
    forward, message = UNREACHED[case]
    x, y = batch(K=3, seed=40)
    losses, z = forward(model, x, y)
    before, facts = snapshot(model, opt), _wrapper_facts(opt)
    with pytest.raises(ValueError, match=message):
        opt.backward(losses, features=z)
    same_state(snapshot(model, opt), before)
    assert _wrapper_facts(opt) == facts


@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
def test_features_reached_with_a_zero_gradient_are_fine(grad_mode):
    """A task without labels in the batch reaches z with gradient 0: a legitimate step."""
    model = TrunkHeads(K=3, seed=7)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), c=0.5, grad_mode=grad_mode)
    x, y = batch(K=3, seed=8)
    z, out = model(x)
    present = torch.zeros(x.shape[0], dtype=torch.bool)  # task 1 has no labels here
    losses = [((out[:, 0] - y[:, 0]) ** 2).mean(),
              ((out[:, 1] - y[:, 1]) ** 2 * present).sum() / present.sum().clamp(min=1),
              ((out[:, 2] - y[:, 2]) ** 2).mean()]
    Jz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].reshape(-1) for l in losses])
    assert torch.count_nonzero(Jz[1]) == 0
    last = opt.backward(losses, features=z)
    torch.testing.assert_close(last.weights, reference.cagrad(Jz, c=0.5).weights, rtol=1e-9, atol=1e-12)


def test_every_feature_must_feed_some_task():
    model = TrunkHeads(K=3, seed=8)
    opt = MGDAUB(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batch(K=3)
    losses, z = task_losses(model, x, y)
    stray = torch.ones(3, requires_grad=True) * 2
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"features\[1\] reached by no task"):
        opt.backward(losses, features=[z, stray])
    same_state(snapshot(model, opt), before)
    # two features, each reached by some of the tasks: fine
    z, _ = model(x)
    left, right = z[:, :2], z[:, 2:]
    losses = [(left ** 2).mean(), (right ** 2).mean(), (left.sum(1) * right.sum(1)).mean()]
    assert opt.backward(losses, features=[left, right]) is not None


# -- roles seen on a batch where a task is absent --------------------------------------------------
class _Branchy(nn.Module):
    """x → z = trunk(x); u = mid(z) feeds heads 0 and 1; head 2 reads z. Each head its own module,
    so every loss reaches exactly the parameters it uses."""

    def __init__(self, seed=0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.mid = nn.Sequential(nn.Linear(8, 5), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(5, 1), nn.Linear(5, 1), nn.Linear(8, 1)])
        self.to(dtype)

    def losses(self, x, y, absent=()):
        z = self.trunk(x)
        u = self.mid(z)
        outs = [self.heads[0](u), self.heads[1](u), self.heads[2](z)]
        losses = []
        for k, out in enumerate(outs):
            labelled = torch.full((x.shape[0],), k not in absent, dtype=torch.bool)  # no labels: all False
            losses.append(((out[:, 0] - y[:, k]) ** 2 * labelled).sum() / labelled.sum().clamp(min=1))
        return losses


def _masked_losses(model, x, y, absent):
    """TrunkHeads' losses (heads joined by torch.cat) with the tasks in ``absent`` unlabelled."""
    z, out = model(x)
    labelled = [torch.full((x.shape[0],), k not in absent, dtype=torch.bool) for k in range(y.shape[1])]
    return [((out[:, k] - y[:, k]) ** 2 * m).sum() / m.sum().clamp(min=1) for k, m in enumerate(labelled)]


def _ids(params):
    return [id(p) for p in params]


def test_an_absent_task_does_not_make_a_shared_layer_private():
    model = _Branchy(seed=1)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), c=0.5)
    x, y = batch(K=3, seed=2)
    opt.backward(model.losses(x, y, absent={1}))  # the first batch has no labels for task 1
    shared = list(model.trunk.parameters()) + list(model.mid.parameters())
    assert _ids(opt.roles.shared) == _ids(shared)  # mid is tasks 0 and 1's, not task 0's own
    assert opt.roles.private_tasks == [(0,), (0,), (1,), (1,), (2,), (2,)]
    # the step equals the manual one over these roles: CAGrad on the rows of the shared layers
    # (task 1's row is zero), heads the plain gradient of Σ Lₖ
    losses = model.losses(x, y, absent={1})
    J = torch.stack([
        torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                   for p, g in zip(shared, torch.autograd.grad(l, shared, retain_graph=True, allow_unused=True))])
        for l in losses
    ])
    assert torch.count_nonzero(J[1]) == 0
    d = reference.cagrad(J, c=0.5).direction
    heads = [p for h in model.heads for p in h.parameters()]
    expected = list(torch.split(d, [p.numel() for p in shared])) + [g.reshape(-1) for g in torch.autograd.grad(sum(losses), heads)]
    for p, e in zip(shared + heads, expected):
        torch.testing.assert_close(p.grad.reshape(-1), e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("first", [{1}, {0}], ids=["task1-absent", "task0-absent"])
def test_roles_do_not_depend_on_which_batch_came_first(first):
    """K = 2, heads joined by torch.cat: the unlucky batch first, then a normal one, gives the
    roles and the gradients of a normal batch first."""
    x, y = batch(K=2, seed=3)
    model = TrunkHeads(K=2, seed=3)
    lucky = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    lucky.backward(task_losses(model, x, y)[0])
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    unlucky = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    unlucky.backward(_masked_losses(model, x, y, absent=first))  # was: "no parameter is shared"
    assert set(_ids(model.trunk.parameters())) <= set(_ids(unlucky.roles.shared))
    model.zero_grad(set_to_none=True)
    unlucky.backward(task_losses(model, x, y)[0])
    assert _ids(unlucky.roles.shared) == _ids(lucky.roles.shared) == _ids(model.trunk.parameters())
    assert unlucky.roles.private_tasks == lucky.roles.private_tasks == [(0,), (0,), (1,), (1,)]
    for p, e in zip(model.parameters(), expected_grads):
        assert torch.equal(p.grad, e)
    kept = unlucky.roles
    unlucky.backward(_masked_losses(model, x, y, absent=first))  # every task seen: roles are kept
    assert unlucky.roles is kept


def test_tasks_absent_in_turn_settle_the_roles():
    model = TrunkHeads(K=2, seed=4)
    opt = NashMTL(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batch(K=2, seed=5)
    opt.backward(_masked_losses(model, x, y, absent={0}))
    provisional = opt.roles
    opt.backward(_masked_losses(model, x, y, absent={1}))
    assert opt.roles is not provisional  # detected again, merged with the first batch
    assert _ids(opt.roles.shared) == _ids(model.trunk.parameters())
    assert opt.roles.private_tasks == [(0,), (0,), (1,), (1,)]
    kept = opt.roles
    opt.backward(task_losses(model, x, y)[0])
    assert opt.roles is kept


def test_pinned_shared_params_with_an_absent_task():
    model = TrunkHeads(K=2, seed=6)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), shared_params=list(model.trunk.parameters()),
                 task_specific="weighted")
    x, y = batch(K=2, seed=6)
    opt.backward(_masked_losses(model, x, y, absent={1}))
    assert _ids(opt.roles.shared) == _ids(model.trunk.parameters())
    assert opt.roles.private_tasks == [(0,), (0,), (1,), (1,)]


def test_a_failed_first_backward_keeps_no_roles():
    model = TrunkHeads(K=2, seed=7)
    opt = IMTL(torch.optim.SGD(model.parameters(), lr=0.1), imtl_l=True)
    x, y = batch(K=2, seed=7)
    losses, _ = task_losses(model, x, y)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="loss is nan"):
        opt.backward([losses[0], losses[1] * float("nan")])
    same_state(snapshot(model, opt), before)
    assert opt.roles is None and opt.num_tasks is None and opt.log_scales is None and len(opt.param_groups) == 1
    opt.backward(task_losses(model, x, y)[0])
    assert opt.num_tasks == 2 and _ids(opt.roles.shared) == _ids(model.trunk.parameters())


# -- parameters of several dtypes ------------------------------------------------------------------
class _MixedDtypes(nn.Module):
    """trunk (first layer in ``first``, second in ``second``) → z → heads in ``heads``; each layer
    casts its input to its own dtype, as a model assembled from parts of several precisions does."""

    def __init__(self, first, second, heads, K=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([nn.Linear(6, 7).to(first), nn.Linear(7, 5).to(second)])
        self.heads = nn.ModuleList([nn.Linear(5, 1).to(heads) for _ in range(K)])

    def forward(self, x):
        z = x
        for layer in self.layers:
            z = torch.tanh(layer(z.to(layer.weight.dtype)))
        return z, [h(z.to(h.weight.dtype))[:, 0] for h in self.heads]

    def losses(self, x, y):
        z, outs = self(x)
        return [((out.double() - y[:, k]) ** 2).mean() for k, out in enumerate(outs)], z


MIXED = {
    "f32_trunk_f64_heads": (torch.float32, torch.float32, torch.float64),
    "f32_trunk_bf16_heads": (torch.float32, torch.float32, torch.bfloat16),
    "f64_f32_within_trunk": (torch.float64, torch.float32, torch.float32),
    "bf16_f32_within_trunk_f64_heads": (torch.bfloat16, torch.float32, torch.float64),
}


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("case", sorted(MIXED))
def test_mixed_parameter_dtypes_work_like_backward(case, backend, grad_mode, features):
    """Each .grad in its parameter's dtype: the trunk d = Σ wₖgₖ from the per-task gradients (each
    computed in its layer's precision, as a backward does), the heads ∇ Σ Lₖ."""
    model = _MixedDtypes(*MIXED[case], seed=2)
    x, y = batch(K=3, seed=9)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), c=0.5, backend=backend, grad_mode=grad_mode)
    losses, z = model.losses(x, y)
    last = opt.backward(losses, features=z if features else None)
    losses, z = model.losses(x, y)
    trunk = list(model.layers.parameters())
    if features:
        Jz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].reshape(-1).double() for l in losses])
        w = reference.cagrad(Jz, c=0.5).weights
        torch.testing.assert_close(last.weights, w, rtol=1e-6, atol=1e-9)
        trunk_grads = torch.autograd.grad(sum(float(wk) * l for wk, l in zip(w, losses)), trunk, retain_graph=True)
        # the trunk gets the backward of wᵀ·(∂Lₖ/∂z) from z: bf16 heads round each ∂Lₖ/∂z before the
        # weighting, where this backward of Σ wₖLₖ rounds wₖ·∂Lₖ/∂z
        tolerance = 1e-2 if torch.bfloat16 in MIXED[case] else 1e-5
    else:
        J = torch.stack([torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(l, trunk, retain_graph=True)])
                         for l in losses])
        d = reference.cagrad(J, c=0.5).direction
        trunk_grads = [part.view_as(p).to(p.dtype) for part, p in zip(torch.split(d, [p.numel() for p in trunk]), trunk)]
        # loop: the same per-task gradients, combined in float64, rounded once; batched: vmap's
        # backward rounds in another order
        tolerance = 0 if grad_mode == "loop" else 1e-2 if torch.bfloat16 in MIXED[case][:2] else 1e-5
    heads = [p for h in model.heads for p in h.parameters()]
    head_grads = [g for g in torch.autograd.grad(sum(losses), heads)]
    for p, e in zip(trunk + heads, list(trunk_grads) + head_grads):
        assert p.grad.dtype == p.dtype
        scale = float(e.abs().max()) or 1.0
        torch.testing.assert_close(p.grad, e, rtol=tolerance, atol=tolerance * scale + 1e-12 * scale)
    opt.step()  # and the wrapped optimizer steps on them


def test_an_overflowed_float32_gram_is_recomputed_not_called_nonfinite():
    """The wrappers' check is Aggregator's: a float32 Γ (as accumulated on CUDA) whose diagonal
    overflowed for gradients ~1e20 is recomputed in float64 from the rows; a real NaN is named."""
    from mtlkernels.optim.nonfinite import find_nonfinite

    rows = torch.tensor([[1e20, 0.0], [3.0, 4.0]], dtype=torch.float32)
    gram32 = (rows @ rows.T).float()
    assert not torch.isfinite(gram32.diagonal()).all()
    values, ok = torch.ones(2, dtype=torch.float64), torch.ones((), dtype=torch.bool)
    gram, problem = find_nonfinite(values, gram32, ok, [], [], blocks=[rows], scale=2.0)
    assert problem is None and gram.dtype == torch.float64
    assert gram[0, 0].item() == pytest.approx(1e40 / 4) and gram[1, 1].item() == pytest.approx(25 / 4)
    rows[1, 0] = float("nan")
    _, problem = find_nonfinite(values, (rows @ rows.T).float(), ok, [], [], blocks=[rows])
    assert problem == "task 1: gradient holds NaN/Inf"
