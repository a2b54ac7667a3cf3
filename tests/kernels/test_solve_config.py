"""The on-device ConFIG solve (one Triton program) against the C++ solve on the same Γ: random and
adversarial Γ with and without pref_vector, float32/float64 Γ, poisoned outputs, diagnostics,
K = 40 in a 64-wide tile, the fallback beyond the register limit; on CUDA also no host sync."""
import pytest
import torch

triton = pytest.importorskip("triton")

from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_config  # noqa: E402
from mtlkernels.methods import ConFIGWeighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.methods.config import CONSTANTS  # noqa: E402
from cases import adversarial_cases, random_J  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: |Δwᵢ|·‖gᵢ‖ against Σ|wᵢ|‖gᵢ‖ of the C++ solve (both backward stable eigendecompositions of C:
#: Jacobi here, Jacobi or Householder + QL there)
CPP_RTOL = 1e-11


def check_against_cpp(label, J, gram, pref, weights, diagnostics, rtol=CPP_RTOL):
    G = gram.double().cpu().contiguous()
    p = torch.ones(G.shape[0], dtype=torch.float64) if pref is None else pref.double().cpu()
    cpp_weights, cpp = _extension.extension().config_solve(G.numpy(), cpp_constants(CONSTANTS), p.numpy())
    assert not weights.isnan().any(), (label, "an output was not written")
    assert weights.device.type == DEVICE and weights.dtype == torch.float64
    norms = J.double().norm(dim=1)
    expected = torch.from_numpy(cpp_weights)
    scale = max(float(expected.abs() @ norms), 1e-300)
    assert float(((weights.cpu() - expected).abs() * norms).max()) <= rtol * scale, label
    assert diagnostics["zero_tasks"].cpu().nonzero().flatten().tolist() == cpp["zero_tasks"], label
    assert int(diagnostics["rank"]) == cpp["rank"] and bool(diagnostics["equal_cosines"]) == cpp["equal_cosines"], label
    assert float(diagnostics["length"]) == pytest.approx(cpp["length"], rel=1e-9, abs=1e-300), label
    assert float(diagnostics["residual"]) <= 1e-12, label  # the certificate at rounding level, as cpp's


@pytest.mark.parametrize("with_pref", [False, True])
@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matches_cpp(K, with_pref, monkeypatch):
    poison_empty(monkeypatch, solve_config)
    pref = torch.linspace(0.5, 2.0, K, dtype=torch.float64).to(DEVICE) if with_pref else None
    for name, J in [("random", random_J(K, 6, K)), ("wide", random_J(K, 2, K))] + adversarial_cases(K, 6, K):
        gram = (J @ J.T).to(DEVICE)
        weights, diagnostics = solve_config.config_solve(gram, pref, CONSTANTS)
        check_against_cpp(f"K={K} {name}", J, gram, pref, weights, diagnostics,
                          rtol=1e-6 if name == "near_collinear" else CPP_RTOL)


def test_float32_gram_and_k40():
    J = random_J(40, 60, seed=4)
    for dtype in (torch.float32, torch.float64):
        gram = (J @ J.T).to(dtype).to(DEVICE)
        weights, diagnostics = solve_config.config_solve(gram, None, CONSTANTS)
        check_against_cpp(f"K=40 {dtype}", J, gram, None, weights, diagnostics)


def test_weighting_keeps_the_preference_on_the_device():
    J = random_J(4, 10, seed=5)
    weighting = ConFIGWeighting(backend="triton", pref_vector=[1.0, 2.0, 3.0, 4.0])
    first = weighting((J @ J.T).to(DEVICE))
    assert len(weighting._device_preferences) == 1  # copied once, kept for the next calls
    expected = ConFIGWeighting(backend="cpp", pref_vector=[1.0, 2.0, 3.0, 4.0])(J @ J.T)
    torch.testing.assert_close(first.weights.cpu(), expected.weights, rtol=1e-11, atol=0)


def test_beyond_register_limit_uses_the_torch_solver():
    J = random_J(65, 80, seed=6)
    gram = (J @ J.T).to(DEVICE)
    solution = ConFIGWeighting(backend="triton")(gram)
    assert torch.equal(solution.weights.cpu(), ConFIGWeighting(backend="torch")(gram.cpu()).weights)


@requires_cuda
def test_no_host_sync():
    J = random_J(8, 100, seed=7).cuda()
    gram = J @ J.T
    weighting = ConFIGWeighting(backend="triton", pref_vector=[1.0] * 8)
    weighting(gram)  # compile, and copy the preference to the device, outside the check
    with no_host_sync():
        solution = weighting(gram)
    assert solution.weights.is_cuda and solution.diagnostics["rank"].is_cuda
