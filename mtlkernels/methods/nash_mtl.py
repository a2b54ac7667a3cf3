"""Nash-MTL — Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.

Weights: the α > 0 with αᵢ·(Γα)ᵢ = 1 for every task (Γ the unnormalised Gram), scaled down so that
‖d‖ = √(αᵀΓα) ≤ max_norm, d = Σᵢ wᵢ·gᵢ. At the solution αᵀΓα = K, so the default max_norm = 1
always clips d to norm 1 (K ≥ 2).

solver="newton" (default): the system is the stationarity condition of the strictly convex
f(β) = ½βᵀCβ − Σ log βᵢ written for βᵢ = ‖gᵢ‖·αᵢ and the cosine matrix C = D⁻¹ΓD⁻¹,
D = diag(‖gᵢ‖). This per-task rescaling leaves the system unchanged (it generalises the authors'
Γ/‖Γ‖_F), so gradients of any scale are solved alike. Damped Newton (step 1/(1+δ) unless the full
step decreases f enough, full steps once δ < 1/4) from the previous step's α, rescaled onto the
optimal ray, converges in a few steps to rounding level. δ is the Newton decrement λ, or the step's
length ‖Δβ/β‖ in the barrier's local norm where that is longer; as |Δβᵢ|/βᵢ ≤ δ, every iterate
stays > 0 (for a positive semidefinite C, ‖Δβ/β‖ ≤ λ and δ = λ, the classical damped Newton).

No positive solution exists when a non-negative combination of the gradients vanishes (0 in their
convex hull: a zero gradient, two exactly opposite gradients, or a cancelling combination — which
K > N gradients may or may not have: for K Gaussian gradients in N dimensions, 0 is in their hull
with probability P(Binomial(K − 1, ½) ≥ N), one half for K = 2N but about 4e-6 for K = 65, N = 50).
Then f is unbounded below and Newton's iterate grows along that combination: once it passes 1e6,
the tasks still growing (relative step > 1/4) and the task of the largest βᵢ get weight 0 and the
rest is solved again (every such round drops a task). A zero gradient gets weight 0 up front.

A Gram rounded in low precision (a float32 accumulation, or float32 storage) is only positive
semidefinite to its rounding: for tasks that nearly cancel C has negative eigenvalues of that
size, and f is not convex once β has grown so large that the barrier's curvature β⁻² is below
them. An iterate where f's Hessian C + diag(β⁻²) is not positive definite is therefore treated as
growing without bound, like one past 1e6: within Γ's rounding the tasks cancel. For a Gram exact
to float64 rounding the threshold 1e6 comes first. So the weights are ≥ 0 and finite for any
symmetric Γ, and a task listed in ``dropped_tasks`` has weight exactly 0; ``converged`` and
``residual`` say how far from the paper's system the result is.

solver="ccp": the authors' sequence of convex subproblems (cvxpy + ECOS, ``optim_niter`` steps,
warm start, their stopping rule), for validation against their code.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .._checks import check_option, check_real
from .._extension import extension
from .base import Solution, Weighting, cpp_constants

SOLVERS = ("newton", "ccp")


@dataclass(frozen=True)
class NashMTLConstants:
    """The Newton solve's caps and tolerances: read by the torch solve, handed to the C++ solve
    (``mtlkernels._C.NashMTLConstants``) and to the Triton kernel (as constexprs).

    Attributes:
        max_newton_steps: Newton steps per round at most.
        converged_decrement2: λ² below this: one more full step reaches rounding level.
        diverged_beta: an iterate beyond this (in units of 1/‖gᵢ‖) means f is unbounded below.
        max_start_beta: the start is kept below this, so that growth towards diverged_beta is seen
            step by step.
    """

    max_newton_steps: int = 100
    converged_decrement2: float = 1e-20
    diverged_beta: float = 1e6
    max_start_beta: float = 1e3


#: the constants every Nash-MTL Newton solve uses
CONSTANTS = NashMTLConstants()

#: (α before clipping [K] float64 CPU, solver facts) from (Γ [K, K] float64 CPU, previous α or None)
SolveK = Callable[["NashMTLWeighting", Tensor, "Tensor | None"], "tuple[Tensor, dict[str, Any]]"]


# -- the Newton solve in plain torch --------------------------------------------------------------
def _cosines(gram: Tensor, kept: Tensor, n: Tensor) -> Tensor:
    """C = D⁻¹ΓD⁻¹ over the kept tasks, D = diag(n) their norms, entries clamped to [-1, 1]."""
    cosine = (gram[kept][:, kept] / n[:, None] / n[None, :]).clamp(-1.0, 1.0)
    return cosine.fill_diagonal_(1.0)


def _barrier_objective(C: Tensor, beta: Tensor) -> float:
    return float(0.5 * beta @ C @ beta - torch.log(beta).sum())


def _barrier_newton(C: Tensor, beta: Tensor, k: NashMTLConstants) -> tuple[Tensor, int, bool, Tensor | None]:
    """Minimise f(β) = ½βᵀCβ − Σ log βᵢ by damped Newton from β > 0; every iterate stays > 0.

    Returns (β, steps, converged, growing): ``growing`` is None unless f is taken as unbounded
    below — the iterate passes diverged_beta, or f's Hessian C + diag(β⁻²) is not positive
    definite — when it masks the tasks whose βᵢ grows (relative step > 1/4) and the task of the
    largest βᵢ.
    """
    previous_decrement2 = math.inf
    growth = torch.zeros_like(beta)  # the last step relative to the iterate it was taken from
    for step_count in range(1, k.max_newton_steps + 1):
        gradient = C @ beta - 1.0 / beta
        factor, info = torch.linalg.cholesky_ex(C + torch.diag(1.0 / beta**2))
        if int(info) != 0:  # f is not convex at β: C's negative curvature outweighs the barrier's
            return beta, step_count - 1, False, _growing(growth, beta)
        step = -torch.cholesky_solve(gradient[:, None], factor)[:, 0]
        decrement2 = float(-(gradient @ step))
        # the step's length: the Newton decrement λ, or the step in the barrier's local norm when
        # longer (C with negative curvature); |stepᵢ|/βᵢ ≤ length, so β + t·step > 0 for t·length < 1
        length = max(math.sqrt(max(decrement2, 0.0)), float(torch.linalg.vector_norm(step / beta)))
        if length**2 <= k.converged_decrement2:
            return beta + step, step_count, True, None
        if length < 0.25:  # quadratic region: full steps, stop at the rounding floor
            if decrement2 >= previous_decrement2:
                return beta, step_count - 1, True, None
            previous_decrement2 = decrement2
            growth, beta = step / beta, beta + step
            continue
        trial = beta + step
        if not (bool((trial > 0).all()) and _barrier_objective(C, trial) <= _barrier_objective(C, beta) - 0.25 * decrement2):
            step = step / (1.0 + length)  # the damped step of self-concordant analysis
        growth, beta = step / beta, beta + step
        if float(beta.max()) > k.diverged_beta:
            return beta, step_count, False, _growing(growth, beta)
    return beta, k.max_newton_steps, False, None


def _growing(growth: Tensor, beta: Tensor) -> Tensor:
    """The tasks dropped when f is unbounded below (Nash-MTL) or has no minimiser (FairGrad): relative
    last step > 1/4, and the largest βᵢ."""
    growing = growth > 0.25
    growing[int(beta.argmax())] = True
    return growing


def _solve_newton_torch(self: "NashMTLWeighting", gram: Tensor, previous: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
    norms = gram.diagonal().clamp_min(0).sqrt()
    kept = norms > 0
    alpha = torch.zeros_like(norms)
    steps, converged = 0, True
    while bool(kept.any()):
        n = norms[kept]
        C = _cosines(gram, kept, n)
        beta = torch.ones_like(n)
        if previous is not None:
            warm = previous[kept] * n
            beta = torch.where(torch.isfinite(warm) & (warm > 0), warm, beta)
        ray = float(beta @ C @ beta)
        if math.isfinite(ray) and ray > 0:  # the minimiser of f along the ray, kept below 1e3
            beta = beta * min(math.sqrt(beta.numel() / ray), self.constants.max_start_beta / float(beta.max()))
        beta, round_steps, converged, growing = _barrier_newton(C, beta, self.constants)
        steps += round_steps
        if growing is None:
            alpha[kept] = beta / n
            break
        kept[kept.clone()] = ~growing  # no positive solution: drop the cancelling tasks, re-solve
        converged = True
    return alpha, {"iterations": steps, "converged": converged}


def _certificates_torch(gram: Tensor, alpha: Tensor, max_norm: float) -> tuple[Tensor, dict[str, Any]]:
    """Clipped weights and the certificates of α on Γ (see :class:`NashMTLWeighting`)."""
    gram_alpha = gram @ alpha
    equations = alpha * gram_alpha - 1.0
    kept = alpha > 0
    direction_norm = math.sqrt(max(float(alpha @ gram_alpha), 0.0))
    clip_scale = max_norm / direction_norm if 0 < max_norm < direction_norm else 1.0
    facts = {
        "residual": float(torch.linalg.vector_norm(equations)),
        "kept_residual": float(torch.linalg.vector_norm(equations[kept])),
        "direction_norm": direction_norm,
        "clip_scale": clip_scale,
        "dropped_tasks": (~kept).nonzero().flatten().tolist(),
    }
    return alpha * clip_scale, facts


# -- the authors' convex-concave procedure (solver="ccp") -----------------------------------------
class _ConvexConcaveStep:
    """One subproblem of the authors' CCP as a cvxpy problem, built once per K:

        min_α  𝟙ᵀΓₙα + ∇φ(α_prev)ᵀ(α − α_prev) / s   s.t.  log(αᵢ·s) + log (Γₙα)ᵢ ≥ 0 for each i,  α ≥ 0,

    Γₙ = Γ/s, s = ‖Γ‖_F, φ(α) = Σᵢ log αᵢ + log (Γₙα)ᵢ linearised at α_prev (so the constraints
    are αᵢ(Γα)ᵢ ≥ 1 on the unnormalised Γ). Written with the same parameters, expressions and
    one constraint per task as the authors' problem, so cvxpy hands ECOS the same cone program and
    the iterates match theirs bit for bit (it is not DPP: cvxpy recompiles it at every solve).
    """

    def __init__(self, K: int) -> None:
        import cvxpy as cp

        self.alpha = cp.Variable(K, nonneg=True)
        self.alpha_prev = cp.Parameter(K)
        self.gram = cp.Parameter((K, K))
        self.scale = cp.Parameter(1)
        phi_gradient = 1 / self.alpha_prev + (1 / (self.gram @ self.alpha_prev)) @ self.gram
        gram_alpha = self.gram @ self.alpha
        self.problem = cp.Problem(
            cp.Minimize(cp.sum(gram_alpha) + phi_gradient @ (self.alpha - self.alpha_prev) / self.scale),
            [cp.log(self.alpha[i] * self.scale) + cp.log(gram_alpha[i]) >= 0 for i in range(K)],
        )

    def __call__(self, gram_n: Any, scale: float, alpha_prev: Any) -> Any:
        """The next iterate (numpy), α_prev when the solve raises (as the authors), None if infeasible."""
        import cvxpy as cp
        import numpy as np

        self.gram.value = gram_n
        self.scale.value = np.array([scale])
        self.alpha.value = alpha_prev
        self.alpha_prev.value = alpha_prev
        try:
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.filterwarnings("ignore", message=".*DPP.*")
                self.problem.solve(solver=cp.ECOS, warm_start=True, max_iters=100)
        except (cp.error.SolverError, ValueError, ArithmeticError):
            return alpha_prev
        return self.alpha.value


def _solve_ccp(self: "NashMTLWeighting", gram: Tensor, previous: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
    import numpy as np

    K = gram.shape[0]
    alpha_t = np.ones(K) if previous is None else previous.numpy().copy()
    scale = float(torch.linalg.matrix_norm(gram))
    if not (0 < scale < math.inf):
        return torch.from_numpy(alpha_t), {"iterations": 0, "converged": False}
    if self._ccp_step is None or self._ccp_step.alpha.shape[0] != K:
        self._ccp_step = _ConvexConcaveStep(K)
    gram_n = (gram / scale).numpy()
    iterations, stopped = 0, False
    for _ in range(self.optim_niter):
        alpha_next = self._ccp_step(gram_n, scale, alpha_t)
        iterations += 1
        stopped = (
            alpha_next is None
            or np.linalg.norm(gram_n @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3
            or np.linalg.norm(alpha_next - alpha_t) < 1e-6
        )
        if stopped:
            break  # the authors keep the iterate from before this solve
        alpha_t = np.asarray(alpha_next, dtype=np.float64)
    return torch.from_numpy(alpha_t), {"iterations": iterations, "converged": stopped}


class NashMTLWeighting(Weighting):
    """Γ → the Nash bargaining weights α (α⊙(Γα) = 𝟙), clipped to ‖Σwᵢgᵢ‖ ≤ max_norm.

    Args:
        optim_niter: CCP subproblems per step (solver="ccp"; the authors' 20). Newton runs to
            convergence (at most 100 steps) whatever this is.
        max_norm: clip ‖d‖ = √(αᵀΓα) to this (authors' 1.0; 0 disables). ‖d‖² = K at the solution.
        update_weights_every: solve every this many calls, reuse α in between (authors' 1).
        solver: "newton" (exact, default) or "ccp" (the authors' cvxpy + ECOS procedure).
        backend: "auto", "torch" or "cpp" (the Newton solve in C++).

    State (``state_dict``): ``alpha`` (the last solved α before clipping, the warm start and the
    reused weights; None before the first call) and ``step`` (calls so far).

    Diagnostics: ``residual`` ‖α⊙(Γα) − 𝟙‖ on the unnormalised Γ (α before clipping; a task
    given weight 0 adds 1 to its square), ``kept_residual`` the same over the tasks with αᵢ > 0,
    ``dropped_tasks`` (weight 0: zero or cancelling gradients), ``iterations`` (Newton steps or
    CCP subproblems; 0 when reused), ``converged``, ``reused``, ``direction_norm`` √(αᵀΓα) before
    clipping, ``clip_scale``, ``solver``, ``step``.

    Constants: :data:`CONSTANTS` (:class:`NashMTLConstants`), used by every backend's Newton
    solve; solver="ccp" runs in torch on every backend.

    Variant: the paper's Nash-MTL on the given gradients, with the authors' defaults; the wrapper
    :class:`mtlkernels.NashMTL` runs the same weighting.
    """

    name = "nash_mtl"
    constants = CONSTANTS
    per_task_state = ("alpha",)

    def __init__(
        self,
        *,
        optim_niter: int = 20,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        solver: str = "newton",
        backend: str = "auto",
    ) -> None:
        _check_count("optim_niter", optim_niter)
        _check_count("update_weights_every", update_weights_every)
        max_norm = check_real("max_norm", max_norm, minimum=0.0)  # 0 disables the clipping
        check_option("solver", solver, SOLVERS)
        super().__init__(backend=backend)
        self.optim_niter = int(optim_niter)
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.solver = solver
        self._ccp_step: _ConvexConcaveStep | None = None  # a cache of the built problem, not state
        self.reset()

    def options(self) -> dict[str, Any]:
        return {
            "optim_niter": self.optim_niter,
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "solver": self.solver,
            "backend": self.backend,
        }

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        alpha, step = self._read_state()
        return {"alpha": None if alpha is None else alpha.clone(), "step": step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"alpha", "step"}:
            raise ValueError(f"NashMTLWeighting state needs the keys ['alpha', 'step']; got {sorted(state)}")
        alpha, step = state["alpha"], state["step"]
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            raise ValueError(f"state['step']={step!r} must be an integer ≥ 0")
        if alpha is not None:
            if not isinstance(alpha, Tensor) or alpha.dim() != 1 or not alpha.is_floating_point():
                raise ValueError("state['alpha'] must be None or a 1-D float tensor [K]")
            if not bool(torch.isfinite(alpha).all()):
                raise ValueError("state['alpha'] has a non-finite entry")
            alpha = alpha.detach().to("cpu", torch.float64).clone()
        self._alpha, self._step = alpha, int(step)
        self._device_state = None

    def reset(self) -> None:
        self._alpha: Tensor | None = None
        self._step = 0
        #: the Triton solve's state, (α [K] float64, counters [2] int64: calls so far, α valid?),
        #: on the device and updated there in place; while it is set it is the state (the host
        #: fields are stale), so replays of a captured CUDA graph advance it
        self._device_state: tuple[Tensor, Tensor] | None = None

    def _read_state(self) -> tuple[Tensor | None, int]:
        """(α or None, calls so far): the device state when there is one (reading its counters is
        a synchronisation; the buffers stay in use), else the host fields."""
        if self._device_state is None:
            return self._alpha, self._step
        alpha, counters = self._device_state
        step, has_alpha = counters.tolist()
        return (alpha if has_alpha else None), int(step)

    def _state_to_host(self) -> None:
        """Make the host fields the state again, dropping the device state (a host solve runs)."""
        if self._device_state is not None:
            alpha, self._step = self._read_state()
            self._alpha = None if alpha is None else alpha.clone()
            self._device_state = None

    # -- one call ---------------------------------------------------------------------------
    def resolve_backend(self, gram: Tensor) -> str:
        """As for every method; solver="ccp" (cvxpy) then runs in torch."""
        backend = super().resolve_backend(gram)
        return "torch" if self.solver == "ccp" else backend

    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        reused, previous = self._plan(gram)
        if reused:
            alpha, facts = previous, {"iterations": 0, "converged": True}
        else:
            solve: SolveK = _solve_ccp if self.solver == "ccp" else _solve_newton_torch
            alpha, facts = solve(self, gram, previous)
        weights, certificates = _certificates_torch(gram, alpha, self.max_norm)
        return Solution(weights, self._commit(alpha, {**certificates, **facts}, reused))

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        reused, previous = self._plan(gram)
        alpha, weights, diagnostics = extension().nash_mtl_solve(
            gram.numpy(), cpp_constants(self.constants), None if previous is None else previous.numpy(), reused,
            self.max_norm,
        )
        return weights, self._commit(torch.from_numpy(alpha), diagnostics, reused)

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """The state (α and the call counter) lives on the device, where the kernel reads it and
        writes it back in place: the warm start and the ``update_weights_every`` reuse are decided
        there, so a captured CUDA graph advances both on every replay. ``reused`` and ``step``
        are then 0-d device tensors too."""
        from ..kernels.solve_nash_mtl import nash_mtl_state, nash_mtl_step

        K = gram.shape[0]
        state = self._device_state
        if state is not None and (state[0].device != gram.device or state[0].shape[0] != K):
            self._state_to_host()
            state = None
        if state is None:
            self._check_state_size(K)
            state = self._device_state = nash_mtl_state(K, gram.device, self._alpha, self._step)
        weights, diagnostics = nash_mtl_step(gram, *state, self.update_weights_every, self.max_norm, self.constants)
        diagnostics["solver"] = self.solver
        return Solution(weights, diagnostics)

    def _check_state_size(self, K: int) -> None:
        if self._alpha is not None and self._alpha.shape[0] != K:
            raise ValueError(
                f"nash_mtl: the stored state is for K = {self._alpha.shape[0]} tasks but the Gram matrix "
                f"has K = {K}; call reset() when the tasks change"
            )

    def _plan(self, gram: Tensor) -> tuple[bool, Tensor | None]:
        """(reuse the stored α this call?, the stored α), after checking it fits Γ."""
        self._state_to_host()
        self._check_state_size(gram.shape[0])
        reused = self._alpha is not None and self._step % self.update_weights_every != 0
        return reused, None if self._alpha is None else self._alpha.to(gram.device)

    def _commit(self, alpha: Tensor, facts: dict[str, Any], reused: bool) -> dict[str, Any]:
        """Keep α as the state, count the call, and complete the diagnostics."""
        self._alpha = alpha
        self._step += 1
        facts.update(reused=reused, solver=self.solver, step=self._step)
        return facts


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer ≥ 1")
