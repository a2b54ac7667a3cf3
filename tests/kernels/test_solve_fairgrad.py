"""The on-device FairGrad solve (one Triton program) against the C++ solver on the same Γ: random
and adversarial Γ, α ∈ {½, 1, 2}, float32/float64 Γ, poisoned outputs, certificates, the K = 64
register limit and the fallback beyond; on CUDA also no host sync."""
import pytest
import torch

triton = pytest.importorskip("triton")

from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_fairgrad  # noqa: E402
from mtlkernels.methods import FairGradWeighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.methods.fairgrad import CONSTANTS  # noqa: E402
from cases import adversarial_cases, random_J  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: weights element-wise against the C++ solve of the same Γ (both float64, the same Newton steps;
#: the kernel's powers for α ∉ {½, 1} are exp(p·log x), ~|p·log x| roundings from std::pow)
CPP_RTOL = 1e-9
#: gradients scaled 1e-20…1e20 at α ≠ 1: those rounding differences can change a step count
SCALED_RTOL = 1e-6


def check_against_cpp(label, gram, alpha, weights, diagnostics, rtol=CPP_RTOL, same_steps=True):
    G = gram.double().cpu().contiguous()
    cpp_weights, cpp = _extension.extension().fairgrad_solve(G.numpy(), cpp_constants(CONSTANTS), alpha)
    assert not weights.isnan().any(), (label, "an output was not written")
    assert weights.device.type == DEVICE and weights.dtype == torch.float64
    expected = torch.from_numpy(cpp_weights)
    error = float(((weights.cpu() - expected).abs() / expected.abs().clamp_min(1e-300)).max())
    assert error <= rtol, (label, error)
    assert diagnostics["dropped_tasks"].cpu().nonzero().flatten().tolist() == cpp["dropped_tasks"], label
    assert bool(diagnostics["converged"]) == cpp["converged"], label
    if same_steps:
        assert int(diagnostics["iterations"]) == cpp["iterations"], label
    for key in ("residual", "kept_residual"):
        assert diagnostics[key].device.type == DEVICE and diagnostics[key].dim() == 0
        assert float(diagnostics[key]) <= max(10 * cpp[key], 1e-13), (label, key)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matches_cpp(K, alpha, monkeypatch):
    poison_empty(monkeypatch, solve_fairgrad)
    for name, J in [("random", random_J(K, 6, K))] + adversarial_cases(K, 6, K):
        gram = (J @ J.T).to(DEVICE)
        scaled = name == "scales_1e-20_1e20" and alpha != 1.0
        weights, diagnostics = solve_fairgrad.fairgrad_solve(gram, alpha, CONSTANTS)
        check_against_cpp(f"K={K} {name}", gram, alpha, weights, diagnostics,
                          rtol=SCALED_RTOL if scaled else CPP_RTOL, same_steps=not scaled)


def test_float32_gram_and_k40():
    """A float32 Γ (what the Gram pass gives on CUDA) is solved as its float64 values; K = 40 fills a
    64-wide tile with a masked K."""
    J = random_J(40, 60, seed=4)
    for dtype in (torch.float32, torch.float64):
        gram = (J @ J.T).to(dtype).to(DEVICE)
        weights, diagnostics = solve_fairgrad.fairgrad_solve(gram, 2.0, CONSTANTS)
        check_against_cpp(f"K=40 {dtype}", gram, 2.0, weights, diagnostics)


def test_beyond_register_limit_uses_the_torch_solver():
    J = random_J(65, 80, seed=5)
    gram = (J @ J.T).to(DEVICE)
    solution = FairGradWeighting(backend="triton")(gram)
    expected = FairGradWeighting(backend="torch")(gram.cpu())
    assert torch.equal(solution.weights.cpu(), expected.weights)


@requires_cuda
def test_no_host_sync():
    J = random_J(8, 100, seed=6).cuda()
    gram = J @ J.T
    weighting = FairGradWeighting(alpha=2.0, backend="triton")
    weighting(gram)  # compile outside the check
    with no_host_sync():
        solution = weighting(gram)
    assert solution.weights.is_cuda and solution.diagnostics["converged"].is_cuda
