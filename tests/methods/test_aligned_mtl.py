"""Aligned-MTL: the K-space eigen-solve (torch and C++) against literal solutions, the aligned
gradients' defining property, the float64 reference on full vectors (mtlkernels.reference.
aligned_mtl: the SVD of J), torchjd 0.18's AlignedMTL, scale modes, pref_vector and option errors."""
import math

import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from mtlkernels.methods.aligned_mtl import AlignedMTLWeighting
from peers import torchjd_aggregation

BACKENDS = ("torch", "cpp")
SCALE_MODES = ("min", "median", "rmse")


def solve(J: torch.Tensor, backend: str, **options) -> mk.methods.Solution:
    J = J.double()
    return AlignedMTLWeighting(backend=backend, **options)(J @ J.T)


def natural_scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthogonal_gradients_literal(backend):
    """J = rows of norms (4, 3, 2, 1) along the axes: U = I, σ = (4, 3, 2, 1), wᵢ = σ_chosen·pᵢ/σᵢ with
    σ_chosen 1 (min), 2 (lower median of 1, 2, 3, 4), √7.5 (rmse: √mean(16, 9, 4, 1))."""
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    J = torch.diag(sigma)
    p = torch.full((4,), 0.25, dtype=torch.float64)
    for mode, chosen in (("min", 1.0), ("median", 2.0), ("rmse", math.sqrt(7.5))):
        result = solve(J, backend, scale_mode=mode)
        torch.testing.assert_close(result.weights, chosen * p / sigma, rtol=1e-14, atol=0)
        assert result.diagnostics["scale"] == pytest.approx(chosen, rel=1e-14)
        assert result.diagnostics["rank"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_mode", SCALE_MODES)
def test_aligned_gradients_are_orthogonal_with_equal_norm(backend, scale_mode):
    """Ĵ = B·J with B the weights of the basis preferences eⱼ: ĴĴᵀ = σ²·I for K ≤ N independent rows."""
    for K, N, seed in ((3, 10, 0), (8, 50, 1)):
        J = conflicting_J(K, N, seed)
        B = torch.stack([solve(J, backend, scale_mode=scale_mode, pref_vector=torch.eye(K, dtype=torch.float64)[j] + 0.0).weights for j in range(K)])
        aligned = B @ J
        sigma = solve(J, backend, scale_mode=scale_mode).diagnostics["scale"]
        torch.testing.assert_close(aligned @ aligned.T, sigma**2 * torch.eye(K, dtype=torch.float64), rtol=0, atol=1e-11 * sigma**2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_mode", SCALE_MODES)
def test_against_reference_and_torchjd(backend, scale_mode):
    """Random (K ≤ N and K > N) and adversarial inputs: d as the reference (SVD of J) and torchjd's
    AlignedMTL (eigh of Γ, cut at K·eps·λ_max). Not compared with torchjd: near-collinear rows and
    1e-20..1e20 scales, whose smallest components lie between its cut and ours."""
    AlignedMTL = torchjd_aggregation().AlignedMTL
    inputs = [(f"random {K}x{N}", random_J(K, N, K + N)) for K, N in ((1, 5), (3, 8), (7, 100), (9, 4))]
    for K in (2, 3, 5):
        inputs += [(f"{name} K={K}", J) for name, J in adversarial_cases(K, 30, seed=K)]
    for name, J in inputs:
        result = mk.aggregate(J, AlignedMTLWeighting(backend=backend, scale_mode=scale_mode))
        expected = mk.reference.aligned_mtl(J, scale_mode=scale_mode)
        scale = natural_scale(expected.weights, J)
        rtol = 1e-6 if "near_collinear" in name or "scales" in name else 1e-12
        assert float((result.direction - expected.direction).norm()) <= rtol * scale, name
        if "near_collinear" in name or "scales" in name:
            continue
        theirs = AlignedMTL(scale_mode=scale_mode)(J)
        assert float((result.direction - theirs).norm()) <= 1e-10 * max(scale, float(theirs.norm())), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_pref_vector_against_torchjd_and_libmtl_sum(backend):
    """pref_vector p as torchjd's; LibMTL's Aligned_MTL sums the aligned gradients: p = 𝟙, K × the default."""
    AlignedMTL = torchjd_aggregation().AlignedMTL
    J = random_J(4, 20, seed=5)
    p = torch.tensor([0.1, 0.5, 0.2, 0.9], dtype=torch.float64)
    ours = mk.aggregate(J, AlignedMTLWeighting(backend=backend, pref_vector=p))
    assert float((ours.direction - AlignedMTL(pref_vector=p)(J)).norm()) <= 1e-12 * float(ours.direction.norm())
    summed = solve(J, backend, pref_vector=[1.0] * 4).weights
    torch.testing.assert_close(summed, 4 * solve(J, backend).weights, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_inputs(backend):
    """A zero gradient gets weight exactly 0; (g, −g) with equal preference gives w = 0; J = 0 too."""
    J = random_J(4, 10, seed=6)
    J[1] = 0
    result = solve(J, backend)
    assert float(result.weights[1]) == 0.0 and result.diagnostics["zero_tasks"] == [1]
    g = random_J(1, 10, seed=7)
    assert solve(torch.cat([g, -g]), backend).weights.tolist() == [0.0, 0.0]
    assert solve(torch.zeros(3, 4, dtype=torch.float64), backend).weights.tolist() == [0.0] * 3


def test_backends_agree():
    for K, N, seed in ((4, 9, 8), (30, 20, 9), (40, 100, 10)):
        J = random_J(K, N, seed)
        for mode in SCALE_MODES:
            cpp, torch_ = solve(J, "cpp", scale_mode=mode), solve(J, "torch", scale_mode=mode)
            assert float(((cpp.weights - torch_.weights).abs() * J.norm(dim=1)).max()) <= 1e-12 * natural_scale(torch_.weights, J)
            assert cpp.diagnostics["rank"] == torch_.diagnostics["rank"]


def test_bad_options_are_named():
    assert_option_rejected("aligned_mtl", {"scale_mode": "max"}, "scale_mode")
    assert_option_rejected("aligned_mtl", {"pref_vector": [1.0, -2.0, 1.0]}, "negative")
    with pytest.raises(ValueError, match="pref_vector has 2 entries"):
        mk.aggregate(random_J(3, 5), "aligned_mtl", pref_vector=[1.0, 2.0])


def test_wrapper_defaults_match_the_functional_name():
    optimizer = mk.AlignedMTL(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1))
    assert optimizer.aggregator.weighting.options() == mk.methods.make_weighting("aligned_mtl").options()
