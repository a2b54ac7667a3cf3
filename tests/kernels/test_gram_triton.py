"""The Triton Gram kernels against float64 torch: sizes, dtypes, block lists, tiles, determinism.

On the CPU they run under TRITON_INTERPRET=1 (tests/conftest.py); on a CUDA machine the same
tests run on the device, plus the GPU-only checks at the end (no host sync, 2³¹+ columns).
"""
from dataclasses import replace

import pytest
import torch
from _hypothesis import given, settings

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels.gram import gram_config, triton_gram  # noqa: E402
from cases import adversarial_cases, awkward_blocks, block_lists, random_J  # noqa: E402

pytestmark = requires_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
#: entrywise error of Γ relative to √(Γᵢᵢ·Γⱼⱼ): float32 accumulation (3×tf32 on tensor cores
#: for float32 J on the GPU), float64 accumulation for float64 J
TOL = {torch.float64: 1e-12}
TOL_FP32_ACC = 2e-6


def reference_gram(J64: torch.Tensor) -> torch.Tensor:
    return J64 @ J64.T


def assert_gram_close(G: torch.Tensor, J64: torch.Tensor, tol: float) -> None:
    """|Γ̂ᵢⱼ − Γᵢⱼ| ≤ tol·‖gᵢ‖‖gⱼ‖ (the scale of float rounding in an inner product), Γ̂ symmetric."""
    ref = reference_gram(J64)
    norms = ref.diagonal().sqrt()
    error = (G.double().cpu() - ref).abs()
    bound = tol * norms[:, None] * norms[None, :]
    assert torch.isfinite(G).all(), "Γ has a NaN/Inf entry"
    assert (error <= bound).all(), f"max error / bound = {(error / bound.clamp_min(1e-300)).max():.3g}"
    assert torch.equal(G, G.T), "Γ is not exactly symmetric"


def on_device(J: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """J cast to ``dtype`` on DEVICE, and the same (rounded) values in float64 on the CPU."""
    Jd = J.to(dtype).to(DEVICE)
    return Jd, Jd.double().cpu()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 1000])
@pytest.mark.parametrize("K", [1, 2, 3, 17, 64])
def test_matches_float64(K, N, dtype):
    Jd, J64 = on_device(random_J(K, N, seed=K * 1000 + N), dtype)
    G = triton_gram([Jd])
    assert G.shape == (K, K) and G.device == Jd.device
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_gram_close(G, J64, TOL.get(dtype, TOL_FP32_ACC))


@pytest.mark.parametrize("K, dtype", [(3, torch.float32), (17, torch.bfloat16)])
def test_long_rows(K, dtype):
    Jd, J64 = on_device(random_J(K, 100003, seed=5), dtype)
    assert_gram_close(triton_gram([Jd]), J64, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [65, 100, 256])
def test_tiled_large_K(K, dtype):
    """K > 64: upper-triangle pairs of 64-row tiles, each pair its own program."""
    config = gram_config(K, dtype, torch.device(DEVICE))
    assert config.tiles == -(-K // 64)
    Jd, J64 = on_device(random_J(K, 300, seed=K), dtype)
    assert_gram_close(triton_gram([Jd]), J64, TOL.get(dtype, TOL_FP32_ACC))


def blocks_and_reference(K: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`cases.awkward_blocks` on the Triton device (with a 128-column block) and their
    concatenation in float64 as the reference."""
    blocks = awkward_blocks(K, dtype, long_columns=128, device=DEVICE)
    return blocks, torch.cat([b.reshape(K, -1).double().cpu() for b in blocks], dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 3, 17])
def test_block_list(K, dtype):
    blocks, J64 = blocks_and_reference(K, dtype)
    G = mk.gram(blocks, backend="triton")  # through the dispatcher (and its input checks)
    assert_gram_close(G, J64, TOL.get(dtype, TOL_FP32_ACC))


@pytest.mark.parametrize("K", [2, 5, 70])
def test_chunks_split_across_programs_and_blocks(K):
    """Tiny chunks and 3 programs: program ranges start and end inside blocks."""
    blocks, J64 = blocks_and_reference(K, torch.float32)
    blocks = [b.reshape(K, -1) for b in blocks]
    config = replace(gram_config(K, torch.float32, torch.device(DEVICE)), segment=16, programs=3)
    assert_gram_close(triton_gram(blocks, config=config), J64, TOL_FP32_ACC)


@pytest.mark.parametrize("K", [1, 4, 6])
def test_adversarial(K):
    for name, J in adversarial_cases(K, 500, seed=K):
        if name.startswith("scales"):  # Γ spans 1e-40..1e40: only float64 holds it (next test)
            continue
        Jd, J64 = on_device(J, torch.float32)
        assert_gram_close(triton_gram([Jd]), J64, TOL_FP32_ACC)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's float32 matmul
def test_float64_accumulation_for_extreme_scales():
    """Rows scaled 1e-20..1e20: float32 Γ overflows visibly (+Inf on the diagonal, which
    mk.aggregate reports); accumulate_dtype=float64 gives the right Γ from the same float32 J."""
    (name, J), = [c for c in adversarial_cases(5, 400, seed=3) if c[0].startswith("scales")]
    Jd, J64 = on_device(J, torch.float32)
    G32 = triton_gram([Jd])
    assert G32[-1, -1] == float("inf")
    G64 = triton_gram([Jd], accumulate_dtype=torch.float64)
    assert G64.dtype == torch.float64
    assert_gram_close(G64, J64, 1e-12)


def test_float64_result_option():
    Jd, J64 = on_device(random_J(6, 1000, seed=2), torch.bfloat16)
    G = triton_gram([Jd], out_dtype=torch.float64)
    assert G.dtype == torch.float64
    assert_gram_close(G, J64, TOL_FP32_ACC)


def test_every_element_written(monkeypatch):
    """Every buffer the launcher allocates (partials, Γ) starts as NaN: none may survive."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    Jd, J64 = on_device(random_J(100, 200, seed=4), torch.float32)  # tiled: lower tiles unwritten
    small, small64 = on_device(random_J(3, 50, seed=5), torch.float32)  # more programs than chunks
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    G, G_small = triton_gram([Jd]), triton_gram([small])
    monkeypatch.undo()
    assert_gram_close(G, J64, TOL_FP32_ACC)
    assert_gram_close(G_small, small64, TOL_FP32_ACC)


def test_deterministic():
    blocks, _ = blocks_and_reference(9, torch.float32)
    first = triton_gram([b.reshape(9, -1) for b in blocks])
    for _ in range(2):
        assert torch.equal(triton_gram([b.reshape(9, -1) for b in blocks]), first)


@settings(max_examples=15, deadline=None)
@given(case=block_lists(DTYPES, DEVICE))
def test_random_block_lists(case):
    J, sizes = case
    blocks = list(torch.split(J, sizes, dim=1))
    assert_gram_close(triton_gram(blocks), J.double().cpu(), TOL.get(J.dtype, TOL_FP32_ACC))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accumulate_dtype": torch.float16}, "accumulate_dtype"),
        ({"precision": "fp8"}, "precision"),
        ({"out_dtype": torch.int32}, "out_dtype"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        triton_gram([random_J(2, 10, dtype=torch.float32).to(DEVICE)], **kwargs)


def test_float64_J_keeps_float64():
    with pytest.raises(ValueError, match="float64 J"):
        triton_gram([random_J(2, 10).to(DEVICE)], accumulate_dtype=torch.float32)


def test_no_columns():
    with pytest.raises(ValueError, match="N = 0"):
        triton_gram([torch.zeros(3, 0, device=DEVICE)])


# -- GPU only ------------------------------------------------------------------------------------


@requires_cuda
def test_no_host_sync():
    """Gram + combine issue no synchronising call, even when building a new address table."""
    K = 4
    J = random_J(K, 4097, dtype=torch.float32).to(DEVICE)
    w = torch.full((K,), 0.25, device=DEVICE)
    mk.combine(w, J, backend="triton"), triton_gram([J])  # compile outside the checked region
    fresh = [random_J(K, n, seed=n, dtype=torch.float32).to(DEVICE) for n in (5, 3000, 77)]
    outs = [torch.empty(b.shape[1], device=DEVICE) for b in fresh]
    with no_host_sync():
        G = triton_gram(fresh)
        mk.combine(w, fresh, out=outs, backend="triton")
    J64 = torch.cat([b.double().cpu() for b in fresh], dim=1)
    assert_gram_close(G, J64, TOL_FP32_ACC)
    torch.testing.assert_close(torch.cat(outs).double().cpu(), J64.mean(0), rtol=1e-5, atol=1e-6)


@requires_cuda
def test_more_than_2_31_columns():
    """int64 addressing, gram and combine: column and row offsets past 2³¹ elements
    (K = 2, N = 2³¹ + 33, bf16)."""
    N = 2**31 + 33
    J = torch.empty(2, N, dtype=torch.bfloat16, device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for start in range(0, N, 2**28):
        J[:, start : start + 2**28] = torch.randn(2, min(2**28, N - start), generator=g, device=DEVICE)
    ref = torch.zeros(2, 2, dtype=torch.float64, device=DEVICE)
    for start in range(0, N, 2**28):
        chunk = J[:, start : start + 2**28].double()
        ref += chunk @ chunk.T
    G = triton_gram([J])
    assert ((G.double() - ref).abs() <= 1e-5 * ref.diagonal().sqrt().outer(ref.diagonal().sqrt())).all()
    w = torch.tensor([0.75, -1.5], device=DEVICE)
    out = torch.full((N,), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    mk.combine(w, J, out=[out], backend="triton")
    for start in (0, 2**31 - 2**20, N - 2**20):  # the beginning, across 2³¹, the end
        part = slice(start, start + 2**20)
        exact = w.double() @ J[:, part].double()
        assert ((out[part].double() - exact).abs() <= 2**-8 * exact.abs() + 1e-6).all()
