"""Nash-MTL as a drop-in optimizer (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)."""
from __future__ import annotations

from typing import Any

import torch

from .base import MultiTaskOptimizer


class NashMTL(MultiTaskOptimizer):
    """Shared parameters get d = Σ αᵢgᵢ with Γα = 1/α (α > 0), clipped to ‖d‖ ≤ max_norm.

    Args:
        optimizer: the wrapped torch optimizer.
        update_every: solve for α on every n-th step (default 1); the steps between take one
            backward of Σ αₖLₖ with the last α, as the authors' ``update_weights_every`` does (see
            :class:`~mtlkernels.optim.base.MultiTaskOptimizer`).
        update_weights_every: the authors' name of ``update_every`` (an alias; give one of them).
        max_norm: clip ‖d‖ to this (default 1.0, the authors'; at the solution ‖d‖² = K, so it
            always clips); 0 disables.
        optim_niter: the authors' CCP iteration count (default 20; used by ``solver="ccp"``).
        solver: "newton" (default: the exact fixed point Γα = 1/α) or "ccp" (the authors' sequence
            of convex problems with cvxpy + ECOS, bit-identical to torchjd on the same Gram).
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.

    α, the reused weights and the step counter are in ``state_dict()``.
    """

    method = "nash_mtl"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        update_every: int | None = None,
        update_weights_every: int | None = None,
        max_norm: float = 1.0,
        optim_niter: int = 20,
        solver: str = "newton",
        **options: Any,
    ) -> None:
        if update_every is not None and update_weights_every is not None and update_every != update_weights_every:
            raise ValueError(
                f"update_every={update_every!r} and update_weights_every={update_weights_every!r}: the second is an "
                "alias of the first; give one of them"
            )
        every = next((n for n in (update_every, update_weights_every) if n is not None), 1)
        super().__init__(
            optimizer, update_every=every, max_norm=max_norm, optim_niter=optim_niter, solver=solver, **options,
        )
