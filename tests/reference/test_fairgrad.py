"""FairGrad's reference (mtlkernels.reference.fairgrad: damped Newton on the full J) against literal
solutions of the paper's system and torchjd 0.18's FairGrad (scipy least_squares on Γ)."""
import math

import pytest
import torch

import mtlkernels as mk
from cases import random_J
from peers import torchjd_aggregation


@pytest.mark.parametrize("alpha", (0.5, 1.0, 3.0))
def test_literal_solutions(alpha):
    """Orthogonal gradients: wᵢ = ‖gᵢ‖^(−2α/(α+1)); a symmetric pair at cosine c: (n²(1+c))^(−α/(α+1))."""
    norms = torch.tensor([2.0, 0.1, 1e5], dtype=torch.float64)
    result = mk.reference.fairgrad(torch.diag(norms), alpha=alpha)
    torch.testing.assert_close(result.weights, norms ** (-2 * alpha / (alpha + 1)), rtol=1e-14, atol=0)
    c = -0.6
    J = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]], dtype=torch.float64)
    expected = (1 + c) ** (-alpha / (alpha + 1))
    torch.testing.assert_close(mk.reference.fairgrad(J, alpha=alpha).weights, torch.full((2,), expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_cancelling_tasks_dropped():
    """(g, −g, h): no positive solution; g and −g cancel and get weight 0, h is solved alone."""
    J = random_J(2, 6, seed=1)
    J = torch.stack([J[0], -J[0], J[1]])
    result = mk.reference.fairgrad(J, alpha=2.0)
    assert result.info["dropped_tasks"] == [0, 1] and result.weights[:2].tolist() == [0.0, 0.0]
    assert float(result.weights[2]) == pytest.approx(float(J[2] @ J[2]) ** (-2 / 3), rel=1e-14)


def test_against_torchjd():
    FairGradWeighting = torchjd_aggregation().FairGradWeighting
    for K, N, seed in ((3, 10, 2), (6, 40, 3)):
        J = random_J(K, N, seed)
        for alpha in (0.5, 2.0):
            ours = mk.reference.fairgrad(J, alpha=alpha)
            theirs = FairGradWeighting(alpha=alpha)(J @ J.T).double()
            assert ours.info["residual"] <= 1e-14
            norms = J.norm(dim=1)
            assert float(((ours.weights - theirs).abs() * norms).max()) <= 1e-5 * float(ours.weights @ norms)
