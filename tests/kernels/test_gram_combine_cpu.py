"""Γ and the direction in one pass over J (csrc/kernels/gram_cpu.cpp with a combination), as
``Aggregator("mean")`` runs it on the CPU: the same Γ and the same direction as the two passes,
at every CPU level, for every dtype and output dtype, block lists, accumulation, the float64
redo of out-of-range rows, and when the one pass is (not) taken."""
from __future__ import annotations

import importlib

import pytest
import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.combine import gram_and_combine_cpp
from mtlkernels.gram import _gram_cpp
from _devices import requires_cpp
from cases import FLOAT32_TILE_MIN_COLUMNS, awkward_blocks, random_J

pytestmark = requires_cpp

aggregate_module = importlib.import_module("mtlkernels.aggregate")  # the package attribute is the function

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(params=["avx2", "avx512", "avx512bf16", "baseline"])
def level(request):
    """Run the test body at one level (skipped where the CPU lacks it), then restore the level."""
    if request.param not in _extension.cpu_isa_levels():
        pytest.skip(f"this CPU or build does not run level {request.param}")
    before = mk.cpu_isa()
    _extension.set_cpu_isa(request.param)
    yield request.param
    _extension.set_cpu_isa(before)


#: unit roundoff of each output dtype (the combination is rounded once to it)
ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_one_pass_gives_the_gram_pass_and_the_combination(level, dtype, out_dtype, accumulate):
    """Γ bit for bit as the Gram pass gives it; d within the combination's own bound of the float64
    reference (each column summed over k in float64, rounded once to the output dtype; which
    columns a panel ends on, so whether FMA contracts a product, differs from the combination
    pass). Awkward block list: strided views, an empty block, a block over several panels and chunks."""
    K = 5
    blocks = awkward_blocks(K, dtype, long_columns=40_000)
    blocks = [b.reshape(K, -1) for b in blocks]
    blocks = [b if b.shape[1] <= 1 or b.stride(1) == 1 else b.contiguous() for b in blocks]
    w = torch.randn(K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    starts = [torch.randn(b.shape[1], generator=torch.Generator().manual_seed(i)).to(out_dtype) for i, b in enumerate(blocks)]
    outs = [s.clone() for s in starts]
    gram = gram_and_combine_cpp(w, blocks, outs, accumulate)
    assert torch.equal(gram, _gram_cpp(blocks))
    for out, start, block in zip(outs, starts, blocks):
        base = start.double() if accumulate else torch.zeros_like(start, dtype=torch.float64)
        d = base + w @ block.double()
        scale = base.abs() + w.abs() @ block.double().abs()
        bound = ROUNDOFF[out_dtype] * d.abs() + (K + 1) * 2.0**-53 * scale
        bound += torch.finfo(out_dtype).smallest_normal * torch.finfo(out_dtype).eps
        if out_dtype in (torch.float16, torch.bfloat16):  # rounded through float32 first
            bound += 2.0**-24 * d.abs()
        assert ((out.double() - d).abs() <= bound).all()


def test_rows_redone_in_float64_are_combined_once(level):
    """A float32 row at 2^70 (its squares overflow float32) redoes the Gram pass in float64
    (float32-tile levels); the direction, written by the first pass, is not added twice."""
    J = random_J(4, FLOAT32_TILE_MIN_COLUMNS + 1, seed=2, dtype=torch.float32)  # on the float32 tiles at avx2
    J[1] *= 2.0**70
    w = torch.tensor([0.25, 0.5, -1.0, 2.0], dtype=torch.float64)
    out = torch.ones(J.shape[1], dtype=torch.float64)
    gram = gram_and_combine_cpp(w, [J], [out], True)
    torch.testing.assert_close(out, 1.0 + w @ J.double(), rtol=1e-12, atol=0.0)
    J64 = J.double()
    ref = J64 @ J64.T
    norms = ref.diagonal().sqrt()
    assert ((gram - ref).abs() <= 1e-12 * norms[:, None] * norms[None, :]).all()  # the float64 pass


def count_one_pass_calls(monkeypatch) -> list[int]:
    """Count the calls of the one-pass kernel made by Aggregator."""
    calls = [0]
    original = aggregate_module.gram_and_combine_cpp

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(aggregate_module, "gram_and_combine_cpp", counted)
    return calls


def test_mean_takes_one_pass_and_matches_the_reference(monkeypatch):
    calls = count_one_pass_calls(monkeypatch)
    J = random_J(6, 10_007, seed=3, dtype=torch.float32)
    result = mk.aggregate(J, "mean")
    assert calls[0] == 1
    J64 = J.double()
    torch.testing.assert_close(result.direction.double(), J64.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(result.gram, J64 @ J64.T, rtol=1e-5, atol=0)
    out = torch.zeros(J.shape[1])
    mk.aggregate(J, "mean", out=[out], check_finite=False)
    assert calls[0] == 2 and torch.equal(out, result.direction)


def test_other_methods_and_other_backends_take_two_passes(monkeypatch):
    calls = count_one_pass_calls(monkeypatch)
    J = random_J(4, 1000, seed=4, dtype=torch.float32)
    mk.aggregate(J, "pcgrad")
    mk.aggregate(J, "mean", backend="torch")
    assert calls[0] == 0


def test_out_with_the_finite_check_takes_two_passes_and_a_bad_J_leaves_out_as_it_was(monkeypatch):
    """The one pass writes the direction before Γ's diagonal is known: with ``out=`` and the check
    on (the CPU default), a NaN in J raises and ``out`` keeps its values."""
    calls = count_one_pass_calls(monkeypatch)
    J = random_J(4, 3000, seed=5, dtype=torch.float32)
    J[2, 1234] = float("nan")
    out = torch.arange(3000, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\[2\].*non-finite"):
        mk.aggregate(J, "mean", out=[out])
    assert calls[0] == 0
    assert torch.equal(out, torch.arange(3000, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"\[2\].*non-finite"):
        mk.aggregate(J, "mean")  # a fresh output: one pass, then the check
    assert calls[0] == 1
