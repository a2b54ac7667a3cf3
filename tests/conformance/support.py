"""Shared pieces of the conformance suite: the (method, backend) grid, input builders, the float64
reference call, and the comparisons every property test makes.

Tolerances are relative to the natural scale of a combination, Σᵢ|wᵢ|·‖gᵢ‖ (the size of the
terms whose rounding d carries), never to ‖d‖, which vanishes on opposite or Pareto-stationary
inputs. Weights are compared through the gradients they multiply, |Δwᵢ|·‖gᵢ‖, so a method whose
weights scale as 1/‖gᵢ‖ (Nash-MTL) is judged like the others.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
import torch
from torch import Tensor

import mtlkernels as mk
from mtlkernels import _extension

METHODS = tuple(mk.METHODS)
BACKENDS = ("torch", "cpp", "triton")
CPP_AVAILABLE = _extension.available

_TRITON_HERE = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
)
_BACKEND_MARKS = {
    "auto": [],
    "torch": [],
    "cpp": [pytest.mark.skipif(not CPP_AVAILABLE, reason="C++ extension not built")],
    "triton": [pytest.mark.skipif(not _TRITON_HERE, reason="needs triton and CUDA, or TRITON_INTERPRET=1")],
}


def device(backend: str) -> torch.device:
    """Where a backend's inputs live: Triton on CUDA when there is one (else the interpreter on
    the CPU), everything else on the CPU."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


def backend_marks(method: str, backend: str) -> list[Any]:
    """The marks of ``backend``, and a skip where ``method`` has no such solve (a method without
    a Triton solve runs its torch solve on CUDA: the "auto" and "torch" rows cover it)."""
    marks = list(_BACKEND_MARKS[backend])
    if backend not in ("auto", "torch") and backend not in mk.METHODS[method].backends:
        marks.append(pytest.mark.skip(reason=f"{method} has no {backend} solve"))
    return marks


def grid(
    methods: tuple[str, ...] = METHODS,
    backends: tuple[str, ...] = BACKENDS,
    xfail: dict[tuple[str, str], str] | None = None,
) -> list[Any]:
    """pytest params (method, backend) for every pair the method implements (others skipped); a
    pair listed in ``xfail`` is a strict xfail with the given reason (a known gap: the test flips
    loudly once it is fixed)."""
    xfail = xfail or {}
    params = []
    for method in methods:
        for backend in backends:
            marks = backend_marks(method, backend)
            if (method, backend) in xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=xfail[(method, backend)]))
            params.append(pytest.param(method, backend, marks=marks, id=f"{method}-{backend}"))
    return params


def backend_marks(method: str, backend: str) -> list[Any]:
    """The marks of (method, backend): the backend's availability, and a skip where the method has
    no solve of its own on that backend (it runs in torch there under backend="auto")."""
    marks = list(_BACKEND_MARKS[backend])
    if backend not in ("auto", *mk.METHODS[method].backends):
        marks.append(pytest.mark.skip(reason=f"{method} has no {backend} solve (backend='auto' runs it in torch)"))
    return marks


def backend_params(backends: tuple[str, ...] = BACKENDS, method: str | None = None) -> list[Any]:
    return [
        pytest.param(b, marks=_BACKEND_MARKS[b] if method is None else backend_marks(method, b), id=b) for b in backends
    ]


# -- inputs ------------------------------------------------------------------------------------------
def random_J(K: int, N: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Gaussian task gradients [K, N] with row norms spread over a factor ~4 (no ties)."""
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(K, N, generator=generator, dtype=torch.float64)
    J = J * (0.5 + 1.5 * torch.rand(K, 1, generator=generator, dtype=torch.float64))
    return J.to(dtype)


def random_orders(K: int, seed: int) -> Tensor:
    """PCGrad visiting orders [K, K]: row i an arbitrary (seeded) permutation of 0..K-1."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.stack([torch.randperm(K, generator=generator) for _ in range(K)])


#: the methods that visit the tasks in an order (PCGrad's and GradVac's ``order=``)
ORDERED = ("pcgrad", "gradvac")


def deterministic_options(method: str, K: int, seed: int = 0) -> dict[str, Any]:
    """Options that make a solve deterministic: PCGrad and GradVac get fixed visiting orders, so
    every backend and the reference visit the tasks in the same sequence."""
    return {"order": random_orders(K, seed)} if method in ORDERED else {}


def reorder(order: Tensor, permutation: Tensor) -> Tensor:
    """The orders for J[permutation]: new task i is old task permutation[i], and it visits the old
    tasks of its old row under their new indices."""
    inverse = torch.argsort(permutation)
    return inverse[order[permutation]]


def restrict(order: Tensor, keep: Tensor) -> Tensor:
    """The orders for J[keep] (keep: sorted indices): each kept row without the dropped tasks,
    re-indexed."""
    new_index = torch.full((order.shape[0],), -1, dtype=torch.long)
    new_index[keep] = torch.arange(keep.numel())
    rows = [new_index[row][new_index[row] >= 0] for row in order[keep]]
    return torch.stack(rows)


# -- running -----------------------------------------------------------------------------------------
def run(J: Tensor, method: str, backend: str, **options: Any) -> mk.AggregationResult:
    """mk.aggregate of J on the backend's device (options, losses included, as given: host values);
    the direction and weights come back to the CPU."""
    result = mk.aggregate(J.to(device(backend)), method, backend=backend, **options)
    result.direction = result.direction.cpu()
    result.weights = result.weights.cpu()
    return result


def reference(J: Tensor, method: str, **options: Any) -> mk.reference.ReferenceResult:
    """The float64 full-vector reference of ``method`` (mtlkernels.reference) with the same options."""
    return getattr(mk.reference, method)(J.to(torch.float64), **options)


# -- comparisons -------------------------------------------------------------------------------------
def natural_scale(weights: Tensor, J: Tensor) -> float:
    """Σᵢ|wᵢ|·‖gᵢ‖ (float64), floored at the smallest normal number."""
    norms = torch.linalg.vector_norm(J.to(torch.float64), dim=1)
    return max(float(weights.to(torch.float64).abs() @ norms), torch.finfo(torch.float64).tiny)


def assert_direction_is_combination(result: mk.AggregationResult, J: Tensor) -> None:
    """d and w are finite, w is [K], and d = wᵀJ (recomputed in float64) up to the rounding of
    the direction's dtype: |dₙ − (wᵀJ)ₙ| ≤ 4K·eps·(|w|ᵀ|J|)ₙ per entry."""
    K = J.shape[0]
    weights = result.weights.to(torch.float64)
    assert weights.shape == (K,), f"weights have shape {tuple(weights.shape)}, expected ({K},)"
    assert bool(torch.isfinite(weights).all()), f"non-finite weights {weights.tolist()}"
    direction = result.direction.to(torch.float64)
    assert direction.shape == J.shape[1:], f"direction has shape {tuple(direction.shape)}"
    assert bool(torch.isfinite(direction).all()), "non-finite direction for finite input"
    J64 = J.to(torch.float64)
    eps = torch.finfo(result.direction.dtype).eps
    bound = 4 * K * eps * (weights.abs() @ J64.abs()) + torch.finfo(torch.float64).tiny
    error = (direction - weights @ J64).abs()
    worst = int((error / bound).argmax())
    assert bool((error <= bound).all()), (
        f"d ≠ wᵀJ: entry {worst} off by {float(error[worst]):.3g} (allowed {float(bound[worst]):.3g})"
    )


def assert_weights_close(actual: Tensor, expected: Tensor, J: Tensor, rtol: float, what: str = "weights") -> None:
    """maxᵢ |Δwᵢ|·‖gᵢ‖ ≤ rtol·Σᵢ|w_expected,ᵢ|·‖gᵢ‖ (weights of zero gradients are not compared)."""
    norms = torch.linalg.vector_norm(J.to(torch.float64), dim=1)
    actual, expected = actual.to(torch.float64).cpu(), expected.to(torch.float64).cpu()
    error = float(((actual - expected).abs() * norms).max())
    scale = natural_scale(expected, J)
    assert error <= rtol * scale, (
        f"{what} differ by {error / scale:.3g} of Σ|w|‖g‖ (rtol {rtol:g}):\n  got      {actual.tolist()}\n"
        f"  expected {expected.tolist()}"
    )


def assert_direction_close(actual: Tensor, expected: Tensor, scale: float, rtol: float, what: str = "direction") -> None:
    """‖Δd‖ ≤ rtol·scale (scale: the natural scale Σᵢ|wᵢ|·‖gᵢ‖ of the expected combination)."""
    error = float(torch.linalg.vector_norm(actual.to(torch.float64).cpu() - expected.to(torch.float64).cpu()))
    assert error <= rtol * scale, f"{what} off by {error / scale:.3g} of its natural scale (rtol {rtol:g})"


# -- diagnostics -------------------------------------------------------------------------------------
def kind(value: Any) -> Any:
    """The structure of a plain-Python diagnostic: its type name, and for a list each element's kind
    (so a [K] mask of bools and a list of indices differ)."""
    if isinstance(value, list):
        return ("list", tuple(kind(v) for v in value))
    return type(value).__name__


def describe(value: Any) -> Any:
    """Type, and for a tensor also dtype and shape, of a diagnostic as returned."""
    if isinstance(value, Tensor):
        return ("Tensor", value.dtype, tuple(value.shape))
    return type(value).__name__
