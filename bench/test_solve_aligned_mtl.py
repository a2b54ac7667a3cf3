"""Microbenchmark of Aligned-MTL's K-space solve against torchjd's.

    python -m pytest bench/test_solve_aligned_mtl.py --benchmark-only -q

Inputs: J [K, N = 1000] random float64 gradients (odd rows pushed against row 0, so tasks conflict)
and its Gram Γ = J·Jᵀ. Solvers, each timed through its Python call on Γ, scale_mode "min":
- ``torchjd``: ``torchjd.aggregation.AlignedMTLWeighting()`` (``torch.linalg.eigh``); the baseline
  the speed-ups are measured against;
- ``cpp``, ``torch``: ours, ``AlignedMTLWeighting(backend=...)(Γ)``.

``extra_info``: ``median_us``, ``speedup_vs_torchjd``, and ``alignment_residual`` = max |ĴĴᵀ − σ²I|/σ²
of the aligned gradients Ĵ = B·J, B from the weights of the basis preferences (untimed).
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlkernels.methods.aligned_mtl import AlignedMTLWeighting
from mtlkernels.testing.cases import against_first_J
from peers import torchjd_aggregation

KS = (2, 4, 8, 16, 32, 64)
N = 1000
SOLVERS = ("torchjd", "cpp", "torch")
BASELINES = ("torchjd",)


pytestmark = pytest.mark.usefixtures("single_thread")


def weighting_for(solver: str):
    """pref → (Γ → w) for ``solver``."""
    if solver == "torchjd":
        return lambda pref=None: torchjd_aggregation().AlignedMTLWeighting(pref_vector=pref)
    return lambda pref=None: (lambda gram, w=AlignedMTLWeighting(pref_vector=pref, backend=solver): w(gram).weights)


def alignment_residual(make, gram: Tensor, J: Tensor) -> float:
    K = J.shape[0]
    B = torch.stack([make(torch.eye(K, dtype=torch.float64)[j])(gram).double() for j in range(K)])
    aligned = B @ J
    product = aligned @ aligned.T
    sigma2 = float(product.diagonal().mean())
    return float((product - sigma2 * torch.eye(K, dtype=torch.float64)).abs().max()) / sigma2


def test_solve_aligned_mtl(time_solve, K, solver):
    J = against_first_J(K, N)
    gram = J @ J.T
    make = weighting_for(solver)
    time_solve(f"aligned_mtl solve K={K}", solver, make(), gram, baselines=BASELINES,
               facts=lambda w: {"alignment_residual": alignment_residual(make, gram, J)})
