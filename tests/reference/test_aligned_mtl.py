"""Aligned-MTL's reference (mtlkernels.reference.aligned_mtl: SVD of the full J) against literal
cases and torchjd 0.18's AlignedMTL."""
import math

import pytest
import torch

import mtlkernels as mk
from cases import random_J
from peers import torchjd_aggregation


def test_literal_cases():
    """Rows of norms (3, 1) on the axes: σ = (3, 1), Ĵ = σ_chosen·I, d = σ_chosen·p with p = (½, ½):
    min 1, median (lower) 1, rmse √5."""
    J = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for mode, sigma in (("min", 1.0), ("median", 1.0), ("rmse", math.sqrt(5.0))):
        result = mk.reference.aligned_mtl(J, scale_mode=mode)
        torch.testing.assert_close(result.direction, torch.tensor([sigma / 2, sigma / 2], dtype=torch.float64))
        torch.testing.assert_close(result.weights, torch.tensor([sigma / 6, sigma / 2], dtype=torch.float64))


@pytest.mark.parametrize("scale_mode", ("min", "median", "rmse"))
def test_against_torchjd(scale_mode):
    AlignedMTL = torchjd_aggregation().AlignedMTL
    for K, N, seed in ((2, 5, 2), (5, 50, 3), (8, 4, 4)):
        J = random_J(K, N, seed)
        expected = AlignedMTL(scale_mode=scale_mode)(J)
        result = mk.reference.aligned_mtl(J, scale_mode=scale_mode)
        assert float((result.direction - expected).norm()) <= 1e-12 * float(expected.norm())
