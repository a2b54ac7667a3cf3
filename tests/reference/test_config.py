"""ConFIG's reference (mtlkernels.reference.config: pinv of the unit-gradient matrix on the full J)
against literal cases and torchjd 0.18's ConFIG."""

import torch

import mtlkernels as mk
from cases import random_J
from peers import torchjd_aggregation


def test_literal_cases():
    """Two orthogonal gradients of norms 3 and 4: x̂ = (1, 1)/√2, length (3 + 4)/√2, d = (3.5, 3.5);
    one gradient: d = g; (g, −g): d = 0."""
    J = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(mk.reference.config(J).direction, torch.tensor([3.5, 3.5], dtype=torch.float64))
    g = random_J(1, 5, seed=1)
    torch.testing.assert_close(mk.reference.config(g).direction, g[0])
    assert mk.reference.config(torch.cat([g, -g])).direction.tolist() == [0.0] * 5


def test_against_torchjd():
    ConFIG = torchjd_aggregation().ConFIG
    for K, N, seed in ((2, 5, 2), (5, 50, 3), (8, 4, 4)):
        J = random_J(K, N, seed)
        expected = ConFIG()(J)
        assert float((mk.reference.config(J).direction - expected).norm()) <= 1e-12 * float(expected.norm())
        p = torch.linspace(1.0, 2.0, K, dtype=torch.float64)
        expected = ConFIG(pref_vector=p)(J)
        assert float((mk.reference.config(J, pref_vector=p).direction - expected).norm()) <= 1e-12 * float(expected.norm())
