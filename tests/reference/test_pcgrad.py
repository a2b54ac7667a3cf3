"""PCGrad's reference and fast path against the real peers from PyPI, on the same inputs and the
same visiting orders.

- torchjd 0.18.0 (``PCGrad``): for task i = 0..K-1 it draws ``torch.randperm(K)`` from torch's
  global RNG and visits that permutation skipping i; it sums. Our matching order: re-seed the
  global RNG, redraw the K permutations and move i to the front of row i (a first visit to i is
  a no-op), then pass them as ``order``.
- LibMTL 1.1.5 (``PCGrad``): for each task it ``random.shuffle``s ``[0..K-1]`` with Python's global
  RNG and visits every task, i included (a projection off gᵢ itself when gᵢ'·gᵢ < 0); it sums and
  returns the summed coefficients as its batch weights. Our matching order: re-seed ``random``,
  redo the K shuffles, pass them as ``order`` unchanged.

Tolerance 1e-12·Σᵢ‖gᵢ‖ for float64 gradients: all three run the same float64 arithmetic up to the
order of summation inside inner products (the peers in N-space, ours from Γ). torchjd on float32
gradients forms its Gram and its weights in float32, so there the bound is 1e-5·Σᵢ‖gᵢ‖.
"""
import random

import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from mtlkernels import _extension
from mtlkernels.methods import PCGradWeighting
from mtlkernels.testing.peers import libmtl_pcgrad_orders as libmtl_orders
from mtlkernels.testing.peers import torchjd_pcgrad_orders as torchjd_orders
from peers import libmtl_direction, torchjd_aggregation

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]

CASES = [(K, N, "random", random_J(K, N, seed=K)) for K in (1, 2, 3, 5, 8) for N in (7, 300)]
CASES += [(K, N, "conflicting", conflicting_J(K, N, seed=K)) for K in (3, 8, 17) for N in (7, 300)]
CASES += [(K, 50, name, J) for K in (2, 3, 8) for name, J in adversarial_cases(K, 50, seed=K)]
IDS = [f"K{K}-N{N}-{name}" for K, N, name, _ in CASES]


def assert_close_on_scale(actual: torch.Tensor, expected: torch.Tensor, J: torch.Tensor, rtol: float) -> None:
    scale = float(J.double().norm(dim=1).sum())
    error = float((actual.double() - expected.double()).norm())
    assert error <= rtol * scale, f"off by {error:.3g} (scale Σ‖gᵢ‖ = {scale:.3g})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", CASES, ids=IDS)
def test_torchjd(K, N, name, J, backend):
    PCGrad = torchjd_aggregation().PCGrad
    seed = 100 + K + N
    order = torchjd_orders(K, seed)
    torch.manual_seed(seed)
    expected = PCGrad()(J)
    reference = mk.reference.pcgrad(J, order=order)
    assert_close_on_scale(reference.direction, expected, J, 1e-12)
    ours = mk.aggregate(J, PCGradWeighting(backend=backend, order=order))
    assert_close_on_scale(ours.direction, expected, J, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_float32(backend):
    PCGrad = torchjd_aggregation().PCGrad
    J = conflicting_J(8, 500, seed=3).float()
    order = torchjd_orders(8, seed=4)
    torch.manual_seed(4)
    expected = PCGrad()(J)
    ours = mk.aggregate(J, PCGradWeighting(backend=backend, order=order))
    assert_close_on_scale(ours.direction, expected, J, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_weighting_on_gram(backend):
    """torchjd's Gramian weighting and ours take the same Γ and return the same weights."""
    weighting = torchjd_aggregation().PCGradWeighting()
    J = conflicting_J(12, 40, seed=5)
    gram = J @ J.T
    order = torchjd_orders(12, seed=6)
    torch.manual_seed(6)
    expected = weighting(gram)
    ours = PCGradWeighting(backend=backend, order=order)(gram).weights
    norms = J.norm(dim=1)
    assert float(((ours - expected).abs() * norms).max()) <= 1e-12 * float(norms.sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", CASES, ids=IDS)
def test_libmtl(K, N, name, J, backend):
    seed = 200 + K + N
    order = libmtl_orders(K, seed)
    random.seed(seed)
    expected_direction, expected_weights = libmtl_direction("PCGrad", J)
    expected_weights = torch.as_tensor(expected_weights, dtype=torch.float64)
    reference = mk.reference.pcgrad(J, order=order)
    ours = mk.aggregate(J, PCGradWeighting(backend=backend, order=order))
    for result in (reference, ours):
        assert_close_on_scale(result.direction, expected_direction, J, 1e-12)
        assert_close_on_scale(result.weights[:, None] * J, expected_weights[:, None] * J, J, 1e-12)


def test_libmtl_self_visit():
    """LibMTL visits i itself too; a case where that projection fires (task 0 visits itself last)."""
    J = torch.tensor([[1.0, 0.0], [-3.0, -3.0], [-3.0, 1.0]], dtype=torch.float64)
    for seed in range(50):
        order = libmtl_orders(3, seed)
        if order[0].tolist() == [1, 2, 0]:
            break
    else:
        pytest.fail("no seed in 0..49 gives task 0 the order [1, 2, 0]")
    random.seed(seed)
    expected, _ = libmtl_direction("PCGrad", J)
    ours = mk.aggregate(J, "pcgrad", order=order)
    assert mk.reference.pcgrad(J, order=order).info["projections"] >= 3
    assert_close_on_scale(ours.direction, expected, J, 1e-14)
