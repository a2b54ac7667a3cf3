"""DualProj's exact reference against cvxpy (torchjd: test_dual_cone_torchjd.py).

- cvxpy (an independent conic solver on the N-space problem min ‖x − Jᵀp‖² s.t. J·x ≥ 0, the
  paper's definition of π): the exact reference agrees to the solver's tolerance (bound 1e-6).
"""
import pytest
import torch

import mtlkernels as mk
from cases import conflicting_J
from peers import require_peer


@pytest.mark.parametrize("K, N", [(2, 5), (4, 3), (6, 20), (8, 5)])
def test_reference_against_cvxpy(K, N):
    """π(Jᵀp) of the exact reference, for the mean and for other preferences, against cvxpy's
    solution of its definition."""
    cp = require_peer("cvxpy")
    J = conflicting_J(K, N, seed=K + N)
    for p in (torch.full((K,), 1.0 / K, dtype=torch.float64), torch.linspace(0.0, 2.0, K, dtype=torch.float64)):
        expected = mk.reference.dualproj(J, pref_vector=p).direction
        x = cp.Variable(N)
        cp.Problem(cp.Minimize(cp.sum_squares(x - (J.T @ p).numpy())), [J.numpy() @ x >= 0]).solve()
        error = float((expected - torch.from_numpy(x.value)).norm())
        assert error <= 1e-6 * float((J.T @ p).norm()), f"p = {p.tolist()}: off by {error:.3g}"
