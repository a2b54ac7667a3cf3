"""UPGrad's reference and fast path against the real peers, on the same inputs.

- torchjd 0.18.0 (``UPGrad``): each gᵢ projected with quadprog on Γ/tr(Γ) + 1e-4·I (its
  ``norm_eps``/``reg_eps`` of 1e-4), then averaged. Ours with reg_eps=1e-4, norm_eps=1e-4 solves
  the same problem exactly, the reference on the augmented matrix [J/√tr(Γ), 10⁻²·I]: agreement to
  quadprog's precision (measured ~1e-14; bound 1e-9 relative to Σᵢ|wᵢ|‖gᵢ‖).
- cvxpy (an independent conic solver on the N-space problem min ‖x − gᵢ‖² s.t. J·x ≥ 0, the
  paper's definition of π): the exact reference agrees to the solver's tolerance (bound 1e-6).
"""
import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from mtlkernels import _extension
from peers import require_peer, torchjd_aggregation

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
TORCHJD = {"reg_eps": 1e-4, "norm_eps": 1e-4}

CASES = [(K, N, "random", random_J(K, N, seed=K)) for K in (1, 2, 3, 5, 8) for N in (3, 300)]
CASES += [(K, N, "conflicting", conflicting_J(K, N, seed=K)) for K in (3, 8) for N in (4, 300)]
CASES += [(K, 50, name, J) for K in (2, 3, 8) for name, J in adversarial_cases(K, 50, seed=K)]
IDS = [f"K{K}-N{N}-{name}" for K, N, name, _ in CASES]


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", CASES, ids=IDS)
def test_torchjd(K, N, name, J, backend):
    expected = torchjd_aggregation().UPGrad()(J)
    reference = mk.reference.upgrad(J, **TORCHJD)
    ours = mk.aggregate(J, "upgrad", backend=backend, **TORCHJD)
    scale = _scale(ours.weights, J)
    assert float((reference.direction - expected).norm()) <= 1e-9 * scale
    assert float((ours.direction - expected).norm()) <= 1e-9 * scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_weighting_on_gram(backend):
    """torchjd's Gramian weighting and ours take the same Γ and return the same weights."""
    J = conflicting_J(12, 40, seed=5)
    gram = J @ J.T
    expected = torchjd_aggregation().UPGradWeighting()(gram)
    ours = mk.methods.make_weighting("upgrad", backend=backend, **TORCHJD)(gram).weights
    norms = J.norm(dim=1)
    assert float(((ours - expected).abs() * norms).max()) <= 1e-9 * float(norms.sum())


@pytest.mark.parametrize("K, N", [(2, 5), (4, 3), (6, 20), (8, 5)])
def test_reference_against_cvxpy(K, N):
    """Each projection π(gᵢ) of the exact reference against cvxpy's solution of its definition."""
    cp = require_peer("cvxpy")
    J = conflicting_J(K, N, seed=K + N)
    projections = mk.reference.upgrad(J).info["projections"]
    for i in range(K):
        x = cp.Variable(N)
        cp.Problem(cp.Minimize(cp.sum_squares(x - J[i].numpy())), [J.numpy() @ x >= 0]).solve()
        error = float((projections[i] - torch.from_numpy(x.value)).norm())
        assert error <= 1e-6 * float(J[i].norm()), f"task {i}: off by {error:.3g}"
