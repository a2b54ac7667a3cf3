"""One step of each wrapper equals the manual computation: per-task gradients with
torch.autograd.grad → the float64 reference of the method (mtlkernels.reference) → .grad, heads
getting the plain gradient of Σ Lₖ; on the parameters' gradients and on the features path."""
import warnings

import pytest
import torch

from mtlkernels import reference
from mtlkernels.methods import make_weighting
from mtlkernels.optim import (
    AlignedMTL, CAGrad, ConFIG, DualProj, FairGrad, GradVac, IMTL, MGDA, MGDAUB, MultiTaskOptimizer, NashMTL, PCGrad,
    UPGrad,
)
from mtl_model import TrunkHeads, grads_of, manual_grads, task_losses, wrapped_model


#: the wrappers' default normalisation of MGDA, from their documentation
MGDA_NORMALIZATION = {MGDA: "none", MGDAUB: "loss+"}


def _reference_of(method: str, wrapper, options: dict, last, features: bool):
    """The manual computation's direction (J path) or weights (features path) from the reference."""

    def direction_of(J, losses):
        if method == "pcgrad":
            result = reference.pcgrad(J, order=last.diagnostics["order"], reduction=options.get("reduction", "sum"))
        elif method == "cagrad":
            result = reference.cagrad(J, c=options.get("c", 0.5), rescale=options.get("rescale", 1))
        elif method == "nash_mtl":
            result = reference.nash_mtl(J, max_norm=options.get("max_norm", 1.0))
        elif method == "imtl":
            result = reference.imtl(J)
        elif method == "mgda":
            result = reference.mgda(J, normalization=options.get("normalization", MGDA_NORMALIZATION[wrapper]), losses=losses)
        elif method in ("upgrad", "dualproj"):
            result = getattr(reference, method)(J, pref_vector=options.get("pref_vector"))
        elif method == "gradvac":
            result = reference.gradvac(J, order=last.diagnostics["order"], beta=options.get("beta", 0.5))
        elif method == "fairgrad":
            result = reference.fairgrad(J, alpha=options.get("alpha", 1.0))
        elif method == "config":
            result = reference.config(J, pref_vector=options.get("pref_vector"))
        elif method == "aligned_mtl":
            result = reference.aligned_mtl(J, pref_vector=options.get("pref_vector"), scale_mode=options.get("scale_mode", "min"))
        else:
            result = reference.mean(J)
        return result.weights if features else result.direction

    return direction_of


WRAPPERS = [
    ("mean", lambda opt, **kw: MultiTaskOptimizer(opt, **kw), {}),
    ("pcgrad", PCGrad, {"seed": 3}),
    ("pcgrad", PCGrad, {"seed": 4, "reduction": "mean"}),
    ("cagrad", CAGrad, {"c": 0.5}),
    ("cagrad", CAGrad, {"c": 0.4, "rescale": 0}),
    ("nash_mtl", NashMTL, {}),
    ("nash_mtl", NashMTL, {"max_norm": 0.0}),
    ("imtl", IMTL, {}),
    ("imtl", IMTL, {"imtl_l": False}),
    ("mgda", MGDA, {}),
    ("mgda", MGDA, {"normalization": "loss+"}),
    ("mgda", MGDAUB, {}),
    ("mgda", MGDAUB, {"normalization": "l2"}),
    ("upgrad", UPGrad, {}),
    ("upgrad", UPGrad, {"pref_vector": [0.2, 1.0, 0.5]}),
    ("dualproj", DualProj, {}),
    ("gradvac", GradVac, {"seed": 3}),
    ("fairgrad", FairGrad, {}),
    ("fairgrad", FairGrad, {"alpha": 2.0}),
    ("config", ConFIG, {}),
    ("config", ConFIG, {"pref_vector": [1.0, 2.0, 0.5]}),
    ("aligned_mtl", AlignedMTL, {}),
    ("aligned_mtl", AlignedMTL, {"scale_mode": "rmse", "pref_vector": [1.0, 1.0, 1.0]}),
]


def _close(actual, expected):
    for a, e in zip(actual, expected):
        scale = float(e.abs().max()) or 1.0
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
@pytest.mark.parametrize("method, wrapper, options", WRAPPERS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(WRAPPERS)])
def test_one_step_equals_manual(method, wrapper, options, features):
    model, x, y, opt = wrapped_model(wrapper, K=3, **options)
    losses, z = task_losses(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MGDAUB's note when features= is missing
        last = opt.backward(losses, features=z if features else None)
    expected = manual_grads(model, x, y, _reference_of(method, wrapper, options, last, features), features=features)
    _close(grads_of(model), expected)
    assert last is opt.last and last.method == method and last.weights.shape == (3,)
    assert last.gram.shape == (3, 3)


@pytest.mark.parametrize("wrapper", [PCGrad, CAGrad, NashMTL, IMTL, MGDA, MGDAUB, FairGrad, ConFIG, AlignedMTL])
def test_loop_and_batched_paths_agree(wrapper):
    results = []
    for grad_mode in ("loop", "batched"):
        extra = {"seed": 0} if wrapper is PCGrad else {}
        model, x, y, opt = wrapped_model(wrapper, K=3, model_seed=2, batch_seed=5, grad_mode=grad_mode, **extra)
        losses, z = task_losses(model, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.backward(losses)
        results.append(grads_of(model))
    _close(results[1], results[0])


def test_imtl_l_scales_losses_and_trains_log_scales():
    model, x, y, opt = wrapped_model(IMTL, K=3, model_seed=3, batch_seed=6, num_tasks=3, imtl_l=True)
    assert opt.param_groups[-1]["params"] == [opt.log_scales]
    s = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    with torch.no_grad():
        opt.log_scales.copy_(s)
    losses, _ = task_losses(model, x, y)
    opt.backward(losses)
    # manual: IMTL-G on the gradients of e^{sᵢ}Lᵢ, heads the plain gradient of Σ e^{sᵢ}Lᵢ
    scaled_losses = lambda m, xx, yy: ([l * float(e) for l, e in zip(task_losses(m, xx, yy)[0], s.exp())], None)
    import mtl_model

    original = mtl_model.task_losses
    mtl_model.task_losses = scaled_losses
    try:
        expected = manual_grads(model, x, y, lambda J, L: reference.imtl(J).direction)
    finally:
        mtl_model.task_losses = original
    _close(grads_of(model), expected)
    values = torch.stack([l.detach() for l in losses])
    torch.testing.assert_close(opt.log_scales.grad, s.exp() * values - 1)  # ∂/∂s (e^s L − s)


def test_task_specific_weighted_gives_heads_weighted_gradients():
    model, x, y, opt = wrapped_model(CAGrad, K=3, model_seed=4, batch_seed=7, task_specific="weighted")
    losses, _ = task_losses(model, x, y)
    weights = opt.backward(losses).weights
    losses, _ = task_losses(model, x, y)
    for k, head in enumerate(model.heads):
        for p, g in zip(head.parameters(), torch.autograd.grad(losses[k], list(head.parameters()), retain_graph=True)):
            torch.testing.assert_close(p.grad, weights[k] * g)


def test_explicit_shared_params_and_detected_roles():
    model, x, y, opt = wrapped_model(NashMTL, K=3, model_seed=5)
    opt.backward(task_losses(model, x, y)[0])
    trunk_ids = {id(p) for p in model.trunk.parameters()}
    assert {id(p) for p in opt.roles.shared} == trunk_ids
    assert opt.roles.private_tasks == [(0,), (0,), (1,), (1,), (2,), (2,)]
    detected = grads_of(model)
    model.zero_grad(set_to_none=True)
    explicit = NashMTL(torch.optim.SGD(model.parameters(), lr=0.1), shared_params=list(model.trunk.parameters()))
    explicit.backward(task_losses(model, x, y)[0])
    _close(grads_of(model), detected)


def test_mgdaub_warns_without_features_once():
    model, x, y, opt = wrapped_model(MGDAUB, K=2)
    with pytest.warns(UserWarning, match="features="):
        opt.backward(task_losses(model, x, y)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.backward(task_losses(model, x, y)[0])
        losses, z = task_losses(model, x, y)
        opt.backward(losses, features=z)


def test_gradients_accumulate_like_backward():
    model, x, y, opt = wrapped_model(CAGrad, K=3, model_seed=6)
    opt.backward(task_losses(model, x, y)[0])
    once = grads_of(model)
    opt.backward(task_losses(model, x, y)[0])
    _close(grads_of(model), [2 * g for g in once])


def test_single_task_gets_its_gradient():
    model, x, y, opt = wrapped_model(IMTL, K=1, model_seed=7, imtl_l=False)
    losses, _ = task_losses(model, x, y)
    opt.backward(losses)
    expected = torch.autograd.grad(task_losses(model, x, y)[0][0], list(model.parameters()))
    _close(grads_of(model), list(expected))


def test_diagnostics_are_plain_numbers():
    model, x, y, opt = wrapped_model(PCGrad, K=3, model_seed=8, seed=0)
    last = opt.backward(task_losses(model, x, y)[0])
    facts = opt.diagnostics()
    assert facts["conflicts"] == int(last.conflicts) and len(facts["weights"]) == 3
    assert torch.allclose(torch.tensor(facts["cosine"], dtype=torch.float64), last.cosine.double())
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, list(model.trunk.parameters()), retain_graph=True)])
                     for l in task_losses(model, x, y)[0]])
    torch.testing.assert_close(last.gram, J @ J.T)
    expected_conflicts = sum(int((J[i] @ J[j]) < 0) for i in range(3) for j in range(i + 1, 3))
    assert facts["conflicts"] == expected_conflicts


def test_losses_as_one_tensor_and_retain_graph():
    model, x, y, opt = wrapped_model(CAGrad, K=3, model_seed=9)
    opt.backward(task_losses(model, x, y)[0])
    as_list = grads_of(model)
    model.zero_grad(set_to_none=True)
    losses, _ = task_losses(model, x, y)
    opt.backward(torch.stack(losses), retain_graph=True)
    _close(grads_of(model), as_list)
    sum(losses).backward()  # the graph is still there


@pytest.mark.parametrize(
    "method, wrapper",
    [("pcgrad", PCGrad), ("cagrad", CAGrad), ("nash_mtl", NashMTL), ("imtl", IMTL), ("mgda", MGDA),
     ("fairgrad", FairGrad), ("config", ConFIG), ("aligned_mtl", AlignedMTL)],
)
def test_a_wrapper_has_its_functional_names_defaults(method, wrapper):
    """Same name, same maths: the wrapper's defaults are mk.aggregate(J, method)'s."""
    model, x, y, opt = wrapped_model(wrapper, K=3)
    assert opt.method == method
    assert opt.weighting.options() == make_weighting(method).options()
    opt.backward(task_losses(model, x, y)[0])
    assert len(opt.param_groups) == 1  # no parameter group of its own (IMTL-L's needs imtl_l=True)


def test_imtl_l_and_mgda_ub_are_named_variants():
    model = TrunkHeads(K=3)
    imtl = IMTL(torch.optim.SGD(model.parameters(), lr=0.1))
    assert not imtl.imtl_l and imtl.log_scales is None
    with pytest.raises(ValueError, match="imtl_l=True"):
        IMTL(torch.optim.SGD(model.parameters(), lr=0.1), scale_group={"lr": 0.5})
    ub = MGDAUB(torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(ub, MGDA) and ub.weighting.normalization == "loss+"
    assert MGDA(torch.optim.SGD(model.parameters(), lr=0.1)).weighting.normalization == "none"
