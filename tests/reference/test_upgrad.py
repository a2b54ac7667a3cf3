"""UPGrad's exact reference against cvxpy (torchjd: test_dual_cone_torchjd.py).

- cvxpy (an independent conic solver on the N-space problem min ‖x − gᵢ‖² s.t. J·x ≥ 0, the
  paper's definition of π): the exact reference agrees to the solver's tolerance (bound 1e-6).
"""
import pytest
import torch

import mtlkernels as mk
from cases import conflicting_J
from peers import require_peer


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
