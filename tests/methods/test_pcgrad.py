"""PCGrad's K-space solve (torch and C++) against the float64 full-vector reference, its
certificate, the paper's properties, and option errors.

Tolerances are norm-wise against the natural scale Σᵢ‖gᵢ‖: each projected gᵢ' has ‖gᵢ'‖ ≤ ‖gᵢ‖
and each projection's coefficient satisfies |cᵢⱼ|·‖gⱼ‖ ≤ ‖gᵢ‖, so rounding errors are relative
to that sum, not to ‖d‖ (which can vanish, e.g. for opposite gradients).
"""

import pytest
import torch
from _hypothesis import given, settings, st

import mtlkernels as mk
from _devices import requires_cuda
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from mtlkernels import _extension
from mtlkernels.methods import PCGradWeighting
from mtlkernels.methods.pcgrad import draw_orders

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _natural_scale(J: torch.Tensor) -> float:
    return float(J.double().norm(dim=1).sum())


def _solve(J: torch.Tensor, backend: str, seed: int = 0, **options) -> mk.AggregationResult:
    weighting = PCGradWeighting(backend=backend, generator=torch.Generator().manual_seed(seed), **options)
    return mk.aggregate(J, weighting)


def _reference(J: torch.Tensor, seed: int = 0, **options) -> mk.reference.ReferenceResult:
    return mk.reference.pcgrad(J, generator=torch.Generator().manual_seed(seed), **options)


def assert_matches(result: mk.AggregationResult, reference: mk.reference.ReferenceResult, J: torch.Tensor, rtol: float) -> None:
    """Direction and weights agree with the reference within rtol·Σᵢ‖gᵢ‖ (weights weighted by ‖gₖ‖)."""
    scale = _natural_scale(J)
    norms = J.double().norm(dim=1)
    direction_error = float((result.direction.double() - reference.direction).norm())
    weight_error = float(((result.weights.double() - reference.weights).abs() * norms).max())
    assert direction_error <= rtol * scale, f"direction off by {direction_error:.3g} (scale {scale:.3g})"
    assert weight_error <= rtol * scale, f"weights off by {weight_error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [1, 7, 1000])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 17, 32])
def test_random_matches_reference(K, N, dtype, backend):
    J = conflicting_J(K, N, seed=K + N) if K % 2 else random_J(K, N, seed=K + N)
    J = J.to(dtype)
    assert_matches(_solve(J, backend, seed=N), _reference(J, seed=N), J, RTOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [3, 8])
def test_large_N_matches_reference(K, dtype, backend):
    J = conflicting_J(K, 100003, seed=K).to(dtype)
    assert_matches(_solve(J, backend), _reference(J), J, RTOL[dtype])


ADVERSARIAL = [(K, N, name, J) for K in (1, 2, 3, 8, 17) for N in (7, 1000) for name, J in adversarial_cases(K, N, seed=K)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K, N, name, J", ADVERSARIAL, ids=[f"K{K}-N{N}-{name}" for K, N, name, _ in ADVERSARIAL])
def test_adversarial_matches_reference(K, N, name, J, dtype, backend):
    J = J.to(dtype)
    assert_matches(_solve(J, backend, seed=1), _reference(J, seed=1), J, RTOL[dtype])


def test_fp64_extreme_scales_finite_and_exact():
    """The K-space ratios (Γcᵢ)ⱼ/Γⱼⱼ span 1e-40..1e40 yet stay exact in float64."""
    for seed in range(6):
        J = dict(adversarial_cases(5, 7, seed))["scales_1e-20_1e20"]
        for backend in ("torch", "cpp") if _extension.available else ("torch",):
            result = _solve(J, backend, seed=seed)
            assert bool(torch.isfinite(result.direction).all())
            assert_matches(result, _reference(J, seed=seed), J, 1e-12)


@st.composite
def degenerate_J(draw) -> torch.Tensor:
    """Random rows with scales 10^-20..10^20, then zero, duplicated, opposite or rescaled rows."""
    K = draw(st.integers(1, 8))
    N = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    J = torch.randn(K, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exponents = draw(st.lists(st.integers(-20, 20), min_size=K, max_size=K))
    J *= torch.tensor([10.0**e for e in exponents], dtype=torch.float64)[:, None]
    for _ in range(draw(st.integers(0, 3))):
        edit = draw(st.sampled_from(["zero", "duplicate", "opposite", "rescaled"]))
        i, j = draw(st.integers(0, K - 1)), draw(st.integers(0, K - 1))
        if edit == "zero":
            J[i] = 0
        elif edit == "duplicate":
            J[i] = J[j]
        elif edit == "opposite":
            J[i] = -J[j]
        else:
            J[i] = 10.0 ** draw(st.integers(-20, 20)) * J[j]
    return J


@pytest.mark.skipif(not _extension.available, reason="C++ extension not built")
@settings(max_examples=150, deadline=None)
@given(J=degenerate_J(), seed=st.integers(0, 1000))
def test_hypothesis_backends_reference_certificate(J, seed):
    K = J.shape[0]
    gram = J @ J.T
    solutions = {b: PCGradWeighting(backend=b, generator=torch.Generator().manual_seed(seed))(gram) for b in ("torch", "cpp")}
    reference = _reference(J, seed=seed)
    scale = _natural_scale(J)
    norms = J.norm(dim=1)
    for backend, solution in solutions.items():
        assert solution.weights.dtype == torch.float64
        assert bool(torch.isfinite(solution.weights).all()), backend
        assert torch.equal(solution.diagnostics["order"], solutions["torch"].diagnostics["order"])
        assert solution.diagnostics["orthogonality_residual"] <= 4 * (K + 2) * 2.0**-53, backend
        direction = solution.weights @ J
        assert float((direction - reference.direction).norm()) <= 1e-12 * scale, backend
        assert float(((solution.weights - reference.weights).abs() * norms).max()) <= 1e-12 * scale, backend
    assert reference.info["orthogonality_residual"] <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_certificate_on_random_gram(backend):
    for seed, K in enumerate((2, 5, 17, 64, 256)):
        J = conflicting_J(K, 3 * K, seed=seed)
        solution = PCGradWeighting(backend=backend, generator=torch.Generator().manual_seed(seed))(J @ J.T)
        assert solution.diagnostics["projections"] > 0
        assert solution.diagnostics["orthogonality_residual"] <= 4 * (K + 2) * 2.0**-53


@pytest.mark.parametrize("backend", BACKENDS)
def test_certificate_on_rank_deficient_gram(backend):
    """K = 12 gradients in a 3-dimensional space: Γ has rank 3."""
    J = random_J(12, 3, seed=5)
    solution = PCGradWeighting(backend=backend, generator=torch.Generator().manual_seed(0))(J @ J.T)
    assert solution.diagnostics["orthogonality_residual"] <= 1e-14
    assert_matches(mk.aggregate(J, PCGradWeighting(backend=backend, order=solution.diagnostics["order"])),
                   mk.reference.pcgrad(J, order=solution.diagnostics["order"]), J, 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_finite(dtype, backend):
    J = conflicting_J(5, 300, seed=2).to(dtype)
    result = _solve(J, backend)
    assert result.direction.dtype == dtype
    assert bool(torch.isfinite(result.direction).all())
    expected = _reference(J).direction  # the same (rounded) J, in float64
    assert float((result.direction.double() - expected).norm()) <= 1e-2 * _natural_scale(J)


# -- the paper's properties ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 20))
def test_two_tasks_no_conflict_left(backend, seed, N):
    """K = 2: d = g₁' + g₂' has no negative inner product with g₁ or g₂ (paper, Theorem 1 setup)."""
    J = random_J(2, N, seed=seed)
    d = PCGradWeighting(backend=backend)(J @ J.T).weights @ J
    for g in J:
        assert float(d @ g) >= -1e-14 * _natural_scale(J) * float(g.norm())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_is_sum_over_K(backend):
    J = conflicting_J(7, 50, seed=4)
    summed = _solve(J, backend, seed=9)
    averaged = _solve(J, backend, seed=9, reduction="mean")
    torch.testing.assert_close(averaged.weights, summed.weights / 7, rtol=1e-15, atol=0)
    assert_matches(averaged, _reference(J, seed=9, reduction="mean"), J, 1e-12)


# -- orders and randomness -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_visit_projects_like_the_authors_code(backend):
    """Visiting i after other tasks projects gᵢ' off gᵢ when gᵢ'·gᵢ < 0 (TF code, LibMTL); first, it is a no-op."""
    J = torch.tensor([[1.0, 0.0], [-3.0, -3.0], [-3.0, 1.0]], dtype=torch.float64)
    last = torch.tensor([[1, 2, 0], [0, 1, 2], [0, 1, 2]])  # task 0 visits itself last
    first = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])  # ... or first
    with_self = mk.aggregate(J, PCGradWeighting(backend=backend, order=last))
    assert_matches(with_self, mk.reference.pcgrad(J, order=last), J, 1e-14)
    # task 0 by hand: off g₁ → (0.5, -0.5), off g₂ → (-0.1, -0.3), which conflicts with g₀ → (0, -0.3)
    visit_first = mk.aggregate(J, PCGradWeighting(backend=backend, order=first))
    difference = torch.tensor([0.1, 0.0], dtype=torch.float64)
    torch.testing.assert_close(with_self.direction - visit_first.direction, difference, rtol=0, atol=1e-15)


def test_authors_fixed_order():
    J = conflicting_J(5, 30, seed=6)
    fixed = torch.arange(5).repeat(5, 1)
    assert_matches(mk.aggregate(J, "pcgrad", order=fixed), mk.reference.pcgrad(J, order=fixed), J, 1e-12)


def test_draw_orders_are_permutations_with_self_first():
    orders = draw_orders(9, torch.Generator().manual_seed(0))
    assert orders.dtype == torch.int64 and orders.shape == (9, 9)
    assert torch.equal(orders[:, 0], torch.arange(9))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(9).repeat(9, 1))
    assert not torch.equal(orders, draw_orders(9, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_and_global_rng_reproducible(backend):
    J = conflicting_J(6, 40, seed=7)
    first = _solve(J, backend, seed=5)
    again = _solve(J, backend, seed=5)
    torch.testing.assert_close(first.weights, again.weights, rtol=0, atol=0)
    replay = mk.aggregate(J, PCGradWeighting(backend=backend, order=first.diagnostics["order"]))
    torch.testing.assert_close(first.weights, replay.weights, rtol=0, atol=0)

    torch.manual_seed(11)
    global_rng = mk.aggregate(J, PCGradWeighting(backend=backend))
    torch.manual_seed(11)
    assert torch.equal(global_rng.diagnostics["order"], draw_orders(6, None))
    torch.manual_seed(11)
    assert_matches(global_rng, mk.reference.pcgrad(J), J, 1e-12)


def test_fresh_order_every_call():
    weighting = PCGradWeighting(generator=torch.Generator().manual_seed(0))
    J = random_J(8, 20)
    gram = J @ J.T
    orders = [weighting(gram).diagnostics["order"] for _ in range(3)]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reduction": "avg"}, "reduction='avg'"),
        ({"order": torch.zeros(3, 2, dtype=torch.int64)}, r"order must be \[K, K\]"),
        ({"order": torch.zeros(3, dtype=torch.int64)}, r"order must be \[K, K\]"),
        ({"order": torch.zeros(0, 0, dtype=torch.int64)}, r"order must be \[K, K\]"),
        ({"order": torch.eye(3)}, "order must hold integer"),
        ({"order": [[0, 1], [1, 1]]}, r"order\[1\] = \[1, 1\] is not a permutation of 0..1"),
        ({"order": [[0, 2], [1, 0]]}, r"order\[0\].*not a permutation"),
        ({"order": "abc"}, "order must"),
        ({"order": [[0, 1], [1, 0]], "generator": torch.Generator()}, "not both"),
        ({"generator": 3}, "generator must be a torch.Generator"),
        ({"backend": "fortran"}, "backend"),
    ],
)
def test_bad_options(options, message):
    assert_option_rejected("pcgrad", options, message, K=2)


def test_unknown_option_named():
    with pytest.raises(TypeError, match="'pcgrad'.*seed"):
        mk.aggregate(random_J(2, 3), "pcgrad", seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_size_mismatch(backend):
    weighting = PCGradWeighting(backend=backend, order=torch.arange(3).repeat(3, 1))
    with pytest.raises(ValueError, match=r"order is \(3, 3\) but there are K = 4 tasks"):
        mk.aggregate(random_J(4, 5), weighting)


@pytest.mark.skipif(not _extension.available, reason="C++ extension not built")
@pytest.mark.parametrize(
    "gram, order, message",
    [
        (torch.eye(2), torch.tensor([[0, 1]]), r"order must be \[K, K\] with K = 2"),
        (torch.eye(2), torch.tensor([[0, 2], [0, 1]]), r"order\[0\] is not a permutation"),
        (torch.eye(2), torch.tensor([[0, 1], [1, 1]]), r"order\[1\] is not a permutation"),
        (torch.eye(2)[:1], torch.tensor([[0]]), "square"),
        (torch.eye(257), torch.arange(257).repeat(257, 1), "outside"),
    ],
)
def test_cpp_binding_errors(gram, order, message):
    with pytest.raises(ValueError, match=message):
        _extension.extension().pcgrad_solve(gram.double().numpy(), order.numpy(), False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_dtype_and_layout(backend):
    """A float32 or non-contiguous Γ is solved in float64 all the same; weights come back float64."""
    J = conflicting_J(6, 30, seed=8)
    gram = J @ J.T
    order = draw_orders(6, torch.Generator().manual_seed(0))
    expected = PCGradWeighting(backend=backend, order=order)(gram).weights
    transposed = PCGradWeighting(backend=backend, order=order)(gram.T.contiguous().T).weights
    torch.testing.assert_close(transposed, expected, rtol=0, atol=0)
    single = PCGradWeighting(backend=backend, order=order)(gram.float()).weights
    assert single.dtype == torch.float64
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_weights_on_the_gram_device():
    J = conflicting_J(5, 30, seed=9).cuda()
    solution = PCGradWeighting(generator=torch.Generator().manual_seed(0))(J @ J.T)
    assert solution.weights.device == J.device and solution.weights.dtype == torch.float64
