"""Random loss weighting as a drop-in optimizer (Lin et al., TMLR 2022): one backward of Σₖ wₖ·Lₖ
per step."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._checks import check_option
from .loss_weighting import LossWeighting, StepPlan, check_state_keys


def _softmax_normal(K: int, generator: torch.Generator) -> Tensor:
    return torch.softmax(torch.randn(K, generator=generator, dtype=torch.float64), 0)


def _softmax_uniform(K: int, generator: torch.Generator) -> Tensor:
    return torch.softmax(torch.rand(K, generator=generator, dtype=torch.float64), 0)


def _dirichlet(K: int, generator: torch.Generator) -> Tensor:
    """Dirichlet(1, …, 1): K Exponential(1) draws −log(1 − U), normalised."""
    e = -torch.log1p(-torch.rand(K, generator=generator, dtype=torch.float64))
    return e / e.sum()


#: the weights' distribution: softmax of a standard normal (the paper's main choice, LibMTL's),
#: softmax of U(0, 1), or Dirichlet(1) (already on the simplex)
RLW_DISTRIBUTIONS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "normal": _softmax_normal, "uniform": _softmax_uniform, "dirichlet": _dirichlet,
}


class RLW(LossWeighting):
    """Random loss weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022).

    Each step draws fresh weights on the simplex (Σ wₖ = 1): ``distribution="normal"`` (default,
    the paper's main variant and LibMTL's) w = softmax(λ̃), λ̃ ~ N(0, I); ``"uniform"``
    w = softmax(λ̃), λ̃ ~ U(0, 1)ᴷ; ``"dirichlet"`` w ~ Dirichlet(1, …, 1) (normalised
    exponentials). The draws come from a CPU ``torch.Generator``: seeded identically on every rank
    (the default ``seed=0``), every rank draws the same weights; a rejected step draws nothing.

    Args:
        optimizer: the wrapped torch optimizer.
        distribution: "normal", "uniform" or "dirichlet".
        seed: the generator's seed (default 0), or ``generator=`` a CPU ``torch.Generator``.
        **options: :class:`LossWeighting`'s arguments.

    State: the generator's state.
    """

    name = "rlw"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, distribution: str = "normal", seed: int = 0,
        generator: torch.Generator | None = None, **options: Any,
    ) -> None:
        check_option("distribution", distribution, tuple(RLW_DISTRIBUTIONS))
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator; got one on {generator.device}")
        self.distribution = distribution
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        super().__init__(optimizer, **options)

    def options(self) -> dict[str, Any]:
        return {"distribution": self.distribution, **super().options()}

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        before = self.generator.get_state()
        weights = RLW_DISTRIBUTIONS[self.distribution](values.shape[0], self.generator)
        after = self.generator.get_state()
        self.generator.set_state(before)  # drawn again for good by _commit_plan
        return StepPlan(weights, {"generator": after})

    def _commit_plan(self, plan: StepPlan) -> None:
        self.generator.set_state(plan.state["generator"])

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        check_state_keys(state, {"generator"}, "RLW")
        trial = torch.Generator()
        try:
            trial.set_state(state["generator"])
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"the RLW state's 'generator' is not a CPU generator state: {error}") from None

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
