"""The on-device PCGrad solve (one Triton program) against the C++/torch solves and the float64
reference, under TRITON_INTERPRET=1 on the CPU; the same checks plus no-sync and CUDA-graph
capture on a GPU."""
import pytest
import torch

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels.solve_pcgrad import _pcgrad_solve_kernel, pcgrad_solve  # noqa: E402
from mtlkernels.methods import PCGradWeighting  # noqa: E402

pytestmark = requires_triton

CASES = [(f"random-K{K}", random_J(K, 30, seed=K)) for K in (1, 2, 3, 17, 64)]
CASES += [(f"conflicting-K{K}", conflicting_J(K, 30, seed=K)) for K in (3, 17)]
CASES += [(f"{name}-K5", J) for name, J in adversarial_cases(5, 30, seed=1)]


def random_orders(K: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(K, generator=g) for _ in range(K)])  # i anywhere in row i


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("gram_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name, J", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_solve(name, J, gram_dtype, reduction):
    K = J.shape[0]
    order = random_orders(K, seed=K)
    gram = (J @ J.T).to(gram_dtype)
    if not torch.isfinite(gram).all():
        pytest.skip("Γ of gradients scaled 1e±20 overflows float32: a float64 Γ is the input there")
    expected = PCGradWeighting(order=order, reduction=reduction, backend="torch")(gram)
    weights, diagnostics = pcgrad_solve(gram.to(DEVICE), order.to(DEVICE), reduction == "mean")
    torch.testing.assert_close(weights.cpu(), expected.weights, rtol=1e-9, atol=1e-12 * float(expected.weights.abs().max()))
    assert int(diagnostics["projections"]) == expected.diagnostics["projections"]
    assert float(diagnostics["orthogonality_residual"]) <= 1e-12


def test_every_weight_written():
    K, block = 5, 16
    J = conflicting_J(K, 20, seed=2)
    gram = (J @ J.T).to(DEVICE)
    order = random_orders(K, 3).to(DEVICE)
    weights = torch.full((K,), float("nan"), dtype=torch.float64, device=DEVICE)
    projections = torch.full((), -1, dtype=torch.int32, device=DEVICE)
    residual = torch.full((), float("nan"), dtype=torch.float64, device=DEVICE)
    _pcgrad_solve_kernel[(1,)](gram, order, weights, projections, residual, K, MEAN=False, BLOCK_K=block)
    assert torch.isfinite(weights).all() and int(projections) >= 0 and float(residual) >= 0


@pytest.mark.parametrize("K", [2, 3, 17])
def test_aggregate_end_to_end_matches_reference(K):
    J = conflicting_J(K, 1000, seed=K).to(DEVICE)
    order = random_orders(K, seed=7)
    res = mk.aggregate(J, "pcgrad", order=order, backend="triton")
    ref = mk.reference.pcgrad(J.cpu(), order=order)
    scale = float(J.double().norm(dim=1).sum())
    assert float((res.direction.double().cpu() - ref.direction).norm()) <= 1e-9 * scale


def test_drawn_orders_are_permutations_with_self_first():
    weighting = PCGradWeighting(generator=torch.Generator().manual_seed(0), backend="triton")
    order = weighting.visiting_orders(6, torch.device(DEVICE)).cpu()
    assert torch.equal(order[:, 0], torch.arange(6))
    assert torch.equal(order.sort(dim=1).values, torch.arange(6).expand(6, 6))


@requires_cuda
def test_no_host_sync_and_cuda_graph_replay():
    K = 8
    J = conflicting_J(K, 4096, seed=1).float().cuda()
    agg = mk.Aggregator("pcgrad", order=random_orders(K, 1), backend="triton")
    agg(J)  # compile, copy the fixed order to the device
    with no_host_sync():
        first = agg(J)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = agg(J)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured.weights, first.weights)
    torch.testing.assert_close(captured.direction, first.direction)
