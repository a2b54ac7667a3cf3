"""The tests UPGrad and DualProj share: their K-space solves (torch and C++) against each method's
float64 face-enumeration reference on random, conflicting and adversarial inputs, with the KKT
certificate at the optimum; their option errors.

Tolerances are relative to the natural scale Σᵢ|wᵢ|·‖gᵢ‖ of the reference's weights (the weights
multiply the gradients; ‖d‖ can vanish on Pareto-stationary inputs).
"""
import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from mtlkernels import _extension

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
METHODS = ["upgrad", "dualproj"]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-11}
#: the KKT residual at the exact optimum: rounding in (Γv)ᵢ relative to the size of its terms
KKT_BOUND = 1e-13


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


def assert_direction_matches(result: mk.AggregationResult, expected: mk.reference.ReferenceResult, J: torch.Tensor, rtol: float) -> None:
    error = float((result.direction.double() - expected.direction).norm())
    assert error <= rtol * _scale(expected.weights, J), f"direction off by {error / _scale(expected.weights, J):.3g}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K, N", [(1, 5), (2, 7), (3, 2), (5, 40), (6, 3), (8, 300)])
def test_random_matches_reference(K, N, dtype, backend, method):
    J = (conflicting_J(K, N, seed=K + N) if K % 2 else random_J(K, N, seed=K + N)).to(dtype)
    result = mk.aggregate(J, method, backend=backend)
    assert_direction_matches(result, getattr(mk.reference, method)(J), J, RTOL[dtype])
    assert result.diagnostics["kkt_residual"] <= KKT_BOUND


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [2, 3, 8])
def test_adversarial_matches_reference(K, backend, method):
    """Opposite, duplicate, zero, near-collinear rows, 1e±20 scales: d is the reference's."""
    for name, J in adversarial_cases(K, 50, seed=K):
        result = mk.aggregate(J, method, backend=backend)
        expected = getattr(mk.reference, method)(J)
        rtol = 1e-5 if name == "near_collinear" else RTOL[torch.float64]
        error = float((result.direction - expected.direction).norm()) / _scale(expected.weights, J)
        assert error <= rtol, f"{name}: direction off by {error:.3g}"
        assert result.diagnostics["kkt_residual"] <= KKT_BOUND, name


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pref_vector": [1.0, -2.0, 1.0]}, "pref_vector=.* negative entries at \\[1\\]"),
        ({"pref_vector": [1.0, float("nan"), 1.0]}, "pref_vector=.* non-finite"),
        ({"pref_vector": torch.ones(3, 1)}, "pref_vector must be a non-empty 1-D vector"),
        ({"pref_vector": "uniform"}, "pref_vector must be a 1-D tensor or sequence"),
        ({"reg_eps": -1e-4}, "reg_eps=-0.0001 must be a finite number ≥ 0"),
        ({"norm_eps": float("inf")}, "norm_eps=inf must be a finite number ≥ 0"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_option_errors(options, message, method):
    assert_option_rejected(method, options, message)


@pytest.mark.parametrize("method", METHODS)
def test_pref_vector_length_is_checked_at_the_solve(method):
    """K is known only from Γ: a wrong length is named there, before anything is solved."""
    weighting = mk.methods.make_weighting(method, pref_vector=[1.0, 2.0])
    with pytest.raises(ValueError, match=f"{method}: pref_vector has 2 entries but there are K = 3 tasks"):
        weighting(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="pref_vector has 2 entries but there are K = 3 tasks"):
        mk.aggregate(random_J(3, 5), method, pref_vector=[1.0, 2.0])
