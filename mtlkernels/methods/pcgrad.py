"""PCGrad's K-space solve (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

gᵢ' = cᵢᵀJ with cᵢ = eᵢ; for j in order[i]: if (Γcᵢ)ⱼ < 0 and Γⱼⱼ > 0, cᵢ[j] −= (Γcᵢ)ⱼ/Γⱼⱼ
(the projection of gᵢ' off gⱼ, as gᵢ'·gⱼ = (Γcᵢ)ⱼ); weights w = Σᵢ cᵢ, or their mean.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option
from .._extension import extension
from .base import Solution, Weighting

REDUCTIONS = ("sum", "mean")


def check_order(order: Any) -> Tensor:
    """``order`` as a [K, K] int64 CPU tensor whose rows are permutations of 0..K-1, or a ValueError."""
    try:
        order = torch.as_tensor(order)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"order must be a [K, K] integer tensor; got {type(order).__name__} ({exc})") from None
    if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
        raise ValueError(f"order must hold integer task indices; got dtype {order.dtype}")
    if order.dim() != 2 or order.shape[0] != order.shape[1] or order.shape[0] == 0:
        raise ValueError(
            f"order must be [K, K] (row i: the order in which task i visits the tasks); got shape {tuple(order.shape)}"
        )
    order = order.to(device="cpu", dtype=torch.int64).contiguous()
    K = order.shape[0]
    expected = torch.arange(K)
    for i, row in enumerate(order):
        if not torch.equal(row.sort().values, expected):
            raise ValueError(f"order[{i}] = {row.tolist()} is not a permutation of 0..{K - 1}")
    return order


def draw_orders(K: int, generator: torch.Generator | None, device: torch.device | None = None) -> Tensor:
    """Fresh visiting orders [K, K]: keys = torch.rand(K, K, float64); row i is i first (a no-op
    visit), then the other tasks by increasing key — a uniform random permutation of the others
    per task, as in the paper's Algorithm 1. ``generator=None`` draws from torch's global RNG.

    With a CUDA ``device`` the orders are made there; without a generator the keys are drawn there
    too, from the device's RNG, so no host round trip happens and the draw is graph-capturable."""
    if device is not None and device.type != "cpu":
        keys = torch.rand(K, K, generator=generator, dtype=torch.float64, device="cpu" if generator is not None else device)
        keys = keys.to(device, non_blocking=True)
        keys.diagonal().fill_(-1.0)
        return torch.argsort(keys, dim=1, stable=True)
    keys = torch.rand(K, K, generator=generator, dtype=torch.float64).numpy()
    np.fill_diagonal(keys, -1.0)
    return torch.from_numpy(np.argsort(keys, axis=1))


class VisitingOrders:
    """The ``order`` / ``generator`` options of the methods that visit the tasks in turn (PCGrad,
    GradVac): fixed [K, K] orders, or fresh ones drawn every call (:func:`draw_orders`)."""

    order: Tensor | None
    generator: torch.Generator | None

    def set_visiting_orders(self, order: Any, generator: torch.Generator | None) -> None:
        """Check and store ``order`` and ``generator``; a ValueError names the wrong one."""
        if order is not None and generator is not None:
            raise ValueError("give order= (fixed orders) or generator= (fresh random orders), not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(f"generator must be a torch.Generator; got {type(generator).__name__}")
            if generator.device.type != "cpu":
                raise ValueError(f"generator must be a CPU torch.Generator; got one on {generator.device}")
        self.order = None if order is None else check_order(order)
        self._order_on_device: Tensor | None = None  # a cache of the fixed order on the device, not state
        self.generator = generator

    def visiting_orders(self, K: int, device: torch.device | None = None) -> Tensor:
        """The [K, K] int64 orders of the next solve, on ``device`` (default CPU): the fixed
        ``order`` (copied to a device once), or freshly drawn ones (:func:`draw_orders`)."""
        if self.order is None:
            return draw_orders(K, self.generator, device)
        if self.order.shape[0] != K:
            raise ValueError(f"order is {tuple(self.order.shape)} but there are K = {K} tasks")
        if device is None or device.type == "cpu":
            return self.order
        if self._order_on_device is None or self._order_on_device.device != device:
            self._order_on_device = self.order.to(device)
        return self._order_on_device


class PCGradWeighting(VisitingOrders, Weighting):
    """PCGrad: project each task gradient off the ones it conflicts with, in turn; sum the results.

    Args:
        reduction: "sum" (default: the authors' TF code, LibMTL, torchjd) or "mean" (divide by K).
        order: optional [K, K] integer tensor; row i is the order in which task i visits the tasks
            (a permutation of 0..K-1). Every listed task is visited with the same rule, i included:
            a no-op while gᵢ'·gᵢ ≥ 0, always so when i comes first. The authors' TF code (fixed
            order) is ``torch.arange(K).repeat(K, 1)``.
        generator: CPU torch.Generator for fresh orders every call (see :func:`draw_orders`); with
            neither ``order`` nor ``generator``, orders come from torch's global RNG.
        backend: "auto", "torch", "cpp" or "triton" (on-device; orders drawn on the device from
            its RNG when no generator is given).

    Diagnostics: "projections" (number made), "orthogonality_residual" (max over projections of
    |(Γcᵢ)ⱼ| / Σₖ|Γⱼₖcᵢₖ| right after it: zero up to rounding), "order" (the [K, K] orders used).

    Variant: the paper's PCGrad on the full task gradients, summed (or averaged); the wrapper
    :class:`mtlkernels.PCGrad` runs the same weighting.
    """

    name = "pcgrad"

    def __init__(
        self,
        *,
        reduction: str = "sum",
        order: Any = None,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(backend=backend)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.set_visiting_orders(order, generator)

    def options(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "order": self.order, "generator": self.generator, "backend": self.backend}

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """All K tasks advance together: step t visits task order[i, t] for every task i at once."""
        K = gram.shape[0]
        order = self.visiting_orders(K)
        visited_at_step = order.T.contiguous()  # row t: the task each task visits at step t
        diag = gram.diagonal()
        C = torch.eye(K, dtype=torch.float64)  # row i: cᵢ
        projections = 0
        residual = torch.zeros((), dtype=torch.float64)
        for j in visited_at_step:
            rows = gram.index_select(0, j)  # row i: Γ[order[i, t]]
            squared_norms = diag.index_select(0, j)
            inner = (C * rows).sum(dim=1)  # gᵢ'·gⱼ
            project = (inner < 0) & (squared_norms > 0)
            if not bool(project.any()):
                continue
            step = torch.where(project, inner / torch.where(project, squared_norms, 1.0), 0.0)
            C.scatter_add_(1, j[:, None], -step[:, None])  # cᵢ[j] −= (Γcᵢ)ⱼ/Γⱼⱼ
            terms = C * rows
            magnitude = terms.abs().sum(dim=1)
            after = terms.sum(dim=1).abs() / torch.where(magnitude > 0, magnitude, 1.0)
            residual = torch.maximum(residual, torch.where(project, after, 0.0).max())
            projections += int(project.sum())
        weights = C.sum(dim=0)
        if self.reduction == "mean":
            weights = weights / K
        diagnostics = {"projections": projections, "orthogonality_residual": float(residual), "order": order}
        return Solution(weights, diagnostics)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[Any, dict[str, Any]]:
        order = self.visiting_orders(gram.shape[0])
        weights, diagnostics = extension().pcgrad_solve(gram.numpy(), order.numpy(), self.reduction == "mean")
        diagnostics["order"] = order
        return weights, diagnostics

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """One program, no host sync; orders drawn on the device when no generator is given."""
        from ..kernels.solve_pcgrad import pcgrad_solve

        order = self.visiting_orders(gram.shape[0], gram.device)
        weights, diagnostics = pcgrad_solve(gram, order, self.reduction == "mean")
        diagnostics["order"] = order
        return Solution(weights, diagnostics)
