"""The dual-cone projection shared by UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, Proposition 1).

The projection of d₀ = Jᵀu onto the dual cone {x : J·x ≥ 0} of the task gradients is Jᵀv with

    v = argmin_{v ≥ u} vᵀΓv,

a quadratic program on Γ alone. Writing v = u + x, x ≥ 0, it is a non-negative least-squares
problem min_x ‖Jᵀ(u + x)‖² solved here exactly by the active-set method of Lawson & Hanson
("Solving Least Squares Problems", 1974, ch. 23), run on the normal equations: the free set F holds
the tasks with vᵢ > uᵢ, and on F the stationarity (Γv)_F = 0 is solved with v = u elsewhere. The
start is the set of tasks d₀ conflicts with ((Γu)ⱼ < 0), less those whose candidate falls to
their bound (all at once, until the candidate is feasible). Each outer step then frees the task
whose constraint gᵢ·d ≥ 0 is most violated (relative to the rounding of gᵢ·d); inner steps move
towards the subproblem's solution and fix back a task reaching its bound. The subproblem is solved on the unit-diagonal (cosine) matrix D⁻¹Γ_FF D⁻¹, D = diag(‖gᵢ‖),
so gradients of norms 1e-20 and 1e20 side by side keep their relative precision.

Rank-deficient Γ: the direction d = Jᵀv is unique (a projection onto a closed convex cone), v is
not when the gradients are linearly dependent. Lawson–Hanson keeps the freed gradients linearly
independent (a task whose gradient lies in their span has gᵢ·d = 0 once they are solved, and is
never freed; one whose Cholesky pivot² falls below ``dependent_pivot`` is left fixed), so among
the optimal v it returns one that moves the fewest tasks off their bound: a zero gradient keeps
vᵢ = uᵢ, and of duplicate gradients the first freed one takes the whole increment.

Certificate (KKT of the QP, with multipliers λ = Γv, see :func:`kkt_residual`): primal
feasibility v ≥ u, dual feasibility Γv ≥ 0, and complementarity (Γv)ᵢ = 0 where vᵢ > uᵢ; each
(Γv)ᵢ over the size of the terms it sums, Σₖ|Γᵢₖvₖ|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._extension import extension
from ._preference import cpp_preference
from .base import Solution, Weighting, cpp_constants


@dataclass(frozen=True)
class DualConeConstants:
    """Tolerances and caps of the dual-cone active-set solve: read by the torch solve, handed to
    the C++ solve (``mtlkernels._C.DualConeConstants``) and to the Triton kernels (as constexprs).

    Attributes:
        tolerance: a task is freed when (Γv)ᵢ < −tolerance·Σₖ|Γᵢₖvₖ| (its constraint gᵢ·d ≥ 0
            violated beyond the rounding of gᵢ·d).
        dependent_pivot: a freed set whose cosine matrix has a Cholesky pivot² ≤ this is taken
            as linearly dependent: the task last freed is left at its bound.
        steps_per_task, steps_extra: at most steps_per_task·K + steps_extra subproblems per
            projection.
        block_rounds: rounds of the start (see :func:`project`): the first frees the tasks d₀
            conflicts with, each further one every violated constraint at once, while their
            number falls; 1 is the start alone.
    """

    tolerance: float = 1e-13
    dependent_pivot: float = 1e-12
    steps_per_task: int = 3
    steps_extra: int = 10
    block_rounds: int = 3


#: the constants every dual-cone solve uses
CONSTANTS = DualConeConstants()


def check_pref_vector(pref_vector: Any) -> Tensor | None:
    """``pref_vector`` as a 1-D float64 CPU tensor of finite, non-negative entries (or None), else a
    ValueError naming the option. Its length is checked against K at each solve."""
    if pref_vector is None:
        return None
    if isinstance(pref_vector, Tensor):
        values = pref_vector.detach()
    else:
        if isinstance(pref_vector, (str, bytes)) or not hasattr(pref_vector, "__len__"):
            raise ValueError(f"pref_vector must be a 1-D tensor or sequence of K numbers; got {type(pref_vector).__name__}")
        if any(isinstance(p, bool) or not isinstance(p, Real) for p in pref_vector):
            raise ValueError(f"pref_vector={list(pref_vector)!r} must hold real numbers")
        values = torch.tensor([float(p) for p in pref_vector], dtype=torch.float64)
    if values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"pref_vector has dtype {values.dtype}; expected real numbers")
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"pref_vector must be a non-empty 1-D vector [K]; got shape {tuple(values.shape)}")
    values = values.to(device="cpu", dtype=torch.float64).clone()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"pref_vector={values.tolist()} has a non-finite entry")
    negative = (values < 0).nonzero().flatten().tolist()
    if negative:
        raise ValueError(f"pref_vector={values.tolist()} has negative entries at {negative}: preferences are ≥ 0")
    return values


def preferences(pref_vector: Tensor | None, K: int, name: str) -> Tensor:
    """The K preferences: ``pref_vector`` (checked to have K entries) or the uniform 1/K."""
    if pref_vector is None:
        return torch.full((K,), 1.0 / K, dtype=torch.float64)
    if pref_vector.numel() != K:
        raise ValueError(f"{name}: pref_vector has {pref_vector.numel()} entries but there are K = {K} tasks")
    return pref_vector


def check_eps(name: str, value: Any) -> float:
    """A finite, non-negative Python float, else a ValueError naming the option."""
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number ≥ 0")
    return float(value)


def regularized(gram: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """torchjd's conventions, when asked for: Γ/tr(Γ) (0 when tr(Γ) < norm_eps) + reg_eps·I. With
    reg_eps = 0 the projection is exact and the trace division changes nothing: Γ itself."""
    if reg_eps == 0.0:
        return gram
    trace = gram.diagonal().sum()
    normalised = torch.where(trace < norm_eps, torch.zeros_like(gram), gram / trace)
    return normalised + reg_eps * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def kkt_residual(gram: Tensor, u: Tensor, v: Tensor) -> float:
    """The KKT residual of v for min_{v ≥ u} vᵀΓv: the largest of max(0, uᵢ − vᵢ)/max|u| (primal),
    max(0, −(Γv)ᵢ)/sᵢ (dual) and, where vᵢ > uᵢ, |(Γv)ᵢ|/sᵢ (complementarity), with
    sᵢ = Σₖ|Γᵢₖvₖ| (the rounding scale of (Γv)ᵢ; a term with sᵢ = 0 counts 0)."""
    terms = gram * v[None, :]
    multipliers = terms.sum(dim=1)
    scale = terms.abs().sum(dim=1)
    relative = torch.where(scale > 0, multipliers / torch.where(scale > 0, scale, 1.0), 0.0)
    dual = (-relative).clamp_min(0)
    complementarity = torch.where(v > u, relative.abs(), 0.0)
    u_scale = float(u.abs().max())
    primal = float((u - v).clamp_min(0).max()) / u_scale if u_scale > 0 else 0.0
    return max(primal, float(dual.max()), float(complementarity.max()))


def _free_solve(gram: Tensor, u: Tensor, free: list[int], norms: Tensor, k: DualConeConstants) -> Tensor | None:
    """v with v = u off ``free`` and (Γv)_F = 0 on it, by Cholesky of the cosine matrix of F;
    None when F's gradients are numerically linearly dependent."""
    v = u.clone()
    if not free:
        return v
    F = torch.tensor(free, dtype=torch.long)
    fixed = torch.ones(u.shape[0], dtype=torch.bool)
    fixed[F] = False
    n = norms[F]
    cosine = gram[F][:, F] / n[:, None] / n[None, :]
    cosine.diagonal().fill_(1.0)
    factor, info = torch.linalg.cholesky_ex(cosine)
    if int(info) != 0 or float(factor.diagonal().square().min()) <= k.dependent_pivot:
        return None
    rhs = -(gram[F][:, fixed] @ u[fixed]) / n
    v[F] = torch.cholesky_solve(rhs[:, None], factor)[:, 0] / n
    return v


def _independent_prefix(gram: Tensor, u: Tensor, free: list[int], norms: Tensor, k: DualConeConstants) -> list[int]:
    """The longest prefix of ``free`` whose gradients are numerically linearly independent."""
    while free and _free_solve(gram, u, free, norms, k) is None:
        free = free[:-1]
    return free


def _ratio(v: float, u: float, candidate: float) -> float:
    """How far (0..1) the step from v towards the candidate goes before reaching the bound u."""
    return (v - u) / (v - candidate) if v > candidate else 0.0


def _violations(gram: Tensor, v: Tensor, excluded: list[int]) -> Tensor:
    """(Γv)ⱼ / Σₖ|Γⱼₖvₖ| (0 where that is 0 or j is ``excluded``): how far each constraint gⱼ·d ≥ 0
    is violated relative to the rounding of gⱼ·d."""
    terms = gram * v[None, :]
    multipliers = terms.sum(dim=1)
    scale = terms.abs().sum(dim=1)
    violation = torch.where(scale > 0, multipliers / torch.where(scale > 0, scale, 1.0), 0.0)
    violation[excluded] = 0.0
    return violation


def _most_violated(gram: Tensor, v: Tensor, excluded: list[int], k: DualConeConstants) -> int | None:
    """The task whose constraint is most violated, (Γv)ⱼ < −tolerance·Σₖ|Γⱼₖvₖ|, among those not
    ``excluded``; None when none is."""
    violation = _violations(gram, v, excluded)
    j = int(violation.argmin())
    return j if float(violation[j]) < -k.tolerance else None


def _settle(gram: Tensor, u: Tensor, free: list[int], norms: Tensor, k: DualConeConstants, steps: int,
            max_steps: int) -> tuple[Tensor, list[int], int]:
    """A feasible start from the free set ``free`` (in index order): its longest independent prefix,
    less the tasks whose candidate falls to their bound (all at once, until the candidate is
    feasible). Returns (v: the candidate, or u when no task is left; the free set; steps)."""
    v = u.clone()
    while free and steps < max_steps:
        free = _independent_prefix(gram, u, free, norms, k)
        if not free:
            break
        candidate = _free_solve(gram, u, free, norms, k)
        steps += 1
        feasible = [i for i in free if candidate[i] > u[i]]
        if len(feasible) == len(free):
            return candidate, free, steps
        free = feasible
    return v, [], steps


def project(gram: Tensor, u: Tensor, k: DualConeConstants = CONSTANTS) -> tuple[Tensor, int]:
    """v = argmin_{v ≥ u} vᵀΓv by Lawson–Hanson (see the module docstring) from a block-pivoting
    start: free the tasks that Jᵀu conflicts with ((Γu)ⱼ < 0, uⱼ = 0) and :func:`_settle`; then, for
    up to ``block_rounds`` − 1 more rounds while the number of violated constraints falls, free
    them all at once and settle again. The start only chooses where the exact iteration begins
    (on its own, block pivoting can cycle when K > N).

    Returns (v, subproblems solved)."""
    K = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    max_steps = k.steps_per_task * K + k.steps_extra
    free = [j for j in range(K) if float(gram[j] @ u) < 0 and not u[j] != 0]
    v, free, steps = _settle(gram, u, free, norms, k, 0, max_steps)
    violated_before = K + 1
    for _ in range(k.block_rounds - 1):
        violation = _violations(gram, v, free)
        violated = (violation < -k.tolerance).nonzero().flatten().tolist()
        if not violated or len(violated) >= violated_before:
            break
        violated_before = len(violated)
        v, free, steps = _settle(gram, u, sorted(free + violated), norms, k, steps, max_steps)
    blocked: list[int] = []  # gradients in the span of the free ones: left at their bound
    while steps < max_steps:
        j = _most_violated(gram, v, free + blocked, k)
        if j is None:
            break
        if _free_solve(gram, u, free + [j], norms, k) is None:
            blocked.append(j)
            continue
        free.append(j)
        while steps < max_steps and free:  # inner steps: fix back the tasks reaching their bound
            candidate = _free_solve(gram, u, free, norms, k)
            steps += 1
            if candidate is None:  # dependent to rounding after a task was fixed back
                blocked.append(free.pop())
                v[blocked[-1]] = u[blocked[-1]]
                continue
            below = [p for p, i in enumerate(free) if not candidate[i] > u[i]]
            if not below:
                v = candidate
                break
            ratios = [_ratio(float(v[free[p]]), float(u[free[p]]), float(candidate[free[p]])) for p in below]
            t = min(ratios)
            F = torch.tensor(free, dtype=torch.long)
            v[F] = v[F] + t * (candidate[F] - v[F])
            v[free[below[ratios.index(t)]]] = u[free[below[ratios.index(t)]]]
            free = [i for i in free if v[i] > u[i]]
            v = torch.maximum(v, u)  # a task fixed back sits exactly on its bound
    return v, steps


class DualConeWeighting(Weighting):
    """The glue shared by UPGrad and DualProj: their options (``pref_vector``, ``reg_eps``,
    ``norm_eps``), the C++ and Triton solves (the same inputs, Γ regularised as
    :func:`regularized` and the K preferences p), which differ only in the solve they call.
    A subclass sets ``name`` and ``solve_torch``; its C++ solve is ``<name>_solve`` in the
    extension and its Triton solve ``<name>_solve`` in :mod:`mtlkernels.kernels.solve_dual_cone`.
    """

    constants: ClassVar[DualConeConstants] = CONSTANTS
    #: the extension's entry point of the solve
    cpp_solve: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.cpp_solve = f"{cls.name}_solve"

    def __init__(self, *, pref_vector: Any = None, reg_eps: float = 0.0, norm_eps: float = 0.0, backend: str = "auto") -> None:
        super().__init__(backend=backend)
        self.pref_vector = check_pref_vector(pref_vector)
        self.reg_eps = check_eps("reg_eps", reg_eps)
        self.norm_eps = check_eps("norm_eps", norm_eps)
        self._pref_device: Tensor | None = None  # a cache of the preferences on the device, not state

    def options(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "reg_eps": self.reg_eps, "norm_eps": self.norm_eps, "backend": self.backend}

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        if self.pref_vector is not None:
            preferences(self.pref_vector, gram.shape[0], self.name)

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        """The preferences go as None when uniform (the extension makes the 1/K)."""
        G = regularized(gram, self.norm_eps, self.reg_eps).contiguous() if self.reg_eps > 0 else gram
        p = None if self.pref_vector is None else cpp_preference(self)
        return getattr(extension(), self.cpp_solve)(G.numpy(), p, cpp_constants(self.constants))

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """One program, no host sync; the preferences are copied to Γ's device once."""
        from ..kernels import solve_dual_cone

        G = regularized(gram.to(torch.float64), self.norm_eps, self.reg_eps) if self.reg_eps > 0 else gram
        out = getattr(solve_dual_cone, f"{self.name}_solve")(G, self._pref_on(gram), self.constants)
        return Solution(out.pop("weights"), out)

    def _pref_on(self, gram: Tensor) -> Tensor:
        """The K preferences on Γ's device (cached)."""
        cached = self._pref_device
        if cached is None or cached.device != gram.device or cached.numel() != gram.shape[0]:
            cached = self._pref_device = preferences(self.pref_vector, gram.shape[0], self.name).to(gram.device)
        return cached
