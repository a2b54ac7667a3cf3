"""IMTL-G's reference and fast path against the real peers from PyPI, on the same gradients.

- LibMTL 1.1.5 (``IMTL``): the IMTL-L + IMTL-G hybrid. Its losses are e^{sᵢ}Lᵢ − sᵢ with learnable
  sᵢ initialised to 0, so on a first call the loss part is the identity and its gradients are
  ours; it then applies the paper's form α₂..K = g₁Uᵀ(DUᵀ)⁻¹ (``torch.inverse``), α₁ = 1 − Σα₂..K,
  on full vectors, and writes d = Σαᵢgᵢ (the same weights, applied to the same gradients). Same
  convention as ours wherever D·Uᵀ is invertible: the float64 directions agree to rounding,
  1e-9·‖d‖ (plus 1e-12·Σ|wᵢ|‖gᵢ‖ where d ≈ 0, e.g. opposite gradients). Special cases: a zero
  gradient gives NaN (0/0 unit vector), a singular D·Uᵀ (duplicate gradients) raises.
- torchjd 0.18.0 (``IMTLGWeighting``): w = Γ⁺n / Σ(Γ⁺n), and w = 0 when |Σ(Γ⁺n)| < 1e-12. For a
  nonsingular Γ that is our closed form (Γ⁻¹n = N⁻¹C⁻¹𝟙), so the weights agree to 1e-9 relative
  (zero rows too: Γ⁺ gives them weight 0, as we do). It differs where Γ is singular and 𝟙 is not
  in C's range (opposite gradients, K > dimension): its least-squares weights are not impartial,
  ours are (the paper's unique answer where there is one); for parallel gradients of different
  norms it minimises ‖w‖ where we minimise ‖N·w‖ (both impartial); and its absolute 1e-12 test
  returns w = 0 for gradient norms ≳ 1e12, or when the norms span more than ~1e8 (its pinv on the
  unscaled Γ then drops the small gradients first). Ours works on C and has no absolute threshold.
- nash-mtl's ``IMTLG`` (authors' repository, not on PyPI, read only): the same formula as LibMTL
  with ``torch.inverse`` on D·Uᵀ, falling back to (D·Uᵀ + 1e-8·I)⁻¹ when the inverse raises; it
  applies α to the losses, so the shared gradient is the same d. Covered by the LibMTL comparison.
"""
import pytest
import torch
from torch import Tensor

import mtlkernels as mk
from cases import adversarial_cases, conflicting_J, random_J
from mtlkernels import _extension
from mtlkernels.methods.imtl import IMTLWeighting, equal_projection_residual
from mtlkernels.testing.peers import libmtl_run
from peers import libmtl_direction, libmtl_driver, libmtl_weighting, torchjd_aggregation

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]

#: well-posed cases (K ≤ N): D·Uᵀ invertible wherever the paper's formula is defined
CASES = [(K, N, "random", random_J(K, N, seed=K)) for K in (1, 2, 3, 5, 8) for N in (8, 300)]
CASES += [(K, N, "conflicting", conflicting_J(K, N, seed=K)) for K in (3, 8, 17) for N in (17, 300)]
CASES += [
    (K, 50, name, J)
    for K in (2, 3, 8)
    for name, J in adversarial_cases(K, 50, seed=K)
    if name in ("opposite_rows", "scales_1e-20_1e20", "near_collinear")
]
IDS = [f"K{K}-N{N}-{name}" for K, N, name, _ in CASES]
#: where Γ itself is nonsingular to torchjd's pinv (see test_torchjd_documented_differences)
GRAM_REGULAR = [case for case in CASES if case[2] not in ("opposite_rows", "scales_1e-20_1e20")]


def ours(J: Tensor, backend: str) -> mk.methods.Solution:
    return IMTLWeighting(backend=backend)(J.double() @ J.double().T)


def assert_same_direction(actual: Tensor, expected: Tensor, weights: Tensor, J: Tensor, rtol: float) -> None:
    """‖actual − expected‖ ≤ rtol·‖expected‖ + 1e-12·Σ|wᵢ|‖gᵢ‖ (the floor matters only when d ≈ 0)."""
    floor = 1e-12 * float(weights.double().abs() @ J.double().norm(dim=1))
    error = float((actual.double() - expected.double()).norm())
    assert error <= rtol * float(expected.double().norm()) + floor, (error, float(expected.double().norm()), floor)


# -- LibMTL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", CASES, ids=IDS)
def test_libmtl_float64(K, N, name, J, backend):
    direction, alpha = libmtl_direction("IMTL", J)
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    ref = mk.reference.imtl(J)
    solution = ours(J, backend)
    # near_collinear: the weights are ill-determined (κ(C) ≈ 1e12) but d is not
    rtol = 1e-6 if name == "near_collinear" else 1e-9
    assert_same_direction(direction, ref.direction, ref.weights, J, rtol)
    assert_same_direction(solution.weights @ J, direction, alpha, J, rtol)
    if name != "near_collinear":
        norms = J.norm(dim=1)
        scale = float((norms * alpha).abs().max())
        assert float((norms * (solution.weights - alpha)).abs().max()) <= 1e-9 * scale


def test_libmtl_loss_scales_start_at_identity():
    """The IMTL-L part is e^{sᵢ}Lᵢ − sᵢ with sᵢ = 0 initially: the comparison above sees plain Lᵢ."""
    J = random_J(3, 20, seed=1)
    driver = libmtl_driver("IMTL", 3, 20)
    assert torch.equal(driver.loss_scale.detach(), torch.zeros(3))
    direction, _ = libmtl_run(driver, J)
    assert_same_direction(direction, mk.reference.imtl(J).direction, mk.reference.imtl(J).weights, J, 1e-9)


@pytest.mark.parametrize("K", (3, 5, 8))
def test_libmtl_float32_is_no_more_accurate_than_ours(K):
    """LibMTL on float32 gradients solves D·Uᵀ in float32; ours forms Γ and solves in float64."""
    J = conflicting_J(K, 2000, seed=K).float()
    truth = mk.reference.imtl(J).direction
    theirs32, _ = libmtl_run(libmtl_driver("IMTL", K, J.shape[1], torch.float32), J)
    ours32 = mk.aggregate(J, "imtl").direction
    error_theirs = float((theirs32.double() - truth).norm())
    error_ours = float((ours32.double() - truth).norm())
    assert error_ours <= max(error_theirs, 1e-6 * float(truth.norm()))


def test_libmtl_special_cases_and_ours():
    libmtl_weighting("IMTL")
    zero = random_J(3, 20, seed=2)
    zero[1] = 0
    direction, _ = libmtl_direction("IMTL", zero)
    assert bool(torch.isnan(direction).any())  # its unit vector of a zero gradient is 0/0
    duplicate = random_J(3, 20, seed=3)
    duplicate[2] = duplicate[0]
    with pytest.raises(RuntimeError):  # torch.inverse of the singular D·Uᵀ
        libmtl_direction("IMTL", duplicate)
    for J in (zero, duplicate):
        solution = ours(J, "torch")
        assert bool(torch.isfinite(solution.weights).all()) and solution.diagnostics["residual"] < 1e-12


# -- torchjd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, N, name, J", GRAM_REGULAR, ids=[f"K{K}-N{N}-{name}" for K, N, name, _ in GRAM_REGULAR])
def test_torchjd_where_gram_is_nonsingular(K, N, name, J, backend):
    weighting = torchjd_aggregation().IMTLGWeighting()
    G = J @ J.T
    theirs = weighting(G)
    solution = ours(J, backend)
    if name == "near_collinear":
        assert_same_direction(solution.weights @ J, theirs @ J, theirs, J, 1e-6)
        return
    norms = J.norm(dim=1)
    scale = float((norms * theirs).abs().max())
    assert float((norms * (solution.weights - theirs)).abs().max()) <= 1e-9 * scale
    assert_same_direction(mk.reference.imtl(J).direction, theirs @ J, theirs, J, 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_zero_and_duplicate_rows_agree(backend):
    weighting = torchjd_aggregation().IMTLGWeighting()
    for name, J in adversarial_cases(5, 40, seed=4):
        if name not in ("zero_row", "duplicate_rows"):
            continue
        theirs, solution = weighting(J @ J.T), ours(J, backend)
        torch.testing.assert_close(solution.weights, theirs, rtol=1e-9, atol=1e-12)


def test_torchjd_aggregator_float32():
    """torchjd forms Γ and its pseudo-inverse in float32: agreement to its float32 accuracy."""
    J = random_J(5, 300, seed=5).float()
    theirs = torchjd_aggregation().IMTLG()(J)
    d = mk.aggregate(J, "imtl").direction
    assert_same_direction(d, theirs, mk.reference.imtl(J).weights, J, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchjd_documented_differences(backend):
    weighting = torchjd_aggregation().IMTLGWeighting()

    # opposite gradients / more tasks than dimensions: its least-squares weights are not impartial
    for J in (dict(adversarial_cases(4, 30, seed=6))["opposite_rows"], random_J(6, 4, seed=6)):
        G = J @ J.T
        solution = ours(J, backend)
        assert equal_projection_residual(G, weighting(G)) > 1e-3
        assert solution.diagnostics["residual"] < 1e-12
        assert_same_direction(solution.weights @ J, mk.reference.imtl(J).direction, solution.weights, J, 1e-9)

    # norms spanning 1e-20..1e20, or all ≳ 1e12: its absolute 1e-12 test returns w = 0
    for J in (dict(adversarial_cases(4, 30, seed=7))["scales_1e-20_1e20"], 1e13 * random_J(4, 30, seed=7)):
        G = J @ J.T
        assert not bool(weighting(G).any())
        solution = ours(J, backend)
        assert abs(float(solution.weights.sum()) - 1) < 1e-12
        assert_same_direction(solution.weights @ J, mk.reference.imtl(J).direction, solution.weights, J, 1e-9)

    # parallel gradients g₂ = 2g₁: it takes the least ‖w‖ (w ∝ Γ⁺n = (1, 2)), we the least ‖N·w‖
    g = random_J(1, 10, seed=8)[0]
    J = torch.stack([g, 2 * g])
    torch.testing.assert_close(weighting(J @ J.T), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(ours(J, backend).weights, torch.tensor([0.8, 0.2], dtype=torch.float64))
