"""A small real multi-task model (shared trunk, K heads) and the manual step the optimizers must
reproduce: per-task gradients with torch.autograd.grad, the float64 reference of the method,
and the plain gradient for the heads."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor


class TrunkHeads(nn.Module):
    """x → z = trunk(x) → one scalar-output head per task."""

    def __init__(self, K: int = 3, d_in: int = 6, width: int = 12, d_z: int = 5, seed: int = 0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, d_z), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(d_z, 1) for _ in range(K)])
        self.to(dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.trunk(x)  # heads of another dtype (set after construction) get z in theirs
        return z, torch.cat([h(z.to(h.weight.dtype)).to(z.dtype) for h in self.heads], dim=1)


def batch(K: int = 3, B: int = 16, d_in: int = 6, seed: int = 1, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=g, dtype=torch.float64)
    # targets that pull the tasks apart: task k regresses ±(k+1)·x₀ (odd tasks have the opposite sign)
    y = torch.stack([(-1) ** k * (k + 1) * x[:, 0] + 0.1 * torch.randn(B, generator=g, dtype=torch.float64) for k in range(K)], 1)
    return x.to(dtype), y.to(dtype)


def task_losses(model: TrunkHeads, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
    z, out = model(x)
    return [((out[:, k] - y[:, k]) ** 2).mean() for k in range(y.shape[1])], z


def wrapped_model(wrapper: Callable[..., Any], K: int = 3, model_seed: int = 0, batch_seed: int = 1, **options: Any) -> tuple[TrunkHeads, Tensor, Tensor, Any]:
    """A :class:`TrunkHeads` with K tasks (``model_seed``), a :func:`batch` (``batch_seed``), and
    ``wrapper(SGD(lr=0.1) on the model's parameters, **options)``: (model, x, y, optimizer)."""
    model = TrunkHeads(K=K, seed=model_seed)
    x, y = batch(K=K, seed=batch_seed)
    return model, x, y, wrapper(torch.optim.SGD(model.parameters(), lr=0.1), **options)


def manual_grads(
    model: TrunkHeads, x: Tensor, y: Tensor, direction_of: Callable[[Tensor, Tensor], Tensor], features: bool = False
) -> list[Tensor]:
    """The expected .grad of every parameter (model order) after one multi-task backward.

    direction_of(J, losses) → d over the trunk (J path) or the weights w (features path). Heads get
    the plain gradient of Σ Lₖ.
    """
    losses, z = task_losses(model, x, y)
    trunk = list(model.trunk.parameters())
    values = torch.stack([l.detach() for l in losses]).double()
    if features:
        Jz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].reshape(-1) for l in losses]).double()
        w = direction_of(Jz, values)
        combined = sum(float(wk) * l for wk, l in zip(w, losses))
        d_parts = torch.autograd.grad(combined, trunk, retain_graph=True)
    else:
        J = torch.stack(
            [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, trunk, retain_graph=True)]) for l in losses]
        ).double()
        d = direction_of(J, values)
        d_parts, start = [], 0
        for p in trunk:
            d_parts.append(d[start : start + p.numel()].view_as(p).to(p.dtype))
            start += p.numel()
    heads = [p for h in model.heads for p in h.parameters()]
    plain = torch.autograd.grad(sum(losses), heads)
    return list(d_parts) + list(plain)


def grads_of(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else None for p in model.parameters()]


def same_state(a, b, where="state"):
    """Assert exact equality of nested state (tensors bit for bit, NaN-aware)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def snapshot(model: nn.Module, opt) -> dict:
    """Copies of everything a multi-task step may change: parameters, .grad, the wrapper's own
    parameters and gradients, and the whole state_dict (wrapped optimizer and method)."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": grads_of(model),
        "owned": [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in opt._owned],
        "optimizer": copy.deepcopy(opt.state_dict()),
    }
