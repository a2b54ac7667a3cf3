"""The on-device MGDA solve (one Triton program) against the C++ solver on the same Γ and the
float64 reference on full vectors: every normalisation and combination, random and adversarial Γ,
float32/float64 Γ, poisoned outputs, the KKT certificate; the fallback beyond the register limit;
on CUDA also no host sync and CUDA-graph capture + replay.

Where the min-norm point is 0 (opposite gradients) every decision of the active-set method is
rounding noise and the simplex weights are not unique: there the objective and the KKT residual
are compared, elsewhere the weights and the number of minor cycles too.
"""
import pytest
import torch

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_mgda  # noqa: E402
from mtlkernels.methods import MGDAWeighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.methods.mgda import CONSTANTS  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: simplex weights (in [0, 1]) against the C++ solve of the same Γ, absolute
CPP_TOL = 1e-9
#: objective wᵀΓ'w against the reference's ‖u*‖², relative to m² (m = Σwᵢ‖gᵢ/nᵢ‖, the scale of its rounding)
REFERENCE_RTOL = 1e-6
KKT_TOL = 1e-12




def losses_for(K: int) -> torch.Tensor:
    return torch.rand(K, generator=torch.Generator().manual_seed(K), dtype=torch.float64) + 0.25


def check_against_cpp(label, gram, out, normalization, combination, losses=None) -> dict:
    """Weights, normalisers, certificate and cycles as csrc's mgda_solve on the same Γ; returns its dict."""
    G = gram.double().cpu().contiguous()
    cpp = _extension.extension().mgda_solve(G.numpy(), cpp_constants(CONSTANTS), normalization, combination, None if losses is None else losses.numpy())
    for key in ("weights", "simplex_weights", "normalizers"):
        assert out[key].device.type == DEVICE and not out[key].isnan().any(), (label, key, "not written")
    torch.testing.assert_close(out["normalizers"].cpu(), torch.from_numpy(cpp["normalizers"]), rtol=1e-15, atol=0)
    w, objective, kkt = out["simplex_weights"].cpu(), float(out["objective"]), float(out["kkt_residual"])
    n = out["normalizers"].cpu()
    lengths = (G.diagonal().clamp_min(0).sqrt() / n)
    scale = float(w @ lengths) ** 2
    assert kkt <= KKT_TOL and cpp["kkt_residual"] <= KKT_TOL, (label, kkt)
    assert abs(objective - cpp["objective"]) <= 1e-12 * scale + 1e-300, label
    assert abs(float(w.sum()) - 1.0) <= 1e-12 and bool((w >= 0).all()), label
    if objective > 1e-12 * scale:  # the min-norm point is not 0: the path and the weights are determined
        assert float((w - torch.from_numpy(cpp["simplex_weights"])).abs().max()) <= CPP_TOL, label
        expected = torch.from_numpy(cpp["weights"])
        assert float(((out["weights"].cpu() - expected).abs() / expected.abs().clamp_min(1e-300)).max()) <= CPP_TOL
        assert int(out["iterations"]) == cpp["iterations"], label
        assert int(out["support"]) == cpp["support"], label
    return cpp


def cases(K: int, N: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed))] + adversarial_cases(K, N, seed)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_float64_gram_matches_cpp_and_reference(K, normalization, monkeypatch):
    poison_empty(monkeypatch, solve_mgda)
    combination = "normalized" if normalization in ("l2", "loss+") else "original"
    losses = losses_for(K)
    for name, J in cases(K, 30, seed=K):
        G = (J @ J.T).to(DEVICE)
        out = solve_mgda.mgda_solve(G, losses.to(DEVICE), normalization, combination, CONSTANTS)
        check_against_cpp(f"{name} {normalization}", G, out, normalization, combination, losses)
        ref = mk.reference.mgda(J, normalization=normalization, combination=combination, losses=losses)
        w, n = out["simplex_weights"].cpu(), out["normalizers"].cpu()
        scale = float(w @ (J.norm(dim=1) / n)) ** 2
        assert abs(float(out["objective"]) - ref.info["objective"]) <= REFERENCE_RTOL * scale + 1e-300, name


def test_k17_float64_and_float32_gram(monkeypatch):
    """Three 17-task solves (each ~15 minor cycles: the interpreter's time); the float32 Γ (the
    GPU's Gram) is compared with the C++ solve of the same rounded Γ."""
    poison_empty(monkeypatch, solve_mgda)
    J_cases = dict(cases(17, 30, seed=17))
    for name, normalization, dtype in (
        ("random", "none", torch.float64),
        ("conflicting", "l2", torch.float64),
        ("duplicate_rows", "none", torch.float32),
    ):
        J = J_cases[name]
        G = (J @ J.T).to(dtype=dtype, device=DEVICE)
        out = solve_mgda.mgda_solve(G, None, normalization, "original", CONSTANTS)
        check_against_cpp(f"{name} {normalization} {dtype}", G, out, normalization, "original")


def test_k64_in_registers():
    """More tasks than dimensions: the optimum sits on a face of at most N + 1 = 4 gradients."""
    J = random_J(64, 3, seed=64)
    G = (J @ J.T).to(DEVICE)
    out = solve_mgda.mgda_solve(G, None, "l2", "original", CONSTANTS)
    check_against_cpp("random_64", G, out, "l2", "original")


def test_weighting_with_losses():
    J = conflicting_J(4, 50, seed=3)
    losses = [0.5, 2.0, 0.0, 1.5]  # a zero loss: nᵢ = 1
    ours = mk.aggregate(J.to(DEVICE), MGDAWeighting(normalization="loss", backend="triton"), losses=losses)
    theirs = mk.aggregate(J, MGDAWeighting(normalization="loss", backend="cpp"), losses=losses)
    torch.testing.assert_close(ours.weights.cpu(), theirs.weights, rtol=1e-9, atol=1e-12)
    assert ours.diagnostics["normalizers"].cpu().tolist() == [0.5, 2.0, 1.0, 1.5]
    with pytest.raises(ValueError, match="negative"):
        MGDAWeighting(normalization="loss", backend="triton")(J @ J.T, torch.tensor([1.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_bad_losses_on_the_device_give_nan_weights(normalization):
    """The Triton solve reads losses the host did not check (CUDA losses are not read on the
    host): a negative, NaN or infinite loss makes every weight NaN; valid losses do not."""
    J = conflicting_J(4, 50, seed=3)
    G = (J @ J.T).to(DEVICE)
    good = solve_mgda.mgda_solve(G, torch.tensor([0.5, 2.0, 0.0, 1.5], dtype=torch.float64, device=DEVICE),
                                 normalization, "normalized", CONSTANTS)
    assert torch.isfinite(good["weights"]).all()
    for bad in (-1.0, float("nan"), float("inf")):
        losses = torch.tensor([0.5, 2.0, bad, 1.5], dtype=torch.float64, device=DEVICE)
        out = solve_mgda.mgda_solve(G, losses, normalization, "normalized", CONSTANTS)
        assert torch.isnan(out["weights"]).all(), bad


def test_beyond_register_limit_uses_the_torch_solver():
    J = random_J(solve_mgda.MAX_TASKS + 1, 80, seed=5)
    G = J @ J.T
    solution = MGDAWeighting(backend="triton")(G)
    expected = MGDAWeighting(backend="cpp")(G)
    assert solution.diagnostics["objective"] == pytest.approx(expected.diagnostics["objective"], rel=1e-9)
    torch.testing.assert_close(solution.weights, expected.weights, rtol=1e-9, atol=1e-12)


# -- GPU only ------------------------------------------------------------------------------------


@requires_cuda
def test_no_host_sync():
    weighting = MGDAWeighting(normalization="l2", backend="triton")
    J = conflicting_J(6, 1000, seed=7).float().cuda()
    mk.aggregate(J, weighting)  # compile outside the checked region
    with no_host_sync():
        res = mk.aggregate(J, weighting)
    out = {"weights": res.diagnostics["simplex_weights"], **res.diagnostics}  # "original": weights = w
    check_against_cpp("no_sync", res.gram, out, "l2", "original")


@requires_cuda
def test_cuda_graph_capture_and_replay():
    G = torch.empty(5, 5, device="cuda")
    first, second = conflicting_J(5, 40, seed=8), random_J(5, 40, seed=9)
    G.copy_(first @ first.T)
    solve_mgda.mgda_solve(G, None, "none", "original", CONSTANTS)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = solve_mgda.mgda_solve(G, None, "none", "original", CONSTANTS)
    for J in (first, second):
        G.copy_(J @ J.T)
        graph.replay()
        torch.cuda.synchronize()
        check_against_cpp("graph", G, out, "none", "original")
