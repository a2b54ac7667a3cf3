"""The on-device Aligned-MTL solve (one Triton program) against the C++ solve on the same Γ: random
and adversarial Γ, every scale mode, with and without pref_vector, float32/float64 Γ, poisoned
outputs, diagnostics, K = 40 in a 64-wide tile, the fallback beyond the register limit; on CUDA
also no host sync."""
import pytest
import torch

triton = pytest.importorskip("triton")

from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_aligned_mtl  # noqa: E402
from mtlkernels.methods import AlignedMTLWeighting  # noqa: E402
from mtlkernels.methods.aligned_mtl import CONSTANTS  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from cases import adversarial_cases, random_J  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: |Δwᵢ|·‖gᵢ‖ against Σ|wᵢ|‖gᵢ‖ of the C++ solve (both backward stable eigendecompositions of Γ/s)
CPP_RTOL = 1e-11
#: near-collinear rows and 1e-20…1e20 scales: components near the rank cut, known to ~1e-5 (see
#: docs/methods/aligned_mtl.md)
ILL_CONDITIONED_RTOL = 1e-5


def check_against_cpp(label, J, gram, pref, scale_mode, weights, diagnostics, rtol=CPP_RTOL):
    G = gram.double().cpu().contiguous()
    K = G.shape[0]
    p = torch.full((K,), 1.0 / K, dtype=torch.float64) if pref is None else pref.double().cpu()
    cpp_weights, cpp = _extension.extension().aligned_mtl_solve(G.numpy(), cpp_constants(CONSTANTS), p.numpy(), scale_mode)
    assert not weights.isnan().any(), (label, "an output was not written")
    assert weights.device.type == DEVICE and weights.dtype == torch.float64
    norms = J.double().norm(dim=1)
    expected = torch.from_numpy(cpp_weights)
    scale = max(float(expected.abs() @ norms), 1e-300)
    assert float(((weights.cpu() - expected).abs() * norms).max()) <= rtol * scale, label
    assert diagnostics["zero_tasks"].cpu().nonzero().flatten().tolist() == cpp["zero_tasks"], label
    assert int(diagnostics["rank"]) == cpp["rank"], label
    assert float(diagnostics["scale"]) == pytest.approx(cpp["scale"], rel=1e-9, abs=1e-300), label
    assert float(diagnostics["residual"]) <= 1e-12, label  # the certificate at rounding level, as cpp's


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matches_cpp(K, scale_mode, monkeypatch):
    poison_empty(monkeypatch, solve_aligned_mtl)
    for pref in (None, torch.linspace(0.5, 2.0, K, dtype=torch.float64).to(DEVICE)):
        for name, J in [("random", random_J(K, 6, K)), ("wide", random_J(K, 2, K))] + adversarial_cases(K, 6, K):
            gram = (J @ J.T).to(DEVICE)
            weights, diagnostics = solve_aligned_mtl.aligned_mtl_solve(gram, pref, scale_mode, CONSTANTS)
            rtol = ILL_CONDITIONED_RTOL if name in ("near_collinear", "scales_1e-20_1e20") else CPP_RTOL
            check_against_cpp(f"K={K} {name}", J, gram, pref, scale_mode, weights, diagnostics, rtol)


def test_float32_gram_and_k40():
    J = random_J(40, 60, seed=4)
    for dtype in (torch.float32, torch.float64):
        gram = (J @ J.T).to(dtype).to(DEVICE)
        weights, diagnostics = solve_aligned_mtl.aligned_mtl_solve(gram, None, "median", CONSTANTS)
        check_against_cpp(f"K=40 {dtype}", J, gram, None, "median", weights, diagnostics)


def test_beyond_register_limit_uses_the_torch_solver():
    J = random_J(65, 80, seed=6)
    gram = (J @ J.T).to(DEVICE)
    solution = AlignedMTLWeighting(backend="triton")(gram)
    assert torch.equal(solution.weights.cpu(), AlignedMTLWeighting(backend="torch")(gram.cpu()).weights)


@requires_cuda
def test_no_host_sync():
    J = random_J(8, 100, seed=7).cuda()
    gram = J @ J.T
    weighting = AlignedMTLWeighting(backend="triton", pref_vector=[1.0] * 8, scale_mode="median")
    weighting(gram)  # compile, and copy the preference to the device, outside the check
    with no_host_sync():
        solution = weighting(gram)
    assert solution.weights.is_cuda and solution.diagnostics["rank"].is_cuda
