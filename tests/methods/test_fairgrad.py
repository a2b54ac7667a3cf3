"""FairGrad: the K-space Newton solve (torch and C++) against literal solutions of the paper's
system, the float64 reference on full vectors (mtlkernels.reference.fairgrad: textbook damped
Newton on J), Nash-MTL's solve at α = 1, torchjd's FairGrad (scipy least_squares), degenerate
inputs and option errors."""
import math

import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from mtlkernels.methods.fairgrad import FairGradWeighting, fixed_point_residuals
from peers import torchjd_aggregation

BACKENDS = ("torch", "cpp")
ALPHAS = (0.25, 0.5, 1.0, 2.0, 5.0)
#: the certificate of a float64 solve: roundings of (Γw)ᵢ (a sum of K conflicting terms), K ≤ 32, times the
#: exponent 1/α the residual wᵢ^(1/α)(Γw)ᵢ − 1 applies to the rounding of wᵢ (see certificate())
CERTIFICATE = 1e-12


def certificate(alpha: float) -> float:
    return CERTIFICATE * max(1.0, 1.0 / alpha)


def solve(J: torch.Tensor, backend: str, alpha: float = 1.0) -> mk.methods.Solution:
    J = J.double()
    return FairGradWeighting(alpha=alpha, backend=backend)(J @ J.T)


def scaled_error(weights: torch.Tensor, expected: torch.Tensor, J: torch.Tensor) -> float:
    """maxᵢ |Δwᵢ|·‖gᵢ‖ / Σᵢ|wᵢ|‖gᵢ‖ (float64)."""
    norms = J.double().norm(dim=1)
    return float(((weights - expected).abs() * norms).max()) / max(float(expected.abs() @ norms), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_single_task_and_orthogonal_tasks_closed_form(backend, alpha):
    """Orthogonal gradients decouple the system: ‖gᵢ‖²wᵢ = wᵢ^(−1/α), wᵢ = ‖gᵢ‖^(−2α/(α+1)) (K = 1 too)."""
    norms = torch.tensor([3.0, 0.5, 1e-7, 2e6], dtype=torch.float64)
    for K in (1, 4):
        J = torch.diag(norms[:K])
        expected = norms[:K] ** (-2 * alpha / (alpha + 1))
        torch.testing.assert_close(solve(J, backend, alpha).weights, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_symmetric_pair_closed_form(backend, alpha):
    """Two gradients of norm n at cosine c: by symmetry w₀ = w₁ = w with n²(1 + c)w = w^(−1/α), so
    w = (n²(1 + c))^(−α/(α+1)); c < 0 (conflict) included."""
    for n, c in ((1.0, 0.3), (7.0, -0.9), (1e-3, 0.99)):
        J = n * torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]], dtype=torch.float64)
        w = (n * n * (1 + c)) ** (-alpha / (alpha + 1))
        torch.testing.assert_close(solve(J, backend, alpha).weights, torch.tensor([w, w], dtype=torch.float64), rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_random_against_reference_with_certificate(backend, alpha):
    for K, N, seed in ((2, 5, 0), (5, 30, 1), (8, 1000, 2), (17, 40, 3), (32, 100, 4)):
        for J in (random_J(K, N, seed), conflicting_J(K, N, seed)):
            result = solve(J, backend, alpha)
            expected = mk.reference.fairgrad(J, alpha=alpha)
            assert result.diagnostics["converged"] and result.diagnostics["dropped_tasks"] == []
            assert result.diagnostics["kept_residual"] <= certificate(alpha)
            residuals = fixed_point_residuals(J @ J.T, result.weights, alpha)
            assert float(residuals.abs().max()) <= certificate(alpha)  # recomputed here, other summation order
            assert scaled_error(result.weights, expected.weights, J) <= 1e-12, (K, N)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_one_is_nash_mtl_unclipped(backend):
    """α = 1: Γw = 1/w is Nash-MTL's αᵢ(Γα)ᵢ = 1 (an independent solve: Nash-MTL without its clip)."""
    for K, N, seed in ((3, 10, 5), (9, 50, 6)):
        J = random_J(K, N, seed)
        nash = mk.methods.make_weighting("nash_mtl", max_norm=0.0, backend=backend)(J @ J.T)
        assert scaled_error(solve(J, backend).weights, nash.weights, J) <= 1e-13


@pytest.mark.parametrize("alpha", ALPHAS)
def test_backends_agree(alpha):
    for K, N, seed in ((4, 9, 7), (24, 30, 8)):
        J = random_J(K, N, seed)
        torch.testing.assert_close(solve(J, "cpp", alpha).weights, solve(J, "torch", alpha).weights, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", (0.5, 1.0, 2.0))
def test_adversarial_against_reference(backend, alpha):
    """Zero, duplicate, opposite, near-collinear rows and scales 1e-20..1e20, on full vectors; where
    no positive solution exists the cancelling tasks get weight exactly 0."""
    for K in (2, 3, 6):
        for name, J in adversarial_cases(K, 40, seed=K):
            result = solve(J, backend, alpha)
            expected = mk.reference.fairgrad(J, alpha=alpha)
            assert result.diagnostics["dropped_tasks"] == expected.info["dropped_tasks"], (K, name)
            dropped = result.diagnostics["dropped_tasks"]
            assert result.weights[dropped].tolist() == [0.0] * len(dropped)
            rtol = 1e-6 if name == "near_collinear" else 1e-11
            assert scaled_error(result.weights, expected.weights, J) <= rtol, (K, name)
            assert result.diagnostics["kept_residual"] <= (1e-9 if name == "near_collinear" else certificate(alpha)), (K, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opposite_pair_dropped_rest_solved_alone(backend):
    J = random_J(4, 12, seed=9)
    J[1] = -J[0]
    result = solve(J, backend, 2.0)
    assert result.diagnostics["dropped_tasks"] == [0, 1] and result.weights[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(result.weights[2:], solve(J[2:], backend, 2.0).weights, rtol=1e-13, atol=0)


def test_more_tasks_than_dimensions_keeps_weights_finite_and_non_negative():
    """K > N: 0 is often in the hull; whatever is dropped, the weights are ≥ 0, finite, and the kept
    tasks satisfy the system (the certificate)."""
    for seed in range(6):
        J = random_J(12, 4, seed)
        for alpha in (0.5, 1.0, 3.0):
            for backend in BACKENDS:
                result = solve(J, backend, alpha)
                assert bool(torch.isfinite(result.weights).all()) and bool((result.weights >= 0).all())
                assert result.diagnostics["kept_residual"] <= 1e-10


def test_against_torchjd_least_squares():
    """torchjd 0.18's FairGrad runs scipy's least_squares (default tolerances ~1e-8) from 𝟙/K: it
    agrees to its tolerance, and our fixed-point residual is far below its own."""
    aggregation = torchjd_aggregation()
    for K, N, seed in ((2, 10, 0), (4, 50, 1), (7, 100, 2)):
        J = random_J(K, N, seed)
        for alpha in (0.5, 1.0, 2.0):
            theirs = aggregation.FairGradWeighting(alpha=alpha)(J @ J.T).double()
            ours = solve(J, "auto", alpha)
            assert scaled_error(ours.weights, theirs, J) <= 1e-5, (K, alpha)
            their_residual = float(fixed_point_residuals(J @ J.T, theirs, alpha).abs().max())
            assert ours.diagnostics["kept_residual"] <= max(their_residual, 1e-14)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "2", True, None])
def test_bad_alpha_is_named(alpha):
    assert_option_rejected("fairgrad", {"alpha": alpha}, "alpha")


def test_peer_option_names_point_to_ours():
    with pytest.raises(TypeError, match="use alpha=2.0"):
        mk.methods.make_weighting("fairgrad", FairGrad_alpha=2.0)
    with pytest.raises(TypeError, match="max_iters"):
        mk.methods.make_weighting("fairgrad", max_iters=10)


def test_wrapper_defaults_match_the_functional_name():
    model = torch.nn.Linear(3, 2)
    optimizer = mk.FairGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    assert optimizer.aggregator.weighting.options() == mk.methods.make_weighting("fairgrad").options()
