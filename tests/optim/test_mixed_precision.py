"""Mixed precision: a forward under torch.autocast (bf16 on the CPU) and torch.amp.GradScaler
(scaled losses: Γ unscaled before the solve, the step skipped on overflow as GradScaler does)."""
import copy

import pytest
import torch

from mtlkernels import reference
from mtlkernels.optim import CAGrad, IMTL, MGDAUB, NashMTL
from mtl_model import TrunkHeads, batch, grads_of, manual_grads, task_losses


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
def test_autocast_bf16_step_equals_manual(features):
    model = TrunkHeads(K=3, seed=1, dtype=torch.float32)
    x, y = batch(K=3, dtype=torch.float32)
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), c=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, z = task_losses(model, x, y)
    assert z.dtype == torch.bfloat16
    last = opt.backward(losses, features=z if features else None)
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same bf16 forward, by hand
        if features:
            direction_of = lambda J, L: reference.cagrad(J, c=0.5).weights
        else:
            direction_of = lambda J, L: reference.cagrad(J, c=0.5).direction
        expected = manual_grads(model, x, y, direction_of, features=features)
    trunk = len(list(model.trunk.parameters()))
    for i, (a, e) in enumerate(zip(grads_of(model), expected)):
        # features path: the trunk gets the backward of wᵀ·(∂Lₖ/∂z) from the bf16 z, each ∂Lₖ/∂z
        # rounded to bf16 before the weighting, where the backward of Σ wₖLₖ by hand rounds the
        # weighted sum: the two agree to bf16's precision (2⁻⁸), not bit for bit
        tolerance = 1e-2 if features and i < trunk else 1e-5
        torch.testing.assert_close(a, e.float(), rtol=tolerance, atol=tolerance * float(e.abs().max()))
    assert last.weights.dtype == torch.float64


def _one_step(model, opt, scaler=None, features=False, loss_factor=1.0):
    x, y = batch(K=3, dtype=torch.float32, seed=4)
    losses, z = task_losses(model, x, y)
    losses = [loss_factor * l for l in losses]
    opt.zero_grad()
    opt.backward(losses, features=z if features else None, grad_scaler=scaler)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


@pytest.mark.parametrize(
    "wrapper, options, features",
    [(CAGrad, {}, False), (NashMTL, {}, False), (IMTL, {"imtl_l": True}, False), (MGDAUB, {}, True)],
    ids=["CAGrad", "NashMTL", "IMTL-L", "MGDAUB-features"],
)
def test_grad_scaler_step_equals_unscaled_step(wrapper, options, features):
    plain = TrunkHeads(K=3, seed=2, dtype=torch.float32)
    scaled = copy.deepcopy(plain)
    opt_plain = wrapper(torch.optim.Adam(plain.parameters(), lr=1e-2), **options)
    opt_scaled = wrapper(torch.optim.Adam(scaled.parameters(), lr=1e-2), **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    for _ in range(2):
        _one_step(plain, opt_plain, features=features)
        _one_step(scaled, opt_scaled, scaler, features=features)
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt_scaled.last.gram, opt_plain.last.gram, rtol=1e-6, atol=0)
    if wrapper is IMTL:
        torch.testing.assert_close(opt_scaled.log_scales, opt_plain.log_scales, rtol=1e-6, atol=1e-7)


def test_grad_scaler_overflow_skips_the_step():
    model = TrunkHeads(K=3, seed=3, dtype=torch.float32)
    opt = NashMTL(torch.optim.Adam(model.parameters(), lr=1e-2))
    _one_step(model, opt)  # optimizer state and Nash-MTL's α exist
    before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    _one_step(model, opt, scaler, loss_factor=1e3)  # the scaled gradients overflow float32
    assert scaler.get_scale() == 2.0**126  # backed off, as after any overflow
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    torch.testing.assert_close(opt.state_dict()["optimizer"]["state"], state_before["optimizer"]["state"], rtol=0, atol=0)
    torch.testing.assert_close(opt.state_dict()["method"], state_before["method"], rtol=0, atol=0)
    assert opt.last is None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    _one_step(model, opt, scaler)  # a normal scale steps again
    assert not all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
