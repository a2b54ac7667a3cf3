"""GradVac's reference and fast path against the real peers over several steps (the EMA targets
carried between them), on the same inputs and the same visiting orders.

- torchjd 0.18.0 (``GradVac``): per task i, ``torch.randperm(K − 1)`` over the other tasks from
  torch's global RNG; 1e-8 added to both denominators; every visited pair updates its target (the
  paper's Algorithm 1). Ours: the same permutations as ``order`` (i first, skipped), eps=1e-8.
- LibMTL 1.1.5 (``GradVac``): per task i, ``random.shuffle`` of the other tasks; no eps; a target
  is updated only when its pair was corrected. Ours: the same shuffles as ``order``,
  target_update="corrected".

Tolerance 1e-12·Σᵢ|wᵢ|‖gᵢ‖ on float64 gradients: the same arithmetic up to the order of summation
inside inner products (the peers in N-space, ours from Γ).
"""
import random

import pytest
import torch

import mtlkernels as mk
from cases import conflicting_J, random_J
from mtlkernels import _extension
from mtlkernels.methods import GradVacWeighting
from mtlkernels.testing.peers import libmtl_gradvac_orders, libmtl_run, torchjd_gradvac_orders
from peers import libmtl_driver, torchjd_aggregation

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
STEPS = 5


def _steps(K: int, N: int) -> list[torch.Tensor]:
    return [(conflicting_J if step % 2 else random_J)(K, N, seed=10 * K + step) for step in range(STEPS)]


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, weights: torch.Tensor, J: torch.Tensor, what: str) -> None:
    scale = float(weights.abs() @ J.norm(dim=1))
    error = float((ours - theirs).norm())
    assert error <= 1e-12 * scale, f"{what}: off by {error / scale:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.5, 0.02])
@pytest.mark.parametrize("K, N", [(2, 7), (3, 4), (5, 300), (8, 20)])
def test_torchjd_over_steps(K, N, beta, backend):
    theirs = torchjd_aggregation().GradVac(beta=beta)
    ours = GradVacWeighting(beta=beta, eps=1e-8, backend=backend)
    targets = None
    for step, J in enumerate(_steps(K, N)):
        seed = 100 * K + step
        ours.order = torchjd_gradvac_orders(K, seed)
        torch.manual_seed(seed)
        expected = theirs(J)
        result = mk.aggregate(J, ours)
        reference = mk.reference.gradvac(J, beta=beta, eps=1e-8, order=ours.order, targets=targets)
        targets = reference.info["targets"]
        _assert_close(result.direction, expected, result.weights, J, f"step {step} vs torchjd")
        _assert_close(reference.direction, expected, result.weights, J, f"step {step}: reference vs torchjd")
        torch.testing.assert_close(ours.state_dict()["targets"], theirs.gramian_weighting._phi_t, rtol=0, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N", [(2, 7), (3, 4), (5, 300), (8, 20)])
def test_libmtl_over_steps(K, N, backend):
    driver = libmtl_driver("GradVac", K, N)
    ours = GradVacWeighting(beta=0.5, target_update="corrected", backend=backend)
    for step, J in enumerate(_steps(K, N)):
        seed = 200 * K + step
        ours.order = libmtl_gradvac_orders(K, seed)
        driver.theta.grad = None
        random.seed(seed)
        expected, batch_weight = libmtl_run(driver, J, beta=0.5)
        result = mk.aggregate(J, ours)
        _assert_close(result.direction, expected, result.weights, J, f"step {step} vs LibMTL")
        torch.testing.assert_close(result.weights, torch.as_tensor(batch_weight, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.state_dict()["targets"], driver.rho_T, rtol=0, atol=1e-13)
