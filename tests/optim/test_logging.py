"""Flat scalars for loggers: ``AggregationResult.scalars()`` and ``opt.diagnostics(flat=True)``,
checked against literal values and against plain autograd."""
import math

import pytest
import torch

import mtlkernels as mk
from mtlkernels.optim import CAGrad, MultiTaskOptimizer
from mtl_model import TrunkHeads, batch, task_losses

# three task gradients with literal norms 1, 2, √2 and cosines 0, -1/√2, 1/√2 (one conflict)
J = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
LITERAL = {
    "weight/0": 1 / 3, "weight/1": 1 / 3, "weight/2": 1 / 3,
    "grad_norm/0": 1.0, "grad_norm/1": 2.0, "grad_norm/2": math.sqrt(2),
    "cosine/0_1": 0.0, "cosine/0_2": -1 / math.sqrt(2), "cosine/1_2": 1 / math.sqrt(2),
    "conflicts": 1.0,
}


def test_scalars_of_the_mean_are_the_literal_values():
    flat = mk.aggregate(J, "mean").scalars()
    assert flat.keys() == LITERAL.keys()
    assert all(type(v) is float for v in flat.values())
    for key, value in LITERAL.items():
        assert flat[key] == pytest.approx(value, rel=1e-15, abs=1e-15), key


def test_scalars_add_losses_and_the_solvers_scalar_diagnostics():
    res = mk.aggregate(J, "cagrad", c=0.5)
    flat = res.scalars(losses=[0.5, 1.5, 2.5])
    assert [flat[f"loss/{k}"] for k in range(3)] == [0.5, 1.5, 2.5]
    solver = {k: v for k, v in mk.diagnostics_to_python(res.diagnostics).items() if isinstance(v, (bool, int, float))}
    assert {"kkt_residual", "iterations", "degenerate"} <= solver.keys()
    assert {k for k in flat if k.startswith("solver/")} == {f"solver/{k}" for k in solver}
    for key, value in solver.items():
        assert flat[f"solver/{key}"] == float(value)
    assert "solver/active_set" not in flat  # task lists stay in res.diagnostics
    with pytest.raises(ValueError, match="got 2 losses for K = 3 tasks"):
        res.scalars(losses=[1.0, 2.0])


def test_mgda_tensor_diagnostics_are_left_out_and_scalar_ones_kept():
    res = mk.aggregate(J, "mgda", normalization="loss", losses=[1.0, 2.0, 3.0])
    flat = res.scalars()
    assert "solver/simplex_weights" not in flat and "solver/normalizers" not in flat
    assert flat["solver/iterations"] == float(res.diagnostics["iterations"])


@pytest.mark.parametrize("wrapper", ["mean", "cagrad"])
def test_optimizer_flat_diagnostics_match_autograd(wrapper):
    K = 3
    model = TrunkHeads(K=K, seed=2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = MultiTaskOptimizer(sgd, "mean") if wrapper == "mean" else CAGrad(sgd, c=0.5)
    assert opt.diagnostics(flat=True) == {}
    x, y = batch(K=K, seed=3)
    losses, _ = task_losses(model, x, y)
    shared = list(model.trunk.parameters())
    g = torch.stack([torch.cat([t.flatten() for t in torch.autograd.grad(l, shared, retain_graph=True)]) for l in losses])
    opt.backward(losses)
    flat = opt.diagnostics(flat=True)
    nested = opt.diagnostics()
    for k in range(K):
        assert flat[f"loss/{k}"] == float(losses[k])
        assert flat[f"grad_norm/{k}"] == pytest.approx(float(g[k].norm()), rel=1e-12)
        assert flat[f"weight/{k}"] == (pytest.approx(1 / K, rel=1e-15) if wrapper == "mean" else nested["weights"][k])
    cos = torch.nn.functional.cosine_similarity(g[:, None, :], g[None, :, :], dim=2)
    for i in range(K):
        for j in range(i + 1, K):
            assert flat[f"cosine/{i}_{j}"] == pytest.approx(float(cos[i, j]), rel=1e-12, abs=1e-14)
    assert flat["conflicts"] == float(sum(float(g[i] @ g[j]) < 0 for i in range(K) for j in range(i + 1, K)))
    assert "cosine/1_0" not in flat and "cosine/0_0" not in flat
    assert isinstance(nested["cosine"], list) and isinstance(nested["weights"], list)  # the nested form is unchanged


def test_flat_diagnostics_are_accepted_by_tensorboard(tmp_path):
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    writer = tensorboard.SummaryWriter(log_dir=str(tmp_path))
    writer.add_scalars("mtl", mk.aggregate(J, "cagrad").scalars(losses=[1.0, 2.0, 3.0]), global_step=0)
    writer.close()
    assert any(tmp_path.rglob("events.out.tfevents.*"))
