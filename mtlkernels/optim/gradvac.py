"""GradVac as a drop-in optimizer (Wang et al., "Gradient Vaccine", ICLR 2021)."""
from __future__ import annotations

from typing import Any

import torch

from .pcgrad import SeededOrders, generator_from


class GradVac(SeededOrders):
    """Shared parameters get Σᵢ gᵢ', each gᵢ corrected towards the EMA cosine target of every other
    task in a random order per task; task-specific ones their plain gradient.

    Args:
        optimizer: the wrapped torch optimizer.
        beta: EMA rate of the cosine targets, in [0, 1] (default 0.5: torchjd's and LibMTL's).
        eps: added to the denominators (default 0, the paper's formulas; torchjd's is 1e-8).
        target_update: "always" (default: the paper, torchjd) or "corrected" (LibMTL).
        seed, generator, order: the visiting orders, as :class:`~mtlkernels.optim.PCGrad`.
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.

    The targets (and the generator's state) are in ``state_dict()``.
    """

    method = "gradvac"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        beta: float = 0.5,
        eps: float = 0.0,
        target_update: str = "always",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        order: Any = None,
        **options: Any,
    ) -> None:
        generator = generator_from(seed, generator)
        super().__init__(
            optimizer, beta=beta, eps=eps, target_update=target_update, generator=generator, order=order, **options
        )
