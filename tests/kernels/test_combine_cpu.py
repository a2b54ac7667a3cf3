"""The C++ CPU combination kernel (csrc/kernels/combine_cpu.cpp) against float64 torch: d = wᵀJ
into NaN-poisoned outputs, over sizes, dtypes (J's and the outputs'), block lists with awkward
strides, accumulate mode, extreme scales and weights, NaN propagation, determinism, the torch
backend, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.combine import _combine_cpp
from _devices import requires_cpp
from cases import awkward_blocks, block_shapes, random_J

pytestmark = requires_cpp

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
#: unit roundoff of each output dtype; the sums run in float64, and a 16-bit output is rounded
#: from float64 through float32 (as torch does), which adds up to 2⁻²⁴ relative
ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FLOAT32_STAGE = {torch.bfloat16: 2.0**-24, torch.float16: 2.0**-24}


def weights(K: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nan_outputs(sizes: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.full((n,), float("nan"), dtype=dtype) for n in sizes]


def assert_combination(out: torch.Tensor, w: torch.Tensor, J: torch.Tensor, base: torch.Tensor | None = None) -> None:
    """out = (base +) wᵀJ, summed in float64 and rounded once to out's dtype:
    |out − d| ≤ u_out·|d| + (K+1)·2⁻⁵³·(|w|ᵀ|J| + |base|) + the spacing of out's subnormals."""
    w64, J64 = w.double(), J.double()
    d, scale = w64 @ J64, w64.abs() @ J64.abs()
    if base is not None:
        d, scale = d + base.double(), scale + base.double().abs()
    subnormal = torch.finfo(out.dtype).smallest_normal * torch.finfo(out.dtype).eps
    unit = ROUNDOFF[out.dtype] + FLOAT32_STAGE.get(out.dtype, 0.0)
    bound = unit * d.abs() + (J.shape[0] + 1) * 2.0**-53 * scale + subnormal
    error = (out.double().reshape(-1) - d).abs()
    assert not out.isnan().any(), "an output element was not written"
    assert (error <= bound).all(), f"max error / bound = {(error / bound.clamp_min(1e-300)).max():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 1000, 100003])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 17, 64])
def test_matches_float64(K, N, dtype):
    J, w = random_J(K, N, seed=K * 3 + N, dtype=dtype), weights(K, seed=N)
    (out,) = nan_outputs([N], dtype)
    _combine_cpp(w, [J], [out], False)
    assert_combination(out, w, J)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtype_differs_from_J(dtype, out_dtype):
    J, w = random_J(5, 1003, seed=2, dtype=dtype), weights(5, seed=3)
    (out,) = nan_outputs([1003], out_dtype)
    _combine_cpp(w, [J], [out], False)
    assert_combination(out, w, J)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 4, 17])
def test_accumulate(K, dtype):
    J, w = random_J(K, 5001, seed=K, dtype=dtype), weights(K, seed=1)
    base = random_J(1, 5001, seed=99, dtype=dtype)[0]
    out = base.clone()
    _combine_cpp(w, [J], [out], True)
    assert_combination(out, w, J, base=base)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 5, 17])
def test_block_list_into_given_outputs(K, dtype):
    blocks, w = awkward_blocks(K, dtype, long_columns=38000, seed=21), weights(K, seed=5)  # longer than a parallel chunk
    outs = [torch.full(b.shape[1:], float("nan"), dtype=dtype) for b in blocks]
    result = mk.combine(w, blocks, out=outs, backend="cpp")
    assert all(r is o for r, o in zip(result, outs))
    for out, block in zip(outs, blocks):
        assert_combination(out, w, block.reshape(K, -1))


def test_one_J_split_over_outputs():
    """One [K, N] J written into several outputs in order (the parameters' .grad)."""
    J, w = random_J(4, 1000, seed=6, dtype=torch.float32), weights(4, seed=6)
    outs = [torch.full((3, 5), float("nan")), torch.full((985,), float("nan"))]
    mk.combine(w, J, out=outs, backend="cpp")
    assert_combination(torch.cat([o.reshape(-1) for o in outs]), w, J)


@pytest.mark.parametrize("exponent", [-20, 0, 20])
def test_extreme_scales(exponent):
    """Rows at 1e-20..1e20 in float32: products and sums stay in float32's range."""
    J = (random_J(6, 3001, seed=7) * 10.0**exponent * torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None]).float()
    w = weights(6, seed=7)
    (out,) = nan_outputs([3001], torch.float32)
    _combine_cpp(w, [J], [out], False)
    assert_combination(out, w, J)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_beyond_float32_range(dtype):
    """A weight of 1e40 on a 1e-20 gradient is a finite term (PCGrad/CAGrad give such weights on
    the 1e-20..1e20 case): the weights stay float64 and so do the sums."""
    J = random_J(3, 2000, seed=12, dtype=torch.float64)
    J[0] *= 1e-20
    J = J.to(dtype)
    w = torch.tensor([1e40, 0.5, -2.0], dtype=torch.float64)
    (out,) = nan_outputs([2000], dtype)
    _combine_cpp(w, [J], [out], False)
    assert torch.isfinite(out).all()
    assert_combination(out, w, J)
    torch.testing.assert_close(out, mk.combine(w, J, backend="torch"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_stays_in_its_column(dtype):
    J, w = random_J(3, 100, seed=8, dtype=dtype), weights(3, seed=8)
    J[1, 17], J[2, 99] = float("nan"), float("inf")
    (out,) = nan_outputs([100], dtype)
    _combine_cpp(w, [J], [out], False)
    assert out[17].isnan() and out[99].isinf()
    keep = torch.ones(100, dtype=torch.bool)
    keep[[17, 99]] = False
    assert_combination(out[keep], w, J[:, keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_across_calls_and_thread_counts(dtype):
    J, w = random_J(9, 300_001, seed=4, dtype=dtype), weights(9, seed=4)
    first = mk.combine(w, J, backend="cpp")
    assert torch.equal(first, mk.combine(w, J, backend="cpp"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(first, mk.combine(w, J, backend="cpp"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_torch_backend(dtype):
    J, w = random_J(6, 20_000, seed=9, dtype=dtype), weights(6, seed=9)
    ours, theirs = mk.combine(w, J, backend="cpp"), mk.combine(w, J, backend="torch")
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs)


def test_aggregate_end_to_end():
    """mk.aggregate on backend='cpp' (Gram, solve, combination) agrees with backend='torch'."""
    J = random_J(5, 10_000, seed=10, dtype=torch.float32)
    ours, theirs = mk.aggregate(J, "mean", backend="cpp"), mk.aggregate(J, "mean", backend="torch")
    torch.testing.assert_close(ours.direction, theirs.direction)
    torch.testing.assert_close(ours.gram, theirs.gram, rtol=1e-12, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    shape=block_shapes(min_width=0, max_width=3000, max_blocks=4),
    dtype=st.sampled_from(DTYPES),
    out_dtype=st.sampled_from(DTYPES),
    accumulate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_block_lists(shape, dtype, out_dtype, accumulate, seed):
    K, sizes = shape
    blocks = [random_J(K, n, seed=seed + i, dtype=dtype) for i, n in enumerate(sizes)]
    w = weights(K, seed=seed)
    bases = [random_J(1, n, seed=seed - i, dtype=out_dtype)[0] for i, n in enumerate(sizes)]
    outs = [b.clone() if accumulate else torch.full_like(b, float("nan")) for b in bases]
    _combine_cpp(w, blocks, outs, accumulate)
    for out, block, base in zip(outs, blocks, bases):
        assert_combination(out, w, block, base=base if accumulate else None)


def test_launcher_errors():
    J, w = torch.ones(2, 6), torch.ones(2)
    with pytest.raises(ValueError, match="CPU tensors.*meta"):
        _combine_cpp(w, [torch.empty(2, 6, device="meta")], [torch.empty(6)], False)
    with pytest.raises(ValueError, match=r"out\[0\] to be a contiguous float tensor"):
        _combine_cpp(w, [J], [torch.empty(6, dtype=torch.int64)], False)
    with pytest.raises(ValueError, match=r"out\[0\] to be a contiguous float tensor"):
        _combine_cpp(w, [J], [torch.empty(12)[::2]], False)
    with pytest.raises(ValueError, match=r"out\[0\] has 5 elements"):
        _combine_cpp(w, [J], [torch.empty(5)], False)
    with pytest.raises(ValueError, match="weights must have shape"):
        mk.combine(torch.ones(3), J, backend="cpp")


def test_extension_argument_errors():
    ext = _extension.extension()
    J, w, out = torch.ones(2, 3), torch.ones(2), torch.empty(3)
    ptrs = dict(weights_ptr=w.data_ptr(), pointers=[J.data_ptr()], cols=[3], row_strides=[3], K=2, dtype="float32")
    with pytest.raises(ValueError, match="2 outputs and 1 output dtypes for 1 blocks"):
        ext.combine_cpu(**ptrs, out_pointers=[out.data_ptr()] * 2, out_dtypes=["float32"], accumulate=False)
    with pytest.raises(ValueError, match=r"out\[0\] has unsupported dtype 'int64'"):
        ext.combine_cpu(**ptrs, out_pointers=[out.data_ptr()], out_dtypes=["int64"], accumulate=False)
    with pytest.raises(ValueError, match=r"out\[0\] has a null data pointer"):
        ext.combine_cpu(**ptrs, out_pointers=[0], out_dtypes=["float32"], accumulate=False)
    with pytest.raises(ValueError, match="weights pointer is null"):
        ext.combine_cpu(**{**ptrs, "weights_ptr": 0}, out_pointers=[out.data_ptr()], out_dtypes=["float32"], accumulate=False)


def test_missing_extension(monkeypatch):
    monkeypatch.setattr(_extension, "available", False)
    monkeypatch.setattr(_extension, "_module", None)
    J, w = random_J(3, 100), weights(3)
    with pytest.raises(RuntimeError, match="C\\+\\+ extension.*Rebuild"):
        mk.combine(w, J, backend="cpp")
    torch.testing.assert_close(mk.combine(w, J), w @ J)
