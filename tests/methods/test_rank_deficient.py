"""Every method on every backend, given rank-deficient Gram matrices rounded to float32.

A Gram accumulated or stored in float32 (the CUDA accumulation) of gradients that span fewer
than K dimensions is positive semidefinite only to its rounding: its zero eigenvalues come out at
±1e-7 relative. Drawn here: K in 1..12 gradients of rank < K (K > N too), rows copied or negated
from earlier rows, row norms spread over 1e±8, Γ handed over as float32 or as float64 holding the
float32-rounded values. Checked: finite weights and each method's documented sign constraints —
mean 𝟙/K; PCGrad (reduction "sum") wᵢ ≥ 1, since projections only add non-negative multiples;
CAGrad wᵢ ≥ (1/K)/(1 + c²), its multipliers being ≥ 0; MGDA on the simplex; IMTL Σw = 1 (or its
documented degenerate w = 0), ``unique`` never claimed where the impartial weights form a family
of dimension ≥ 1 (a float32 Γ whose gradients leave ≥ 2 dimensions of the K unspanned); Nash-MTL
w ≥ 0 with every task in ``dropped_tasks`` exactly 0.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels import _extension
from mtlkernels.backend import triton_interpreted
from mtlkernels.methods import CAGradWeighting, IMTLWeighting, MGDAWeighting, NashMTLWeighting, PCGradWeighting
from mtlkernels.methods.cagrad import rescale_factor
from mtlkernels.methods.mean import Mean

HOST_BACKENDS = ["torch"] + (["cpp"] if _extension.available else [])
METHODS = ("mean", "pcgrad", "cagrad", "mgda", "imtl", "nash_mtl")


@st.composite
def rank_deficient_grams(draw, max_K: int = 12) -> tuple[torch.Tensor, int]:
    """(Γ rounded to float32, as float32 or float64; K minus the rank of the gradients ≥ 1)."""
    K = draw(st.integers(1, max_K))
    rank = draw(st.integers(0, K - 1))
    N = draw(st.integers(max(rank, 1), 2 * K + 2))
    seed = draw(st.integers(0, 2**31 - 1))
    copies = draw(st.lists(st.integers(-1, K - 1), min_size=K, max_size=K))
    signs = draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=K, max_size=K))
    log_scales = draw(st.lists(st.floats(-8.0, 8.0), min_size=K, max_size=K))
    as_float64 = draw(st.booleans())
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(K, rank, generator=generator, dtype=torch.float64) @ torch.randn(rank, N, generator=generator, dtype=torch.float64)
    for i, (source, sign) in enumerate(zip(copies, signs)):
        if 0 <= source < i:  # a duplicate (or opposite) of an earlier row: the rank stays
            J[i] = sign * J[source]
    J = (J * torch.tensor([10.0**s for s in log_scales], dtype=torch.float64)[:, None]).float()
    gram = J @ J.T
    gram = (gram + gram.T) / 2  # symmetric, as the Gram pass returns it
    return (gram.double() if as_float64 else gram), K - int(torch.linalg.matrix_rank(J.double()))


def _mask_list(value) -> list[int]:
    """A diagnostics index list, from a list or from the Triton solve's [K] bool mask."""
    return value.cpu().nonzero().flatten().tolist() if isinstance(value, torch.Tensor) else list(value)


def _weighting(method: str, backend: str):
    if method == "mean":
        return Mean(backend=backend)
    cls = {
        "pcgrad": PCGradWeighting, "cagrad": CAGradWeighting, "mgda": MGDAWeighting,
        "imtl": IMTLWeighting, "nash_mtl": NashMTLWeighting,
    }[method]
    return cls(backend=backend)


def check_method(method: str, backend: str, gram: torch.Tensor, null_dim: int) -> None:
    K = gram.shape[0]
    weighting = _weighting(method, backend)
    solution = weighting(gram)
    w, facts = solution.weights.detach().cpu().double(), solution.diagnostics
    label = f"{method}/{backend} K={K} dtype={gram.dtype} null_dim={null_dim}"
    assert w.shape == (K,) and bool(torch.isfinite(w).all()), (label, w)
    if method == "mean":
        assert w.tolist() == [1.0 / K] * K, label
    elif method == "pcgrad":
        assert bool((w >= 1.0).all()), (label, w)
    elif method == "cagrad":
        share = (1.0 / K) / rescale_factor(weighting.c, weighting.rescale)
        assert bool((w >= share * (1 - 1e-12)).all()), (label, w, share)
        assert float(facts["multiplier_sum"]) >= 0.0, label
    elif method == "mgda":
        assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) <= 1e-12 * K, (label, w)
    elif method == "imtl":
        zero_tasks = _mask_list(facts["zero_tasks"])
        if len(zero_tasks) == K:  # every gradient zero: the mean
            assert w.tolist() == [1.0 / K] * K, label
        else:
            assert w[zero_tasks].tolist() == [0.0] * len(zero_tasks), label
        if bool(facts["degenerate"]):
            assert w.tolist() == [0.0] * K, label
        elif len(zero_tasks) < K:
            assert abs(float(w.sum()) - 1.0) <= 1e-9 * max(1.0, float(w.abs().sum())), (label, w)
        if gram.dtype == torch.float32 and null_dim >= 2:
            assert not bool(facts["unique"]), (label, facts)
    else:
        dropped = _mask_list(facts["dropped_tasks"])
        assert bool((w >= 0).all()), (label, w, facts)
        assert w[dropped].tolist() == [0.0] * len(dropped), (label, w, dropped)
        assert dropped == (w == 0).nonzero().flatten().tolist(), (label, w, dropped)


@settings(max_examples=150, deadline=None)
@given(case=rank_deficient_grams())
def test_every_method_on_host_backends(case):
    gram, null_dim = case
    for method in METHODS:
        for backend in HOST_BACKENDS:
            check_method(method, backend, gram, null_dim)


@pytest.mark.skipif(not (torch.cuda.is_available() or triton_interpreted()), reason="Triton needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=10, deadline=None)
@given(case=rank_deficient_grams(max_K=6))
def test_every_method_on_triton(case):
    """The interpreter is slow: a few small Grams (on CUDA, the same on the device)."""
    gram, null_dim = case
    if torch.cuda.is_available():
        gram = gram.cuda()
    for method in METHODS:
        check_method(method, "triton", gram, null_dim)
