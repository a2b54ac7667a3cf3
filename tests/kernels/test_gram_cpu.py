"""The C++ CPU Gram kernel (csrc/kernels/gram_cpu.cpp) against float64 torch: sizes, dtypes,
block lists with awkward strides, extreme scales, NaN/Inf rows, determinism, the torch backend,
errors, and the missing-extension fallback."""
from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.combine import _combine_cpp
from mtlkernels.gram import _gram_cpp
from _devices import requires_cpp
from cases import FLOAT32_TILE_LEVELS, FLOAT32_TILE_MIN_COLUMNS, adversarial_cases, awkward_blocks, block_shapes, cpu_gram_tolerance, random_J

pytestmark = requires_cpp

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def tol(dtype: torch.dtype, N: int) -> float:
    """|Γ̂ᵢⱼ − Γᵢⱼ| ≤ tol·‖gᵢ‖‖gⱼ‖ for J [K, N] at the active CPU ISA level (cases.cpu_gram_tolerance)."""
    return cpu_gram_tolerance(dtype, mk.cpu_isa(), N)


def assert_gram_close(G: torch.Tensor, J64: torch.Tensor, tol: float) -> None:
    """Γ̂ is float64, exactly symmetric, finite, and within tol·‖gᵢ‖‖gⱼ‖ of J64·J64ᵀ entrywise."""
    ref = J64 @ J64.T
    norms = ref.diagonal().sqrt()
    assert G.dtype == torch.float64 and G.shape == ref.shape
    assert torch.isfinite(G).all(), "Γ has a NaN/Inf entry"
    assert torch.equal(G, G.T), "Γ is not exactly symmetric"
    error, bound = (G - ref).abs(), tol * norms[:, None] * norms[None, :]
    assert (error <= bound).all(), f"max error / bound = {(error / bound.clamp_min(1e-300)).max():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 1000, 100003])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 17, 64])
def test_matches_float64(K, N, dtype):
    J = random_J(K, N, seed=K * 7 + N, dtype=dtype)
    assert_gram_close(_gram_cpp([J]), J.double(), tol(dtype, J.shape[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 5, 17])
def test_block_list(K, dtype):
    blocks = awkward_blocks(K, dtype, long_columns=4000)  # longer than a panel
    J64 = torch.cat([b.reshape(K, -1).double() for b in blocks], dim=1)
    assert_gram_close(mk.gram(blocks, backend="cpp", dtype=torch.float64), J64, tol(dtype, J64.shape[1]))


def test_row_stride_zero():
    """An expanded row (stride 0) is read, not copied: K identical rows."""
    g = random_J(1, 3000, seed=3, dtype=torch.float32)
    J = g.expand(4, 3000)
    assert J.stride(0) == 0
    assert_gram_close(_gram_cpp([J]), J.double(), tol(torch.float32, J.shape[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("K", [1, 3, 8])
def test_adversarial(K, dtype):
    """Near-collinear, zero, duplicate, opposite, conflicting rows, and rows scaled 1e-20..1e20
    (float32 products of those overflow/underflow float32; bfloat16 rows outside [2^-40, 2^40]
    take the float64 pass)."""
    for name, J in adversarial_cases(K, 3001, seed=K):
        Jd = J.to(dtype)
        assert_gram_close(_gram_cpp([Jd]), Jd.double(), tol(dtype, Jd.shape[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exponent", [-20, -12, 0, 12, 20])
def test_every_row_at_one_scale(exponent, dtype):
    """All rows at 10^exponent: Γ spans 1e-40..1e40, out of float32's range at both ends."""
    J = (random_J(6, 2001, seed=exponent + 40) * 10.0**exponent).to(dtype)
    assert_gram_close(_gram_cpp([J]), J.double(), tol(dtype, J.shape[1]))


def test_one_tiny_element_in_a_bfloat16_row():
    """A bfloat16 row whose largest |x| is below 2^-40 forces the float64 pass; a row with values
    that small beside normal ones does not need it."""
    J = random_J(3, 500, seed=9, dtype=torch.bfloat16)
    J[1] = 1e-30
    J[2, 7] = 1e-35
    assert_gram_close(_gram_cpp([J]), J.double(), tol(torch.bfloat16, J.shape[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_row_gives_non_finite_diagonal(bad, dtype):
    """A NaN/Inf anywhere in row k (first column, a vector tail, a later block) makes Γₖₖ
    non-finite and leaves the other rows' diagonals finite: aggregate() reads it off Γ."""
    for column in (0, 1000, 1003):
        blocks = [random_J(5, 1000, seed=1, dtype=dtype), random_J(5, 4, seed=2, dtype=dtype)]
        block, at = (blocks[0], column) if column < 1000 else (blocks[1], column - 1000)
        block[3, at] = bad
        diagonal = _gram_cpp(blocks).diagonal()
        assert not torch.isfinite(diagonal[3]), column
        assert torch.isfinite(diagonal[[0, 1, 2, 4]]).all(), column
    with pytest.raises(ValueError, match=r"\[3\].*non-finite"):
        mk.aggregate(blocks, backend="cpp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_across_calls_and_thread_counts(dtype):
    """Fixed panel → slot assignment and slot order: bit-identical on every call and thread count."""
    J = random_J(9, 300_001, seed=4, dtype=dtype)
    first = _gram_cpp([J])
    assert torch.equal(first, _gram_cpp([J]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(first, _gram_cpp([J]))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def float32_tile_level():
    """Run the test body at a level with float32 tiles (skipped where this CPU or build has none),
    then restore the level."""
    levels = [level for level in _extension.cpu_isa_levels() if level in FLOAT32_TILE_LEVELS]
    if not levels:
        pytest.skip(f"this CPU or build runs none of the float32-tile levels {sorted(FLOAT32_TILE_LEVELS)}")
    before = mk.cpu_isa()
    _extension.set_cpu_isa(levels[0])
    yield levels[0]
    _extension.set_cpu_isa(before)


def max_scaled_error(G: torch.Tensor, J: torch.Tensor) -> float:
    """max |Γ̂ᵢⱼ − Γᵢⱼ| / (‖gᵢ‖‖gⱼ‖) (an entry of a zero row counts as its bare error), Γ = J·Jᵀ in
    float64 (plain torch, 2^20 columns at a time)."""
    ref = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64)
    for start in range(0, J.shape[1], 1 << 20):
        chunk = J[:, start : start + (1 << 20)].double()
        ref += chunk @ chunk.T
    norms = ref.diagonal().sqrt()
    return ((G - ref).abs() / (norms[:, None] * norms[None, :]).clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_float32_tiles_within_1e_9_at_ten_million_columns(float32_tile_level, distribution):
    """Random float32 J, K = 3, N = 1e7: 312 500 float32 runs per lane, each added into float64.
    The worst-case bound is 33·2⁻²⁴ ≈ 2e-6; the run errors are random in sign and average down to
    ~32·2⁻²⁴/√(3N) ≈ 3e-10 (uniform [0, 1) J: every product positive, the hardest case for the
    diagonal and the off-diagonal alike)."""
    generator = torch.Generator().manual_seed(7)
    shape = (3, 10_000_000)
    J = torch.randn(shape, generator=generator) if distribution == "normal" else torch.rand(shape, generator=generator)
    assert max_scaled_error(_gram_cpp([J]), J) <= 1e-9


def test_float32_tiles_from_2_18_columns_on(float32_tile_level):
    """K = 8 (diagonal and split off-diagonal tiles). N = 2^18, the fewest columns that take the
    float32 tiles: the random run errors give ~32·2⁻²⁴/√(3N) ≈ 2e-9, within 1e-9·√(1e7/N) ≈ 6e-9
    (and above float64's 1e-12: the tiles ran). One column fewer: the float64 pass, within 1e-12."""
    J = random_J(8, FLOAT32_TILE_MIN_COLUMNS, seed=1, dtype=torch.float32)
    error = max_scaled_error(_gram_cpp([J]), J)
    assert 1e-12 < error <= 1e-9 * (1e7 / J.shape[1]) ** 0.5
    shorter = J[:, 1:]
    assert max_scaled_error(_gram_cpp([shorter]), shorter) <= 1e-12


@pytest.mark.parametrize("case", ["overflow", "underflow", "nan", "inf"])
def test_float32_tiles_redo_the_pass_in_float64_when_gamma_says_so(float32_tile_level, case):
    """A row whose float32 squares overflow (2^70) or all underflow to 0 (2^-80), or a NaN/Inf,
    sends the whole pass to float64: Γ within 1e-12 (the other rows too, which float32 tiles do
    not reach), or the non-finite diagonal the finite check reads."""
    J = random_J(5, FLOAT32_TILE_MIN_COLUMNS + 3, seed=5, dtype=torch.float32)
    if case == "overflow":
        J[2] *= 2.0**70
    elif case == "underflow":
        J[2] *= 2.0**-80
    else:
        J[2, 1234] = float(case)
    G = _gram_cpp([J])
    if case in ("nan", "inf"):
        assert not torch.isfinite(G[2, 2]) and torch.isfinite(G.diagonal()[[0, 1, 3, 4]]).all()
    else:
        assert max_scaled_error(G, J) <= 1e-12


def test_float32_tiles_take_zero_rows_and_wide_scales(float32_tile_level):
    """A zero row (exact zeros in Γ), and rows at 2^±40 (their products and run sums within
    float32's range, Γᵢᵢ far above N·2^-90), stay on the float32 tiles, within their bound."""
    J = random_J(5, FLOAT32_TILE_MIN_COLUMNS + 3, seed=6, dtype=torch.float32)
    J[1] = 0.0
    J[2] *= 2.0**-40
    J[3] *= 2.0**40
    G = _gram_cpp([J])
    assert max_scaled_error(G, J) <= tol(torch.float32, J.shape[1])
    assert max_scaled_error(G, J) > 1e-12  # float32 tiles, not a float64 redo
    assert (G[1] == 0).all() and (G[:, 1] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_torch_backend(dtype):
    J = random_J(6, 20_000, seed=8, dtype=dtype)
    torch.testing.assert_close(mk.gram(J, backend="cpp"), mk.gram(J, backend="torch"), rtol=1e-5, atol=1e-3)
    assert mk.gram(J, backend="cpp").dtype == mk.gram(J, backend="torch").dtype


@pytest.mark.parametrize("op, implementation", [("gram", _gram_cpp), ("combine", _combine_cpp)])
def test_auto_uses_cpp_on_cpu(op, implementation):
    """backend="auto" on CPU tensors runs the C++ Gram and the C++ combination."""
    module = importlib.import_module(f"mtlkernels.{op}")  # the package attribute is the function
    assert mk.backend.select(op, module._IMPLS, "auto", torch.device("cpu")) is implementation


@settings(max_examples=25, deadline=None)
@given(
    shape=block_shapes(min_width=0, max_width=3000, max_blocks=4),
    dtype=st.sampled_from(DTYPES),
    exponent=st.integers(-20, 20),
    seed=st.integers(0, 2**16),
)
def test_random_block_lists(shape, dtype, exponent, seed):
    K, sizes = shape
    scale = 10.0**exponent if dtype != torch.float16 else 1.0  # float16 holds 6e-8..65504 only
    blocks = [(random_J(K, n, seed=seed + i) * scale).to(dtype) for i, n in enumerate(sizes)]
    J64 = torch.cat([b.double() for b in blocks], dim=1)
    assert_gram_close(_gram_cpp(blocks), J64, tol(dtype, J64.shape[1]))


def test_launcher_errors():
    with pytest.raises(ValueError, match="CPU tensors.*meta"):
        _gram_cpp([torch.empty(3, 4, device="meta")])
    with pytest.raises(TypeError, match="int32"):
        _gram_cpp([torch.zeros(3, 4, dtype=torch.int32)])
    with pytest.raises(RuntimeError, match="backend='cpp' runs on CPU tensors only"):
        mk.gram(torch.empty(3, 4, device="meta"), backend="cpp")


def test_extension_argument_errors():
    """The binding checks what it is given (the launcher never passes these, other callers might)."""
    ext = _extension.extension()
    out = torch.empty(2, 2, dtype=torch.float64)
    J = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one length"):
        ext.gram_cpu([J.data_ptr()], [3, 3], [3], 2, "float32", out.data_ptr())
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        ext.gram_cpu([J.data_ptr()], [3], [3], 2, "int8", out.data_ptr())
    with pytest.raises(ValueError, match="K = 0"):
        ext.gram_cpu([J.data_ptr()], [3], [3], 0, "float32", out.data_ptr())
    with pytest.raises(ValueError, match="null data pointer"):
        ext.gram_cpu([0], [3], [3], 2, "float32", out.data_ptr())
    with pytest.raises(ValueError, match="negative"):
        ext.gram_cpu([J.data_ptr()], [-1], [3], 2, "float32", out.data_ptr())


def test_missing_extension(monkeypatch):
    """Without the extension: backend='cpp' raises with the rebuild hint; 'auto' falls back to torch."""
    monkeypatch.setattr(_extension, "available", False)
    monkeypatch.setattr(_extension, "_module", None)
    J = random_J(3, 100)
    with pytest.raises(RuntimeError, match="C\\+\\+ extension.*Rebuild"):
        mk.gram(J, backend="cpp")
    torch.testing.assert_close(mk.gram(J), J @ J.T)
