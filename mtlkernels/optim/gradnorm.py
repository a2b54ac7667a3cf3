"""GradNorm as a drop-in optimizer (Chen et al., ICML 2018): one backward of Σₖ wₖ·Lₖ per step,
plus K gradients of one chosen shared layer."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_real
from . import distributed as _dist
from .loss_weighting import LossWeighting, StepPlan, check_state_keys, check_state_vector


def gradnorm_weight_gradient(weights: Tensor, norms: Tensor, values: Tensor, initial: Tensor, alpha: float) -> Tensor:
    """∂L_grad/∂wᵢ for L_grad = Σᵢ |wᵢ·nᵢ − Ḡ·rᵢ^α| with the target Ḡ·rᵢ^α held constant:
    sign(wᵢnᵢ − Ḡrᵢ^α)·nᵢ, where nᵢ = ‖∇_W Lᵢ‖, Ḡ = mean(wᵢnᵢ), rᵢ = L̃ᵢ/mean(L̃), L̃ᵢ = Lᵢ/Lᵢ(0)."""
    G = weights * norms
    ratio = values / initial
    target = G.mean() * (ratio / ratio.mean()) ** alpha
    return torch.sign(G - target) * norms


class GradNorm(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

    The network gets ∇ Σₖ wₖ·Lₖ; the weights w [K] (ones at first) are parameters that descend
    L_grad = Σᵢ |Gᵢ − Ḡ·rᵢ^α|, Gᵢ = ‖∇_W wᵢLᵢ‖ = wᵢ·‖∇_W Lᵢ‖ on the chosen shared layer W,
    Ḡ = mean(G), rᵢ = L̃ᵢ/mean(L̃) the relative inverse training rate (L̃ᵢ = Lᵢ/Lᵢ(0), Lᵢ(0) the
    first step's losses), with the target Ḡ·rᵢ^α held constant; ``alpha`` is the restoring force.
    ‖∇_W Lᵢ‖² is the diagonal of W's Gram matrix: K gradients of W only (backward passes that stop
    at W, cheap for the last shared layer), one Gram. After each ``step()`` w is renormalised to
    Σ wᵢ = K (the paper). w joins the wrapped optimizer as a new parameter group once K is known.

    Args:
        optimizer: the wrapped torch optimizer.
        layer: the parameters of W (a tensor or several), usually the last shared layer's weight.
        alpha: the restoring force α (paper: 0.12–3 by task; LibMTL's default 1.5).
        weight_group: extra options of w's parameter group (e.g. ``{"lr": 0.025}``).
        **options: :class:`LossWeighting`'s arguments.

    State: w's values and the initial losses Lᵢ(0). Diagnostics: ``layer_grad_norm/{k}`` (‖∇_W Lₖ‖).
    """

    name = "gradnorm"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, layer: Tensor | Sequence[Tensor], alpha: float = 1.5,
        weight_group: dict[str, Any] | None = None, **options: Any,
    ) -> None:
        self.alpha = check_real("alpha", alpha, minimum=0.0)
        self.layer = [layer] if isinstance(layer, Tensor) else list(layer)
        if not self.layer or not all(isinstance(p, Tensor) and p.requires_grad for p in self.layer):
            raise ValueError("layer must be one or more parameters (tensors that require grad) of the shared layer W")
        self.weight_group = dict(weight_group or {})
        if "params" in self.weight_group:
            raise ValueError("weight_group holds the group's options; its parameter is GradNorm's weights")
        #: the task weights w [K] (None until K is known)
        self.task_weights: Tensor | None = None
        self._initial: Tensor | None = None  # Lᵢ(0), float64 on the CPU
        super().__init__(optimizer, **options)
        known = {id(p) for p in self._trainable()}
        missing = [i for i, p in enumerate(self.layer) if id(p) not in known]
        if missing:
            raise ValueError(f"layer[{', '.join(map(str, missing))}] is not a parameter of the wrapped optimizer")

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "weight_group": self.weight_group, **super().options()}

    def _set_num_tasks(self, K: int) -> None:
        super()._set_num_tasks(K)
        if self.task_weights is None:
            self.task_weights = self._add_owned(K, 1.0, self.weight_group)

    def _groups_added(self, K: int | None) -> list[int]:
        return [1] if self.task_weights is None and K is not None else []

    def _plan(self, losses: list[Tensor], values: Tensor, grad_scale: float, mode: str) -> StepPlan:
        K = values.shape[0]
        rows = torch.empty(K, sum(p.numel() for p in self.layer), dtype=self.layer[0].dtype, device=self.layer[0].device)
        for k, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, self.layer, allow_unused=True, retain_graph=True)
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(self.layer, grads)], out=rows[k])
        if mode == "replicated":
            _dist.all_reduce_mean_(rows, self.process_group)
        gram = self.aggregator.gram([rows])
        norms = gram.diagonal().to("cpu", torch.float64).clamp_min(0).sqrt() / grad_scale
        w = torch.ones(K, dtype=torch.float64) if self.task_weights is None else self.task_weights.detach().to("cpu", torch.float64)
        initial = values if self._initial is None else self._initial
        grad = gradnorm_weight_gradient(w, norms, values, initial, self.alpha) * grad_scale
        facts = {"layer_grad_norm": norms}
        return StepPlan(w, {"initial": initial}, owned_grad=grad, facts=facts, layer_ok=torch.isfinite(gram.diagonal()).all())

    def _commit_plan(self, plan: StepPlan) -> None:
        self._initial = plan.state["initial"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The wrapped optimizer's step, then w ← K·w/Σw (the paper's renormalisation)."""
        result = super().step(closure)
        if self.task_weights is not None:
            self.task_weights.mul_(self.task_weights.numel() / self.task_weights.sum())
        return result

    def _check_values(self, values: Tensor) -> None:
        initial = self._initial if self._initial is not None else values
        bad = (initial == 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"GradNorm divides by the initial losses Lᵢ(0): task {', '.join(map(str, bad))} has Lᵢ(0) = 0"
            )

    def _loss_weighting_state(self) -> dict[str, Any]:
        return {
            "task_weights": None if self.task_weights is None else self.task_weights.detach().clone(),
            "initial_losses": None if self._initial is None else self._initial.clone(),
        }

    def _check_loss_weighting_state(self, state: dict[str, Any], K: int | None) -> None:
        check_state_keys(state, {"task_weights", "initial_losses"}, "GradNorm")
        check_state_vector(state, "task_weights", K, optional=True)
        check_state_vector(state, "initial_losses", K, optional=True)

    def _load_loss_weighting_state(self, state: dict[str, Any]) -> None:
        if state["task_weights"] is not None:
            with torch.no_grad():
                self.task_weights.copy_(state["task_weights"])
        initial = state["initial_losses"]
        self._initial = None if initial is None else initial.detach().to("cpu", torch.float64).clone()
