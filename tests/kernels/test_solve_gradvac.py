"""The on-device GradVac solve (one Triton program) against the C++ solve over several steps (the
EMA targets carried on the device), under TRITON_INTERPRET=1 on the CPU; the same checks plus
no-sync and CUDA-graph capture on a GPU."""
import pytest
import torch

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_gradvac  # noqa: E402
from mtlkernels.methods import GradVacWeighting  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]


def _orders(K: int, seed: int, steps: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.stack([torch.randperm(K, generator=generator) for _ in range(K)]) for _ in range(steps)]


@pytest.mark.parametrize("options", [{}, {"beta": 0.1, "eps": 1e-8}, {"target_update": "corrected"}])
@pytest.mark.parametrize("K, N", [(1, 3), (2, 5), (3, 4), (5, 3), (7, 30)])
def test_steps_match_cpp_solve(K, N, options):
    """Three steps: weights, corrections and targets as the C++ solve's on the same Γ and orders."""
    on_device = GradVacWeighting(backend="triton", **options)
    on_cpu = GradVacWeighting(backend="cpp", **options)
    for step, order in enumerate(_orders(K, K)):
        J = conflicting_J(K, N, seed=K + step) if step % 2 else random_J(K, N, seed=K + step)
        gram = J @ J.T
        on_device.order = on_cpu.order = order
        on_device._order_on_device = None
        got, expected = on_device(gram.to(DEVICE)), on_cpu(gram)
        scale = float(expected.weights.abs() @ J.norm(dim=1))
        assert float(((got.weights.cpu() - expected.weights).abs() * J.norm(dim=1)).max()) <= 1e-12 * scale
        torch.testing.assert_close(on_device.state_dict()["targets"].cpu(), on_cpu.state_dict()["targets"], rtol=0, atol=1e-13)
        assert mk.diagnostics_to_python(got.diagnostics)["corrections"] == expected.diagnostics["corrections"]
        if options.get("eps", 0.0) == 0.0:
            assert float(got.diagnostics["target_residual"]) <= 1e-13


@pytest.mark.parametrize("name, J", adversarial_cases(4, 30, seed=2), ids=[c[0] for c in adversarial_cases(4, 30, seed=2)])
def test_adversarial_matches_cpp_solve(name, J):
    order = _orders(4, 9, 1)[0]
    gram = J @ J.T
    got = GradVacWeighting(backend="triton", order=order)(gram.to(DEVICE))
    expected = GradVacWeighting(backend="cpp", order=order)(gram)
    scale = float(expected.weights.abs() @ J.norm(dim=1))
    assert float(((got.weights.cpu() - expected.weights) @ J).norm()) <= 1e-12 * scale, name


def test_every_output_written(monkeypatch):
    poison_empty(monkeypatch, solve_gradvac)
    K = 5
    J = conflicting_J(K, 20, seed=2)
    gram = (J @ J.T).to(DEVICE)
    targets = torch.zeros(K, K, dtype=torch.float64, device=DEVICE)
    weights, diagnostics = solve_gradvac.gradvac_solve(gram, _orders(K, 1, 1)[0].to(DEVICE), targets, 0.5, 0.0, True)
    assert torch.isfinite(weights).all() and int(diagnostics["corrections"]) >= 0
    assert float(diagnostics["target_residual"]) >= 0 and torch.isfinite(targets).all()


def test_drawn_orders_and_state_on_the_device():
    weighting = GradVacWeighting(generator=torch.Generator().manual_seed(0), backend="triton")
    J = conflicting_J(4, 10, seed=1).to(DEVICE)
    result = mk.aggregate(J, weighting)
    order = result.diagnostics["order"].cpu()
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(4, 4))
    assert weighting.state_dict()["targets"].device.type == J.device.type
    restored = GradVacWeighting(backend="cpp", order=order)
    restored.load_state_dict({"targets": torch.zeros(4, 4)})
    torch.testing.assert_close(restored(J.cpu() @ J.cpu().T).weights, result.weights.cpu(), rtol=1e-12, atol=1e-12)


@requires_cuda
def test_no_host_sync_and_cuda_graph_replay():
    K = 8
    J = conflicting_J(K, 4096, seed=1).float().cuda()
    agg = mk.Aggregator("gradvac", order=_orders(K, 1, 1)[0], backend="triton")
    agg(J)  # compile, copy the fixed order to the device
    with no_host_sync():
        agg(J)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = agg(J)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(captured.weights).all()
