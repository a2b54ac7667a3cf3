"""The on-device Nash-MTL solve (one Triton program) against the C++ solver on the same Γ and the
float64 reference on full vectors: random and adversarial Γ, float32/float64 Γ, poisoned outputs,
certificates, warm start, update_weights_every reuse and state round trips; the fallback beyond
the register limit; on CUDA also no host sync and CUDA-graph capture + replay."""
import pytest
import torch

triton = pytest.importorskip("triton")

import mtlkernels as mk  # noqa: E402
from mtlkernels import _extension  # noqa: E402
from _devices import TRITON_DEVICE as DEVICE, no_host_sync, poison_empty, requires_cpp_oracle, requires_cuda, requires_triton  # noqa: E402
from mtlkernels.kernels import solve_nash_mtl  # noqa: E402
from mtlkernels.methods import NashMTLWeighting  # noqa: E402
from mtlkernels.methods.base import cpp_constants  # noqa: E402
from mtlkernels.methods.nash_mtl import CONSTANTS  # noqa: E402
from cases import adversarial_cases, conflicting_J, random_J  # noqa: E402

pytestmark = [requires_triton, requires_cpp_oracle]

#: α element-wise against the C++ solve of the same Γ (both float64, the same Newton steps)
CPP_RTOL = 1e-9
#: weights against mtlkernels.reference.nash_mtl on full vectors
REFERENCE_RTOL = 1e-6
CERTIFICATES = ("residual", "kept_residual", "direction_norm", "clip_scale")


def poisoned_empty(monkeypatch) -> None:
    poison_empty(monkeypatch, solve_nash_mtl)


def relative_error(x: torch.Tensor, expected: torch.Tensor) -> float:
    x, expected = x.double().cpu(), expected.double().cpu()
    return float(((x - expected).abs() / expected.abs().clamp_min(1e-300)).max())


def check_against_cpp(label, gram, alpha, weights, diagnostics, previous=None, reuse=False, max_norm=1.0):
    """Same α and weights (element-wise), iterations, convergence, dropped tasks and certificates
    as csrc's nash_mtl_solve on the same Γ and warm start."""
    G = gram.double().cpu().contiguous()
    prev = None if previous is None else previous.double().cpu().numpy()
    cpp_alpha, cpp_weights, cpp = _extension.extension().nash_mtl_solve(G.numpy(), cpp_constants(CONSTANTS), prev, reuse, max_norm)
    assert not alpha.isnan().any() and not weights.isnan().any(), (label, "an output was not written")
    assert alpha.device.type == DEVICE and alpha.dtype == torch.float64
    assert relative_error(alpha, torch.from_numpy(cpp_alpha)) <= CPP_RTOL, label
    assert relative_error(weights, torch.from_numpy(cpp_weights)) <= CPP_RTOL, label
    assert int(diagnostics["iterations"]) == cpp["iterations"], label
    assert bool(diagnostics["converged"]) == cpp["converged"], label
    assert diagnostics["dropped_tasks"].cpu().nonzero().flatten().tolist() == cpp["dropped_tasks"], label
    for key in CERTIFICATES:
        assert diagnostics[key].device.type == DEVICE and diagnostics[key].dim() == 0
        assert float(diagnostics[key]) == pytest.approx(cpp[key], rel=1e-9, abs=1e-12 * G.shape[0]), (label, key)


def cases(K: int, N: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    return [("random", random_J(K, N, seed))] + adversarial_cases(K, N, seed)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_float64_gram_matches_cpp_and_reference(K, monkeypatch):
    poisoned_empty(monkeypatch)
    for name, J in cases(K, 30, seed=K):
        G = (J @ J.T).to(DEVICE)
        alpha, weights, diagnostics = solve_nash_mtl.nash_mtl_solve(G, None, False, 1.0, CONSTANTS)
        check_against_cpp(name, G, alpha, weights, diagnostics)
        assert relative_error(weights, mk.reference.nash_mtl(J).weights) <= REFERENCE_RTOL, name


def test_k17_float64_and_float32_gram(monkeypatch):
    """The float32 Γ (the GPU's Gram) is compared with the C++ solve of the same rounded Γ; its
    1e-20..1e20 scales are left out (Γ's 1e40 overflows float32)."""
    poisoned_empty(monkeypatch)
    for name, J in cases(17, 30, seed=17):
        if name in ("near_collinear", "duplicate_rows", "opposite_rows"):
            continue  # K ≤ 3 covers them; 17 tasks would double this file's time
        for dtype in (torch.float64, torch.float32):
            if dtype == torch.float32 and name.startswith("scales"):
                continue
            G = (J @ J.T).to(dtype=dtype, device=DEVICE)
            alpha, weights, diagnostics = solve_nash_mtl.nash_mtl_solve(G, None, False, 0.0, CONSTANTS)
            check_against_cpp(f"{name} {dtype}", G, alpha, weights, diagnostics, max_norm=0.0)


def test_k64_in_registers():
    J = conflicting_J(64, 100, seed=64)
    G = (J @ J.T).to(DEVICE)
    alpha, weights, diagnostics = solve_nash_mtl.nash_mtl_solve(G, None, False, 1.0, CONSTANTS)
    check_against_cpp("conflicting_64", G, alpha, weights, diagnostics)


def test_warm_start_and_reuse_match_cpp(monkeypatch):
    poisoned_empty(monkeypatch)
    J = conflicting_J(5, 60, seed=1)
    G = (J @ J.T).to(DEVICE)
    previous = (torch.linspace(0.5, 2.0, 5, dtype=torch.float64) / J.norm(dim=1)).to(DEVICE)
    previous[2] = 0.0  # an unusable warm start entry falls back to 1
    for reuse in (False, True):
        alpha, weights, diagnostics = solve_nash_mtl.nash_mtl_solve(G, previous, reuse, 1.0, CONSTANTS)
        check_against_cpp(f"reuse={reuse}", G, alpha, weights, diagnostics, previous=previous, reuse=reuse)
    with pytest.raises(ValueError, match="reuse=True needs the previous weights"):
        solve_nash_mtl.nash_mtl_solve(G, None, True, 1.0, CONSTANTS)


def test_stateful_steps_match_cpp_weighting():
    """update_weights_every=2 over five steps, a state round trip through the CPU in between:
    weights, reuse and the stored α as the cpp backend's."""
    ours = mk.Aggregator(NashMTLWeighting(backend="triton", update_weights_every=2))
    theirs = mk.Aggregator(NashMTLWeighting(backend="cpp", update_weights_every=2))
    for step in range(5):
        J = conflicting_J(4, 80, seed=step).to(DEVICE)
        a, b = ours(J), theirs(J.cpu())
        assert relative_error(a.weights, b.weights) <= CPP_RTOL, step
        assert a.diagnostics["reused"] == b.diagnostics["reused"] == (step % 2 == 1)
        assert int(a.diagnostics["iterations"]) == b.diagnostics["iterations"], step
        assert ours.state_dict()["alpha"].device.type == DEVICE
        if step == 2:
            state = ours.state_dict()
            ours.load_state_dict({"alpha": state["alpha"].cpu(), "step": state["step"]})
    assert relative_error(ours.state_dict()["alpha"], theirs.state_dict()["alpha"]) <= CPP_RTOL


def test_device_state_is_updated_in_place_like_the_host_state():
    """The Triton weighting keeps α and the call counter in device buffers that the kernel
    rewrites in place (the same tensors every call: what a captured CUDA graph needs), and its
    sequence of warm starts, reuses and α is the cpp weighting's, whose state lives on the host;
    ``state_dict()`` reads it without giving the buffers up."""
    ours = NashMTLWeighting(backend="triton", update_weights_every=3)
    theirs = NashMTLWeighting(backend="cpp", update_weights_every=3)
    buffers = None
    for step in range(7):
        J = conflicting_J(5, 60, seed=20 + step)
        G = J @ J.T
        a, b = ours(G.to(DEVICE)), theirs(G)
        if buffers is None:
            buffers = [t.data_ptr() for t in ours._device_state]
        assert [t.data_ptr() for t in ours._device_state] == buffers, step
        alpha, counters = ours._device_state
        assert counters.tolist() == [step + 1, 1]
        assert relative_error(alpha, theirs.state_dict()["alpha"]) <= CPP_RTOL, step
        assert relative_error(a.weights, b.weights) <= CPP_RTOL, step
        assert a.diagnostics["reused"] == b.diagnostics["reused"] == (step % 3 != 0), step
        assert a.diagnostics["step"] == b.diagnostics["step"] == step + 1
        assert a.diagnostics["iterations"] == b.diagnostics["iterations"], step
        if step == 3:  # reading the state (checkpointing) keeps the buffers in use
            state = ours.state_dict()
            assert state["step"] == 4 and torch.equal(state["alpha"], alpha)
            assert state["alpha"].data_ptr() != alpha.data_ptr()  # a copy


def test_kernel_state_sequence_matches_cpp_calls():
    """nash_mtl_step on one state, called repeatedly, against the C++ solve driven by a host
    loop with the same warm start and reuse schedule; the state after load_state_dict-like
    initialisation (α given, step 4) included."""
    K = 4
    start = (torch.linspace(0.5, 1.5, K, dtype=torch.float64) / 10).to(DEVICE)
    for initial_alpha, initial_step in ((None, 0), (start, 4)):
        alpha, counters = solve_nash_mtl.nash_mtl_state(K, torch.device(DEVICE), initial_alpha, initial_step)
        previous = None if initial_alpha is None else initial_alpha.cpu().numpy()
        for call in range(initial_step, initial_step + 5):
            J = conflicting_J(K, 50, seed=call)
            G = (J @ J.T).to(DEVICE)
            weights, diagnostics = solve_nash_mtl.nash_mtl_step(G, alpha, counters, 2, 1.0, CONSTANTS)
            reuse = previous is not None and call % 2 != 0
            cpp_alpha, cpp_weights, cpp = _extension.extension().nash_mtl_solve(
                G.double().cpu().numpy(), cpp_constants(CONSTANTS), previous, reuse, 1.0)
            previous = cpp_alpha
            assert bool(diagnostics["reused"]) == reuse and int(diagnostics["step"]) == call + 1
            assert relative_error(alpha, torch.from_numpy(cpp_alpha)) <= CPP_RTOL, call
            assert relative_error(weights, torch.from_numpy(cpp_weights)) <= CPP_RTOL, call
            assert int(diagnostics["iterations"]) == cpp["iterations"], call


def test_state_of_another_size_is_rejected():
    weighting = NashMTLWeighting(backend="triton")
    weighting(torch.eye(3, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="K = 3 tasks but the Gram matrix has K = 4"):
        weighting(torch.eye(4, dtype=torch.float64, device=DEVICE))
    alpha, counters = solve_nash_mtl.nash_mtl_state(3, torch.device(DEVICE))
    with pytest.raises(ValueError, match="state α must be a contiguous float64"):
        solve_nash_mtl.nash_mtl_step(torch.eye(4, device=DEVICE), alpha, counters, 1, 1.0, CONSTANTS)


def test_beyond_register_limit_uses_the_torch_solver():
    J = conflicting_J(solve_nash_mtl.MAX_TASKS + 1, 100, seed=5)
    G = J @ J.T
    solution = NashMTLWeighting(backend="triton")(G)
    assert relative_error(solution.weights, NashMTLWeighting(backend="cpp")(G).weights) <= CPP_RTOL
    assert solution.diagnostics["dropped_tasks"] == []  # the torch solver's list


# -- GPU only ------------------------------------------------------------------------------------


@requires_cuda
def test_no_host_sync():
    agg = mk.Aggregator(NashMTLWeighting(backend="triton", update_weights_every=2))
    first = conflicting_J(6, 1000, seed=7).float().cuda()
    agg(first), agg(first)  # compile both variants (solve, reuse) outside the checked region
    J = conflicting_J(6, 1000, seed=8).float().cuda()
    J[1] = -J[0]  # the dropping rounds too
    with no_host_sync():
        solved, reused = agg(J), agg(J)
    assert not solved.diagnostics["reused"] and reused.diagnostics["reused"]
    assert solved.diagnostics["dropped_tasks"].cpu()[:2].all()


@requires_cuda
def test_cuda_graph_capture_and_replay():
    G = torch.empty(5, 5, device="cuda")
    previous = torch.full((5,), 0.3, dtype=torch.float64, device="cuda")
    first, second = conflicting_J(5, 40, seed=8), random_J(5, 40, seed=9)
    first[3] = -first[0]
    G.copy_(first @ first.T)
    solve_nash_mtl.nash_mtl_solve(G, previous, False, 1.0, CONSTANTS)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        alpha, weights, diagnostics = solve_nash_mtl.nash_mtl_solve(G, previous, False, 1.0, CONSTANTS)
    for J in (first, second):
        G.copy_(J @ J.T)
        graph.replay()
        torch.cuda.synchronize()
        check_against_cpp("graph", G, alpha, weights, diagnostics, previous=previous)


@requires_cuda
def test_cuda_graph_replays_advance_the_warm_start():
    """A weighting call captured once (update_weights_every=2) and replayed on six Γ: every replay
    reads the α the previous one wrote and follows the solve/reuse schedule, as eager calls of
    another weighting and the cpp weighting (host state) on the same Γ do."""
    captured = NashMTLWeighting(backend="triton", update_weights_every=2)
    eager = NashMTLWeighting(backend="triton", update_weights_every=2)
    host = NashMTLWeighting(backend="cpp", update_weights_every=2)
    grams = [(J @ J.T).float() for J in (conflicting_J(5, 40, seed=30 + i) for i in range(7))]
    G = grams[0].cuda()
    # call 1 (compiles, creates the device state) and call 2 (a reuse) eagerly, on every weighting
    for gram in grams[:2]:
        G.copy_(gram)
        captured(G), eager(G.clone()), host(gram.double())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        solution = captured(G)  # capturing does not run the kernel: the state is still at call 2
    for call, gram in enumerate(grams[2:], start=3):
        G.copy_(gram)
        graph.replay()
        expected, on_host = eager(G.clone()), host(gram.double())
        torch.cuda.synchronize()
        assert int(solution.diagnostics["step"]) == int(expected.diagnostics["step"]) == call
        assert bool(solution.diagnostics["reused"]) == bool(expected.diagnostics["reused"]) == (call % 2 == 0)
        assert torch.equal(solution.weights, expected.weights), call
        assert relative_error(solution.weights, on_host.weights) <= CPP_RTOL, call
    assert torch.equal(captured.state_dict()["alpha"], eager.state_dict()["alpha"])
    assert captured.state_dict()["step"] == len(grams)
