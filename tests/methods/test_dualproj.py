"""DualProj's K-space solve (torch and C++): its KKT certificate, the paper's properties, and option
errors (the match with the float64 reference is in test_dual_cone_methods.py).

Tolerances are relative to the natural scale Σᵢ|wᵢ|·‖gᵢ‖ of the reference's weights (DualProj's
weights multiply the gradients; ‖d‖ can vanish on Pareto-stationary inputs).
"""
import pytest
import torch
from hypothesis import given, settings

import mtlkernels as mk
from cases import conflicting_J, random_J, structured_gradients
from mtlkernels import _extension
from mtlkernels.methods import DualProjWeighting

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not _extension.available, reason="C++ extension not built"))]
#: the KKT residual at the exact optimum: rounding in (Γv)ᵢ relative to the size of its terms
KKT_BOUND = 1e-13


def _scale(weights: torch.Tensor, J: torch.Tensor) -> float:
    return max(float(weights.double().abs() @ J.double().norm(dim=1)), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(J=structured_gradients(K=(1, 7), N=(1, 12), log_scales=[-8.0, 0.0, 8.0]))
def test_hypothesis_no_task_conflicts(J, backend):
    """The projection lies in the dual cone, so gₖ·d ≥ 0 for every task (up to rounding of the
    products), and w ≥ p = 1/K."""
    result = mk.aggregate(J, "dualproj", backend=backend)
    K = J.shape[0]
    products = J @ result.direction
    rounding = 1e-12 * J.norm(dim=1) * _scale(result.weights, J)
    assert bool((products >= -rounding).all()), products.tolist()
    assert bool((result.weights >= 1.0 / K - 1e-15).all()), result.weights.tolist()
    assert result.diagnostics["kkt_residual"] <= KKT_BOUND


@pytest.mark.parametrize("backend", BACKENDS)
def test_pref_vector_is_projected(backend):
    """d = π(Jᵀp) for the given p, as the reference; a task with p = 0 still constrains d."""
    J = random_J(5, 4, seed=3)
    p = torch.tensor([0.1, 0.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    result = mk.aggregate(J, "dualproj", backend=backend, pref_vector=p)
    expected = mk.reference.dualproj(J, pref_vector=p)
    assert float((result.direction - expected.direction).norm()) <= 1e-12 * _scale(expected.weights, J)
    assert float((J @ result.direction).min()) >= -1e-12 * float(J.norm(dim=1).max()) * _scale(result.weights, J)


@pytest.mark.parametrize("backend", BACKENDS)
def test_active_tasks_are_orthogonal_to_d(backend):
    """The tasks listed in "active_tasks" (wᵢ > pᵢ) have gᵢ·d = 0; the others gᵢ·d ≥ 0."""
    J = conflicting_J(6, 9, seed=4)
    result = mk.aggregate(J, "dualproj", backend=backend)
    active = result.diagnostics["active_tasks"]
    assert active == mk.reference.dualproj(J).info["active_tasks"] and active
    products = J @ result.direction
    rounding = 1e-13 * J.norm(dim=1) * _scale(result.weights, J)
    assert bool((products[active].abs() <= rounding[active]).all()), products.tolist()
    assert bool((products >= -rounding).all()), products.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_in_the_cone_is_kept(backend):
    """When the mean gradient conflicts with no task, DualProj returns it: w = 1/K, nothing active."""
    J = torch.ones(4, 6, dtype=torch.float64) + 0.1 * random_J(4, 6, seed=6)
    assert bool((J @ J.mean(dim=0) > 0).all())
    result = mk.aggregate(J, "dualproj", backend=backend)
    assert result.weights.tolist() == [0.25] * 4 and result.diagnostics["active_tasks"] == []


@pytest.mark.parametrize("K", [16, 64, 128, 256])
def test_backends_agree_at_large_K(K):
    """The C++ and torch solves solve the same subproblems: weights agree to rounding, both certified."""
    if not _extension.available:
        pytest.skip("C++ extension not built")
    J = random_J(K, 3 * K // 2, seed=K)
    gram = J @ J.T
    on_torch = DualProjWeighting(backend="torch")(gram)
    on_cpp = DualProjWeighting(backend="cpp")(gram)
    scale = _scale(on_torch.weights, J)
    assert float(((on_cpp.weights - on_torch.weights).abs() * J.norm(dim=1)).max()) <= 1e-10 * scale
    assert on_cpp.diagnostics["kkt_residual"] <= 1e-12 and on_torch.diagnostics["kkt_residual"] <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_regularised_matches_torchjd_convention(backend):
    """reg_eps=1e-4, norm_eps=1e-4 solve torchjd's problem on Γ/tr(Γ) + 1e-4·I: the reference on the
    augmented matrix agrees; the exact default differs from it by O(reg_eps)."""
    J = conflicting_J(6, 9, seed=4)  # the mean conflicts with some tasks: something to project
    regularised = mk.aggregate(J, "dualproj", backend=backend, reg_eps=1e-4, norm_eps=1e-4)
    expected = mk.reference.dualproj(J, reg_eps=1e-4, norm_eps=1e-4)
    assert float((regularised.direction - expected.direction).norm()) <= 1e-11 * _scale(expected.weights, J)
    exact = mk.aggregate(J, "dualproj", backend=backend)
    assert float((exact.direction - regularised.direction).norm()) > 1e-5 * float(regularised.direction.norm())


def test_torchjd_projector_option_is_named():
    with pytest.raises(TypeError, match="projector picks its QP solver; the DualProj solve here is exact"):
        mk.aggregate(random_J(3, 5), "dualproj", projector=None)


def test_cuda_auto_solves_on_the_device():
    """On CUDA "auto" runs the Triton solve: device weights, the torch solve's to rounding."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    J = random_J(4, 10, seed=1)
    result = mk.aggregate(J.cuda(), "dualproj")
    assert result.weights.device.type == "cuda"
    torch.testing.assert_close(result.weights.cpu(), mk.aggregate(J, "dualproj", backend="torch").weights)
