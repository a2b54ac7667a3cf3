"""PCGrad as a drop-in optimizer (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


def generator_from(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """A private CPU generator seeded with ``seed``, or ``generator`` (not both)."""
    if seed is not None:
        if generator is not None:
            raise ValueError("give seed= or generator=, not both")
        return torch.Generator().manual_seed(seed)
    return generator


class SeededOrders(MultiTaskOptimizer):
    """A wrapper whose weighting draws visiting orders from ``weighting.generator`` (PCGrad,
    GradVac): the generator's state goes into ``state_dict()``, so a resumed run draws the same
    orders."""

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        if self.weighting.generator is not None:
            state["generator"] = self.weighting.generator.get_state()
        return state

    def _check_method_state(self, state: Any, K: int | None) -> None:
        super()._check_method_state(state, K)
        if "generator" in state:
            if self.weighting.generator is None:
                raise ValueError(
                    f"the state_dict holds a generator state but this {type(self).__name__} draws from torch's global RNG"
                )
            try:
                torch.Generator().set_state(state["generator"])
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"the state_dict's generator state is not a CPU generator's state: {error}") from None

    def _load_method_state(self, state: dict[str, Any]) -> None:
        super()._load_method_state(state)
        if "generator" in state:
            self.weighting.generator.set_state(state["generator"])


class PCGrad(SeededOrders):
    """Shared parameters get Σᵢ gᵢ' (each gᵢ projected off the gⱼ it conflicts with, in a random
    order per task); task-specific ones their plain gradient (no surgery).

    Args:
        optimizer: the wrapped torch optimizer.
        reduction: "sum" (default: authors' TF code, LibMTL, torchjd) or "mean".
        seed: seed of a private torch.Generator for the visiting orders; its state is saved in
            ``state_dict()``, so a resumed run draws the same orders.
        generator: a CPU torch.Generator instead of ``seed`` (also saved). With neither, orders
            come from torch's global RNG (not saved).
        order: fixed [K, K] visiting orders instead (row i: task i's order).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "pcgrad"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        reduction: str = "sum",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        order: Any = None,
        **options: Any,
    ) -> None:
        generator = generator_from(seed, generator)
        super().__init__(optimizer, reduction=reduction, generator=generator, order=order, **options)
