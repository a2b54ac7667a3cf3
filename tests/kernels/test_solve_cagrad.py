"""The on-device CAGrad solve (one Triton program) against the C++ solver on the same Γ and the
float64 reference on full vectors: random and adversarial Γ, float32/float64 Γ, c = 0, the
degenerate hull case, every rescale option, poisoned outputs, certificates; the fallback beyond the
register limit; on CUDA also no host sync and CUDA-graph capture + replay.

The direction d = g₀ + Jᵀu is unique, the multipliers u are not where gradients are duplicated,
opposite or more numerous than dimensions, and there ties at rounding level (μ = ±1e-21 against 0
with gradients scaled by 1e±20) can flip which path the solvers take and whether they call the
case degenerate; the per-task KKT residual, each task judged at its own scale, then also holds
the rounding of the large tasks' μ divided by a tiny active task's norm (in both solvers). There
the direction (measured through Γ, ‖Δd‖ = √(ΔwᵀΓΔw), against Σᵢ|wᵢ|‖gᵢ‖) and the functions of d
are compared; elsewhere also the weights, the flags, the active set, the path's breakpoints and
the certificates, which must be at rounding level.
"""
import math

import pytest
import torch
from _hypothesis import given, settings, st

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton, solve_without_host_sync  # noqa: E402
from mtlkernels.kernels import solve_cagrad  # noqa: E402
from mtlkernels.methods import CAGradWeighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.methods.cagrad import CONSTANTS  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J, structured_gradients  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: direction (through Γ) and unique weights against the C++ solve of the same Γ, relative to Σ|wᵢ|‖gᵢ‖
CPP_RTOL = 1e-9
#: direction against mtlkernels.reference.cagrad on full vectors, relative to Σ|wᵢ|‖gᵢ‖
REFERENCE_RTOL = 1e-6
CERTIFICATES = ("kkt_residual", "ball_residual", "duality_gap", "worst_improvement", "dual_objective", "multiplier_sum")




def size(G: torch.Tensor, weights: torch.Tensor) -> float:
    """Σᵢ|wᵢ|·‖gᵢ‖, the scale of the rounding in d = Σᵢ wᵢgᵢ."""
    return float((weights.abs() * G.diagonal().clamp_min(0).sqrt()).sum())


def check_against_cpp(label, gram, weights, diagnostics, c, factor=1.0, unique=True) -> None:
    G = gram.double().cpu().contiguous()
    cpp_weights, cpp = _extension.extension().cagrad_solve(G.numpy(), c, factor, cpp_constants(CONSTANTS))
    cpp_weights = torch.from_numpy(cpp_weights)
    assert weights.device.type == DEVICE and weights.dtype == torch.float64
    assert not weights.isnan().any(), (label, "a weight was not written")
    w = weights.cpu()
    difference = w - cpp_weights
    scale = size(G, cpp_weights)
    assert math.sqrt(max(float(difference @ G @ difference), 0.0)) <= CPP_RTOL * scale, (label, "direction")
    degenerate = bool(diagnostics["degenerate"])
    for key in CERTIFICATES:
        assert diagnostics[key].device.type == DEVICE and diagnostics[key].dim() == 0
    # functions of d alone; the others depend on u, unique only with Γ
    assert float(diagnostics["ball_residual"]) == pytest.approx(cpp["ball_residual"], rel=1e-6, abs=1e-12), label
    units = float(G.diagonal().max())
    assert float(diagnostics["worst_improvement"]) == pytest.approx(cpp["worst_improvement"], rel=1e-6, abs=1e-12 * units)
    assert all(math.isfinite(float(diagnostics[key])) for key in CERTIFICATES), label
    if unique:
        # the degenerate case's dual objective holds √φ·‖g_w‖ with ‖g_w‖² ≈ 0 up to rounding: its
        # square root (and so the duality gap) is noise of order √ε there, in both solvers
        gap_bound = 1e-7 if degenerate else 1e-12
        assert float(diagnostics["kkt_residual"]) <= 1e-12, label
        assert -1e-12 <= float(diagnostics["duality_gap"]) <= gap_bound, label
        assert degenerate == cpp["degenerate"], label
        assert float((difference.abs() * G.diagonal().sqrt()).max()) <= CPP_RTOL * scale, (label, "weights")
        assert diagnostics["active_set"].cpu().nonzero().flatten().tolist() == cpp["active_set"], label
        assert int(diagnostics["iterations"]) == cpp["iterations"], label
        for key in ("kkt_residual", "duality_gap", "multiplier_sum"):
            assert float(diagnostics[key]) == pytest.approx(cpp[key], rel=1e-6, abs=gap_bound), (label, key)
        assert float(diagnostics["dual_objective"]) == pytest.approx(cpp["dual_objective"], rel=1e-6, abs=gap_bound * units)


def cases(K: int, N: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed))] + adversarial_cases(K, N, seed)


def unique_multipliers(J: torch.Tensor, name: str) -> bool:
    """Γ non-singular (and not numerically so), so u, not only d, is determined."""
    return J.shape[0] <= J.shape[1] and name not in ("duplicate_rows", "opposite_rows", "near_collinear")


@pytest.mark.parametrize("K", [1, 2, 3])
def test_float64_gram_matches_cpp_and_reference(K, monkeypatch):
    poison_empty(monkeypatch, solve_cagrad)
    for name, J in cases(K, 30, seed=K):
        G = (J @ J.T).to(DEVICE)
        weights, diagnostics = solve_cagrad.cagrad_solve(G, 0.5, 1.0 / 1.25, CONSTANTS)
        check_against_cpp(name, G, weights, diagnostics, 0.5, 1.0 / 1.25, unique_multipliers(J, name))
        if name in ("random", "conflicting", "zero_row"):  # the reference's SLSQP is slow
            reference = mk.reference.cagrad(J, c=0.5)
            error = float((weights.cpu() @ J - reference.direction).norm())
            assert error <= REFERENCE_RTOL * size(J @ J.T, reference.weights), name


def test_k17_float64_and_float32_gram(monkeypatch):
    """The float32 Γ (the GPU's Gram) against the C++ solve of the same rounded Γ."""
    poison_empty(monkeypatch, solve_cagrad)
    J_cases = dict(cases(17, 30, seed=17))
    for name, c, dtype in (
        ("random", 2.0, torch.float64),
        ("scales_1e-20_1e20", 0.5, torch.float64),
        ("zero_row", 0.5, torch.float64),
        ("conflicting", 0.4, torch.float32),
        ("duplicate_rows", 2.0, torch.float32),
    ):
        J = J_cases[name]
        G = (J @ J.T).to(dtype=dtype, device=DEVICE)
        weights, diagnostics = solve_cagrad.cagrad_solve(G, c, 1.0, CONSTANTS)
        check_against_cpp(f"{name} {dtype}", G, weights, diagnostics, c, 1.0, unique_multipliers(J, name))


def test_k64_in_registers():
    J = conflicting_J(64, 100, seed=64)
    G = (J @ J.T).to(DEVICE)
    weights, diagnostics = solve_cagrad.cagrad_solve(G, 0.5, 1.0, CONSTANTS)
    check_against_cpp("conflicting_64", G, weights, diagnostics, 0.5)


def test_more_tasks_than_dimensions_and_the_hull_case():
    """K > N: singular active systems (least squares on the eigen-decomposition); three gradients
    at 120° with different norms: 0 inside their hull, the path stops at μ = 0 (degenerate, the
    dual point from Lawson–Hanson)."""
    J = random_J(7, 3, seed=11)
    G = (J @ J.T).to(DEVICE)
    for c in (0.5, 3.0):
        weights, diagnostics = solve_cagrad.cagrad_solve(G, c, 1.0, CONSTANTS)
        check_against_cpp(f"K>N c={c}", G, weights, diagnostics, c, unique=False)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    star = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None]
    G = (star @ star.T).to(DEVICE)
    weights, diagnostics = solve_cagrad.cagrad_solve(G, 2.0, 1.0, CONSTANTS)
    check_against_cpp("star", G, weights, diagnostics, 2.0, unique=False)
    assert bool(diagnostics["degenerate"])


@settings(max_examples=12, deadline=None)
@given(J=structured_gradients(K=(2, 6), N=(1, 6), log_scales=[-7.0, 0.0, 3.0]), c=st.sampled_from([0.1, 0.5, 1.0, 3.0]))
def test_structured_gram_hypothesis(J, c):
    """Rows kept, zeroed, copied, negated or tripled from row 0, then scaled by 10^s; K > N too."""
    G = (J @ J.T).to(DEVICE)
    weights, diagnostics = solve_cagrad.cagrad_solve(G, c, 1.0, CONSTANTS)
    check_against_cpp("structured", G, weights, diagnostics, c, unique=False)


def test_c_zero_gives_the_mean():
    G = (lambda J: J @ J.T)(conflicting_J(5, 20, seed=2)).to(DEVICE)
    weights, diagnostics = solve_cagrad.cagrad_solve(G, 0.0, 1.0, CONSTANTS)
    assert weights.cpu().tolist() == [0.2] * 5 and int(diagnostics["iterations"]) == 0
    check_against_cpp("c=0", G, weights, diagnostics, 0.0)


@pytest.mark.parametrize("rescale, sum_scale", [(0, False), (1, True), (2, False)])
def test_weighting_options(rescale, sum_scale):
    J = conflicting_J(4, 50, seed=rescale)
    options = {"c": 0.4, "rescale": rescale, "sum_scale": sum_scale}
    ours = mk.aggregate(J.to(DEVICE), CAGradWeighting(backend="triton", **options))
    theirs = mk.aggregate(J, CAGradWeighting(backend="cpp", **options))
    torch.testing.assert_close(ours.weights.cpu(), theirs.weights, rtol=1e-9, atol=0)
    assert mk.diagnostics_to_python(ours.diagnostics)["active_set"] == theirs.diagnostics["active_set"]


def test_beyond_register_limit_uses_the_torch_solver():
    J = conflicting_J(solve_cagrad.MAX_TASKS + 1, 100, seed=5)
    G = J @ J.T
    solution = CAGradWeighting(backend="triton")(G)
    expected = CAGradWeighting(backend="cpp")(G)
    difference = solution.weights - expected.weights
    assert math.sqrt(max(float(difference @ G @ difference), 0.0)) <= CPP_RTOL * size(G, expected.weights)


# -- GPU only ------------------------------------------------------------------------------------


@requires_cuda
def test_no_host_sync():
    weighting = CAGradWeighting(backend="triton")
    res, solution = solve_without_host_sync(conflicting_J(6, 1000, seed=7).float().cuda(), weighting)
    check_against_cpp("no_sync", res.gram, solution.weights, solution.diagnostics, 0.5, 1.0 / 1.25)
    torch.testing.assert_close(res.weights, solution.weights)


@requires_cuda
def test_cuda_graph_capture_and_replay():
    G = torch.empty(5, 5, device="cuda")
    first, second = conflicting_J(5, 40, seed=8), random_J(5, 40, seed=9)
    G.copy_(first @ first.T)
    solve_cagrad.cagrad_solve(G, 0.5, 1.0, CONSTANTS)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        weights, diagnostics = solve_cagrad.cagrad_solve(G, 0.5, 1.0, CONSTANTS)
    for J in (first, second):
        G.copy_(J @ J.T)
        graph.replay()
        torch.cuda.synchronize()
        check_against_cpp("graph", G, weights, diagnostics, 0.5)
