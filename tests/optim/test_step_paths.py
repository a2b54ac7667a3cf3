"""How a step's gradients travel. Parameter path: the K task gradients land in the [K, N] rows
themselves (each shared parameter's ``.grad`` is its columns of row k during pass k), unless a
process group or a post-accumulate-grad hook rules that out. Features path: one backward of
wᵀ·(∂Lₖ/∂z) from z when every path from the losses to the shared parameters goes through z, else
of Σₖ wₖLₖ, and no parameter-sized buffer of its own. Either way a rejected step writes nothing,
and ``zero_grad(set_to_none=True)`` frees the old gradients."""
import gc
import warnings
import weakref

import pytest
import torch
import torch.nn as nn

from mtlkernels.bench import step as bench_step
from mtlkernels.optim import CAGrad, IMTL, MGDAUB, MultiTaskOptimizer, NonFiniteError, PCGrad
from mtl_model import TrunkHeads, batch, grads_of, same_state, snapshot, task_losses
from mtlkernels.jacobian import jacobian


class SharedNeck(nn.Module):
    """x → z = trunk(x) → a layer every head reads (shared, past z) → one head per task: the
    losses reach the neck's parameters by a path that does not go through z."""

    def __init__(self, K: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 5), nn.Tanh())
        self.neck = nn.Linear(5, 5)
        self.heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(K)])
        self.double()

    def losses(self, x, y):
        z = self.trunk(x)
        shared = torch.tanh(self.neck(z))
        return [((h(shared)[:, 0] - y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)], z


def _trunk_heads_losses(model, x, y):
    return task_losses(model, x, y)


def _trunk_term_losses(model, x, y):
    """TrunkHeads with a term that reaches the trunk's first bias around z (value 0.5·‖b‖², so its
    gradient counts)."""
    losses, z = task_losses(model, x, y)
    b = model.trunk[0].bias
    return [losses[0], losses[1] + 0.5 * (b**2).sum(), losses[2]], z


MODELS = {
    "through_z": (TrunkHeads, _trunk_heads_losses, False),
    "neck_past_z": (SharedNeck, lambda model, x, y: model.losses(x, y), True),
    "trunk_term_around_z": (TrunkHeads, _trunk_term_losses, True),
}


@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("wrapper, options", [(CAGrad, {"c": 0.5}), (MGDAUB, {}), (IMTL, {})], ids=["CAGrad", "MGDAUB", "IMTL"])
def test_features_step_gives_the_shared_parameters_the_gradient_of_the_weighted_sum(wrapper, options, model_name, grad_mode):
    """.grad of the shared parameters = ∇ Σₖ wₖLₖ with the step's own weights, whether the losses
    reach them only through z (one backward from z) or also around it (one backward of Σ wₖLₖ);
    with .grad present before, the step adds to it."""
    make, losses_of, around = MODELS[model_name]
    model = make(K=3, seed=4)
    x, y = batch(K=3, seed=21)
    shared = [p for name, p in model.named_parameters() if not name.startswith("heads")]
    opt = wrapper(torch.optim.SGD(model.parameters(), lr=0.1), grad_mode=grad_mode, shared_params=shared, **options)
    old = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), old):
        p.grad = g.clone()
    losses, z = losses_of(model, x, y)
    last = opt.backward(losses, features=z)
    assert last is not None and opt._buffers._workspace is None  # no parameter-sized buffer off DDP
    losses, z = losses_of(model, x, y)
    heads = [p for p in model.heads.parameters()]
    expected = torch.autograd.grad(sum(float(w) * l for w, l in zip(last.weights, losses)), shared, retain_graph=True)
    expected = list(expected) + list(torch.autograd.grad(sum(losses), heads))
    for p, g, e in zip(shared + heads, old[: len(shared)] + old[len(shared):], expected):
        torch.testing.assert_close(p.grad, g + e, rtol=1e-12, atol=1e-12)
    # the neck, or the trunk's first bias, is reached around z by some loss: the other way was taken
    if around:
        assert any(e.abs().sum() > 0 for e in expected[: len(shared)])


def _nan_behind_z(model, x, y):
    """TrunkHeads whose features z' = z + √|b − b| (b: the trunk's last bias) equal z, with finite
    ∂Lₖ/∂z' but a NaN gradient on b from the backward through z'."""
    z = model.trunk(x)
    b = model.trunk[2].bias
    z = z + (b - b.detach()).abs().sqrt()
    out = torch.cat([h(z) for h in model.heads], dim=1)
    return [((out[:, k] - y[:, k]) ** 2).mean() for k in range(y.shape[1])], z


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
@pytest.mark.parametrize("grads_before", ["none", "present"])
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("wrapper, options", [(PCGrad, {"seed": 5}), (IMTL, {"imtl_l": True}), (MGDAUB, {})], ids=["PCGrad", "IMTL", "MGDAUB"])
def test_a_nan_behind_z_rejects_the_step_and_changes_nothing(wrapper, options, on_nonfinite, grads_before, features):
    """The NaN is on the trunk's last bias only: in the rows (parameter path: the .grad views
    held it during the passes), or, on the features path, in the backward from z after a finite
    Γ. Parameters, .grad (None, or the user's own tensors), optimizer and method state stay as
    they were."""
    model = TrunkHeads(K=3, seed=3)
    opt = wrapper(torch.optim.Adam(model.parameters(), lr=1e-2), on_nonfinite=on_nonfinite, **options)
    for step in range(2):
        x, y = batch(K=3, seed=60 + step)
        opt.zero_grad(set_to_none=True)
        losses, z = task_losses(model, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MGDAUB's note when features= is missing
            opt.backward(losses, features=z if features else None)
        opt.step()
    if grads_before == "none":
        opt.zero_grad(set_to_none=True)
    before = snapshot(model, opt)
    tensors = [p.grad for p in model.parameters()]
    assert all((g is None) == (grads_before == "none") for g in before["grads"])
    x, y = batch(K=3, seed=70)
    losses, z = _nan_behind_z(model, x, y)
    message = "shared parameters holds NaN/Inf" if features else "task [012]: gradient holds NaN/Inf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if on_nonfinite == "raise":
            with pytest.raises(NonFiniteError, match=message):
                opt.backward(losses, features=z if features else None)
        else:
            assert opt.backward(losses, features=z if features else None) is None
            opt.step()  # does nothing
    assert all(p.grad is g for p, g in zip(model.parameters(), tensors))  # the same tensors, not copies
    after = snapshot(model, opt)
    after["optimizer"].pop("num_skipped")
    before["optimizer"].pop("num_skipped")
    same_state(before, after)


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
def test_zero_grad_set_to_none_frees_the_last_steps_gradients(features):
    """opt.last.direction holds the shared .grad tensors until zero_grad(set_to_none=True), which
    empties it: nothing keeps the old gradients alive through the next backward."""
    model = TrunkHeads(K=3, seed=2)
    x, y = batch(K=3, seed=5)
    opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    losses, z = task_losses(model, x, y)
    last = opt.backward(losses, features=z if features else None)
    trunk = list(model.trunk.parameters())
    assert all(d is p.grad for d, p in zip(opt.last.direction, trunk))
    weights = opt.last.weights
    old = [weakref.ref(p.grad) for p in trunk]
    del last
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(ref() is None for ref in old)
    assert opt.last.direction == [] and opt.last.weights is weights and opt.diagnostics()["weights"] == weights.tolist()
    opt.backward(task_losses(model, x, y)[0], features=None)
    opt.zero_grad(set_to_none=False)  # zeroed in place: the result keeps its tensors
    assert all(d is p.grad for d, p in zip(opt.last.direction, trunk))


@pytest.mark.parametrize("K", [2, 4])
def test_features_step_peaks_within_ten_percent_of_the_plain_step(K):
    """Tensor bytes a steady-state step holds at its peak (torch's profiler, as the step benchmark
    counts them): the features step adds the [K, B·d] feature rows and the heads' gradients
    buffer, never a buffer of the shared parameters' size."""
    problem = bench_step.StepProblem.build(K, 200_000, torch.float32, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's note on blocks of unknown size
        plain = bench_step.peak_step_bytes(bench_step.plain_step(problem), torch.device("cpu"))
        ours = bench_step.peak_step_bytes(bench_step.mtlkernels_step(problem, "mgda", True), torch.device("cpu"))
    assert ours <= 1.1 * plain, (ours, plain)


def test_parameter_path_task_gradients_land_in_the_rows():
    """During pass k each shared parameter's .grad is its columns of row k of the workspace (seen
    from a tensor hook, which runs just before autograd adds the gradient in place), the rows hold
    the per-task gradients (against jacobian(), an autograd.grad per task), and afterwards .grad
    is the combination again, in tensors of its own."""
    model = TrunkHeads(K=3, seed=6)
    x, y = batch(K=3, seed=8)
    opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    trunk = list(model.trunk.parameters())
    opt.backward(task_losses(model, x, y)[0])  # detects the roles; the next steps reuse the workspace
    seen = {i: [] for i in range(len(trunk))}
    for i, p in enumerate(trunk):
        p.register_hook(lambda g, i=i, p=p: seen[i].append(p.grad.data_ptr()))
    opt.zero_grad(set_to_none=True)
    losses, _ = task_losses(model, x, y)
    last = opt.backward(losses)
    ws = opt._buffers._workspace
    for i, block in enumerate(ws.blocks):
        assert seen[i] == [block[k].data_ptr() for k in range(3)]
    losses, _ = task_losses(model, x, y)
    expected = jacobian(losses, trunk)
    torch.testing.assert_close(torch.cat([b for b in ws.blocks], dim=1), expected, rtol=0, atol=0)
    rows = ws.rows.untyped_storage().data_ptr(), ws.rows.untyped_storage().nbytes()
    for p in trunk:
        assert not rows[0] <= p.grad.data_ptr() < rows[0] + rows[1]  # .grad is no view of the rows
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in trunk]), last.weights.to(expected) @ expected)


def test_a_post_accumulate_grad_hook_keeps_the_passes_off_grad():
    """A parameter with a post-accumulate-grad hook: the K passes take autograd.grad (the hook
    must not run once per task on one task's gradient); the step is the same."""
    results = []
    for hooked in (False, True):
        model = TrunkHeads(K=3, seed=6)
        calls = []
        if hooked:
            model.trunk[0].weight.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.clone()))
        x, y = batch(K=3, seed=8)
        opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), c=0.5)
        opt.backward(task_losses(model, x, y)[0])
        assert calls == []
        results.append(grads_of(model))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward of task 2 fails")


@pytest.mark.parametrize("grads_before", ["none", "present"])
def test_a_pass_that_raises_puts_every_grad_back(grads_before):
    """The error of pass 2 reaches the caller; every .grad is the tensor (or None) it was before."""
    model = TrunkHeads(K=3, seed=6)
    x, y = batch(K=3, seed=8)
    opt = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), seed=1)
    opt.backward(task_losses(model, x, y)[0])
    if grads_before == "none":
        opt.zero_grad(set_to_none=True)
    before = grads_of(model)
    tensors = [p.grad for p in model.parameters()]
    losses, _ = task_losses(model, x, y)
    losses[2] = _FailsInBackward.apply(losses[2])
    with pytest.raises(RuntimeError, match="backward of task 2 fails"):
        opt.backward(losses)
    assert all(p.grad is g for p, g in zip(model.parameters(), tensors))
    same_state(before, grads_of(model))
