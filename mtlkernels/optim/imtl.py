"""IMTL as a drop-in optimizer (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import MultiTaskOptimizer
from .workspace import accumulate_grads


class IMTL(MultiTaskOptimizer):
    """IMTL-G on the shared parameters: d = Σ αᵢgᵢ with equal projections d·uᵢ on every unit
    gradient — by default the same maths as ``mk.aggregate(J, "imtl")``. With ``imtl_l=True`` it
    is IMTL-L+G: the losses become e^{sᵢ}Lᵢ − sᵢ with learnable log-scales sᵢ, a parameter group
    this wrapper adds.

    Args:
        optimizer: the wrapped torch optimizer. With ``imtl_l=True`` the log-scales s [K] (zeros)
            join it as a new parameter group once K is known (``num_tasks=`` or the first
            successful ``backward``); create LR schedulers after that, or pass ``num_tasks=``, so
            that they see the group.
        imtl_l: False (default): IMTL-G alone (nash-mtl's ``IMTLG``, the functional "imtl").
            True: the hybrid of the paper and LibMTL's ``IMTL`` (IMTL-G on the gradients of the
            scaled losses e^{sᵢ}Lᵢ; sᵢ gets ∂/∂sᵢ = e^{sᵢ}Lᵢ − 1).
        scale_group: extra options of the log-scales' parameter group (e.g. ``{"lr": 1e-2}``);
            only with ``imtl_l=True``.
        **options: :class:`~mtlkernels.optim.base.MultiTaskOptimizer`'s arguments.
    """

    method = "imtl"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        imtl_l: bool = False,
        scale_group: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.imtl_l = bool(imtl_l)
        self.scale_group = dict(scale_group or {})
        if self.scale_group and not self.imtl_l:
            raise ValueError("scale_group is the options of IMTL-L's log-scales group; it needs imtl_l=True")
        if "params" in self.scale_group:
            raise ValueError("scale_group holds the group's options; its parameter is the log-scales")
        #: the IMTL-L log-scales s [K] (None until K is known, or with imtl_l=False)
        self.log_scales: Tensor | None = None
        super().__init__(optimizer, **options)

    def _set_num_tasks(self, K: int) -> None:
        super()._set_num_tasks(K)
        if self.imtl_l and self.log_scales is None:
            reference = next((p for group in self.param_groups for p in group["params"]), None)
            device = reference.device if reference is not None else torch.device("cpu")
            dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
            self.log_scales = torch.zeros(K, dtype=dtype, device=device, requires_grad=True)
            self._owned.append(self.log_scales)
            self.optimizer.add_param_group({**self.scale_group, "params": [self.log_scales]})

    def _loss_multipliers(self) -> Tensor | None:
        return None if self.log_scales is None else self.log_scales.detach().exp()

    def _write_owned_grads(self, losses: Tensor, grad_scale: float, present: list[int] | None) -> None:
        if self.log_scales is None:
            return
        s = self.log_scales.detach()
        if present is None:
            grad = (s.exp() * losses.to(s) - 1) * grad_scale  # ∂/∂sᵢ (e^{sᵢ}Lᵢ − sᵢ)
        else:  # an absent task's log-scale gets no gradient: it is kept, as its loss was not seen
            grad = torch.zeros_like(s)
            grad[present] = (s[present].exp() * losses.to(s) - 1) * grad_scale
        accumulate_grads([self.log_scales], [grad])

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        if self.log_scales is not None:
            state["log_scales"] = self.log_scales.detach().clone()
        return state

    def _groups_added(self, K: int | None) -> list[int]:
        return [1] if self.imtl_l and self.log_scales is None and K is not None else []

    def _check_method_state(self, state: Any, K: int | None) -> None:
        super()._check_method_state(state, K)
        if "log_scales" in state:
            scales = state["log_scales"]
            if not self.imtl_l:
                raise ValueError("the state_dict holds IMTL-L log-scales but this IMTL has imtl_l=False")
            if not isinstance(scales, Tensor) or not scales.is_floating_point() or tuple(scales.shape) != (K,):
                shown = tuple(scales.shape) if isinstance(scales, Tensor) else type(scales).__name__
                raise ValueError(f"the state_dict's log-scales must be a float tensor of shape ({K},); got {shown}")

    def _load_method_state(self, state: dict[str, Any]) -> None:
        super()._load_method_state(state)
        if "log_scales" in state:
            with torch.no_grad():
                self.log_scales.copy_(state["log_scales"])
