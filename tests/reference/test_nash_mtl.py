"""Nash-MTL — our reference and fast path against the peer installed from PyPI: torchjd 0.18's
NashMTL, which runs the authors' algorithm (a convex-concave procedure of cvxpy + ECOS problems,
20 iterations, warm-started from the previous step's α, the authors' stopping rule; stateful).
LibMTL 1.1.5 has no Nash-MTL.

* Exact solve (solver="newton") vs the peer: the peer stops its CCP early, so it lands near the
  solution of α⊙(Γα) = 1 only to its own residual (1e-9..1e-5 here). We assert our residual on
  the same Γ is no larger than the peer's, and that weights and directions agree within 10× the
  peer's residual (the system's Jacobian in the scaled variables βᵢ = ‖gᵢ‖αᵢ is well conditioned on
  these inputs, so an α with residual r is within about r of the solution).
* Convention: solver="ccp" selects the authors' procedure; given the same Γ it then matches the
  peer bit for bit over several stateful steps, including the inputs where the peer's ECOS fails.
* Where no positive solution exists (a zero gradient, opposite gradients) the peer keeps the
  previous α (𝟙 at the first step); our exact solver gives the cancelling tasks weight 0 instead.
"""
import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from mtlkernels.methods import NashMTLWeighting
from peers import require_peer, torchjd_aggregation


pytestmark = pytest.mark.usefixtures("single_thread")


def _peer(K: int, **options):
    return torchjd_aggregation().NashMTL(n_tasks=K, **options)


def _residual(gram: torch.Tensor, alpha: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(alpha * (gram @ alpha) - 1))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


NONDEGENERATE = [(K, name, J) for K in (2, 3, 5, 8) for name, J in [("random", random_J(K, 300, seed=K)), ("conflicting", conflicting_J(K, 300, seed=K))]]


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize("K, name, J", NONDEGENERATE, ids=[f"{name}-K{K}" for K, name, _ in NONDEGENERATE])
def test_exact_solution_vs_torchjd(K, name, J):
    gram = J @ J.T
    peer = _peer(K, max_norm=0.0)
    peer_alpha = peer.weighting(J)
    peer_residual = _residual(gram, peer_alpha)

    reference = mk.reference.nash_mtl(J, max_norm=0.0)
    for label, alpha, residual in [
        ("reference", reference.weights, reference.info["residual"]),
        *[
            (backend, result.weights, result.diagnostics["residual"])
            for backend in ("torch", "cpp")
            for result in [mk.aggregate(J, "nash_mtl", backend=backend, max_norm=0.0)]
        ],
    ]:
        assert residual <= peer_residual, f"{label}: residual {residual:.2e} > torchjd's {peer_residual:.2e}"
        assert residual == pytest.approx(_residual(gram, alpha), abs=1e-13)
        assert _relative(peer_alpha, alpha) <= 10 * peer_residual, label

    clipped = mk.aggregate(J, "nash_mtl")
    peer_direction = _peer(K)(J)
    assert float((clipped.direction - peer_direction).norm()) <= 10 * peer_residual


def _peer_gram(J: torch.Tensor) -> torch.Tensor:
    """Γ exactly as the peer forms it (one torch.mm; our Gram pass accumulates in chunks)."""
    return torch.mm(J, J.t())


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.parametrize("update_weights_every", [1, 2])
@pytest.mark.parametrize("K", [2, 5])
def test_ccp_option_reproduces_torchjd_over_steps(K, update_weights_every):
    """Given the same Γ, solver="ccp" hands ECOS the same problems as the peer: equal α bit for bit.
    Through aggregate() Γ differs from the peer's in the last bits, and ECOS, which stops at its own
    tolerances (~1e-8), moves its iterates by up to ~1e-6 for that: directions within 1e-5."""
    require_peer("cvxpy")
    ours = NashMTLWeighting(solver="ccp", update_weights_every=update_weights_every, max_norm=0.0)
    peer = _peer(K, update_weights_every=update_weights_every, max_norm=0.0)
    ours_clipped = mk.Aggregator("nash_mtl", solver="ccp", update_weights_every=update_weights_every)
    peer_clipped = _peer(K, update_weights_every=update_weights_every)
    for step in range(4):
        J = conflicting_J(K, 200, seed=step) * (1.0 + step)
        solution = ours(_peer_gram(J))
        assert torch.equal(solution.weights, peer.weighting(J)), f"step {step}"
        assert solution.diagnostics["reused"] == (step % update_weights_every != 0)
        torch.testing.assert_close(ours_clipped(J).direction, peer_clipped(J), rtol=1e-5, atol=1e-7)


DEGENERATE = [(K, name, J) for K in (2, 5) for name, J in adversarial_cases(K, 200, seed=K)]


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # the peer's 1/α with α = 0
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("K, name, J", DEGENERATE, ids=[f"{name}-K{K}" for K, name, _ in DEGENERATE])
def test_ccp_option_reproduces_torchjd_on_adversarial_inputs(K, name, J):
    """Including the peer's failures (ECOS infeasible or inaccurate on zero, opposite, 1e-20..1e20
    gradients), which the exact solver does not share: its residual is never larger."""
    require_peer("cvxpy")
    gram = _peer_gram(J)
    peer_alpha = _peer(K, max_norm=0.0).weighting(J)
    assert torch.equal(NashMTLWeighting(solver="ccp", max_norm=0.0)(gram).weights, peer_alpha)
    exact = NashMTLWeighting(max_norm=0.0)(gram)
    assert exact.diagnostics["residual"] <= _residual(gram, peer_alpha) + 1e-12


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # the peer's 1/α with α = 0
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_zero_gradient_convention():
    """The peer keeps α = 𝟙 when a gradient is zero (its ECOS problem is infeasible), so the others
    are summed unweighted; the exact solver gives the zero gradient weight 0 and solves the rest."""
    J = conflicting_J(3, 100, seed=1)
    J[0] = 0
    peer_alpha = _peer(3, max_norm=0.0).weighting(J)
    assert peer_alpha.tolist() == [1.0, 1.0, 1.0]
    exact = mk.aggregate(J, "nash_mtl", max_norm=0.0)
    rest = mk.reference.nash_mtl(J[1:], max_norm=0.0)
    assert exact.diagnostics["dropped_tasks"] == [0]
    torch.testing.assert_close(exact.weights[1:], rest.weights, rtol=1e-12, atol=0)
    assert torch.equal(NashMTLWeighting(solver="ccp", max_norm=0.0)(_peer_gram(J)).weights, peer_alpha)
