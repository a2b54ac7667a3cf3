"""CAGrad's K-space solve (torch and C++) against the float64 full-vector reference, its
certificate, the paper's properties, and option errors.

Tolerances are norm-wise against the size of the combination, Σᵢ|wᵢ|·‖gᵢ‖ (the reference's
weights): rounding in d = Σᵢ wᵢgᵢ is relative to that sum, not to ‖d‖, which vanishes in the
degenerate case (e.g. K > N gradients whose hull contains 0 in its interior) and is far smaller
when a tiny gradient gets a huge weight (norms spanning 1e-20..1e20). Weights are compared the
same way, |Δwᵢ|·‖gᵢ‖, and only where they are unique (Γ non-singular).
"""
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J, scaled_gradients
from mtlkernels import _extension
from mtlkernels.methods import CAGradWeighting
from mtlkernels.methods.base import cpp_constants
from mtlkernels.methods.cagrad import CONSTANTS

NO_CPP = pytest.mark.skipif(not _extension.available, reason="C++ extension not built")
BACKENDS = ["torch", pytest.param("cpp", marks=NO_CPP)]
SOLVERS = ["torch", "cpp"] if _extension.available else ["torch"]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
#: the Gram-space solve is exact to rounding: float64 weights vs the reference on the same data
SOLVE_RTOL = 1e-9
FLOAT32_MAX = torch.finfo(torch.float32).max


def _rescale_factor(c: float, rescale: int) -> float:
    """The paper's divisor of d, written out: 1 (rescale=0), 1 + c² (1), 1 + c (2)."""
    return {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


def _cases(K: int, N: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed=3 * K + N))] + adversarial_cases(K, N, seed=K + 5 * N)


@functools.lru_cache(maxsize=None)
def _reference(K: int, N: int, name: str, dtype: torch.dtype, c: float = 0.5, rescale: int = 1):
    """The reference on case ``name`` (cached: several tests compare against the same J)."""
    J = dict(_cases(K, N))[name].to(dtype)
    return mk.reference.cagrad(J, c=c, rescale=rescale)


def _weights_unique(J: torch.Tensor, name: str) -> bool:
    """Γ non-singular, so the multipliers (not just d) are unique."""
    return J.shape[0] <= J.shape[1] and name not in ("duplicate_rows", "opposite_rows")


def _size(J: torch.Tensor, weights: torch.Tensor) -> float:
    """Σᵢ|wᵢ|·‖gᵢ‖, the scale of the rounding in d = Σᵢ wᵢgᵢ."""
    return float((weights.double().abs() * J.double().norm(dim=1)).sum())


def _dual_objective(J: torch.Tensor, weights: torch.Tensor, c: float, rescale: int = 1) -> float:
    """The paper's dual F(w) = g_w·g₀ + c‖g₀‖‖g_w‖ on the full vectors at our dual point w = u/Σu."""
    J64 = J.double()
    u = weights.double() * _rescale_factor(c, rescale) - 1.0 / J64.shape[0]
    g0, g_w = J64.mean(dim=0), (u / u.sum()) @ J64
    return float(g_w @ g0) + c * float(g0.norm()) * float(g_w.norm())


def assert_close_to_reference(J, weights, direction, reference, rtol, check_weights, what="", c=0.5, rescale=1):
    """Agreement with a reference certified by its own KKT test; where the reference's solver did not
    converge (near-degenerate problems, where the dual's Hessian ~ 1/‖g_w‖ blows up), ours must be
    at least as good a dual point and pass the full-vector KKT test instead."""
    if reference.info.get("kkt_residual", 0.0) > 1e-10:
        ours, theirs = _dual_objective(J, weights, c, rescale), reference.info["dual_objective"]
        assert ours <= theirs + 1e-9 * abs(theirs), f"{what}: dual objective {ours} above the reference's {theirs}"
        assert full_vector_check(J, weights, c, False, rescale)[1] <= 1e-7, what
        return
    size = _size(J, reference.weights)
    error = float((direction.double() - reference.direction).norm())
    assert error <= rtol * size, f"{what}: direction off by {error:.3g} (size {size:.3g})"
    if check_weights:
        weight_error = float(((weights.double() - reference.weights).abs() * J.double().norm(dim=1)).max())
        assert weight_error <= rtol * size, f"{what}: weights off by {weight_error:.3g} (size {size:.3g})"


def full_vector_check(J: torch.Tensor, weights: torch.Tensor, c: float, degenerate: bool, rescale: int = 1):
    """Optimality of d = Σ wᵢgᵢ checked on the full vectors, independently of Γ: returns
    (ball excess (‖d − g₀‖ − c‖g₀‖ − Γ's rounding)/(c‖g₀‖), the per-task KKT residual): gᵢ·d = μ where uᵢ > 0,
    ≥ μ elsewhere, μ = g_ref·d of the smallest active task (0 in the degenerate case), each task
    relative to (‖gᵢ‖ + ‖g_ref‖)·(‖g₀‖ + c‖g₀‖ + Σⱼ|uⱼ|‖gⱼ‖ + Γ's rounding), the rounding scale of
    gᵢ·d − μ."""
    J64 = J.double()
    K = J64.shape[0]
    u = weights.double() * _rescale_factor(c, rescale) - 1.0 / K
    g0 = J64.mean(dim=0)
    d = g0 + u @ J64
    radius = c * float(g0.norm())
    # ‖g₀‖ and ‖Jᵀu‖ from Γ carry rounding up to √ε·(maxᵢ‖gᵢ‖ + Σⱼ|uⱼ|‖gⱼ‖): visible when the mean
    # nearly cancels, ‖g₀‖ ≲ √ε·‖gᵢ‖
    slack = 2e-8 * float(J64.norm(dim=1).max() + (u.abs() * J64.norm(dim=1)).sum())
    excess = (float((u @ J64).norm()) - radius - slack) / radius if radius > 0 else 0.0
    norms = J64.norm(dim=1)
    improvement = J64 @ d
    contribution = u * norms  # active: uᵢ‖gᵢ‖ above the rounding of recovering u from the weights
    active = contribution > 1e-12 * (float(g0.norm()) + float(contribution.abs().sum()))
    smallest = int(torch.where(active, norms, torch.inf).argmin())
    if degenerate:
        mu, reference_norm = 0.0, 0.0
    elif bool(active.any()):
        mu, reference_norm = float(improvement[smallest]), float(norms[smallest])
    else:  # c = 0 or g₀ = 0: d = g₀
        mu, reference_norm = float(improvement.min()), 0.0
    d_scale = float(g0.norm()) + radius + float((u.abs() * norms).sum()) + slack  # ≥ ‖d‖ and its rounding
    scale = ((norms + reference_norm) * d_scale).clamp_min(1e-300)
    violation = torch.where(active, (improvement - mu).abs(), (mu - improvement).clamp_min(0)) / scale
    return excess, float(torch.where(norms > 0, violation, 0.0).max())


# -- the fast path equals the reference ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [1, 7, 1000])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 17, 32])
def test_matches_reference(K, N, dtype):
    """Random and adversarial cases: the weights of the Gram-space solve (both backends) to 1e-9,
    and the end-to-end aggregate direction to 1e-5 (float32 J) / 1e-9 (float64 J)."""
    for name, J64 in _cases(K, N):
        J = J64.to(dtype)
        reference = _reference(K, N, name, dtype)
        unique = _weights_unique(J, name)
        gram = mk.gram(J, dtype=torch.float64)
        for backend in SOLVERS:
            weights = CAGradWeighting(backend=backend)(gram).weights
            what = f"{name} {backend}"
            assert_close_to_reference(J, weights, weights @ J.double(), reference, SOLVE_RTOL, unique, what + " solve")
            result = mk.aggregate(J, "cagrad", backend=backend)
            assert_close_to_reference(J, result.weights, result.direction, reference, RTOL[dtype], unique, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [3, 8])
def test_large_N_matches_reference(K, backend):
    for J in (random_J(K, 100_003, seed=K).float(), conflicting_J(K, 100_003, seed=K).float()):
        reference = mk.reference.cagrad(J)
        result = mk.aggregate(J, "cagrad", backend=backend)
        assert_close_to_reference(J, result.weights, result.direction, reference, RTOL[torch.float32], True, f"K={K}")


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("c", [0.1, 0.4, 2.0])
def test_options_match_reference(c, rescale):
    for K, N in ((3, 7), (5, 1000), (17, 7)):
        for name in ("random", "conflicting", "opposite_rows"):
            J = dict(_cases(K, N))[name]
            reference = _reference(K, N, name, torch.float64, c, rescale)
            for backend in SOLVERS:
                result = mk.aggregate(J, "cagrad", c=c, rescale=rescale, backend=backend)
                unique = _weights_unique(J, name)
                assert_close_to_reference(J, result.weights, result.direction, reference, 1e-9, unique, name, c, rescale)


@settings(max_examples=40, deadline=None)
@given(J=scaled_gradients(K=(1, 9), N=(1, 30), log_scale=12), c=st.sampled_from([0.2, 0.5, 1.0, 3.0]))
def test_hypothesis_matches_reference(J, c):
    reference = mk.reference.cagrad(J, c=c)
    for backend in SOLVERS:
        result = mk.aggregate(J, "cagrad", c=c, backend=backend)
        assert_close_to_reference(J, result.weights, result.direction, reference, 1e-9, J.shape[0] <= J.shape[1], backend, c)


# -- backends agree; certificates hold ---------------------------------------------------------


def _degenerate_J(draw_kind: str, K: int, N: int, seed: int, log_scales: list[float]) -> torch.Tensor:
    """A matrix of the given kind: random, low rank, with duplicated / opposite / zero rows."""
    J = random_J(K, N, seed=seed)
    if draw_kind == "low_rank" and K > 1:
        J = random_J(K, 1 + K // 3, seed=seed) @ random_J(1 + K // 3, N, seed=seed + 1)
    elif draw_kind == "duplicate" and K > 1:
        J[1::2] = J[0]
    elif draw_kind == "opposite" and K > 1:
        J[1] = -J[0]
    elif draw_kind == "zero":
        J[0] = 0
    return J * torch.tensor([10.0**s for s in log_scales[:K]], dtype=torch.float64)[:, None]


KINDS = st.sampled_from(["random", "low_rank", "duplicate", "opposite", "zero"])


@NO_CPP
@settings(max_examples=60, deadline=None)
@given(
    kind=KINDS,
    K=st.integers(1, 24),
    N=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    log_scales=st.lists(st.floats(-8, 8), min_size=24, max_size=24),
    c=st.sampled_from([0.0, 0.1, 0.5, 1.0, 4.0]),
)
def test_backends_agree_and_certificates_hold(kind, K, N, seed, log_scales, c):
    """Gradient norms spanning 1e16 (Γ spanning 1e32), rank-deficient, duplicated (then rescaled:
    parallel gradients of different norms), opposite and zero rows: both backends certified (KKT to
    1e-8: ill-conditioned draws cost digits) and agreeing to 1e-8 of Σᵢ|wᵢ|‖gᵢ‖; an independent
    full-vector check agrees."""
    J = _degenerate_J(kind, K, N, seed, log_scales)
    gram = J @ J.T
    solutions = {backend: CAGradWeighting(c=c, backend=backend)(gram) for backend in ("torch", "cpp")}
    torch_w, cpp_w = solutions["torch"].weights, solutions["cpp"].weights
    size = _size(J, torch_w)
    assert float(((torch_w - cpp_w) @ J).norm()) <= 1e-8 * size
    for backend, solution in solutions.items():
        diagnostics = solution.diagnostics
        assert bool(torch.isfinite(solution.weights).all())
        assert diagnostics["kkt_residual"] <= 1e-8, (backend, diagnostics)
        assert diagnostics["ball_residual"] <= 1e-9, (backend, diagnostics)
        if not diagnostics["degenerate"]:
            assert diagnostics["ball_residual"] >= -1e-9, (backend, diagnostics)
        # the degenerate case's dual point has ‖g_w‖ = √(wᵀΓw) ≈ √(rounding of Γ): a gap up to ~√ε
        assert -1e-9 <= diagnostics["duality_gap"] <= (1e-6 if diagnostics["degenerate"] else 1e-9), (backend, diagnostics)
        excess, kkt = full_vector_check(J, solution.weights, c, diagnostics["degenerate"])
        assert excess <= 1e-9 and kkt <= 1e-7, (backend, excess, kkt)


@settings(max_examples=40, deadline=None)
@given(
    kind=KINDS,
    K=st.integers(1, 16),
    N=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    log_scales=st.lists(st.floats(-20, 20), min_size=16, max_size=16),
    backend=st.sampled_from(SOLVERS),
)
def test_extreme_scales_finite_and_certificate_honest(kind, K, N, seed, log_scales, backend):
    """Norms spanning 1e40 (Γ spanning 1e80), beyond what float64 Gram arithmetic resolves between
    tasks: the weights are finite, and whenever the certificate claims optimality the independent
    full-vector check confirms it."""
    J = _degenerate_J(kind, K, N, seed, log_scales)
    solution = CAGradWeighting(backend=backend)(J @ J.T)
    diagnostics = solution.diagnostics
    assert bool(torch.isfinite(solution.weights).all())
    assert all(math.isfinite(diagnostics[key]) for key in ("kkt_residual", "ball_residual", "duality_gap"))
    ball_ok = diagnostics["ball_residual"] <= 1e-9 and (diagnostics["degenerate"] or diagnostics["ball_residual"] >= -1e-9)
    if diagnostics["kkt_residual"] <= 1e-9 and ball_ok:
        excess, kkt = full_vector_check(J, solution.weights, 0.5, diagnostics["degenerate"])
        assert excess <= 1e-9 and kkt <= 1e-7, (excess, kkt, diagnostics)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N", [(1, 7), (3, 1000), (8, 7), (17, 1), (32, 1000)])
def test_certificates_on_adversarial_cases(K, N, backend):
    for name, J in _cases(K, N):
        for c in (0.5, 2.0):
            diagnostics = mk.aggregate(J, "cagrad", c=c, backend=backend).diagnostics
            assert diagnostics["kkt_residual"] <= 1e-12, (name, diagnostics)
            assert abs(diagnostics["ball_residual"]) <= 1e-10 or diagnostics["degenerate"], (name, diagnostics)
            assert diagnostics["duality_gap"] <= (1e-7 if diagnostics["degenerate"] else 1e-12), (name, diagnostics)


# -- the paper's properties ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_c_zero_gives_the_mean(backend):
    for K, N in ((1, 5), (4, 100), (17, 7)):
        for _, J in _cases(K, N):
            result = mk.aggregate(J, "cagrad", c=0.0, backend=backend)
            torch.testing.assert_close(result.weights, torch.full((K,), 1.0 / K, dtype=torch.float64), rtol=0, atol=0)


def _worst_improvement(J: torch.Tensor, d: torch.Tensor) -> float:
    return float((J.double() @ d.double()).min())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N", [(2, 7), (3, 1000), (5, 7), (8, 1000), (17, 7)])
def test_maximises_worst_improvement_in_the_ball(K, N, backend):
    """rescale=0: ‖d − g₀‖ ≤ c‖g₀‖, and minᵢ gᵢ·d is at least the reference's and at least that of
    random points of the ball (on its sphere and inside)."""
    generator = torch.Generator().manual_seed(K * N)
    for name, J in _cases(K, N):
        if name == "scales_1e-20_1e20":
            continue  # minᵢ gᵢ·d is below the rounding of the large gᵢ·d: see the certificate tests
        c = 0.5
        d = mk.aggregate(J, "cagrad", c=c, rescale=0, backend=backend).direction
        g0 = J.mean(dim=0)
        radius = c * float(g0.norm())
        assert float((d - g0).norm()) <= radius * (1 + 1e-9), name
        ours = _worst_improvement(J, d)
        scale = float(J.norm(dim=1).max()) * (float(g0.norm()) + radius)
        reference = mk.reference.cagrad(J, c=c, rescale=0)
        assert ours >= _worst_improvement(J, reference.direction) - 1e-10 * scale, name
        directions = torch.randn(256, N, generator=generator, dtype=torch.float64)
        lengths = radius * torch.rand(256, 1, generator=generator, dtype=torch.float64).sqrt()
        lengths[:128] = radius
        points = g0 + lengths * directions / directions.norm(dim=1, keepdim=True)
        assert ours >= float((J @ points.T).min(dim=0).values.max()) - 1e-10 * scale, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N", [(2, 7), (3, 1000), (5, 7), (8, 1000), (17, 7), (32, 1000)])
def test_dual_objective_not_above_reference(K, N, backend):
    """The paper's dual F(w) = g_w·g₀ + c‖g₀‖‖g_w‖ at our dual point w = u/Σu, evaluated on the full
    vectors, is at most the reference solver's + 1e-7 relative."""
    for name, J in _cases(K, N):
        reference = mk.reference.cagrad(J)
        if reference.info["degenerate"] or reference.info["radius"] == 0:
            continue  # F* = 0 at a hull point (the certificate tests cover it), or g₀ = 0: nothing to solve
        ours = _dual_objective(J, mk.aggregate(J, "cagrad", backend=backend).weights, 0.5)
        theirs = reference.info["dual_objective"]
        slack = 1e-12 * float(J.norm(dim=1).max() * J.mean(dim=0).norm())  # rounding of F's terms
        assert ours <= theirs + 1e-7 * abs(theirs) + slack, (name, ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescale_and_sum_scale(backend):
    J = conflicting_J(5, 300, seed=1)
    c = 0.7
    base = mk.aggregate(J, "cagrad", c=c, rescale=0, backend=backend).weights
    for rescale, divisor in ((1, 1 + c * c), (2, 1 + c)):
        torch.testing.assert_close(mk.aggregate(J, "cagrad", c=c, rescale=rescale, backend=backend).weights, base / divisor)
    torch.testing.assert_close(mk.aggregate(J, "cagrad", c=c, rescale=0, sum_scale=True, backend=backend).weights, 5 * base)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_task_for_any_c(backend):
    """K = 1: d = g + c‖g‖·g/‖g‖ = (1 + c)·g, then ÷(1 + c²), for c other than the default."""
    J = random_J(1, 50, seed=2)
    for c in (0.1, 3.0):
        weights = mk.aggregate(J, "cagrad", c=c, backend=backend).weights
        torch.testing.assert_close(weights, torch.tensor([(1 + c) / (1 + c * c)], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_documented_degenerate_results(backend):
    """Opposite rows among others (0 ∈ conv{gᵢ}, ball not reached): d is the projection of g₀ onto
    {d : gᵢ·d ≥ 0}."""
    J = dict(_cases(5, 1000))["opposite_rows"]
    result = mk.aggregate(J, "cagrad", c=0.5, rescale=0, backend=backend)
    assert result.diagnostics["degenerate"]
    improvement = J @ result.direction
    assert float(improvement.min()) >= -1e-12 * float(J.norm(dim=1).max() * result.direction.norm())
    u = result.weights - 1.0 / 5  # complementarity: tasks pushed on (uᵢ > 0) end orthogonal to d
    assert float((u * improvement).abs().max()) <= 1e-10 * float(J.norm(dim=1).max() * result.direction.norm())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype, backend):
    for name, J in _cases(5, 257):
        if name == "scales_1e-20_1e20":
            J = J / J.norm(dim=1, keepdim=True) * torch.logspace(-3, 3, 5, dtype=torch.float64)[:, None]
        J = J.to(dtype)
        result = mk.aggregate(J, "cagrad", backend=backend)
        assert result.direction.dtype == dtype
        assert bool(torch.isfinite(result.weights).all()) and bool(torch.isfinite(result.direction).all()), name
        expected = result.weights.double() @ J.double()
        assert float((result.direction.double() - expected).norm()) <= 1e-2 * _size(J, result.weights), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_beyond_float32_range(backend):
    """A 1e-20 gradient next to a 1e20 one gets a weight ≈ 1e39, beyond float32: float64 weights
    keep the float32 direction finite and equal to the reference."""
    J = dict(_cases(5, 1000))["scales_1e-20_1e20"].float()
    reference = _reference(5, 1000, "scales_1e-20_1e20", torch.float32)
    assert float(reference.weights.abs().max()) > FLOAT32_MAX
    result = mk.aggregate(J, "cagrad", backend=backend)
    assert bool(torch.isfinite(result.direction).all())
    assert_close_to_reference(J, result.weights, result.direction, reference, RTOL[torch.float32], True)


# -- options and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"c": -0.1}, "c=-0.1"),
        ({"c": float("nan")}, "c=nan"),
        ({"c": float("inf")}, "c=inf"),
        ({"c": "big"}, "c='big'"),
        ({"rescale": 3}, "rescale=3"),
        ({"rescale": True}, "rescale=True"),
        ({"sum_scale": 1}, "sum_scale=1"),
    ],
)
def test_bad_options(options, message):
    assert_option_rejected("cagrad", options, message)


def test_unknown_option_and_repr():
    with pytest.raises(TypeError, match="alpha"):
        mk.aggregate(random_J(3, 5), "cagrad", alpha=0.5)
    assert repr(CAGradWeighting(c=0.4)) == "CAGradWeighting(c=0.4, rescale=1, sum_scale=False)"


@NO_CPP
def test_cpp_errors_reach_python():
    with pytest.raises(ValueError, match="c must be"):
        _extension.extension().cagrad_solve(torch.eye(2, dtype=torch.float64).numpy(), -1.0, 1.0, cpp_constants(CONSTANTS))
    with pytest.raises(ValueError, match="outside"):
        _extension.extension().cagrad_solve(torch.eye(300, dtype=torch.float64).numpy(), 0.5, 1.0, cpp_constants(CONSTANTS))
    assert math.isfinite(_extension.extension().cagrad_solve(torch.eye(256, dtype=torch.float64).numpy(), 0.5, 1.0, cpp_constants(CONSTANTS))[0][0])
