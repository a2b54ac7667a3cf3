"""The MGDA reference (and the fast path) against the peers installed from PyPI, on the same J.

- torchjd 0.18.0 ``MGDAWeighting(epsilon, max_iters)``: Frank–Wolfe from 𝟙/K on the raw Gram, no
  normalisation, d = Σ wᵢgᵢ → our defaults (normalization="none", combination="original").
- LibMTL 1.1.5 ``MGDA`` with ``mgda_gn`` ∈ {none, l2, loss, loss+}: the authors' projected
  Frank–Wolfe (best-pair start, stop when the weights move < 1e-5) on gᵢ/nᵢ, and it applies the
  weights to the *normalised* gradients → our combination="normalized" with the same normalization.

Both peers stop early, so they are compared by objective, each within its own certificate: for any
simplex point w with u = Σ wᵢpᵢ (pᵢ = gᵢ/nᵢ), ‖u‖² − ‖u*‖² ≤ gap(w) = 2·(‖u‖² − minᵢ pᵢ·u) (the
Frank–Wolfe duality gap), and ‖u − u*‖² ≤ ‖u‖² − ‖u*‖² (u* is the nearest point of a convex set). So
with ours = u*: ours ≤ theirs, theirs − ours ≤ their gap, and ‖d_theirs − d_ours‖² ≤ theirs − ours, each
up to 1e-12·(m_theirs + m_ours)², the rounding of these squared norms (m = Σ wᵢ‖pᵢ‖).
"""
from __future__ import annotations

import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from peers import libmtl_driver, torchjd_aggregation

ROUNDING = 1e-12


pytestmark = pytest.mark.usefixtures("single_thread")


def _cases(K: int, N: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed=K)), *adversarial_cases(K, N, seed=K)]


def _hull_point(J: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """u = Σ wᵢgᵢ/nᵢ, its Frank–Wolfe gap, and m = Σ wᵢ‖gᵢ/nᵢ‖, all on the vectors in float64."""
    P = J.double() / n.double()[:, None]
    w = w.double()
    u = w @ P
    return u, float(2 * (u @ u - (P @ u).min())), float(w @ P.norm(dim=1))


def _assert_within_certificate(J, n, w_theirs, d_theirs, w_ours, d_ours) -> None:
    """ours ≤ theirs ≤ ours + gap(theirs), ‖d_theirs − d_ours‖² ≤ theirs − ours (see module docstring)."""
    u_theirs, gap, m_theirs = _hull_point(J, n, w_theirs)
    u_ours, _, m_ours = _hull_point(J, n, w_ours)
    torch.testing.assert_close(u_theirs, d_theirs.double(), rtol=1e-9, atol=1e-9 * m_theirs)
    torch.testing.assert_close(u_ours, d_ours.double(), rtol=1e-9, atol=1e-9 * m_ours)
    theirs, ours = float(u_theirs @ u_theirs), float(u_ours @ u_ours)
    slack = ROUNDING * (m_theirs + m_ours) ** 2
    assert ours <= theirs + slack
    assert theirs - ours <= gap + slack
    assert float((u_theirs - u_ours).square().sum()) <= theirs - ours + slack


# -- torchjd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [2, 3, 5, 8, 17])
def test_torchjd_default(K):
    """torchjd's defaults (epsilon=1e-3, max_iters=100) vs the reference and the fast path."""
    aggregation = torchjd_aggregation()
    ones = torch.ones(K, dtype=torch.float64)
    for name, J in _cases(K, 50):
        w_theirs = aggregation.MGDAWeighting()(J @ J.T)
        d_theirs = aggregation.MGDA()(J)  # the aggregator: its weights times J
        ref = mk.reference.mgda(J)
        _assert_within_certificate(J, ones, w_theirs, d_theirs, ref.info["simplex_weights"], ref.direction)
        res = mk.aggregate(J, "mgda")
        _assert_within_certificate(J, ones, w_theirs, d_theirs, res.weights, res.direction)


@pytest.mark.parametrize("K", [3, 5, 8])
def test_torchjd_converges_to_ours(K):
    """With epsilon=1e-12, torchjd's Frank–Wolfe objective falls towards ours as max_iters grows,
    always within its certificate; it is within 1e-6 relative by 3000 iterations for K ≤ 5."""
    aggregation = torchjd_aggregation()
    J = conflicting_J(K, 50, seed=K)
    G = J @ J.T
    ref = mk.reference.mgda(J)
    gaps = []
    for max_iters in (100, 1000, 3000):
        w_theirs = aggregation.MGDAWeighting(epsilon=1e-12, max_iters=max_iters)(G)
        _assert_within_certificate(J, torch.ones(K, dtype=torch.float64), w_theirs, w_theirs @ J, ref.weights, ref.direction)
        gaps.append(float(w_theirs @ G @ w_theirs) - ref.info["objective"])
    assert gaps[0] >= gaps[1] >= gaps[2] >= -ROUNDING * ref.info["objective"]
    if K <= 5:
        assert gaps[2] <= 1e-6 * ref.info["objective"]


# -- LibMTL --------------------------------------------------------------------------------------


def _libmtl_mgda(J: torch.Tensor, normalization: str, loss_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LibMTL's MGDA on J with losses Lₖ = gₖ·θ + cₖ at θ = 0 (so Lₖ = cₖ and ∂Lₖ/∂θ = gₖ):
    returns (θ.grad it writes, the simplex weights it returns)."""
    K, N = J.shape
    driver = libmtl_driver("MGDA", K, N, torch.float64)
    losses = torch.stack([(J[k] * driver.theta).sum() + loss_values[k] for k in range(K)])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # LibMTL allocates its buffers with the default dtype
    try:
        weights = driver.backward(losses, mgda_gn=normalization)
    finally:
        torch.set_default_dtype(previous)
    return driver.theta.grad.detach().clone(), torch.from_numpy(weights)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_libmtl_all_normalizations(K, normalization):
    """LibMTL's mgda_gn=X is our normalization=X with combination="normalized" (same losses)."""
    losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    for name, J in _cases(K, 40):
        if name == "zero_row" and normalization in ("l2", "loss+"):
            continue  # LibMTL divides 0/0 and its solver then never stops (see the docs)
        d_theirs, w_theirs = _libmtl_mgda(J, normalization, losses)
        ref = mk.reference.mgda(J, normalization=normalization, combination="normalized", losses=losses)
        n = ref.info["normalizers"]
        _assert_within_certificate(J, n, w_theirs, d_theirs, ref.info["simplex_weights"], ref.direction)
        res = mk.aggregate(J, "mgda", normalization=normalization, combination="normalized", losses=losses)
        _assert_within_certificate(J, n, w_theirs, d_theirs, res.diagnostics["simplex_weights"], res.direction)


def test_libmtl_unit_losses_as_peers_driver():
    """tests/peers.py drives LibMTL with Lₖ = 1 for every task: "loss" is then "none", "loss+" is "l2"."""
    from peers import libmtl_direction

    J = conflicting_J(4, 30, seed=4)
    ones = torch.ones(4, dtype=torch.float64)
    for normalization in ("loss", "loss+"):
        d_theirs, w_theirs = libmtl_direction("MGDA", J, mgda_gn=normalization)
        res = mk.aggregate(J, "mgda", normalization=normalization, combination="normalized", losses=ones)
        n = res.diagnostics["normalizers"]
        _assert_within_certificate(J, n, torch.from_numpy(w_theirs), d_theirs, res.diagnostics["simplex_weights"], res.direction)


def test_libmtl_two_tasks_is_exact_in_the_interior():
    """For K = 2 LibMTL returns the pair's closed form, clamped to [0.001, 0.999]: exact when the
    optimum is interior, so the directions agree to rounding there."""
    J = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3]], dtype=torch.float64)
    d_theirs, w_theirs = _libmtl_mgda(J, "l2", torch.ones(2, dtype=torch.float64))
    res = mk.aggregate(J, "mgda", normalization="l2", combination="normalized")
    torch.testing.assert_close(res.direction, d_theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.diagnostics["simplex_weights"], w_theirs, rtol=1e-12, atol=1e-14)
    dominated = torch.tensor([[1.0, 0.0], [3.0, 0.5]], dtype=torch.float64)  # g₁ alone is optimal
    _, w_theirs = _libmtl_mgda(dominated, "none", torch.ones(2, dtype=torch.float64))
    assert w_theirs.tolist() == pytest.approx([0.999, 0.001])
    assert mk.aggregate(dominated, "mgda").weights.tolist() == [1.0, 0.0]


def test_libmtl_failures_documented():
    """Two LibMTL 1.1.5 failures the docs list, where ours returns the exact answer: its best-pair
    search starts from a cost of 1e8, so gradients whose every pair costs more leave it without a
    pair; and a zero gradient with "l2" divides 0/0 (for K = 2 it then has no pair either; for
    K ≥ 3 its loop never ends, so that is not run here)."""
    big = conflicting_J(3, 20, seed=1) * 1e5  # every ‖gᵢ‖² ≈ 1e11
    with pytest.raises(UnboundLocalError):
        _libmtl_mgda(big, "none", torch.ones(3, dtype=torch.float64))
    res = mk.aggregate(big, "mgda")
    ref = mk.reference.mgda(big)
    torch.testing.assert_close(res.direction, ref.direction, rtol=1e-9, atol=1e-9 * float(big.norm(dim=1).max()))
    zero = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    with pytest.raises(UnboundLocalError):
        _libmtl_mgda(zero, "l2", torch.ones(2, dtype=torch.float64))
    assert mk.aggregate(zero, "mgda", normalization="l2").weights.tolist() == [1.0, 0.0]
