"""The solvers' certificates checked from below as well as from above: each certificate function,
given an answer perturbed off the optimum (multipliers or weights scaled by 1 + 1e-3, an active
task dropped), reports a value above the threshold the suite holds exact answers to; and every
backend (torch, cpp, Triton under the interpreter) reports the value that function gives on the
backend's own answer. So a certificate that always reports 0 fails here.

PCGrad's ``orthogonality_residual`` is measured inside the projection loop (after each projection)
and is not a function of the final weights; its backends are compared with each other in
tests/methods/test_pcgrad.py.
"""
import math

import pytest
import torch

from _devices import TRITON_DEVICE, requires_cpp, requires_triton
from cases import random_J
from mtlkernels.methods import CAGradWeighting, IMTLWeighting, MGDAWeighting, NashMTLWeighting
from mtlkernels.methods import nash_mtl
from mtlkernels.methods.cagrad import certificate, normalized_gram
from mtlkernels.methods.imtl import equal_projection_residual
from mtlkernels.methods.mgda import kkt_residual

BACKENDS = [
    pytest.param("torch", "cpu", id="torch"),
    pytest.param("cpp", "cpu", id="cpp", marks=requires_cpp),
    pytest.param("triton", TRITON_DEVICE, id="triton", marks=requires_triton),
]
#: the loosest bound the suite holds each exact certificate to (tests/methods/test_<method>.py)
THRESHOLD = {"cagrad": 1e-8, "mgda": 1e-9, "imtl": 1e-8, "nash_mtl": 1e-10}
#: relative size of the perturbation
EPSILON = 1e-3
#: a backend's reported certificate against the function's value on its answer (both float64)
AGREEMENT = 1e-12
C = 0.5


def gram(K: int = 6, N: int = 40, seed: int = 0) -> torch.Tensor:
    """Γ of random gradients, float64 (seed 0: CAGrad has 3 of its 6 tasks active)."""
    J = random_J(K, N, seed=seed)
    return J @ J.T


def value(x) -> float:
    """A diagnostic as a float (a 0-d tensor from Triton, a float elsewhere)."""
    return float(x.item() if isinstance(x, torch.Tensor) else x)


# -- CAGrad: kkt_residual, ball_residual and duality_gap of the multipliers u (w = 1/K + u) -------


def cagrad_multipliers(G: torch.Tensor, backend: str = "torch", device: str = "cpu") -> tuple[torch.Tensor, dict]:
    """u and the diagnostics of CAGrad (rescale=0, so the weights are 1/K + u)."""
    solution = CAGradWeighting(c=C, rescale=0, backend=backend)(G.to(device))
    return solution.weights.double().cpu() - 1.0 / G.shape[0], solution.diagnostics


def test_cagrad_certificate_sees_perturbed_multipliers():
    G = gram()
    A, _ = normalized_gram(G)
    u, diagnostics = cagrad_multipliers(G)
    assert not diagnostics["degenerate"] and 1 < len(diagnostics["active_set"]) < G.shape[0]
    exact = certificate(A, u, C, None)
    assert exact["kkt_residual"] <= 1e-12 and abs(exact["ball_residual"]) <= 1e-10 and exact["duality_gap"] <= 1e-12
    scaled = certificate(A, u * (1 + EPSILON), C, None)
    assert scaled["kkt_residual"] > THRESHOLD["cagrad"] and scaled["ball_residual"] > THRESHOLD["cagrad"]
    assert abs(scaled["duality_gap"]) > THRESHOLD["cagrad"]  # < 0: u leaves the ball, P(d) rises
    for i in diagnostics["active_set"]:
        dropped = u.clone()
        dropped[i] = 0
        assert certificate(A, dropped, C, None)["kkt_residual"] > THRESHOLD["cagrad"], i


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_cagrad_reports_the_certificate_of_its_multipliers(backend, device):
    G = gram()
    A, _ = normalized_gram(G)
    u, diagnostics = cagrad_multipliers(G, backend, device)
    expected = certificate(A, u, C, None)
    for key in ("kkt_residual", "ball_residual", "duality_gap"):
        assert abs(value(diagnostics[key]) - expected[key]) <= AGREEMENT, (key, diagnostics[key], expected[key])


# -- MGDA: kkt_residual of the simplex weights --------------------------------------------------


def test_mgda_certificate_sees_perturbed_weights():
    G = gram()
    w = MGDAWeighting(backend="torch")(G).diagnostics["simplex_weights"].double()
    support = (w > 0).nonzero().flatten().tolist()
    assert len(support) > 1
    assert kkt_residual(G, w) <= 1e-12
    assert kkt_residual(G, w * (1 + EPSILON)) > THRESHOLD["mgda"]
    for i in support:
        dropped = w.clone()
        dropped[i] = 0
        assert kkt_residual(G, dropped / dropped.sum()) > THRESHOLD["mgda"], i


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_mgda_reports_the_certificate_of_its_weights(backend, device):
    G = gram()
    diagnostics = MGDAWeighting(backend=backend)(G.to(device)).diagnostics
    expected = kkt_residual(G, diagnostics["simplex_weights"].double().cpu())
    assert abs(value(diagnostics["kkt_residual"]) - expected) <= AGREEMENT


# -- IMTL-G: the equal-projection residual of the weights ---------------------------------------


def test_imtl_certificate_sees_perturbed_weights():
    G = gram()
    w = IMTLWeighting(backend="torch")(G).weights.double()
    assert equal_projection_residual(G, w) <= 1e-12
    for i in range(G.shape[0]):  # the residual is scale-free: one weight off, or one task dropped
        scaled, dropped = w.clone(), w.clone()
        scaled[i] *= 1 + EPSILON
        dropped[i] = 0
        assert equal_projection_residual(G, scaled) > THRESHOLD["imtl"], i
        assert equal_projection_residual(G, dropped) > THRESHOLD["imtl"], i


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_imtl_reports_the_certificate_of_its_weights(backend, device):
    G = gram()
    solution = IMTLWeighting(backend=backend)(G.to(device))
    expected = equal_projection_residual(G, solution.weights.double().cpu())
    assert abs(value(solution.diagnostics["residual"]) - expected) <= AGREEMENT


# -- Nash-MTL: ‖α⊙(Γα) − 𝟙‖ -------------------------------------------------------------------


def nash_residuals(G: torch.Tensor, alpha: torch.Tensor) -> tuple[float, float]:
    """(residual, kept_residual) of α on Γ, as the method module computes them."""
    _, facts = nash_mtl._certificates_torch(G, alpha, 0.0)
    return facts["residual"], facts["kept_residual"]


def test_nash_mtl_certificate_sees_perturbed_weights():
    G = gram()
    alpha = NashMTLWeighting(max_norm=0.0, backend="torch")(G).weights.double()
    assert max(nash_residuals(G, alpha)) <= 1e-12
    assert min(nash_residuals(G, alpha * (1 + EPSILON))) > THRESHOLD["nash_mtl"]
    for i in range(G.shape[0]):
        dropped = alpha.clone()
        dropped[i] = 0
        residual, kept = nash_residuals(G, dropped)
        assert residual >= 1 and kept > THRESHOLD["nash_mtl"], i


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_nash_mtl_reports_the_certificate_of_its_weights(backend, device):
    """On a solve, and on a call that reuses the previous α on a new Γ (update_weights_every=2),
    where the certificate is far from 0."""
    first, second = gram(seed=0), gram(seed=1)
    weighting = NashMTLWeighting(max_norm=0.0, update_weights_every=2, backend=backend)
    for G in (first, second):
        solution = weighting(G.to(device))
        expected = nash_residuals(G, solution.weights.double().cpu())
        reported = value(solution.diagnostics["residual"]), value(solution.diagnostics["kept_residual"])
        assert all(abs(r - e) <= AGREEMENT * max(1.0, e) for r, e in zip(reported, expected)), (reported, expected)
    assert solution.diagnostics["reused"] and expected[0] > THRESHOLD["nash_mtl"]
    assert math.isfinite(expected[0])
