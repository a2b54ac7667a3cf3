"""Mean of the task gradients: w = 𝟙/K (plain multi-task training, up to the 1/K factor)."""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_gram, check_losses
from .base import Solution, Weighting


class Mean(Weighting):
    """w = 𝟙/K, so d = g₀ = (1/K)·Σₖ gₖ. Diagnostics: none.

    Every backend runs the same device-agnostic solve, on Γ's device with no host sync; Γ's values
    are not read, so they are not checked.
    """

    name = "mean"
    backends = ("torch", "cpp", "triton")
    reads_gram = False

    def __call__(self, gram: Tensor, losses: Tensor | None = None) -> Solution:
        K = check_gram(gram)
        check_losses(losses, K)
        self.resolve_backend(gram)  # a named backend must be able to run on Γ's device
        return self.solve_torch(gram, losses)

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """w = 𝟙/K on Γ's device."""
        K = gram.shape[0]
        return Solution(torch.full((K,), 1.0 / K, dtype=torch.float64, device=gram.device))
