"""Conformance: every method × every backend through the public API, checked against the
properties each method defines (its docstring in mtlkernels/methods/<m>.py and its paper), the
float64 references (mtlkernels.reference), and each other.

Every result is also checked to be finite with d = wᵀJ (float64 recomputation), see
:func:`support.assert_direction_is_combination`. Triton runs under TRITON_INTERPRET=1 on CPU
tensors (tests/conftest.py), so its inputs stay small. Expected values are literal or follow from
the method's definition; none is read off the implementation under test.

Tolerances (relative to the natural scale Σᵢ|wᵢ|·‖gᵢ‖, see support.py):

- float64 input: every backend solves the same K×K problem exactly up to rounding (measured
  ≤ 5e-16 apart), so backends agree to 1e-12. The references solve on the full vectors with other
  algorithms (CAGrad: its dual by active-set Newton, measured 1e-14 apart; the others ≤ 5e-16), so
  they agree to REFERENCE_RTOL64, about 100× the measured gap.
- float32 input: the direction is rounded to float32 (~6e-8) and Triton accumulates Γ in float32
  (measured ≤ 1e-7 apart from the float64 solve on the same values); FLOAT32_RTOL = 2e-5 leaves
  room for the conditioning of the K ≤ 5 random problems used here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlkernels as mk
from conformance.support import (
    BACKENDS,
    METHODS,
    CPP_AVAILABLE,
    assert_direction_close,
    assert_direction_is_combination,
    ORDERED,
    assert_weights_close,
    backend_marks,
    backend_params,
    describe,
    deterministic_options,
    device,
    grid,
    kind,
    natural_scale,
    random_J,
    reference,
    reorder,
    restrict,
    run,
)

BACKEND_RTOL = 1e-12
REFERENCE_RTOL64 = {
    "mean": 1e-14, "pcgrad": 1e-13, "cagrad": 1e-12, "nash_mtl": 1e-13, "imtl": 1e-13, "mgda": 1e-13,
    "upgrad": 1e-12, "dualproj": 1e-12, "gradvac": 1e-13,
    "fairgrad": 1e-13, "config": 1e-13, "aligned_mtl": 1e-13,
}
FLOAT32_RTOL = 2e-5
#: exact-arithmetic identities (permutation, powers of two, literal degenerate answers) up to rounding
EXACT_RTOL = 1e-12
#: CAGrad's default c and the divisor 1 + c² of its default rescale=1
CAGRAD_C = 0.5
CAGRAD_DIVISOR = 1 + CAGRAD_C**2

LOSSES = torch.tensor([0.5, 1.3, 2.0, 0.8, 1.1], dtype=torch.float64)
#: preferences for UPGrad and DualProj (the first K of them), one of them 0
PREFERENCES = torch.tensor([0.5, 2.0, 0.0, 1.0, 0.25], dtype=torch.float64)

#: options beyond the defaults that change each method's arithmetic (the agreement tests run all)
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "mean": [{}],
    "pcgrad": [{}, {"reduction": "mean"}],
    "cagrad": [{}, {"c": 2.0, "rescale": 2, "sum_scale": True}, {"c": 0.0, "rescale": 0}],
    "nash_mtl": [{}, {"max_norm": 0.0}],
    "imtl": [{}],
    "mgda": [{}, {"normalization": "l2", "combination": "normalized"}, {"normalization": "loss+"}],
    "upgrad": [{}, {"pref_vector": PREFERENCES}, {"reg_eps": 1e-4, "norm_eps": 1e-4}],
    "dualproj": [{}, {"pref_vector": PREFERENCES}, {"reg_eps": 1e-4, "norm_eps": 1e-4}],
    "gradvac": [{}, {"eps": 1e-8, "beta": 0.1}],
    "fairgrad": [{}, {"alpha": 2.0}, {"alpha": 0.5}],
    "config": [{}],
    "aligned_mtl": [{}, {"scale_mode": "median"}, {"scale_mode": "rmse"}],
}


def _with_inputs(method: str, variant: dict[str, Any], K: int, seed: int) -> dict[str, Any]:
    """The variant's options for K tasks: PCGrad's fixed orders, the losses a loss normalisation needs."""
    options = {**deterministic_options(method, K, seed), **variant}
    if "pref_vector" in variant:
        options["pref_vector"] = variant["pref_vector"][:K]
    if variant.get("normalization") in ("loss", "loss+"):
        options["losses"] = LOSSES[:K]
    return options


def _variant_grid() -> list[Any]:
    params = []
    for param in grid():
        method, backend = param.values
        for i, variant in enumerate(VARIANTS[method]):
            params.append(pytest.param(method, backend, variant, marks=param.marks, id=f"{param.id}-v{i}"))
    return params


# -- agreement with the float64 reference and between backends -------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method, backend, variant", _variant_grid())
def test_agrees_with_reference_and_torch_backend(method, backend, variant, dtype):
    inputs = ((2, 0), (3, 1), (5, 2)) if dtype == torch.float64 else ((5, 3),)
    for K, seed in inputs:
        J = random_J(K, 16, seed, dtype)
        options = _with_inputs(method, variant, K, seed)
        result = run(J, method, backend, **options)
        assert_direction_is_combination(result, J)
        expected = reference(J, method, **options)
        rtol = REFERENCE_RTOL64[method] if dtype == torch.float64 else FLOAT32_RTOL
        assert_weights_close(result.weights, expected.weights, J, rtol, "weights vs reference")
        assert_direction_close(result.direction, expected.direction, natural_scale(expected.weights, J), rtol)
        if backend != "torch":
            on_torch = run(J, method, "torch", **options)
            rtol = BACKEND_RTOL if dtype == torch.float64 else FLOAT32_RTOL
            assert_weights_close(result.weights, on_torch.weights, J, rtol, "weights vs the torch backend")


@pytest.mark.parametrize("method, backend", grid())
def test_weighting_on_a_gram_matches_aggregate(method, backend):
    """make_weighting(method, backend=b)(Γ) on an independently formed float64 Γ = J·Jᵀ gives the
    weights mk.aggregate finds from J."""
    J = random_J(4, 12, seed=5)
    options = deterministic_options(method, 4, seed=5)
    gram = (J @ J.T).to(device(backend))
    solution = mk.methods.make_weighting(method, backend=backend, **options)(gram)
    assert solution.weights.shape == (4,) and solution.weights.dtype == torch.float64
    assert_weights_close(solution.weights, run(J, method, backend, **options).weights, J, BACKEND_RTOL)


def _run_against_reference(J: torch.Tensor, method: str, backend: str, options: dict[str, Any], weights: bool = True):
    """mk.aggregate of J on ``backend``: d = wᵀJ, d as the float64 reference's, and (where the method's
    weights are unique on J: ``weights``) w as the reference's. Returns the result."""
    result = run(J, method, backend, **options)
    assert_direction_is_combination(result, J)
    expected = reference(J, method, **options)
    rtol = REFERENCE_RTOL64[method]
    assert_direction_close(result.direction, expected.direction, natural_scale(expected.weights, J), rtol)
    if weights:
        assert_weights_close(result.weights, expected.weights, J, rtol, "weights vs reference")
    return result


# -- symmetry and scale ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method, backend", grid())
def test_permutation_equivariance(method, backend):
    """Relabelling the tasks relabels the weights and leaves d unchanged: w(PJ) = P·w(J). PCGrad's
    visiting orders are relabelled with the tasks (each task visits the same gradients in turn)."""
    J = random_J(5, 12, seed=7)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    options = deterministic_options(method, 5, seed=7)
    permuted_options = {"order": reorder(options["order"], permutation)} if method in ORDERED else {}
    base = run(J, method, backend, **options)
    permuted = run(J[permutation], method, backend, **permuted_options)
    assert_direction_is_combination(permuted, J[permutation])
    assert_weights_close(permuted.weights, base.weights[permutation], J[permutation], EXACT_RTOL)
    assert_direction_close(permuted.direction, base.direction, natural_scale(base.weights, J), EXACT_RTOL)


#: J → c·J: w → c^a·w and d → c^b·d, (a, b) from each method's definition.
#: mean, PCGrad (projection coefficients gᵢ'·gⱼ/‖gⱼ‖² are scale-free), CAGrad (u is scale-free), IMTL-G
#: (Σw = 1, equal projections), MGDA (the min-norm point of the hull scales with it): (0, 1).
#: Nash-MTL: αᵢ(Γα)ᵢ = 1 with Γ → c²Γ gives α → α/c, and ‖d‖ = √K (or the clip) is unchanged: (−1, 0),
#: with the clip to max_norm = 1 and without it (max_norm = 0).
#: FairGrad: c²Γw′ = w′^(−1/α) with w′ = c^a·w needs 2 + a = −a/α: a = −2α/(α+1), and d → c^(1+a)·d
#: (α = 1: Nash-MTL's (−1, 0)). ConFIG: the unit gradients and x̂ are unchanged, the length Σgᵢ·x̂
#: scales with c: (0, 1). Aligned-MTL: B = σ·U·diag(λ^(−½))·Uᵀ is scale-free: (0, 1).
#: MGDA with l2 normalisation and combination "normalized": d = Σ wᵢgᵢ/‖gᵢ‖ is scale-free: (−1, 0).
#: UPGrad, DualProj (the dual cone is unchanged and the projection commutes with scaling: v is
#: scale-free) and GradVac (cosines and correction coefficients ‖gᵢ'‖/‖gⱼ‖ are scale-free, eps = 0): (0, 1).
GLOBAL_SCALE = [
    ("mean", {}, 0, 1),
    ("pcgrad", {}, 0, 1),
    ("cagrad", {}, 0, 1),
    ("nash_mtl", {}, -1, 0),
    ("nash_mtl", {"max_norm": 0.0}, -1, 0),
    ("imtl", {}, 0, 1),
    ("mgda", {}, 0, 1),
    ("mgda", {"normalization": "l2"}, 0, 1),
    ("mgda", {"normalization": "l2", "combination": "normalized"}, -1, 0),
    ("upgrad", {}, 0, 1),
    ("dualproj", {}, 0, 1),
    ("gradvac", {}, 0, 1),
    ("fairgrad", {}, -1, 0),
    ("fairgrad", {"alpha": 2.0}, -4 / 3, -1 / 3),
    ("fairgrad", {"alpha": 0.5}, -2 / 3, 1 / 3),
    ("config", {}, 0, 1),
    ("aligned_mtl", {}, 0, 1),
    ("aligned_mtl", {"scale_mode": "rmse"}, 0, 1),
]


def _table_grid(table: list[tuple]) -> list[Any]:
    """pytest params (*row, backend) for every row (method, options, ...) × backend."""
    params = []
    for row in table:
        for backend in backend_params(method=row[0]):
            name = "-".join([row[0], *(str(v) for v in row[1].values())])
            marks = backend_marks(row[0], backend.values[0])
            params.append(pytest.param(*row, backend.values[0], marks=marks, id=f"{name}-{backend.id}"))
    return params


@pytest.mark.parametrize("method, variant, weight_power, direction_power, backend", _table_grid(GLOBAL_SCALE))
def test_global_scale(method, variant, weight_power, direction_power, backend):
    J = random_J(4, 12, seed=8)
    options = {**deterministic_options(method, 4, seed=8), **variant}
    base = run(J, method, backend, **options)
    for c in (1e-15, 2.0**-20, 1e5, 1e15):
        scaled = run(c * J, method, backend, **options)
        assert_direction_is_combination(scaled, c * J)
        assert_weights_close(scaled.weights, c**weight_power * base.weights, c * J, EXACT_RTOL)
        expected = c**direction_power * base.direction
        assert_direction_close(scaled.direction, expected, natural_scale(scaled.weights, c * J), EXACT_RTOL)


#: gᵢ → sᵢ·gᵢ (sᵢ > 0 per task): w → sᵖ ⊙ w, then rescaled to Σw = 1 where marked. Only where the
#: method defines it: Nash-MTL (the system is invariant under per-task rescaling: α → α/s, d
#: unchanged); IMTL-G (the unit gradients are unchanged, so d keeps its direction and w ∝ w/s with
#: Σw = 1); MGDA "l2" (gᵢ/‖gᵢ‖ unchanged: the simplex weights are, d = Σwᵢgᵢ or, "normalized",
#: unchanged); MGDA "loss" with the losses scaled alongside (gᵢ/Lᵢ unchanged: the same); FairGrad at
#: α = 1 (Nash-MTL's system).
PER_TASK_SCALE = [
    ("nash_mtl", {}, -1, False),
    ("imtl", {}, -1, True),
    ("mgda", {"normalization": "l2"}, 0, False),
    ("mgda", {"normalization": "l2", "combination": "normalized"}, -1, False),
    ("mgda", {"normalization": "loss"}, 0, False),
    ("fairgrad", {}, -1, False),
]


@pytest.mark.parametrize("method, variant, weight_power, renormalise, backend", _table_grid(PER_TASK_SCALE))
def test_per_task_scale(method, variant, weight_power, renormalise, backend):
    J = random_J(4, 12, seed=9)
    s = torch.tensor([1e-12, 3.0, 1e9, 0.5], dtype=torch.float64)
    base_options, scaled_options = dict(variant), dict(variant)
    if variant.get("normalization") == "loss":  # scaling a task's loss scales its gradient and its value
        base_options["losses"], scaled_options["losses"] = LOSSES[:4], LOSSES[:4] * s
    base = run(J, method, backend, **base_options)
    scaled = run(s[:, None] * J, method, backend, **scaled_options)
    assert_direction_is_combination(scaled, s[:, None] * J)
    expected = s**weight_power * base.weights
    if renormalise:
        expected = expected / expected.sum()
    assert_weights_close(scaled.weights, expected, s[:, None] * J, EXACT_RTOL)


# -- degenerate and special inputs ----------------------------------------------------------------------
#: K = 1, ‖g‖ = n: d = w·g with w: 1 for the mean, PCGrad (nothing to project), IMTL-G (Σw = 1) and
#: MGDA (the hull is {g}); CAGrad: d = g + c‖g‖·g/‖g‖ = (1 + c)g, ÷(1 + c²) → 1.5/1.25 = 1.2;
#: Nash-MTL: α·‖g‖²·α = 1 → α = 1/‖g‖, ‖d‖ = 1 is not clipped; UPGrad and DualProj: g is in its own
#: dual cone, v = argmin_{v ≥ 1} v²‖g‖² = 1; GradVac: no other task to correct towards, 1.
#: Nash-MTL: α·‖g‖²·α = 1 → α = 1/‖g‖, ‖d‖ = 1 is not clipped; FairGrad (α = 1): ‖g‖²·w = 1/w → 1/‖g‖;
#: ConFIG: x̂ = g/‖g‖ and length g·x̂ = ‖g‖, d = g: 1; Aligned-MTL: σ = ‖g‖, Ĵ = g, p = 1/K = 1: 1.
SINGLE_TASK_WEIGHT: dict[str, Callable[[float], float]] = {
    "mean": lambda n: 1.0,
    "pcgrad": lambda n: 1.0,
    "cagrad": lambda n: 1.2,
    "nash_mtl": lambda n: 1.0 / n,
    "imtl": lambda n: 1.0,
    "mgda": lambda n: 1.0,
    "upgrad": lambda n: 1.0,
    "dualproj": lambda n: 1.0,
    "gradvac": lambda n: 1.0,
    "fairgrad": lambda n: 1.0 / n,
    "config": lambda n: 1.0,
    "aligned_mtl": lambda n: 1.0,
}
#: a literal weight up to a few roundings of the solve's closed form
SINGLE_TASK_RTOL = 4 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize("method, backend", grid())
def test_single_task(method, backend):
    """K = 1 at norms 2.5e-20, 2.5 and 2.5e20 (Γ = ‖g‖² spanning 1e±40)."""
    g = random_J(1, 10, seed=10)
    g = g / torch.linalg.vector_norm(g)
    for n in (2.5e-20, 2.5, 2.5e20):
        result = run(n * g, method, backend, **deterministic_options(method, 1))
        assert_direction_is_combination(result, n * g)
        expected = torch.tensor([SINGLE_TASK_WEIGHT[method](n)], dtype=torch.float64)
        torch.testing.assert_close(result.weights, expected, rtol=SINGLE_TASK_RTOL, atol=0, msg=f"‖g‖ = {n}")


#: J = 0 ([K, N]): d = 0 exactly, with each method's weights: the mean's 1/K; PCGrad nothing to
#: project, 1; CAGrad g₀ = 0 so d = g₀ with the mean's weights ÷(1 + c²); Nash-MTL no positive
#: solution, every task dropped, 0; IMTL-G no direction to be impartial about, the mean's 1/K; MGDA
#: every point of the hull is 0, the even weights 1/K; UPGrad and DualProj: every constraint
#: 0·x ≥ 0 holds, nothing is projected, w = p = 1/K; GradVac: every cosine is 0, no target (0) is
#: above it, nothing corrected, 1.
#: every point of the hull is 0, the even weights 1/K; FairGrad as Nash-MTL, 0; ConFIG no unit gradient,
#: x = 0: 0; Aligned-MTL no component of J to align (rank 0): 0.
ALL_ZERO_WEIGHT: dict[str, Callable[[int], float]] = {
    "mean": lambda K: 1.0 / K,
    "pcgrad": lambda K: 1.0,
    "cagrad": lambda K: 1.0 / K / CAGRAD_DIVISOR,
    "nash_mtl": lambda K: 0.0,
    "imtl": lambda K: 1.0 / K,
    "mgda": lambda K: 1.0 / K,
    "upgrad": lambda K: 1.0 / K,
    "dualproj": lambda K: 1.0 / K,
    "gradvac": lambda K: 1.0,
    "fairgrad": lambda K: 0.0,
    "config": lambda K: 0.0,
    "aligned_mtl": lambda K: 0.0,
}


@pytest.mark.parametrize("method, backend", grid())
def test_all_zero_gradients(method, backend):
    for K in (1, 4):
        J = torch.zeros(K, 10, dtype=torch.float64)
        result = run(J, method, backend, **deterministic_options(method, K))
        assert_direction_is_combination(result, J)
        expected = torch.full((K,), ALL_ZERO_WEIGHT[method](K), dtype=torch.float64)
        torch.testing.assert_close(result.weights, expected, rtol=SINGLE_TASK_RTOL, atol=0, msg=f"K = {K}")
        assert not bool(result.direction.any()), f"K = {K}: d ≠ 0"


#: J with zero rows among generic gradients (K tasks, z of them zero): (weight of each zero task, the
#: others' weights). "reduced": the others' weights are the method's on J without the zero rows
#: (PCGrad never projects on or off a zero gradient; Nash-MTL and IMTL-G give them weight 0 and solve
#: on the rest); "zero": all others 0 (MGDA: the min-norm point of a hull holding 0 is 0, the weight
#: shared evenly by the zero gradients); None: not defined by the method beyond the reference
#: (CAGrad: a zero gradient caps the worst improvement at 0; its weight does not change d).
#: UPGrad and DualProj: a zero gradient's constraint 0·x ≥ 0 always holds and never binds, so its
#: weight stays pᵢ = 1/K (the others' preferences are 1/K, not 1/(K − z): not "reduced"). GradVac:
#: a zero gradient has cosine 0 with every task and is never corrected nor corrected towards.
#: (CAGrad: a zero gradient caps the worst improvement at 0; its weight does not change d). FairGrad as
#: Nash-MTL; ConFIG: a zero row of U is no constraint on x and adds 0 to the length, so (default
#: p = 𝟙) the others solve as without it; Aligned-MTL: a zero gradient is a null direction of Γ,
#: weight 0, but the others' p = 𝟙/K keeps K, not K − z.
ZERO_ROW: dict[str, tuple[Callable[[int, int], float] | None, str | None]] = {
    "mean": (lambda K, z: 1.0 / K, None),
    "pcgrad": (lambda K, z: 1.0, "reduced"),
    "cagrad": (None, None),
    "nash_mtl": (lambda K, z: 0.0, "reduced"),
    "imtl": (lambda K, z: 0.0, "reduced"),
    "mgda": (lambda K, z: 1.0 / z, "zero"),
    "upgrad": (lambda K, z: 1.0 / K, None),
    "dualproj": (lambda K, z: 1.0 / K, None),
    "gradvac": (lambda K, z: 1.0, "reduced"),
    "fairgrad": (lambda K, z: 0.0, "reduced"),
    "config": (lambda K, z: 0.0, "reduced"),
    "aligned_mtl": (lambda K, z: 0.0, None),
}
#: the diagnostics that name the zero tasks
ZERO_ROW_DIAGNOSTICS = {
    "nash_mtl": "dropped_tasks", "imtl": "zero_tasks", "fairgrad": "dropped_tasks", "config": "zero_tasks",
    "aligned_mtl": "zero_tasks",
}


@pytest.mark.parametrize("method, backend", grid())
def test_zero_rows(method, backend):
    for zero in ([1], [1, 3]):
        J = random_J(5, 10, seed=11)
        J[zero] = 0
        options = deterministic_options(method, 5, seed=11)
        result = _run_against_reference(J, method, backend, options)
        zero_weight, others = ZERO_ROW[method]
        if zero_weight is not None:
            assert result.weights[zero].tolist() == pytest.approx([zero_weight(5, len(zero))] * len(zero), rel=EXACT_RTOL, abs=0)
        keep = torch.tensor([i for i in range(5) if i not in zero])
        if others == "reduced":
            reduced_options = {"order": restrict(options["order"], keep)} if method in ORDERED else {}
            reduced = run(J[keep], method, backend, **reduced_options)
            assert_weights_close(result.weights[keep], reduced.weights, J[keep], EXACT_RTOL, f"weights vs J without rows {zero}")
        elif others == "zero":
            assert result.weights[keep].tolist() == [0.0] * len(keep)
        if method in ZERO_ROW_DIAGNOSTICS:
            assert mk.diagnostics_to_python(result.diagnostics)[ZERO_ROW_DIAGNOSTICS[method]] == zero


@pytest.mark.parametrize("method, backend", grid())
def test_duplicate_rows(method, backend):
    """J = (g, g, h, k). Every method agrees with the reference on d; on the weights where they are
    unique (mean, PCGrad with fixed orders, Nash-MTL, IMTL-G's least-norm choice, FairGrad, ConFIG's
    least-norm β = C⁺p, Aligned-MTL), else on the duplicates' total (CAGrad's multipliers and MGDA's
    hull weights may split it either way). Nash-MTL's and FairGrad's systems, ConFIG's C⁺ and
    Aligned-MTL's B are symmetric in the duplicates: equal weights. IMTL-G and MGDA see the same
    unit gradients / hull as (g, h, k): the same d, the duplicates sharing g's weight (IMTL-G: equally).
    UPGrad and DualProj: the dual cone is (g, h, k)'s, so d is theirs, the duplicates sharing g's
    weight either way (the active-set solve moves only one of them)."""
    distinct = random_J(3, 10, seed=12)
    J = torch.cat([distinct[:1], distinct])
    options = deterministic_options(method, 4, seed=12)
    split_either_way = method in ("cagrad", "mgda", "upgrad", "dualproj")
    result = _run_against_reference(J, method, backend, options, weights=not split_either_way)
    if split_either_way:
        merged, merged_expected = _merge_first_two(result.weights), _merge_first_two(reference(J, method, **options).weights)
        assert_weights_close(merged, merged_expected, distinct, REFERENCE_RTOL64[method], "weights (duplicates summed) vs reference")
    if method == "mean":
        assert result.weights.tolist() == [0.25] * 4
    if method in ("nash_mtl", "imtl", "fairgrad", "config", "aligned_mtl"):
        assert float(result.weights[0]) == pytest.approx(float(result.weights[1]), rel=EXACT_RTOL)
    if method in ("imtl", "mgda"):
        alone = run(distinct, method, backend)
        assert_direction_close(result.direction, alone.direction, natural_scale(alone.weights, distinct), EXACT_RTOL)
        assert_weights_close(_merge_first_two(result.weights), alone.weights, distinct, EXACT_RTOL, "weights vs (g, h, k)")


def _merge_first_two(weights: torch.Tensor) -> torch.Tensor:
    return torch.cat([weights[:1] + weights[1:2], weights[2:]])


#: J = (g, −g): d = 0 for every method, with the weights each defines: mean ½; PCGrad each gᵢ
#: projected off the other, cᵢ = (1, 1), summed: 2; CAGrad g₀ = 0 so φ = 0 and d = g₀: (½)/(1 + c²)
#: = 0.4; Nash-MTL no positive solution, both tasks cancel: 0; IMTL-G the unique impartial weights
#: summing to 1: ½ (its docstring's example); MGDA the min-norm point 0 = ½g + ½(−g): ½; UPGrad the
#: dual cone is g⊥, π(±g) = 0 = g − g, the least v ≥ eᵢ with v₀ = v₁ is (1, 1), times ½ twice: 1;
#: DualProj ½g − ½g = 0 is already in the cone: p = ½; GradVac as PCGrad at the first step (targets
#: 0: the correction is the projection): 2; FairGrad as Nash-MTL: 0; ConFIG: no x has u·x = 1 = −u·x, and 𝟙 is orthogonal to the range of
#: C = [[1, −1], [−1, 1]], so x = U⁺𝟙 = 0: 0; Aligned-MTL: B = ½[[1, −1], [−1, 1]] (rank 1, σ = λ^½),
#: B·(½, ½) = 0.
OPPOSITE_WEIGHTS = {
    "mean": 0.5, "pcgrad": 2.0, "cagrad": 0.4, "nash_mtl": 0.0, "imtl": 0.5, "mgda": 0.5, "upgrad": 1.0,
    "dualproj": 0.5, "gradvac": 2.0, "fairgrad": 0.0, "config": 0.0, "aligned_mtl": 0.0,
}
#: what each method's diagnostics say of (g, −g): CAGrad's degenerate case (g₀ = 0); IMTL-G's
#: rank-deficient fallback with a unique answer; Nash-MTL drops both tasks.
OPPOSITE_DIAGNOSTICS: dict[str, dict[str, Any]] = {
    "cagrad": {"degenerate": True},
    "imtl": {"fallback": True, "unique": True},
    "nash_mtl": {"dropped_tasks": [0, 1]},
    "dualproj": {"active_tasks": []},
    "fairgrad": {"dropped_tasks": [0, 1]},
    "config": {"rank": 1, "equal_cosines": False},
    "aligned_mtl": {"rank": 1},
}


@pytest.mark.parametrize("method, backend", grid())
def test_opposite_rows(method, backend):
    """d = w₀g − w₁g vanishes up to the rounding of the two terms: ‖d‖ ≤ 2·eps·(|w₀| + |w₁|)·‖g‖."""
    g = random_J(1, 10, seed=13)
    J = torch.cat([g, -g])
    result = run(J, method, backend, **deterministic_options(method, 2, seed=13))
    assert_direction_is_combination(result, J)
    expected = torch.full((2,), OPPOSITE_WEIGHTS[method], dtype=torch.float64)
    torch.testing.assert_close(result.weights, expected, rtol=EXACT_RTOL, atol=EXACT_RTOL)
    scale = natural_scale(expected, J)
    assert float(torch.linalg.vector_norm(result.direction)) <= 2 * torch.finfo(torch.float64).eps * scale
    diagnostics = mk.diagnostics_to_python(result.diagnostics)
    assert {k: diagnostics[k] for k in OPPOSITE_DIAGNOSTICS.get(method, {})} == OPPOSITE_DIAGNOSTICS.get(method, {})


@pytest.mark.parametrize("method, backend", grid())
def test_opposite_rows_among_others(method, backend):
    """J = (g, −g, h, k): as the reference. Nash-MTL drops the cancelling pair (weight exactly 0) and
    solves (h, k) alone. CAGrad's weights are not unique here (u moves freely along g − g), nor
    UPGrad's and DualProj's (v may add any multiple of (1, 1, 0, 0)), only d."""
    J = random_J(3, 10, seed=14)
    J = torch.stack([J[0], -J[0], J[1], J[2]])
    unique = method not in ("cagrad", "upgrad", "dualproj")
    result = _run_against_reference(J, method, backend, deterministic_options(method, 4, seed=14), weights=unique)
    if method == "nash_mtl":
        assert result.weights[:2].tolist() == [0.0, 0.0]
        assert mk.diagnostics_to_python(result.diagnostics)["dropped_tasks"] == [0, 1]
        rest = run(J[2:], method, backend)
        assert_weights_close(result.weights[2:], rest.weights, J[2:], EXACT_RTOL, "weights vs (h, k) alone")


def _check_mean(result, J):
    torch.testing.assert_close(result.weights, torch.full((J.shape[0],), 1.0 / J.shape[0], dtype=torch.float64))


def _check_pcgrad(result, J):
    """Nothing conflicts: no projection, d = Σgᵢ (reduction "sum")."""
    assert result.weights.tolist() == [1.0] * J.shape[0]
    assert int(result.diagnostics["projections"]) == 0


def _check_pcgrad_mean(result, J):
    """Nothing conflicts: no projection, d = Σgᵢ/K (reduction "mean")."""
    assert result.weights.tolist() == [1.0 / J.shape[0]] * J.shape[0]
    assert int(result.diagnostics["projections"]) == 0


def _check_cagrad(result, J):
    """g₀ lies in the ball, so the optimum improves the worst task at least as much as the mean does
    (d before the ÷(1 + c²) rescale)."""
    improvement = J @ (result.direction * CAGRAD_DIVISOR)
    mean_improvement = J @ J.mean(dim=0)
    slack = 1e-12 * natural_scale(result.weights, J) * float(torch.linalg.vector_norm(J, dim=1).max())
    assert float(improvement.min()) >= float(mean_improvement.min()) - slack > 0


def _check_nash_mtl(result, J):
    """0 is not in the hull (‖Σwᵢgᵢ‖² = ΣΣwᵢwⱼgᵢ·gⱼ > 0), so a positive solution exists: no task dropped."""
    assert bool((result.weights > 0).all()), result.weights.tolist()


def _check_not_projected(result, J):
    """Every gᵢ is in the dual cone (gᵢ·gⱼ ≥ 0): nothing is projected, w = p = 1/K (UPGrad: each
    π(gᵢ) = gᵢ; DualProj: the mean is in the cone), d the mean gradient."""
    assert result.weights.tolist() == [1.0 / J.shape[0]] * J.shape[0]


def _check_gradvac(result, J):
    """Every cosine is above the first step's targets (0): nothing corrected, d = Σgᵢ."""
    assert result.weights.tolist() == [1.0] * J.shape[0]
    assert int(result.diagnostics["corrections"]) == 0


def _check_mgda(result, J):
    """The min-norm point x of the hull is a common descent direction: gᵢ·x ≥ ‖x‖² > 0 for all i."""
    x = result.direction
    slack = 1e-12 * float(torch.linalg.vector_norm(J, dim=1).max()) ** 2
    assert float((J @ x).min()) >= float(x @ x) - slack and float(x @ x) > 0


def _check_config(result, J):
    """K ≤ N independent gradients: x = U⁺𝟙 has uᵢ·x = 1 for all i, so d has the same positive cosine
    with every gradient (conflict-free), and its length is the sum of the projections Σᵢ gᵢ·d/‖d‖."""
    norms = torch.linalg.vector_norm(J, dim=1)
    d_norm = float(torch.linalg.vector_norm(result.direction))
    cosines = (J @ result.direction) / norms / d_norm
    assert float(cosines.min()) > 0 and float(cosines.max() - cosines.min()) <= 1e-13, cosines.tolist()
    assert d_norm == pytest.approx(float((J @ result.direction).sum()) / d_norm, rel=1e-13)


#: all pairwise gᵢ·gⱼ > 0: what each method reduces to, where it defines it (IMTL-G and Aligned-MTL
#: do not). FairGrad: 0 is not in the hull, so every weight is positive (as Nash-MTL); ConFIG: equal
#: positive cosines.
NON_CONFLICTING: list[tuple[str, dict[str, Any], Callable]] = [
    ("mean", {}, _check_mean),
    ("pcgrad", {}, _check_pcgrad),
    ("pcgrad", {"reduction": "mean"}, _check_pcgrad_mean),
    ("cagrad", {}, _check_cagrad),
    ("nash_mtl", {}, _check_nash_mtl),
    ("mgda", {}, _check_mgda),
    ("upgrad", {}, _check_not_projected),
    ("dualproj", {}, _check_not_projected),
    ("gradvac", {}, _check_gradvac),
    ("fairgrad", {}, _check_nash_mtl),
    ("fairgrad", {"alpha": 2.0}, _check_nash_mtl),
    ("config", {}, _check_config),
]


@pytest.mark.parametrize("method, variant, check, backend", _table_grid(NON_CONFLICTING))
def test_non_conflicting(method, variant, check, backend):
    generator = torch.Generator().manual_seed(15)
    J = torch.zeros(4, 10, dtype=torch.float64)
    J[:, 0] = 3.0
    J = J + 0.5 * torch.randn(4, 10, generator=generator, dtype=torch.float64)
    gram = J @ J.T
    assert bool((gram > 0).all()), "the input must be conflict-free"
    result = run(J, method, backend, **deterministic_options(method, 4, seed=15), **variant)
    assert_direction_is_combination(result, J)
    check(result, J)


def _pareto_stationary_J() -> torch.Tensor:
    """(3, 0), (−1, 2), (−1, −1) in a random plane of R⁸: ¼g₁ + ¼g₂ + ½g₃ = 0, the only convex
    combination that vanishes (three affinely independent points of a plane), with g₀ ≠ 0."""
    plane = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64))[0].T
    return torch.tensor([[3.0, 0.0], [-1.0, 2.0], [-1.0, -1.0]], dtype=torch.float64) @ plane


#: 0 ∈ conv{gᵢ} (no zero gradient): (options, weights or None, diagnostics); d = 0 for all of these,
#: and a weight of 0 is exactly 0. MGDA: the min-norm point is 0 at the unique hull weights (¼, ¼, ½).
#: IMTL-G: only d = 0 has equal projections on the three unit gradients of a plane, at those weights.
#: Nash-MTL: no positive solution, all three cancel and are dropped: weight 0, and the residual
#: √(kept residual² + number dropped) = √3. CAGrad with c = 1.5: the ball around g₀ reaches 0 and
#: no d has gᵢ·d ≥ 0 for all i but 0, so the degenerate case gives d = 0. UPGrad and DualProj: the
#: dual cone holds only 0 and the plane's complement, so every π(gᵢ) is 0 (weights not unique).
#: no d has gᵢ·d ≥ 0 for all i but 0, so the degenerate case gives d = 0. FairGrad: as Nash-MTL, all
#: three dropped; its residual is a maximum over the tasks, 1 for a dropped one. ConFIG and
#: Aligned-MTL do not vanish there (no equal-cosine direction exists; the aligned rows span the plane):
#: the reference only.
PARETO_STATIONARY: dict[str, tuple[dict[str, Any], list[float] | None, dict[str, Any]]] = {
    "mgda": ({}, [0.25, 0.25, 0.5], {}),
    "imtl": ({}, [0.25, 0.25, 0.5], {}),
    "nash_mtl": ({}, [0.0, 0.0, 0.0], {"dropped_tasks": [0, 1, 2], "residual": pytest.approx(math.sqrt(3), rel=EXACT_RTOL)}),
    "cagrad": ({"c": 1.5}, None, {"degenerate": True}),
    "upgrad": ({}, None, {}),
    "dualproj": ({}, None, {}),
    "fairgrad": ({}, [0.0, 0.0, 0.0], {"dropped_tasks": [0, 1, 2], "residual": 1.0}),
}


@pytest.mark.parametrize("method, backend", grid())
def test_pareto_stationary(method, backend):
    J = _pareto_stationary_J()
    unique = method not in ("cagrad", "upgrad", "dualproj")
    _run_against_reference(J, method, backend, deterministic_options(method, 3, seed=16), weights=unique)
    if method not in PARETO_STATIONARY:
        return
    variant, weights, facts = PARETO_STATIONARY[method]
    result = run(J, method, backend, **variant)
    assert_direction_is_combination(result, J)
    scale = float(torch.linalg.vector_norm(J, dim=1).sum())
    assert float(torch.linalg.vector_norm(result.direction)) <= EXACT_RTOL * scale
    if weights is not None:
        torch.testing.assert_close(result.weights, torch.tensor(weights, dtype=torch.float64), rtol=0, atol=EXACT_RTOL)
        assert [float(w) for w, literal in zip(result.weights, weights) if literal == 0.0] == [0.0] * weights.count(0.0)
    diagnostics = mk.diagnostics_to_python(result.diagnostics)
    assert {k: diagnostics[k] for k in facts} == facts


# -- beyond every backend's task limit ------------------------------------------------------------------
#: one past each backend's limit (the C++ solvers take K ≤ 256, the Triton solves K ≤ 64), with N
#: small: K > N makes the gradients Pareto-stationary, the solvers' hardest path. Triton gets
#: N > K, generic input, to keep the interpreter's Nash-MTL Newton steps few.
LARGE_K = {"torch": (257, 8), "cpp": (257, 8), "auto": (257, 8), "triton": (65, 80)}


@pytest.mark.parametrize("method, backend", grid(backends=("auto", *BACKENDS)))
def test_beyond_the_task_limit_falls_back(method, backend):
    """mk.aggregate runs; the solve on Γ is the torch solve's, to the bit, with the same diagnostics."""
    K, N = LARGE_K[backend]
    J = random_J(K, N, seed=17, dtype=torch.float32 if backend == "triton" else torch.float64)
    options = deterministic_options(method, K, seed=17)
    result = run(J, method, backend, **options)
    assert_direction_is_combination(result, J)
    if backend == "torch":
        return
    gram = J.to(torch.float64) @ J.to(torch.float64).T
    solution = mk.methods.make_weighting(method, backend=backend, **options)(gram.to(device(backend)))
    on_torch = mk.methods.make_weighting(method, backend="torch", **options)(gram)
    assert torch.equal(solution.weights.cpu(), on_torch.weights)
    assert mk.diagnostics_to_python(solution.diagnostics) == mk.diagnostics_to_python(on_torch.diagnostics)


@pytest.mark.skipif(not CPP_AVAILABLE, reason="C++ extension not built")
@pytest.mark.parametrize("method", mk.METHODS)
def test_auto_on_cpu_solves_in_cpp(method):
    """backend="auto" on a CPU Γ within the C++ limit is the C++ solve, to the bit."""
    J = random_J(5, 12, seed=19)
    options = deterministic_options(method, 5, seed=19)
    gram = J @ J.T
    auto = mk.methods.make_weighting(method, **options)(gram)
    cpp = mk.methods.make_weighting(method, backend="cpp", **options)(gram)
    assert torch.equal(auto.weights, cpp.weights)
    assert mk.diagnostics_to_python(auto.diagnostics) == mk.diagnostics_to_python(cpp.diagnostics)


# -- bad Γ ------------------------------------------------------------------------------------------------
def _bad_grams() -> list[tuple[torch.Tensor, str]]:
    nan_off_diagonal = torch.eye(3, dtype=torch.float64)
    nan_off_diagonal[1, 2] = float("nan")
    return [
        (nan_off_diagonal, "non-finite"),
        (torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)), "negative diagonal"),
        (torch.ones(2, 3, dtype=torch.float64), "square"),
    ]


@pytest.mark.parametrize("method, backend", grid(methods=tuple(m for m in METHODS if m != "mean")))
def test_bad_gram_is_named(method, backend):
    """A Γ that is not a Gram matrix raises a ValueError naming the problem, on every backend (the
    mean reads only Γ's shape)."""
    weighting = mk.methods.make_weighting(method, backend=backend)
    for gram, message in _bad_grams():
        with pytest.raises(ValueError, match=message):
            weighting(gram.to(device(backend)))


# -- diagnostics ----------------------------------------------------------------------------------------
def _diagnostics(method: str, backend: str) -> list[dict[str, Any]]:
    """The diagnostics of a generic J and of one with a zero row (index lists non-empty)."""
    J = random_J(4, 10, seed=18)
    with_zero = J.clone()
    with_zero[2] = 0
    options = deterministic_options(method, 4, seed=18)
    return [run(x, method, backend, **options).diagnostics for x in (J, with_zero)]


@pytest.mark.parametrize("method, backend", grid(backends=("cpp", "triton")))
def test_diagnostics_same_keys(method, backend):
    for got, on_torch in zip(_diagnostics(method, backend), _diagnostics(method, "torch")):
        assert sorted(got) == sorted(on_torch)


@pytest.mark.parametrize("method, backend", grid(backends=("cpp", "triton")))
def test_diagnostics_same_kinds_as_python(method, backend):
    """Same keys, and each value of the same kind once converted to plain Python (tensors through
    tolist): bool, int, float, str, or a list of such, element by element."""
    for got, on_torch in zip(_diagnostics(method, backend), _diagnostics(method, "torch")):
        assert sorted(got) == sorted(on_torch)
        kinds = {k: kind(v) for k, v in mk.diagnostics_to_python(got).items()}
        assert kinds == {k: kind(v) for k, v in mk.diagnostics_to_python(on_torch).items()}


@pytest.mark.parametrize("method, backend", grid(backends=("cpp", "triton")))
def test_diagnostics_identical_types(method, backend):
    """The diagnostics contract on a CPU Γ: the same types on every backend (and for tensors dtype
    and shape); the device form (CUDA) is checked by the kernel tests."""
    for got, on_torch in zip(_diagnostics(method, backend), _diagnostics(method, "torch")):
        assert {k: describe(v) for k, v in got.items()} == {k: describe(v) for k, v in on_torch.items()}


# -- d = wᵀJ and finite, over shapes, magnitudes and structures -------------------------------------------
@st.composite
def task_gradients(draw: st.DrawFn) -> torch.Tensor:
    K = draw(st.integers(1, 6))
    N = draw(st.integers(1, 12))
    J = random_J(K, N, seed=draw(st.integers(0, 2**16)), dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    exponents = torch.tensor(draw(st.lists(st.integers(-6, 6), min_size=K, max_size=K)), dtype=torch.float64)
    J = (J.double() * 10.0 ** exponents[:, None]).to(J.dtype)
    structure = draw(st.sampled_from(["generic", "zero", "duplicate", "opposite"]))
    if K >= 2 and structure == "zero":
        J[-1] = 0
    elif K >= 2 and structure == "duplicate":
        J[-1] = J[0]
    elif K >= 2 and structure == "opposite":
        J[-1] = -J[0]
    return J


@pytest.mark.parametrize("method, backend", grid(backends=("torch", "cpp")))
@settings(max_examples=12, deadline=None)
@given(J=task_gradients())
def test_direction_is_the_weighted_sum(method, backend, J):
    result = run(J, method, backend, **deterministic_options(method, J.shape[0]))
    assert_direction_is_combination(result, J)


@pytest.mark.parametrize("method, backend", grid(backends=("triton",)))
@settings(max_examples=4, deadline=None)
@given(J=task_gradients())
def test_direction_is_the_weighted_sum_triton(method, backend, J):
    """As above, fewer examples: the interpreter is slow."""
    result = run(J, method, backend, **deterministic_options(method, J.shape[0]))
    assert_direction_is_combination(result, J)
