"""ConFIG: the K-space solve (torch and C++) against the paper's properties (equal cosines, length
by the projections), the float64 reference on full vectors (mtlkernels.reference.config: the
pseudo-inverse of the unit-gradient matrix), torchjd 0.18's ConFIG on random and adversarial
inputs, pref_vector, and option errors."""

import math

import pytest
import torch

import mtlkernels as mk
from cases import adversarial_cases, assert_option_rejected, conflicting_J, random_J
from mtlkernels.methods.config import ConFIGWeighting
from peers import torchjd_aggregation

BACKENDS = ("torch", "cpp")


def run(J: torch.Tensor, backend: str, **options) -> mk.AggregationResult:
    return mk.aggregate(J, ConFIGWeighting(backend=backend, **options))


def natural_scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


def cosines(J: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (J @ d) / J.norm(dim=1) / d.norm()


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_cosines_and_projection_length(backend):
    """K ≤ N independent gradients: every gᵢ has the same cosine with d (even when they conflict),
    and ‖d‖ = Σᵢ gᵢ·d/‖d‖; with pref_vector p the cosines are ∝ p."""
    for K, N, seed in ((2, 5, 0), (5, 30, 1), (12, 40, 2)):
        for J in (random_J(K, N, seed), conflicting_J(K, N, seed)):
            result = run(J, backend)
            c = cosines(J, result.direction)
            assert float(c.min()) > 0 and float(c.max() - c.min()) <= 1e-12, c.tolist()
            d_norm = float(result.direction.norm())
            assert d_norm == pytest.approx(float((J @ result.direction).sum()) / d_norm, rel=1e-12)
            assert result.diagnostics["equal_cosines"] and result.diagnostics["rank"] == K
            p = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
            preferred = run(J, backend, pref_vector=p)
            ratio = cosines(J, preferred.direction) / p
            assert float(ratio.max() - ratio.min()) <= 1e-12 * float(ratio.max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_against_reference_and_torchjd(backend):
    """Random, K > N and the adversarial families (zero, duplicate, opposite, near-collinear,
    1e-20..1e20 scales): d as torchjd's ConFIG (pinv of the unit-gradient matrix) and the reference."""
    ConFIG = torchjd_aggregation().ConFIG
    inputs = [(f"random {K}x{N}", random_J(K, N, K + N)) for K, N in ((1, 5), (3, 8), (7, 100), (9, 4))]
    for K in (2, 3, 5):
        inputs += [(f"{name} K={K}", J) for name, J in adversarial_cases(K, 30, seed=K) if name != "near_collinear"]
    for name, J in inputs:
        result = run(J, backend)
        expected = mk.reference.config(J)
        scale = natural_scale(expected.weights, J)
        assert float((result.direction - expected.direction).norm()) <= 1e-12 * scale, name
        theirs = ConFIG()(J)
        assert float((result.direction - theirs).norm()) <= 1e-10 * max(scale, float(theirs.norm())), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_pref_vector_against_torchjd(backend):
    ConFIG = torchjd_aggregation().ConFIG
    for K, N, seed in ((3, 10, 3), (6, 20, 4)):
        J = random_J(K, N, seed)
        p = torch.rand(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
        ours = run(J, backend, pref_vector=p)
        theirs = ConFIG(pref_vector=p)(J)
        assert float((ours.direction - theirs).norm()) <= 1e-12 * float(theirs.norm())
        scaled = run(J, backend, pref_vector=7.0 * p)  # only p's direction matters
        torch.testing.assert_close(scaled.weights, ours.weights, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_row_weight_zero_others_as_without_it(backend):
    J = random_J(5, 12, seed=6)
    J[2] = 0
    result = run(J, backend)
    assert float(result.weights[2]) == 0.0 and result.diagnostics["zero_tasks"] == [2]
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(result.weights[keep], run(J[keep], backend).weights, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_rows_share_weights_and_least_norm(backend):
    """(g, g, h): U⁺𝟙 is the least-norm x with uᵢ·x = 1, the same x as for (g, h); the length counts
    g twice. The duplicates get equal weights (C⁺ is symmetric in them)."""
    distinct = random_J(2, 9, seed=7)
    J = torch.cat([distinct[:1], distinct])
    result = run(J, backend)
    assert float(result.weights[0]) == pytest.approx(float(result.weights[1]), rel=1e-13)
    alone = run(distinct, backend)
    unit, unit_alone = result.direction / result.direction.norm(), alone.direction / alone.direction.norm()
    torch.testing.assert_close(unit, unit_alone, rtol=0, atol=1e-13)
    assert result.diagnostics["rank"] == 2


def test_backends_agree():
    for K, N, seed in ((4, 9, 8), (30, 20, 9)):
        J = random_J(K, N, seed)
        torch.testing.assert_close(run(J, "cpp").weights, run(J, "torch").weights, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("condition", [1.0, 1e4, 1e6, 1e13])
def test_cpp_cholesky_and_eigen_paths_agree_with_torch(condition):
    """The C++ solve takes Cholesky when C is provably of full rank, else the eigendecomposition
    (here at condition 1e13, beyond the rank cut-off 1e12); both agree with the torch solve (eigh),
    diagnostics included, and certify as well as it does (the certificate of every backend grows
    with C's condition number)."""
    K = 12
    g = torch.Generator().manual_seed(11)
    U = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(40, K, generator=g, dtype=torch.float64))[0]
    singular = torch.logspace(0, -0.5 * math.log10(condition), K, dtype=torch.float64)
    J = (U * singular) @ V.T  # Γ of condition number `condition`
    J = J * torch.logspace(-3, 3, K, dtype=torch.float64)[:, None]  # rows of very different norms
    gram = J @ J.T
    cpp, reference = ConFIGWeighting(backend="cpp")(gram), ConFIGWeighting(backend="torch")(gram)
    scale = natural_scale(reference.weights, J)
    assert float(((cpp.weights - reference.weights).abs() * J.norm(dim=1)).max()) <= 1e-15 * condition * scale + 1e-13 * scale
    for key in ("rank", "equal_cosines", "zero_tasks"):
        assert cpp.diagnostics[key] == reference.diagnostics[key], key
    assert cpp.diagnostics["rank"] == (K if condition < 1e12 else K - 1)
    assert cpp.diagnostics["length"] == pytest.approx(reference.diagnostics["length"], rel=1e-15 * condition + 1e-12)
    assert cpp.diagnostics["residual"] <= 10 * max(reference.diagnostics["residual"], 1e-15)


@pytest.mark.parametrize("bad, message", [
    ([1.0, -1.0, 1.0], "negative"),
    ([1.0, float("nan"), 1.0], "non-finite"),
    ([0.0, 0.0, 0.0], "all zero"),
    ([], "empty"),
    ("abc", "pref_vector"),
    (torch.ones(3, 1), "1-D"),
    ([1.0, True, 1.0], "real number"),
])
def test_bad_pref_vector_is_named(bad, message):
    assert_option_rejected("config", {"pref_vector": bad}, message)


def test_wrong_length_pref_vector_is_named_and_changes_nothing():
    weighting = mk.methods.make_weighting("config", pref_vector=[1.0, 2.0])
    with pytest.raises(ValueError, match="pref_vector has 2 entries but there are K = 3 tasks"):
        mk.aggregate(random_J(3, 5), weighting)
    model = torch.nn.Linear(4, 3)
    optimizer = mk.ConFIG(torch.optim.SGD(model.parameters(), lr=0.1), pref_vector=[1.0, 2.0])
    losses = model(torch.randn(6, 4)).pow(2).mean(dim=0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="pref_vector"):
        optimizer.backward(losses)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_wrapper_defaults_match_the_functional_name():
    optimizer = mk.ConFIG(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1))
    assert optimizer.aggregator.weighting.options() == mk.methods.make_weighting("config").options()
