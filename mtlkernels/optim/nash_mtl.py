"""Nash-MTL as a drop-in optimizer (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class NashMTL(MultiTaskOptimizer):
    """Shared parameters get d = Σ αᵢgᵢ with Γα = 1/α (α > 0), clipped to ‖d‖ ≤ max_norm.

    Args:
        optimizer: the wrapped torch optimizer.
        update_weights_every: solve for α every this many steps, reuse it between (default 1).
        max_norm: clip ‖d‖ to this (default 1.0, the authors'; at the solution ‖d‖² = K, so it
            always clips); 0 disables.
        optim_niter: the authors' CCP iteration count (default 20; used by ``solver="ccp"``).
        solver: "newton" (default: the exact fixed point Γα = 1/α) or "ccp" (the authors' sequence
            of convex problems with cvxpy + ECOS, bit-identical to torchjd on the same Gram).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.

    α and the step counter are in ``state_dict()``.
    """

    method = "nash_mtl"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        update_weights_every: int = 1,
        max_norm: float = 1.0,
        optim_niter: int = 20,
        solver: str = "newton",
        **options: Any,
    ) -> None:
        super().__init__(
            optimizer, update_weights_every=update_weights_every, max_norm=max_norm, optim_niter=optim_niter,
            solver=solver, **options,
        )
