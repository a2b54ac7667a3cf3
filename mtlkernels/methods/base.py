"""The K-space half of every method: a *weighting* maps the Gram matrix Γ (and, for some
methods, the K loss values) to the K weights w of the direction d = Σₖ wₖ·gₖ.

Subclasses implement :meth:`Weighting.solve` for each backend they support; the base class checks
inputs, dispatches through :mod:`mtlkernels.backend`, and carries the optimizer-style state API
(``state_dict``/``load_state_dict``/``reset``) that stateful methods (Nash-MTL) fill in.
"""
from __future__ import annotations

import importlib
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from .. import backend as _backend
from .._checks import check_gram, check_losses


@dataclass
class Solution:
    """Weights of one K-space solve and the solver's diagnostics.

    Attributes:
        weights: [K] float64 weights, on the device of the Gram matrix.
        diagnostics: certificate and solver facts, e.g. ``{"kkt_residual": 3e-16, "iterations": 4}``.
    """

    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


SolveFn = Callable[["Weighting", Tensor, "Tensor | None"], Solution]


def host_gram(gram: Tensor) -> Tensor:
    """Γ as a C-contiguous float64 CPU tensor, checked: a ValueError names a non-finite entry or a
    negative diagonal entry (then Γ is not J·Jᵀ of real gradients)."""
    gram = gram.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("the Gram matrix has a non-finite entry (NaN or Inf)")
    negative = (gram.diagonal() < 0).nonzero().flatten().tolist()
    if negative:
        raise ValueError(f"the Gram matrix has negative diagonal entries at {negative}: it is not J·Jᵀ")
    return gram


def triton_solver(module: str) -> SolveFn:
    """The on-device solve ``mtlkernels.kernels.<module>.solve_triton``, imported on first use, so
    importing a method never imports triton (and the kernel module may import the method's)."""

    def solve(self: "Weighting", gram: Tensor, losses: "Tensor | None") -> Solution:
        return importlib.import_module(f"mtlkernels.kernels.{module}").solve_triton(self, gram, losses)

    return solve


class Weighting(ABC):
    """Γ [K, K] (+ losses [K]) → weights [K].

    Class attributes:
        name: the method name used by :func:`mtlkernels.aggregate`.
        needs_losses: True when the weights depend on the loss values (e.g. MGDA "loss").
        solvers: ``{backend: solve function}``; "torch" must be present.
    """

    name: ClassVar[str]
    solvers: ClassVar[dict[str, SolveFn]]

    def __init__(self, *, backend: str = "auto") -> None:
        self.backend = _backend.check_backend(backend)

    @property
    def needs_losses(self) -> bool:
        return False

    def __call__(self, gram: Tensor, losses: Tensor | None = None) -> Solution:
        K = check_gram(gram)
        losses = check_losses(losses, K)
        if self.needs_losses and losses is None:
            raise ValueError(f"{self!r} needs the K loss values: pass losses=")
        solve = _backend.select(f"{self.name} solve", self.solvers, self.backend, gram.device)
        return solve(self, gram, losses)

    # -- state (stateless by default) -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; got state keys {sorted(state)}")

    def reset(self) -> None:
        """Forget any state carried between steps."""

    def options(self) -> dict[str, Any]:
        """The constructor options, for ``repr`` and logging."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"
