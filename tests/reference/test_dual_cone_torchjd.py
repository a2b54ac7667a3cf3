"""UPGrad's and DualProj's references and fast paths against torchjd 0.18.0 on the same inputs.

torchjd projects with quadprog on Γ/tr(Γ) + 1e-4·I (its ``norm_eps``/``reg_eps`` of 1e-4): UPGrad
each gᵢ, then averaged; DualProj the mean gradient. Ours with reg_eps=1e-4, norm_eps=1e-4 solves
the same problem exactly, the reference on the augmented matrix [J/√tr(Γ), 10⁻²·I]: agreement to
quadprog's precision (measured ~1e-14; bound 1e-9 relative to Σᵢ|wᵢ|‖gᵢ‖). The exact references
against cvxpy are in test_upgrad.py and test_dualproj.py.
"""
import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from mtlkernels import _extension
from peers import torchjd_aggregation

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
TORCHJD = {"reg_eps": 1e-4, "norm_eps": 1e-4}
#: our method name → torchjd's aggregator class name
METHODS = {"upgrad": "UPGrad", "dualproj": "DualProj"}

CASES = [(K, N, "random", random_J(K, N, seed=K)) for K in (1, 2, 3, 5, 8) for N in (3, 300)]
CASES += [(K, N, "conflicting", conflicting_J(K, N, seed=K)) for K in (3, 8) for N in (4, 300)]
CASES += [(K, 50, name, J) for K in (2, 3, 8) for name, J in adversarial_cases(K, 50, seed=K)]
IDS = [f"K{K}-N{N}-{name}" for K, N, name, _ in CASES]


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", CASES, ids=IDS)
def test_torchjd(K, N, name, J, backend, method):
    expected = getattr(torchjd_aggregation(), METHODS[method])()(J)
    reference = getattr(mk.reference, method)(J, **TORCHJD)
    ours = mk.aggregate(J, method, backend=backend, **TORCHJD)
    scale = _scale(ours.weights, J)
    assert float((reference.direction - expected).norm()) <= 1e-9 * scale
    assert float((ours.direction - expected).norm()) <= 1e-9 * scale


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_weighting_on_gram(backend, method):
    """torchjd's Gramian weighting and ours take the same Γ and return the same weights."""
    J = conflicting_J(12, 40, seed=5)
    gram = J @ J.T
    expected = getattr(torchjd_aggregation(), METHODS[method] + "Weighting")()(gram)
    ours = mk.methods.make_weighting(method, backend=backend, **TORCHJD)(gram).weights
    norms = J.norm(dim=1)
    assert float(((ours - expected).abs() * norms).max()) <= 1e-9 * float(norms.sum())
