"""The Triton combination kernel against float64 torch: d = wᵀJ into poisoned outputs, over
block lists, output dtypes, accumulate mode; end to end through mk.Aggregator; on CUDA also
CUDA-graph capture and replay of gram + combine.
"""
from dataclasses import replace

import pytest
import torch
from _hypothesis import given, settings, st

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels.combine import combine_config, triton_combine  # noqa: E402
from mtlkernels.kernels.gram import triton_gram  # noqa: E402
from cases import adversarial_cases, awkward_blocks, block_lists, random_J  # noqa: E402

pytestmark = requires_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
#: unit roundoff of each output dtype, and of the accumulation (float32; float64 for float64 J);
#: bfloat16 gets one ulp: the interpreter truncates float32 → bfloat16 (the GPU rounds to nearest)
ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}


def nan_like(n: int | tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(n if isinstance(n, tuple) else (n,), float("nan"), dtype=dtype, device=DEVICE)


def assert_combination(out: torch.Tensor, w: torch.Tensor, J: torch.Tensor, base: torch.Tensor | None = None) -> None:
    """out = (base +) wᵀJ, rounded once: |out − d| ≤ u_out·|d| + (K+1)·u_acc·(|w|ᵀ|J| + |base|),
    with d computed in float64 from the weights as the kernel sees them (cast to its accumulation
    dtype) and J's values."""
    acc = torch.float64 if J.dtype == torch.float64 else torch.float32
    w64, J64 = w.to(acc).double().cpu(), J.double().cpu()
    d = w64 @ J64
    scale = w64.abs() @ J64.abs()
    if base is not None:
        d, scale = d + base.double().cpu(), scale + base.double().cpu().abs()
    bound = ROUNDOFF[out.dtype] * d.abs() + (J.shape[0] + 1) * ROUNDOFF[acc] * scale
    error = (out.double().cpu().reshape(-1) - d).abs()
    assert not out.isnan().any(), "an output element was not written"
    assert (error <= bound + 1e-300).all(), f"max error / bound = {(error / (bound + 1e-300)).max():.3g}"


def weights(K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, generator=g, dtype=torch.float64).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 1000])
@pytest.mark.parametrize("K", [1, 2, 3, 17, 64])
def test_matches_float64(K, N, dtype):
    J = random_J(K, N, seed=K * 1000 + N, dtype=dtype).to(DEVICE)
    w = weights(K, seed=N)
    out = nan_like(N, dtype)
    triton_combine(w, [J], [out])
    assert_combination(out, w, J)


def test_long_rows():
    J = random_J(5, 100003, seed=3, dtype=torch.bfloat16).to(DEVICE)
    w = weights(5)
    out = nan_like(100003, torch.bfloat16)
    triton_combine(w, [J], [out])
    assert_combination(out, w, J)


@pytest.mark.parametrize("K", [3, 100])
def test_adversarial(K):
    for _, J in adversarial_cases(K, 300, seed=K):
        Jf = J.float().to(DEVICE)
        w = weights(K, seed=1)
        out = nan_like(300, torch.float32)
        triton_combine(w, [Jf], [out])
        assert_combination(out, w, Jf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 3, 17])
def test_block_list_into_parameter_shaped_outputs(K, dtype):
    blocks = awkward_blocks(K, dtype, device=DEVICE, seed=21)
    outs = [nan_like(tuple(b.shape[1:]), dtype) for b in blocks]
    w = weights(K, seed=K)
    result = mk.combine(w, blocks, out=outs, backend="triton")  # through the dispatcher
    assert all(r is o for r, o in zip(result, outs))
    J = torch.cat([b.reshape(K, -1) for b in blocks], dim=1)
    assert_combination(torch.cat([o.reshape(-1) for o in outs]), w, J)


@pytest.mark.parametrize("K", [2, 40])
def test_accumulate(K):
    blocks = [b.reshape(K, -1) for b in awkward_blocks(K, torch.float32, device=DEVICE, seed=21)]
    base = [random_J(1, b.shape[1], seed=i, dtype=torch.float32).to(DEVICE)[0] for i, b in enumerate(blocks)]
    outs = [b.clone() for b in base]
    w = weights(K, seed=7)
    triton_combine(w, blocks, outs, accumulate=True)
    assert_combination(torch.cat(outs), w, torch.cat(blocks, dim=1), base=torch.cat(base))


def test_mixed_output_dtypes():
    """Outputs of several dtypes in one call (e.g. fp32 master grads beside bf16 ones)."""
    K = 4
    blocks = [random_J(K, n, seed=n, dtype=torch.float32).to(DEVICE) for n in (100, 37, 513)]
    out_dtypes = [torch.bfloat16, torch.float32, torch.float16]
    outs = [nan_like(b.shape[1], dt) for b, dt in zip(blocks, out_dtypes)]
    w = weights(K, seed=3)
    triton_combine(w, blocks, outs)
    for b, o in zip(blocks, outs):
        assert o.dtype in out_dtypes
        assert_combination(o, w, b)


def test_one_J_split_over_outputs():
    K, sizes = 3, (20, 1, 500, 7)
    J = random_J(K, sum(sizes), seed=9, dtype=torch.float16).to(DEVICE)
    outs = [nan_like(n, torch.float16) for n in sizes]
    w = weights(K, seed=9)
    mk.combine(w, J, out=outs, backend="triton")
    assert_combination(torch.cat(outs), w, J)
    single = mk.combine(w, J, backend="triton")
    assert single.shape == (sum(sizes),) and single.dtype == torch.float16
    assert torch.equal(single, torch.cat(outs))


def test_chunks_split_across_programs_and_blocks():
    K = 6
    blocks = [b.reshape(K, -1) for b in awkward_blocks(K, torch.float32, device=DEVICE, seed=21)]
    outs = [nan_like(b.shape[1], torch.float32) for b in blocks]
    config = replace(combine_config(K, torch.float32, torch.device(DEVICE)), block_n=16, block_k=4, programs=3)
    w = weights(K, seed=5)
    triton_combine(w, blocks, outs, config=config)
    assert_combination(torch.cat(outs), w, torch.cat(blocks, dim=1))


def test_deterministic():
    K = 9
    blocks = [b.reshape(K, -1) for b in awkward_blocks(K, torch.bfloat16, device=DEVICE, seed=21)]
    w = weights(K, seed=2)
    first = mk.combine(w, blocks, backend="triton")
    again = mk.combine(w, blocks, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@settings(max_examples=15, deadline=None)
@given(case=block_lists(DTYPES, DEVICE), seed=st.integers(0, 2**16))
def test_random_block_lists(case, seed):
    J, sizes = case
    outs = [nan_like(n, J.dtype) for n in sizes]
    w = weights(J.shape[0], seed=seed)
    triton_combine(w, list(torch.split(J, sizes, dim=1)), outs)
    assert_combination(torch.cat(outs), w, J)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregate_end_to_end(dtype):
    """Γ, weights and d of the mean through mk.Aggregator with the Triton passes (the mean's
    weights come from its own solver)."""
    K = 5
    J = random_J(K, 2001, seed=1, dtype=dtype).to(DEVICE)
    res = mk.Aggregator(mk.methods.Mean(), backend="triton")(J)
    ref = mk.reference.mean(J.double().cpu())
    torch.testing.assert_close(res.weights.double().cpu(), ref.weights)
    assert res.direction.dtype == dtype
    assert_combination(res.direction, res.weights, J)
    J64 = J.double().cpu()
    torch.testing.assert_close(res.gram.double().cpu(), J64 @ J64.T, rtol=1e-5, atol=1e-5 * J64.norm() ** 2 / K)


# -- GPU only ------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_capture_and_replay(dtype):
    """Gram + combine captured once (after a warm-up call compiles the kernels and caches the
    address tables) replay on new values written into the same buffers."""
    K, sizes = 4, (1000, 3, 4097)
    J = random_J(K, sum(sizes), seed=0, dtype=dtype).to(DEVICE)
    blocks = list(torch.split(J, sizes, dim=1))
    outs = [torch.empty(n, dtype=dtype, device=DEVICE) for n in sizes]
    w = torch.full((K,), 1.0 / K, device=DEVICE)

    def step() -> torch.Tensor:
        gram = triton_gram(blocks)
        triton_combine(w, blocks, outs)
        return gram

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gram = step()
    for seed in (1, 2):
        J.copy_(random_J(K, sum(sizes), seed=seed, dtype=dtype).to(DEVICE))
        w.copy_(weights(K, seed=seed).float())
        graph.replay()
        torch.cuda.synchronize()
        J64 = J.double().cpu()
        ref = J64 @ J64.T
        norms = ref.diagonal().sqrt()
        assert ((gram.double().cpu() - ref).abs() <= 2e-6 * norms[:, None] * norms[None, :]).all()
        assert_combination(torch.cat(outs), w, J)
