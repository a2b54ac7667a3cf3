"""GradVac's K-space solve (torch and C++) against the float64 full-vector reference over several
steps (the EMA targets carried between them), its certificate, its state, and option errors.

Tolerances are relative to Σᵢ‖gᵢ‖·(1 + |cᵢ|): the coefficients of a correction can exceed 1 when a
target is far above the current cosine, so the natural scale of the result is that of the weights.
"""
import pytest
import torch
from hypothesis import given, settings

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J, structured_gradients
from mtlkernels import _extension
from mtlkernels.methods import GradVacWeighting

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]


def _orders(K: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.stack([torch.randperm(K, generator=generator) for _ in range(K)]) for _ in range(4)]


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


def _run_steps(Js: list[torch.Tensor], orders: list[torch.Tensor], backend: str, **options):
    """Our weighting and the reference over the same steps: yields (result, reference, J) per step."""
    weighting = GradVacWeighting(backend=backend, **options)
    targets = None
    for J, order in zip(Js, orders):
        weighting.order = order
        result = mk.aggregate(J, weighting)
        expected = mk.reference.gradvac(J, order=order, targets=targets, **options)
        targets = expected.info["targets"]
        yield result, expected, J, weighting


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [{}, {"beta": 0.01}, {"beta": 1.0, "eps": 1e-8}, {"target_update": "corrected"}])
@pytest.mark.parametrize("K, N", [(2, 5), (3, 40), (5, 3), (8, 30)])
def test_steps_match_reference(K, N, options, backend):
    """Four steps on conflicting gradients: d, w and the targets φ̂ agree with the reference."""
    Js = [conflicting_J(K, N, seed=K + step) for step in range(4)]
    for result, expected, J, weighting in _run_steps(Js, _orders(K, K), backend, **options):
        scale = _scale(expected.weights, J)
        assert float((result.direction - expected.direction).norm()) <= 1e-12 * scale
        assert float(((result.weights - expected.weights).abs() * J.norm(dim=1)).max()) <= 1e-12 * scale
        torch.testing.assert_close(weighting.state_dict()["targets"], expected.info["targets"], rtol=0, atol=1e-13)
        assert result.diagnostics["corrections"] == expected.info["corrections"]
        if options.get("eps", 0.0) == 0.0:
            assert result.diagnostics["target_residual"] <= 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [2, 3, 8])
def test_adversarial_matches_reference(K, backend):
    """Opposite, duplicate, zero, near-collinear rows, 1e±20 scales, over two steps."""
    for name, J in adversarial_cases(K, 50, seed=K):
        for result, expected, J_step, _ in _run_steps([J, J.flip(0)], _orders(K, 7), backend):
            error = float((result.direction - expected.direction).norm()) / _scale(expected.weights, J_step)
            assert error <= 1e-12, f"{name}: direction off by {error:.3g}"
            assert result.diagnostics["target_residual"] <= 1e-13, name


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(J=structured_gradients(K=(1, 6), N=(1, 12), log_scales=[-8.0, 0.0, 8.0]))
def test_hypothesis_certified(J, backend):
    """Each correction reaches its target up to rounding, weights finite, targets cosines."""
    weighting = GradVacWeighting(backend=backend, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        result = mk.aggregate(J, weighting)
        assert result.diagnostics["target_residual"] <= 1e-13
        assert bool(torch.isfinite(result.weights).all())
        assert float(weighting.state_dict()["targets"].abs().max()) <= 1.0


def test_first_step_is_pcgrad():
    """With the targets at 0 the correction is PCGrad's projection: the same weights, same orders."""
    J = conflicting_J(6, 10, seed=2)
    order = _orders(6, 1)[0]
    gradvac = mk.aggregate(J, "gradvac", backend="torch", order=order)
    pcgrad = mk.aggregate(J, "pcgrad", backend="torch", order=order)
    torch.testing.assert_close(gradvac.weights, pcgrad.weights, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_follow_the_ema(backend):
    """K = 2, β = 0.25, the same J twice: φ̂ = β·cos(g₀, g₁) after step 1, and step 2 visits with
    that target (cosine below it: a correction to exactly φ̂, a cosine above it: none)."""
    J = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cos = 0.6
    weighting = GradVacWeighting(beta=0.25, order=[[0, 1], [1, 0]], backend=backend)
    first = mk.aggregate(J, weighting)
    assert first.weights.tolist() == [1.0, 1.0] and first.diagnostics["corrections"] == 0
    torch.testing.assert_close(weighting.state_dict()["targets"], torch.tensor([[0.0, 0.15], [0.15, 0.0]], dtype=torch.float64))
    second = mk.aggregate(J, weighting)
    assert second.diagnostics["corrections"] == 0  # 0.6 ≥ 0.15
    torch.testing.assert_close(weighting.state_dict()["targets"], torch.tensor([[0.0, 0.2625], [0.2625, 0.0]], dtype=torch.float64))
    opposite = torch.tensor([[1.0, 0.0], [-0.6, 0.8]], dtype=torch.float64)  # cos = −0.6 < 0.2625
    third = mk.aggregate(opposite, weighting)
    assert third.diagnostics["corrections"] == 2
    corrected = third.weights[0] * opposite[0]  # task 0's corrected gradient is e₀ + c·g₁; check cos
    c0 = torch.tensor([1.0, float(third.weights[1]) - 1.0], dtype=torch.float64)  # by symmetry c₀[1] = c₁[0]
    g0 = c0 @ opposite
    cosine = float(g0 @ opposite[1] / (g0.norm() * opposite[1].norm()))
    assert cosine == pytest.approx(0.2625, abs=1e-15)
    del corrected


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_and_reset(backend):
    J = conflicting_J(4, 8, seed=1)
    order = _orders(4, 3)[0]
    a = GradVacWeighting(order=order, backend=backend)
    mk.aggregate(J, a)
    b = GradVacWeighting(order=order, backend=backend)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(mk.aggregate(J, a).weights, mk.aggregate(J, b).weights, rtol=0, atol=0)
    a.reset()
    assert a.state_dict() == {"targets": None}
    with pytest.raises(ValueError, match="stored targets are for K = 4 tasks but the Gram matrix has K = 3"):
        mk.aggregate(J[:3], b)


def test_state_errors():
    weighting = GradVacWeighting()
    with pytest.raises(ValueError, match="needs the key \\['targets'\\]"):
        weighting.load_state_dict({"alpha": None})
    with pytest.raises(ValueError, match="square float tensor"):
        weighting.load_state_dict({"targets": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="cosines: finite values in \\[-1, 1\\]"):
        weighting.load_state_dict({"targets": torch.full((2, 2), 2.0)})
    assert weighting.state_dict() == {"targets": None}


def test_aggregate_is_stateless():
    """mk.aggregate(J, "gradvac") builds a fresh weighting: every call is a first step."""
    J = conflicting_J(3, 6, seed=2)
    order = _orders(3, 2)[0]
    first = mk.aggregate(J, "gradvac", order=order)
    again = mk.aggregate(J, "gradvac", order=order)
    assert torch.equal(first.weights, again.weights)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beta": 1.5}, "beta=1.5 must be in \\[0, 1\\]"),
        ({"beta": -0.1}, "beta=-0.1 must be a finite number ≥ 0"),
        ({"beta": float("nan")}, "beta=nan must be a finite number"),
        ({"eps": -1e-8}, "eps=-1e-08 must be a finite number ≥ 0"),
        ({"target_update": "sometimes"}, "target_update='sometimes' is not supported"),
        ({"order": [[0, 1, 2], [0, 0, 1], [2, 1, 0]]}, "order\\[1\\] = \\[0, 0, 1\\] is not a permutation"),
        ({"generator": 3}, "generator must be a torch.Generator"),
    ],
)
def test_option_errors(options, message):
    assert_option_rejected("gradvac", options, message)


def test_wrapper_checkpoints_targets_and_generator():
    """mk.GradVac saves the targets and its generator: a resumed run takes the same steps."""
    def run(steps: int, state=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = mk.GradVac(torch.optim.SGD(model.parameters(), lr=0.1), seed=5)
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            opt.zero_grad()
            out = model(x)
            opt.backward([out[:, 0].pow(2).mean(), -out[:, 1].mean(), (out[:, 2] - out[:, 0]).pow(2).mean()])
            opt.step()
        return model, opt

    model, opt = run(2)
    state = (model.state_dict(), opt.state_dict())
    assert state[1]["method"]["weighting"]["targets"].shape == (3, 3)
    assert "generator" in state[1]["method"]
    continued, _ = run(2, state)
    straight, _ = run(4)
    for a, b in zip(continued.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
