"""Nash-MTL's K-space solve (torch and C++) against the float64 reference, its certificates, the
paper's properties, the stateful API, and option errors.

Tolerances: weights element-wise relative (α is well determined entry by entry: αᵢ‖gᵢ‖ = βᵢ is of
order 1 unless 0 is close to the gradients' convex hull); the direction norm-wise against the
natural scale Σᵢ|wᵢ|·‖gᵢ‖ (the norms of the terms that are summed, which bounds the rounding of the
combination, e.g. of a float32 J).
"""
import math

import pytest
import torch
from _hypothesis import given, settings, st

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from _devices import requires_cuda
from mtlkernels import _extension
from mtlkernels.methods import NashMTLWeighting
from mtlkernels.methods import nash_mtl as nash_module
from peers import require_peer

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


pytestmark = pytest.mark.usefixtures("single_thread")


def assert_matches(result: mk.AggregationResult, reference: mk.reference.ReferenceResult, J: torch.Tensor, rtol: float, label: str = "") -> None:
    """Same dropped tasks, weights within rtol element-wise, direction within rtol·Σᵢ|wᵢ|‖gᵢ‖."""
    weights, expected = result.weights.double(), reference.weights
    assert result.diagnostics["dropped_tasks"] == reference.info["dropped_tasks"], label
    assert bool(torch.isfinite(weights).all()) and bool(torch.isfinite(result.direction).all()), label
    weight_error = float(((weights - expected).abs() / expected.abs().clamp_min(1e-300)).max())
    assert weight_error <= rtol, f"{label}: weights off by {weight_error:.3g} relative"
    scale = float((expected.abs() * J.double().norm(dim=1)).sum())
    direction_error = float((result.direction.double() - reference.direction).norm())
    assert direction_error <= rtol * max(scale, 1e-300), f"{label}: direction off by {direction_error:.3g} (scale {scale:.3g})"


def _cases(K: int, N: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed=K * 1000 + N))] + adversarial_cases(K, N, seed=K + N)


# -- against the reference ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [1, 7, 1000])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 17, 32])
def test_matches_reference(K, N, dtype, backend):
    for name, J in _cases(K, N):
        J = J.to(dtype)
        result = mk.aggregate(J, "nash_mtl", backend=backend)
        assert_matches(result, mk.reference.nash_mtl(J), J, RTOL[dtype], f"{name} K={K} N={N}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [3, 17])
def test_large_N_matches_reference(K, dtype, backend):
    for name, J in [("conflicting", conflicting_J(K, 100003, seed=K)), adversarial_cases(K, 100003, seed=K)[-2]]:
        J = J.to(dtype)
        result = mk.aggregate(J, "nash_mtl", backend=backend)
        assert_matches(result, mk.reference.nash_mtl(J), J, RTOL[dtype], name)


@st.composite
def integer_gradients(draw):
    """Small-integer gradients (exact degeneracies: zero, equal, opposite, cancelling combinations)
    with each row scaled by 10^e, e in [-20, 20]."""
    K = draw(st.integers(1, 6))
    N = draw(st.integers(1, 6))
    entries = draw(st.lists(st.integers(-3, 3), min_size=K * N, max_size=K * N))
    J = torch.tensor(entries, dtype=torch.float64).reshape(K, N)
    exponents = draw(st.lists(st.integers(-20, 20), min_size=K, max_size=K))
    return J * torch.tensor([10.0**e for e in exponents], dtype=torch.float64)[:, None]


@settings(max_examples=60, deadline=None)
@given(J=integer_gradients(), backend=st.sampled_from(["torch", "cpp"] if _extension.available else ["torch"]))
def test_hypothesis_matches_reference(J, backend):
    result = mk.aggregate(J, "nash_mtl", backend=backend)
    reference = mk.reference.nash_mtl(J)
    assert_matches(result, reference, J, 1e-9)
    assert result.diagnostics["kept_residual"] <= 1e-10 * math.sqrt(J.shape[0])


@pytest.mark.parametrize("K", [2, 5, 32])
def test_backends_agree_over_steps(K):
    torch_agg = mk.Aggregator("nash_mtl", backend="torch", update_weights_every=2)
    cpp_agg = mk.Aggregator("nash_mtl", backend="cpp", update_weights_every=2)
    if not _extension.available:
        pytest.skip("C++ extension not built")
    for step in range(5):
        J = conflicting_J(K, 300, seed=step)
        a, b = torch_agg(J), cpp_agg(J)
        torch.testing.assert_close(a.weights, b.weights, rtol=1e-12, atol=0)
        assert a.diagnostics["reused"] == b.diagnostics["reused"] == (step % 2 == 1)
    torch.testing.assert_close(torch_agg.state_dict()["alpha"], cpp_agg.state_dict()["alpha"], rtol=1e-12, atol=0)


# -- certificates ---------------------------------------------------------------------------------
def _gram_cases():
    cases = []
    for K in (2, 5, 17):
        for name, J in _cases(K, 40):
            cases.append((f"{name}-K{K}", J @ J.T))
    cases.append(("rank_deficient", (lambda J: J @ J.T)(random_J(6, 3, seed=1))))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, gram", _gram_cases(), ids=[name for name, _ in _gram_cases()])
def test_certificates(name, gram, backend):
    solution = NashMTLWeighting(backend=backend, max_norm=0.0)(gram)
    alpha, facts = solution.weights, solution.diagnostics
    kept = alpha > 0
    equations = alpha * (gram @ alpha) - 1  # the paper's system with the unnormalised Γ
    assert facts["converged"]
    assert facts["dropped_tasks"] == (~kept).nonzero().flatten().tolist()
    assert float(equations[kept].abs().sum()) <= 1e-12 * gram.shape[0]
    assert facts["kept_residual"] == pytest.approx(float(equations[kept].norm()), abs=1e-12)  # summation order
    assert facts["residual"] == pytest.approx(math.sqrt(facts["kept_residual"] ** 2 + len(facts["dropped_tasks"])), rel=1e-12)
    assert facts["direction_norm"] == pytest.approx(math.sqrt(int(kept.sum())), rel=1e-12)  # αᵀΓα = K kept
    if name.startswith(("random", "conflicting", "near_collinear", "duplicate", "scales")):
        assert facts["dropped_tasks"] == []
    if name.startswith("zero_row"):
        assert 0 in facts["dropped_tasks"]
    if name.startswith("opposite_rows"):
        assert {0, 1} <= set(facts["dropped_tasks"])


def test_certificate_is_at_rounding_level_on_random_gram():
    J = random_J(8, 500, seed=3)
    facts = mk.aggregate(J, "nash_mtl").diagnostics
    assert facts["residual"] <= 1e-13 and facts["converged"] and facts["iterations"] <= 10


@settings(max_examples=40, deadline=None)
@given(J=integer_gradients())
def test_hypothesis_certificates(J):
    facts = mk.aggregate(J, "nash_mtl", max_norm=0.0).diagnostics
    assert facts["kept_residual"] <= 1e-10 * math.sqrt(J.shape[0])
    assert math.isfinite(facts["residual"]) and facts["converged"]


# -- the paper's properties -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 2, 3, 8])
def test_alpha_solves_the_bargaining_system(K, backend):
    J = conflicting_J(K, 200, seed=K)
    gram = J @ J.T
    result = mk.aggregate(J, "nash_mtl", backend=backend, max_norm=0.0)
    alpha = result.weights
    assert bool((alpha > 0).all())
    torch.testing.assert_close(alpha * (gram @ alpha), torch.ones(K, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(result.direction.norm() ** 2) == pytest.approx(K, rel=1e-12)  # ‖Σαᵢgᵢ‖² = αᵀΓα = K
    assert result.diagnostics["clip_scale"] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [2, 3, 8])
def test_default_max_norm_clips_to_one(K, backend):
    J = random_J(K, 300, seed=K)
    result = mk.aggregate(J, "nash_mtl", backend=backend)
    assert float(result.direction.norm()) == pytest.approx(1.0, rel=1e-12)
    assert result.diagnostics["direction_norm"] == pytest.approx(math.sqrt(K), rel=1e-12)
    assert result.diagnostics["clip_scale"] == pytest.approx(1 / math.sqrt(K), rel=1e-12)
    half = mk.aggregate(J, "nash_mtl", backend=backend, max_norm=0.5)
    assert float(half.direction.norm()) == pytest.approx(0.5, rel=1e-12)


# -- degenerate Γ: documented, finite results ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_indefinite_gram_stays_finite(seed, backend):
    """Not a Gram matrix (as a low-precision accumulation could give): finite weights, honest flags."""
    generator = torch.Generator().manual_seed(seed)
    A = 2 * torch.rand(8, 8, generator=generator, dtype=torch.float64) - 1
    scales = torch.logspace(-3, 3, 8, dtype=torch.float64)
    gram = ((A + A.T) / 2).fill_diagonal_(1.0) * scales[:, None] * scales[None, :]
    solution = NashMTLWeighting(backend=backend)(gram)
    assert bool(torch.isfinite(solution.weights).all())
    assert math.isfinite(solution.diagnostics["residual"])
    if solution.diagnostics["converged"] and not solution.diagnostics["dropped_tasks"]:
        assert solution.diagnostics["residual"] <= 1e-12


def float32_rank_deficient_gram(seed: int) -> torch.Tensor:
    """Γ of K gradients spanning fewer than K dimensions, accumulated and stored in float32 (as on
    CUDA): only positive semidefinite to float32 rounding, with negative eigenvalues ~1e-7."""
    generator = torch.Generator().manual_seed(seed)
    K = 4 + seed % 9
    J = torch.randn(K, 1 + seed % (K - 1), generator=generator) @ torch.randn(1 + seed % (K - 1), 50, generator=generator)
    J = J * torch.exp(2 * torch.randn(K, 1, generator=generator))
    return J @ J.T


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_rank_deficient_grams_give_non_negative_weights(backend):
    """Rounding makes such a Γ slightly indefinite; Newton must not leave β > 0 (it gave weights of
    −1e5 on 4 of these 60 before): weights ≥ 0 and finite, the dropped tasks exactly those of
    weight 0, also after the clipping. (The solutions are ill-conditioned — βᵢ up to ~1e4 — so the
    system's residual is not at rounding level; ``residual`` reports it.)"""
    for seed in range(60):
        gram = float32_rank_deficient_gram(seed)
        for max_norm in (0.0, 1.0):
            solution = NashMTLWeighting(backend=backend, max_norm=max_norm)(gram)
            weights, facts = solution.weights, solution.diagnostics
            assert bool(torch.isfinite(weights).all()) and bool((weights >= 0).all()), seed
            assert facts["dropped_tasks"] == (weights == 0).nonzero().flatten().tolist(), seed
            assert math.isfinite(facts["residual"]) and math.isfinite(facts["direction_norm"]), seed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_J(dtype, backend):
    for name, J in _cases(5, 257):
        if name == "scales_1e-20_1e20":
            continue  # beyond the range of float16/bfloat16 storage
        J = J.to(dtype)
        result = mk.aggregate(J, "nash_mtl", backend=backend)
        assert result.direction.dtype == dtype and result.weights.dtype == torch.float64
        assert bool(torch.isfinite(result.weights).all()) and bool(torch.isfinite(result.direction).all()), name
        reference = mk.reference.nash_mtl(J)
        assert result.diagnostics["dropped_tasks"] == reference.info["dropped_tasks"], name
        torch.testing.assert_close(result.direction.double(), reference.direction, rtol=2e-2, atol=2e-2 * float(reference.direction.abs().max()))


@requires_cuda
def test_cuda_gram_solved_on_host_and_returned_on_device():
    J = conflicting_J(5, 1000, seed=7)
    result = mk.aggregate(J.cuda(), "nash_mtl")
    assert result.weights.device.type == "cuda"
    assert_matches(result, mk.reference.nash_mtl(J), J, 1e-9)


# -- stateful API ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_update_weights_every_reuses_alpha(backend):
    agg = mk.Aggregator("nash_mtl", backend=backend, update_weights_every=3)
    grams = [conflicting_J(3, 50, seed=s) for s in range(5)]
    results = [agg(J) for J in grams]
    assert [r.diagnostics["reused"] for r in results] == [False, True, True, False, True]
    assert [r.diagnostics["step"] for r in results] == [1, 2, 3, 4, 5]
    assert results[1].diagnostics["iterations"] == 0
    first_alpha = mk.aggregate(grams[0], "nash_mtl", max_norm=0.0).weights
    reused = results[2]  # α of step 1, clipped with the Gram of step 3
    expected_norm = float((first_alpha @ grams[2]).norm())
    torch.testing.assert_close(reused.weights, first_alpha * min(1.0, 1.0 / expected_norm), rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_converges_in_fewer_steps(backend):
    agg = mk.Aggregator("nash_mtl", backend=backend)
    J = conflicting_J(8, 100, seed=8)
    cold = agg(J).diagnostics["iterations"]
    warm = agg(J + 1e-3 * random_J(8, 100, seed=9)).diagnostics["iterations"]
    assert warm < cold
    assert agg(J).diagnostics["converged"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip(backend):
    agg = mk.Aggregator("nash_mtl", backend=backend, update_weights_every=2)
    for seed in range(3):
        agg(conflicting_J(4, 60, seed=seed))
    state = agg.state_dict()
    assert state["step"] == 3 and state["alpha"].shape == (4,)
    clone = mk.Aggregator("nash_mtl", backend=backend, update_weights_every=2)
    clone.load_state_dict(state)
    assert torch.equal(clone.state_dict()["alpha"], state["alpha"]) and clone.state_dict()["step"] == 3
    for seed in range(3, 6):
        J = conflicting_J(4, 60, seed=seed)
        a, b = agg(J), clone(J)
        assert torch.equal(a.weights, b.weights) and a.diagnostics == b.diagnostics
    state["alpha"].fill_(7.0)  # state_dict() returns a copy
    assert not torch.equal(agg.state_dict()["alpha"], state["alpha"])
    agg.reset()
    assert agg.state_dict() == {"alpha": None, "step": 0}


def test_aggregate_is_stateless():
    J = conflicting_J(3, 40, seed=10)
    first, second = mk.aggregate(J, "nash_mtl", update_weights_every=5), mk.aggregate(J, "nash_mtl", update_weights_every=5)
    assert first.diagnostics["step"] == second.diagnostics["step"] == 1
    assert not second.diagnostics["reused"]
    assert torch.equal(first.weights, second.weights)


def test_nash_mtl_aggregator_class():
    NashMTLAggregator = mk.NashMTLAggregator
    agg = NashMTLAggregator(update_weights_every=2, backend="torch")
    assert isinstance(agg, mk.Aggregator) and agg.method == "nash_mtl"
    assert agg.weighting.update_weights_every == 2
    J = conflicting_J(3, 40, seed=11)
    torch.testing.assert_close(agg(J).weights, mk.aggregate(J, "nash_mtl", backend="torch").weights)
    assert agg(J).diagnostics["reused"] and agg.state_dict()["step"] == 2
    assert "NashMTLWeighting(optim_niter=20, max_norm=1.0, update_weights_every=2, solver='newton'" in repr(agg)


def test_state_errors():
    weighting = NashMTLWeighting()
    weighting(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="K = 3 tasks but the Gram matrix has K = 2"):
        weighting(torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"keys \['alpha', 'step'\]"):
        weighting.load_state_dict({"alpha": None})
    with pytest.raises(ValueError, match="step"):
        weighting.load_state_dict({"alpha": None, "step": -1})
    with pytest.raises(ValueError, match="alpha"):
        weighting.load_state_dict({"alpha": torch.ones(2, 2), "step": 0})
    with pytest.raises(ValueError, match="non-finite"):
        weighting.load_state_dict({"alpha": torch.tensor([1.0, float("nan")]), "step": 0})


# -- the authors' procedure as an option -----------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_ccp_solver_approaches_the_exact_solution(backend):
    require_peer("cvxpy")
    J = conflicting_J(3, 50, seed=12)
    agg = mk.Aggregator("nash_mtl", backend=backend, solver="ccp", max_norm=0.0)
    exact = mk.aggregate(J, "nash_mtl", max_norm=0.0)
    first = agg(J)
    assert first.diagnostics["solver"] == "ccp" and 1 <= first.diagnostics["iterations"] <= 20
    for _ in range(3):  # warm-started from the previous α, the CCP keeps converging
        last = agg(J)
    assert last.diagnostics["residual"] <= first.diagnostics["residual"]
    torch.testing.assert_close(last.weights, exact.weights, rtol=1e-3, atol=0)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"optim_niter": 0}, "optim_niter"),
        ({"optim_niter": 2.5}, "optim_niter"),
        ({"optim_niter": True}, "optim_niter"),
        ({"update_weights_every": 0}, "update_weights_every"),
        ({"update_weights_every": "2"}, "update_weights_every"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"max_norm": float("inf")}, "max_norm"),
        ({"max_norm": float("nan")}, "max_norm"),
        ({"max_norm": "1"}, "max_norm"),
        ({"solver": "adam"}, "solver"),
        ({"backend": "fortran"}, "backend"),
    ],
)
def test_option_errors(options, message):
    assert_option_rejected("nash_mtl", options, message, K=2)


def test_unknown_option():
    with pytest.raises(TypeError, match="ridge"):
        mk.aggregate(random_J(2, 5), "nash_mtl", ridge=1e-3)


def test_auto_backend_goes_on_in_torch_past_the_cpp_limit():
    J = random_J(257, 300, seed=13)
    result = mk.aggregate(J, "nash_mtl", max_norm=0.0)
    assert result.diagnostics["converged"] and result.diagnostics["kept_residual"] <= 1e-10


def test_cpp_errors_reach_python():
    if not _extension.available:
        pytest.skip("C++ extension not built")
    import numpy as np

    from mtlkernels.methods.base import cpp_constants

    def solve(gram, *args):
        return _extension.extension().nash_mtl_solve(gram, cpp_constants(nash_module.CONSTANTS), *args)

    with pytest.raises(ValueError, match="square"):
        solve(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative diagonal"):
        solve(-np.eye(2))
    with pytest.raises(ValueError, match="previous must be a vector"):
        solve(np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="reuse=True needs"):
        solve(np.eye(2), None, True)
    with pytest.raises(ValueError, match="K = 300"):
        solve(np.eye(300))
