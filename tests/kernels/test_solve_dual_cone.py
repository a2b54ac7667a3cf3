"""The on-device dual-cone solves (UPGrad, DualProj: one Triton program each) against the C++
solve of the same Γ and the float64 reference, under TRITON_INTERPRET=1 on the CPU; the same
checks plus no-sync and CUDA-graph capture on a GPU.

The kernel factorises in task-index order, the C++ solve in insertion order, so they agree to
rounding where the weights are unique (Γ nonsingular), and on d elsewhere."""
import pytest
import torch

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_dual_cone  # noqa: E402
from mtlkernels.methods import make_weighting  # noqa: E402
from mtlkernels.methods.dual_cone import CONSTANTS  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

CASES = [(f"random-K{K}-N{N}", random_J(K, N, seed=K)) for K, N in ((1, 5), (2, 5), (3, 2), (5, 30), (6, 4))]
CASES += [(f"conflicting-K{K}", conflicting_J(K, 30, seed=K)) for K in (3, 7)]
CASES += [(f"{name}-K4", J) for name, J in adversarial_cases(4, 30, seed=1)]


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.abs() @ J.norm(dim=1)), 1e-300)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("gram_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name, J", CASES, ids=[c[0] for c in CASES])
def test_matches_cpp_solve(name, J, gram_dtype, method):
    """d = wᵀJ agrees with the C++ solve's on the same Γ (the weights too where Γ is well
    conditioned), and the kernel's certificate is at rounding level."""
    gram = (J @ J.T).to(gram_dtype)
    if not torch.isfinite(gram).all():
        pytest.skip("Γ of gradients scaled 1e±20 overflows float32: a float64 Γ is the input there")
    expected = make_weighting(method, backend="cpp")(gram.double())
    got = make_weighting(method, backend="triton")(gram.to(DEVICE))
    weights = got.weights.cpu()
    rtol = 1e-12 if gram_dtype == torch.float64 else 1e-6  # float32 Γ is widened: the same values
    error = float((weights @ J - expected.weights @ J).norm())
    assert error <= rtol * 10 * _scale(expected.weights, J), f"direction off by {error / _scale(expected.weights, J):.3g}"
    if float(torch.linalg.eigvalsh(gram.double()).min()) > 1e-6 * float(gram.double().diagonal().max()):
        assert float(((weights - expected.weights).abs() * J.norm(dim=1)).max()) <= rtol * 10 * _scale(expected.weights, J)
    assert float(got.diagnostics["kkt_residual"]) <= 1e-13
    if method == "dualproj" and gram_dtype == torch.float64 and name.startswith(("random", "conflicting")):
        assert mk.diagnostics_to_python(got.diagnostics)["active_tasks"] == expected.diagnostics["active_tasks"]


@pytest.mark.parametrize("launcher", [solve_dual_cone.upgrad_solve, solve_dual_cone.dualproj_solve])
def test_every_output_written(launcher, monkeypatch):
    poison_empty(monkeypatch, solve_dual_cone)
    J = conflicting_J(5, 20, seed=2)
    gram = (J @ J.T).to(DEVICE)
    out = launcher(gram, torch.full((5,), 0.2, dtype=torch.float64, device=DEVICE), CONSTANTS)
    assert torch.isfinite(out["weights"]).all() and float(out["kkt_residual"]) >= 0 and int(out["iterations"]) >= 0
    if "active_tasks" in out:
        assert out["active_tasks"].dtype == torch.bool


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_pref_vector_and_regularisation_on_the_device(method):
    J = conflicting_J(4, 30, seed=3)
    for options in ({"pref_vector": [0.5, 0.0, 2.0, 1.0]}, {"reg_eps": 1e-4, "norm_eps": 1e-4}):
        got = mk.aggregate(J.to(DEVICE), method, backend="triton", **options)
        expected = getattr(mk.reference, method)(J, **options)
        assert float((got.direction.cpu() - expected.direction).norm()) <= 1e-11 * _scale(expected.weights, J)


@requires_cuda
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_no_host_sync_and_cuda_graph_replay(method):
    J = conflicting_J(8, 4096, seed=1).float().cuda()
    agg = mk.Aggregator(method, backend="triton")
    agg(J)  # compile, copy the preferences to the device
    with no_host_sync():
        first = agg(J)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = agg(J)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured.weights, first.weights)
