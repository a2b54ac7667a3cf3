"""Validate the fast path on this machine: ``python -m mtlkernels.validate``.

For every method, on random and adversarial task gradients (and, with ``--gradients FILE``, on
gradients saved from your own model with ``torch.save(J, FILE)``, J [K, N]), compares
:func:`mtlkernels.aggregate` against the float64 reference of :mod:`mtlkernels.reference` and
against every importable peer (torchjd, LibMTL) run with the matching convention, and prints the
relative error, the solver's certificate, and pass/fail. A peer that cannot be imported is left
out, and the report says why (LibMTL 1.1.5's package imports torchvision's model zoo, so it needs
a torchvision that still has it). Exit status 1 when anything fails.

Error measure: ‖d − d_ref‖ / (‖d_ref‖ + F·Σᵢ|wᵢ|‖gᵢ‖/tol), which passes when
‖d − d_ref‖ ≤ tol·‖d_ref‖ + F·Σᵢ|wᵢ|‖gᵢ‖: relative to the direction, plus the rounding floor F of
the dtype times the size of the terms (that floor is all that is meaningful when the terms cancel,
d ≈ 0, e.g. two opposite gradients). MGDA against a peer compares objective values ‖d‖² instead:
ours is the exact minimum, the peers' Frank–Wolfe stops early.

Two more families check what no reference comparison can see:

- ``invariants``: each method's weights on Gram matrices as a float32 Gram pass returns them for
  rank-deficient gradients (rank < K, K > N, duplicate rows, spread scales: symmetric, possibly
  slightly indefinite) must keep the method's constraints — finite; Nash-MTL and FairGrad ≥ 0
  with every dropped task exactly 0; ConFIG and Aligned-MTL 0 on every zero gradient; MGDA on the
  simplex; CAGrad ≥ the mean's share ÷ its rescale divisor; IMTL-G summing to 1 (or the documented
  w = 0); the mean 1/K; UPGrad and DualProj ≥ the preference 1/K (each projection only adds to it).
- ``wrappers``: the drop-in optimizers on a small model — features the losses do not reach are
  refused with nothing changed; a first batch in which a task has a zero gradient gives the same
  parameter roles as a normal one; parameters of mixed dtypes get the gradients
  ``sum(losses).backward()`` would give; a step skipped for a NaN loss does not swallow the next.
  And every wrapper's steps against the float64 reference of its method (Gramian wrappers: the
  reference direction on the trunk; FAMO, UW, DWA, RLW, GradNorm: the papers' objectives and
  update rules over a few steps; see :func:`wrapper_reference_checks`).
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import reference
from .aggregate import aggregate
from .backend import _unavailable_reason, available, triton_installed
from .methods import METHODS, make_weighting
from .testing import peers
from .testing.cases import adversarial_cases, conflicting_J, random_J, rank_deficient_grams

#: the diagnostics key that certifies each method's solve (0 = exact)
CERTIFICATES = {
    "pcgrad": "orthogonality_residual",
    "cagrad": "kkt_residual",
    "nash_mtl": "kept_residual",
    "imtl": "residual",
    "mgda": "kkt_residual",
    "upgrad": "kkt_residual",
    "dualproj": "kkt_residual",
    "gradvac": "target_residual",
    "fairgrad": "kept_residual",
    "config": "residual",
    "aligned_mtl": "residual",
}

#: allowed error against the reference, by the dtype J is given in
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

#: rounding floor F relative to Σᵢ|wᵢ|‖gᵢ‖ (float32 J: combined in float32 — a few ulps)
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-2}

#: ill-conditioned by construction: Γ of gradients equal up to 1e-6 pins the weights down only to
#: ~1e-6 relative, so directions agree to ~1e-6 whatever the solver
ILL_CONDITIONED = {"near_collinear": 1e-5}
#: Aligned-MTL decomposes Γ = JJᵀ, whose eigenvalues λ = σ² carry an absolute error ~1e-16·λ_max: a
#: kept component at λ/λ_max ~ 1e-11 (gradients scaled from 1e-20 to 1e20) is known to ~1e-5
#: relative, against the reference's SVD of J (as the authors' and torchjd's eigh of Γ)
ILL_CONDITIONED_FOR = {("aligned_mtl", "scales_1e-20_1e20"): 1e-6}


@dataclass
class Check:
    method: str
    case: str
    against: str
    error: float
    tolerance: float
    certificate: float | None = None

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance


def relative_error(d: Tensor, d_ref: Tensor, weights: Tensor, J: Tensor, tol: float) -> float:
    """‖d − d_ref‖ / (‖d_ref‖ + F·Σᵢ|wᵢ|‖gᵢ‖/tol), in float64 (see the module docstring)."""
    floor = FLOOR[J.dtype]
    d, d_ref, J = d.double(), d_ref.double(), J.double()
    terms = float((weights.double().abs() * J.norm(dim=1)).sum())
    scale = max(float(d_ref.norm()) + floor * terms / tol, 1e-300)
    return float((d - d_ref).norm()) / scale


def objective_excess(d: Tensor, d_peer: Tensor) -> float:
    """(‖d‖² − ‖d_peer‖²)/‖d_peer‖², floored at 0: how far ours is above a peer's min-norm point."""
    ours, theirs = float(d.double().norm() ** 2), float(d_peer.double().norm() ** 2)
    return max(0.0, ours - theirs) / max(theirs, 1e-300)


def fixed_order(K: int, seed: int) -> Tensor:
    """PCGrad's and GradVac's visiting orders, drawn once so the fast path and the reference use the same."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(K, generator=g) for _ in range(K)])


def method_options(method: str, K: int, seed: int) -> dict[str, Any]:
    return {"order": fixed_order(K, seed)} if method in ("pcgrad", "gradvac") else {}


def check_reference(method: str, case: str, J: Tensor, seed: int, backend: str) -> Check:
    options = method_options(method, J.shape[0], seed)
    ours = aggregate(J, method, backend=backend, **options)
    ref = getattr(reference, method)(J.double(), **options)
    tol = max(TOLERANCE[J.dtype], ILL_CONDITIONED.get(case, 0.0), ILL_CONDITIONED_FOR.get((method, case), 0.0))
    cert = ours.diagnostics.get(CERTIFICATES.get(method, ""), None)
    error = relative_error(ours.direction, ref.direction, ours.weights, J, tol)
    return Check(method, case, "reference", error, tol, None if cert is None else float(cert))


def _torchjd_run(method: str, J: Tensor, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """torchjd's direction on J and our options that select its convention."""
    K = J.shape[0]
    options: dict[str, Any] = {}
    if method == "pcgrad":
        options["order"] = peers.torchjd_pcgrad_orders(K, seed)
        torch.manual_seed(seed)
    if method == "gradvac":  # torchjd adds 1e-8 to its denominators
        options.update(order=peers.torchjd_gradvac_orders(K, seed), eps=1e-8)
        torch.manual_seed(seed)
    if method == "cagrad":
        options["rescale"] = 0
    if method in ("upgrad", "dualproj"):  # torchjd solves on Γ/tr(Γ) + 1e-4·I
        options.update(reg_eps=1e-4, norm_eps=1e-4)
    return peers.torchjd_aggregator(method, K)(J), options


def _libmtl_run(method: str, J: Tensor, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """LibMTL's direction on J and our options that select its convention."""
    K = J.shape[0]
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if method == "pcgrad":
        options["order"] = peers.libmtl_pcgrad_orders(K, seed)
        random.seed(seed)
    elif method == "cagrad":
        kwargs = {"calpha": 0.5, "rescale": 1}
    elif method == "mgda":
        kwargs = {"mgda_gn": "none"}
        options["combination"] = "normalized"
    elif method == "gradvac":
        kwargs = {"beta": 0.5}
        options.update(order=peers.libmtl_gradvac_orders(K, seed), target_update="corrected")
        random.seed(seed)
    direction, _ = peers.libmtl_direction(peers.LIBMTL_CLASSES[method], J, **kwargs)
    return direction, options


#: (peer, method) → (how to run the peer, allowed error)
PEER_CHECKS: dict[tuple[str, str], tuple[Callable[[str, Tensor, int], tuple[Tensor, dict]], float]] = {
    ("torchjd", "mean"): (_torchjd_run, 1e-12),
    ("torchjd", "pcgrad"): (_torchjd_run, 1e-12),
    ("torchjd", "imtl"): (_torchjd_run, 1e-9),
    ("torchjd", "cagrad"): (_torchjd_run, 1e-4),  # torchjd: Clarabel interior point on a normalised Γ
    ("torchjd", "nash_mtl"): (_torchjd_run, 1e-4),  # torchjd: 20 CCP steps, ECOS tolerances
    ("torchjd", "mgda"): (_torchjd_run, 1e-9),  # objective: ours ≤ its Frank–Wolfe's
    ("torchjd", "upgrad"): (_torchjd_run, 1e-9),  # torchjd: quadprog on the regularised Γ
    ("torchjd", "dualproj"): (_torchjd_run, 1e-9),
    ("torchjd", "gradvac"): (_torchjd_run, 1e-12),
    ("torchjd", "config"): (_torchjd_run, 1e-9),
    ("torchjd", "aligned_mtl"): (_torchjd_run, 1e-9),
    ("torchjd", "fairgrad"): (_torchjd_run, 1e-4),  # torchjd: scipy least_squares at its default tolerances
    ("libmtl", "pcgrad"): (_libmtl_run, 1e-12),
    ("libmtl", "imtl"): (_libmtl_run, 1e-9),
    ("libmtl", "cagrad"): (_libmtl_run, 1e-4),  # LibMTL: SLSQP, ftol 1e-6 on the dual
    ("libmtl", "mgda"): (_libmtl_run, 1e-9),  # objective: ours ≤ its Frank–Wolfe's
    ("libmtl", "gradvac"): (_libmtl_run, 1e-12),
}


def check_peer(peer: str, method: str, case: str, J: Tensor, seed: int, backend: str) -> Check | None:
    if (peer, method) not in PEER_CHECKS or (peer == "libmtl" and method == "cagrad" and J.shape[0] != 3):
        return None
    run, tol = PEER_CHECKS[(peer, method)]
    J = J.double()
    theirs, options = run(method, J, seed)
    ours = aggregate(J, method, backend=backend, **options)
    if method == "mgda":
        return Check(method, case, f"{peer} ‖d‖²", objective_excess(ours.direction, theirs), tol)
    return Check(method, case, peer, relative_error(ours.direction, theirs, ours.weights, J, tol), tol)


def cases(Ks: list[int], N: int, seed: int, files: list[str]) -> list[tuple[str, Tensor, bool]]:
    """(name, J float64, whether peers are compared on it): peers on the random ones only, since
    adversarial inputs are where their documented conventions and tolerances part (README)."""
    out: list[tuple[str, Tensor, bool]] = []
    for K in Ks:
        out.append((f"random K={K}", random_J(K, N, seed + K), True))
        out.append((f"conflicting K={K}", conflicting_J(K, N, seed + K), True))
        out += [(name, J, False) for name, J in adversarial_cases(K, N, seed + K)]
    for path in files:
        J = torch.load(path, map_location="cpu")
        if not isinstance(J, Tensor) or J.dim() != 2:
            raise SystemExit(f"{path}: expected a saved [K, N] tensor of task gradients")
        out.append((path, J.detach().double(), True))
    return out


def invariant_violation(method: str, weights: Tensor, diagnostics: dict[str, Any]) -> float:
    """How far weights of ``method`` (default options) are from its constraints (0 when kept; inf
    when a weight is not finite): see the module docstring."""
    w = weights.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(w).all()):
        return float("inf")
    K = w.shape[0]
    if method == "mean":
        return float((w - 1.0 / K).abs().max())
    if method in ("nash_mtl", "fairgrad"):
        dropped = [int(k) for k in torch.as_tensor(diagnostics.get("dropped_tasks", []), dtype=torch.long).flatten()]
        return max(float((-w).clamp_min(0).max()), float(w[dropped].abs().max()) if dropped else 0.0)
    if method == "mgda":
        return max(float((-w).clamp_min(0).max()), abs(float(w.sum()) - 1.0))
    if method == "cagrad":  # w = (1/K + u)/(1 + c²) with u ≥ 0 at the defaults c = 0.5, rescale = 1
        floor = 1.0 / (K * 1.25)
        return float((floor - w).clamp_min(0).max()) / floor
    if method == "imtl":
        total = float(w.sum())
        return 0.0 if total == 0.0 and float(w.abs().max()) == 0.0 else abs(total - 1.0)
    if method in ("config", "aligned_mtl"):  # a zero gradient gets weight exactly 0
        zero = [int(k) for k in torch.as_tensor(diagnostics.get("zero_tasks", []), dtype=torch.long).flatten()]
        return float(w[zero].abs().max()) if zero else 0.0
    if method in ("upgrad", "dualproj"):  # w ≥ p = 1/K: UPGrad's Σᵢ pᵢvᵢ with vᵢ ≥ eᵢ, DualProj's w ≥ p
        return float((1.0 / K - w).clamp_min(0).max()) * K
    return 0.0  # PCGrad, GradVac: any finite coefficients


def check_invariants(method: str, case: str, gram: Tensor, backend: str) -> Check:
    """One method's weights on one Gram matrix against :func:`invariant_violation` (1e-9)."""
    solution = make_weighting(method, backend=backend)(gram)
    violation = invariant_violation(method, solution.weights, solution.diagnostics)
    return Check(method, case, "invariants", violation, 1e-9)


def wrapper_checks(seed: int, backend: str) -> list[Check]:
    """The drop-in optimizers' scenarios of the module docstring, one Check each (error 0 when the
    scenario behaves, 1 when it does not or raises unexpectedly)."""
    from .optim import MultiTaskOptimizer

    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(seed))

    def model(head_dtype: torch.dtype = torch.float32, tasks: int = 3) -> torch.nn.ModuleDict:
        torch.manual_seed(seed)
        heads = torch.nn.ModuleList([torch.nn.Linear(5, 1).to(head_dtype) for _ in range(tasks)])
        return torch.nn.ModuleDict({"trunk": torch.nn.Linear(6, 5), "heads": heads})

    def losses(net: torch.nn.ModuleDict, scales: tuple[float, ...] = (1.0, 1.0, 1.0)) -> list[Tensor]:
        z = torch.relu(net["trunk"](x))
        return [s * head(z.to(head.weight.dtype)).square().mean() for s, head in zip(scales, net["heads"])]

    def wrap(net: torch.nn.Module, **options: Any) -> MultiTaskOptimizer:
        return MultiTaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method="mean", backend=backend, **options)

    def features_not_reached() -> bool:
        net = model()
        before = [p.detach().clone() for p in net.parameters()]
        try:
            wrap(net).backward(losses(net), features=torch.randn(16, 5, requires_grad=True))
        except ValueError:
            return all(p.grad is None and torch.equal(p, b) for p, b in zip(net.parameters(), before))
        return False

    def absent_task_roles() -> bool:
        roles = []
        for first in ((1.0, 0.0), (1.0, 1.0)):  # two tasks, the second without a gradient at first
            net = model(tasks=2)
            opt = wrap(net)
            opt.backward(losses(net, first))
            opt.backward(losses(net))
            roles.append([name for name, p in net.named_parameters() if any(p is q for q in opt.roles.shared)])
        return roles[0] == roles[1]

    def mixed_dtypes() -> bool:
        net = model(torch.float64)
        task_losses = losses(net)
        wrap(net).backward(task_losses, retain_graph=True)
        K = len(task_losses)
        expected = torch.autograd.grad(sum(task_losses) / K, list(net["trunk"].parameters()), retain_graph=True)
        expected += torch.autograd.grad(sum(task_losses), list(net["heads"].parameters()))
        return all(p.grad.dtype == e.dtype and torch.allclose(p.grad, e, rtol=1e-5, atol=1e-7)
                   for p, e in zip(net.parameters(), expected))

    def skip_then_step() -> bool:
        net = model()
        opt = wrap(net, on_nonfinite="skip")
        task_losses = losses(net)
        opt.backward([task_losses[0] * float("nan"), *task_losses[1:]], retain_graph=True)
        opt.zero_grad()
        opt.backward(task_losses)
        before = [p.detach().clone() for p in net.parameters()]
        opt.step()
        return all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))

    scenarios = {
        "features the losses do not reach: refused, nothing changed": features_not_reached,
        "a task absent from the first batch: the same roles": absent_task_roles,
        "mixed parameter dtypes: the gradients of sum(losses)": mixed_dtypes,
        "a skipped step does not swallow the next": skip_then_step,
    }
    return scenario_checks(
        {name: (lambda s=scenario: 0.0 if s() else 1.0) for name, scenario in scenarios.items()},
        "behaviour", tolerance=0.5, failed=1.0,
    )


def scenario_checks(scenarios: dict[str, Callable[[], float]], against: str, *, tolerance: float,
                    failed: float) -> list[Check]:
    """One "wrappers" check per scenario, from the error it returns; a scenario that raises fails
    with the error ``failed``, the exception named in the check's name."""
    checks = []
    for name, scenario in scenarios.items():
        try:
            error = scenario()
        except Exception as exc:  # an unexpected error fails the check, reported by name
            error, name = failed, f"{name} (raised {type(exc).__name__}: {exc})"
        checks.append(Check("wrappers", name, against, error, tolerance))
    return checks


#: each Gramian wrapper with its defaults, and the reference of its method with the same options
#: (PCGrad's and GradVac's visiting order: the one the step drew, from its diagnostics)
GRAMIAN_WRAPPERS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "CAGrad": ("cagrad", lambda last: {"c": 0.5, "rescale": 1}),
    "PCGrad": ("pcgrad", lambda last: {"order": last.diagnostics["order"], "reduction": "sum"}),
    "NashMTL": ("nash_mtl", lambda last: {"max_norm": 1.0}),
    "IMTL": ("imtl", lambda last: {}),  # IMTL-L's loss scales are exp(0) = 1 on the first step
    "MGDA": ("mgda", lambda last: {"normalization": "none"}),
    "UPGrad": ("upgrad", lambda last: {}),
    "DualProj": ("dualproj", lambda last: {}),
    "GradVac": ("gradvac", lambda last: {"order": last.diagnostics["order"], "beta": 0.5}),
    "FairGrad": ("fairgrad", lambda last: {"alpha": 1.0}),
    "ConFIG": ("config", lambda last: {}),
    "AlignedMTL": ("aligned_mtl", lambda last: {"scale_mode": "min"}),
}
#: the wrappers' steps against the float64 references, on a float64 model (as ``TOLERANCE``)
WRAPPER_TOLERANCE = 1e-9


def _largest_relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """maxᵢ ‖aᵢ − eᵢ‖ / ‖eᵢ‖ (absolute where eᵢ = 0), in float64."""
    errors = [float((a.double() - e.double()).norm()) / (float(e.double().norm()) or 1.0) for a, e in zip(actual, expected)]
    return max(errors, default=0.0)


def wrapper_reference_checks(seed: int, backend: str) -> list[Check]:
    """Each drop-in optimizer's steps on a small float64 model against the float64 reference of its
    method, one Check each (the largest relative error over the parameters' gradients and the
    learned weights):

    - the Gramian wrappers (defaults): the trunk gets the reference direction on the trunk's task
      gradients (autograd, one task at a time), every head ∇ Σ Lₖ;
    - FAMO, 3 steps: each ``.grad`` is the gradient of the paper's objective c·Σ zᵢ·log Lᵢ
      (``reference.loss_weighting.famo_objective``), the logits follow ``famo_logit_step``;
    - UW, 3 steps (Adam): ``.grad`` of the network and the log-variances = autograd of
      Σ ½e^{−sᵢ}Lᵢ + ½sᵢ;
    - DWA, 4 epochs of 2 batches: the weights of ``dwa_weights`` (eq. 7), ``.grad`` = ∇ Σ wᵢLᵢ;
    - RLW: the first weights are softmax of a standard normal draw of ``torch.Generator(seed)``,
      ``.grad`` = ∇ Σ wᵢLᵢ;
    - GradNorm, 3 steps: ``.grad`` = ∇ Σ wᵢLᵢ, w's gradient = ∂L_grad/∂w of ``gradnorm_loss`` (eq. 2)
      and the renormalised step Σ w = K.
    """
    from . import optim
    from .reference import loss_weighting as lw

    K = 3
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def model() -> torch.nn.ModuleDict:
        torch.manual_seed(seed)
        heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(K)])
        return torch.nn.ModuleDict({"trunk": torch.nn.Linear(6, 5), "heads": heads}).double()

    def losses(net: torch.nn.ModuleDict, batch: int = 0) -> list[Tensor]:
        z = torch.tanh(net["trunk"](x + 0.1 * batch))
        return [(head(z) - k).square().mean() for k, head in enumerate(net["heads"])]

    def weighted_grads(net: torch.nn.ModuleDict, task_losses: list[Tensor], weights: Any) -> list[Tensor]:
        combined = sum(float(w) * l for w, l in zip(weights, task_losses))
        return list(torch.autograd.grad(combined, list(net.parameters()), retain_graph=True))

    def gramian(name: str) -> float:
        method, reference_options = GRAMIAN_WRAPPERS[name]
        net = model()
        task_losses = losses(net)
        trunk, heads = list(net["trunk"].parameters()), list(net["heads"].parameters())
        J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, trunk, retain_graph=True)])
                         for l in task_losses])
        heads_expected = list(torch.autograd.grad(sum(task_losses), heads, retain_graph=True))
        opt = getattr(optim, name)(torch.optim.SGD(net.parameters(), lr=0.1), backend=backend)
        last = opt.backward(task_losses)
        ref = getattr(reference, method)(J, **reference_options(last))
        d = torch.cat([p.grad.reshape(-1) for p in trunk])
        trunk_error = relative_error(d, ref.direction, ref.weights, J, WRAPPER_TOLERANCE)
        return max(trunk_error, _largest_relative_error([p.grad for p in heads], heads_expected))

    def famo() -> float:
        net = model()
        opt = optim.FAMO(torch.optim.SGD(net.parameters(), lr=0.1))
        logits = torch.zeros(K, dtype=torch.float64)
        moments = (torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), 0)
        before, error = None, 0.0
        for batch in range(3):
            task_losses = losses(net, batch)
            values = torch.stack([l.detach() for l in task_losses])
            if before is not None:  # the default convention: this step's losses are the last one's "after"
                logits, moments = lw.famo_logit_step(logits, moments, before, values, lr=opt.lr, weight_decay=opt.weight_decay)
            before = values
            expected = list(torch.autograd.grad(lw.famo_objective(torch.stack(task_losses), logits), list(net.parameters()),
                                                retain_graph=True))
            opt.zero_grad()
            opt.backward(task_losses)
            error = max(error, _largest_relative_error([p.grad for p in net.parameters()] + [opt.logits], expected + [logits]))
            opt.step()
        return error

    def uw() -> float:
        net = model()
        opt = optim.UW(torch.optim.Adam(net.parameters(), lr=0.02))
        error = 0.0
        for batch in range(3):
            task_losses = losses(net, batch)
            s = (torch.zeros(K, dtype=torch.float64) if opt.log_variances is None else opt.log_variances.detach().clone()).requires_grad_()
            expected = list(torch.autograd.grad(lw.uw_objective(torch.stack(task_losses), s), [*net.parameters(), s],
                                                retain_graph=True))
            opt.zero_grad()
            opt.backward(task_losses)
            error = max(error, _largest_relative_error([p.grad for p in net.parameters()] + [opt.log_variances.grad], expected))
            opt.step()
        return error

    def dwa() -> float:
        net = model()
        opt = optim.DWA(torch.optim.SGD(net.parameters(), lr=0.1), temperature=2.0)
        averages: list[list[float]] = []
        error = 0.0
        for epoch in range(4):
            epoch_losses = []
            for batch in range(2):
                task_losses = losses(net, 2 * epoch + batch)
                weights = torch.tensor(lw.dwa_weights(averages, 2.0, K), dtype=torch.float64)
                expected = weighted_grads(net, task_losses, weights)
                opt.zero_grad()
                result = opt.backward(task_losses)
                error = max(error, _largest_relative_error([p.grad for p in net.parameters()] + [result.weights], expected + [weights]))
                epoch_losses.append([float(l.detach()) for l in task_losses])
                opt.step()
            averages.append([sum(column) / len(column) for column in zip(*epoch_losses)])
            opt.end_epoch()
        return error

    def rlw() -> float:
        net = model()
        opt = optim.RLW(torch.optim.SGD(net.parameters(), lr=0.1), seed=seed)
        weights = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 0)
        task_losses = losses(net)
        expected = weighted_grads(net, task_losses, weights)
        result = opt.backward(task_losses)
        return _largest_relative_error([p.grad for p in net.parameters()] + [result.weights], expected + [weights])

    def gradnorm() -> float:
        net = model()
        layer, alpha, lr = net["trunk"].weight, 1.5, 0.1
        opt = optim.GradNorm(torch.optim.SGD(net.parameters(), lr=lr), layer=layer, alpha=alpha, weight_group={"lr": lr})
        w, initial, error = torch.ones(K, dtype=torch.float64), None, 0.0
        for batch in range(3):
            task_losses = losses(net, batch)
            values = torch.stack([l.detach() for l in task_losses])
            initial = values if initial is None else initial
            norms = torch.stack([torch.autograd.grad(l, layer, retain_graph=True)[0].norm() for l in task_losses])
            w_var = w.clone().requires_grad_()
            (w_grad,) = torch.autograd.grad(lw.gradnorm_loss(w_var, norms, values, initial, alpha), w_var)
            expected = weighted_grads(net, task_losses, w)
            opt.zero_grad()
            opt.backward(task_losses)
            error = max(error, _largest_relative_error([p.grad for p in net.parameters()] + [opt.task_weights.grad], expected + [w_grad]))
            opt.step()
            w = w - lr * w_grad
            w = K * w / w.sum()
            error = max(error, _largest_relative_error([opt.task_weights.detach()], [w]))
        return error

    scenarios: dict[str, Callable[[], float]] = {
        f"{name}: one step = reference.{GRAMIAN_WRAPPERS[name][0]} on the trunk, ∇ΣLₖ on the heads": (lambda n=name: gramian(n))
        for name in GRAMIAN_WRAPPERS
    }
    scenarios.update({
        "FAMO: 3 steps = the paper's objective and logit update": famo,
        "UW: 3 steps = the gradients of Σ ½e^(−s)L + ½s": uw,
        "DWA: 4 epochs = eq. 7's weights and ∇Σ wL": dwa,
        "RLW: softmax of the seeded normal draw, ∇Σ wL": rlw,
        "GradNorm: 3 steps = eq. 2's weight gradient and ∇Σ wL": gradnorm,
    })
    return scenario_checks(scenarios, "reference", tolerance=WRAPPER_TOLERANCE, failed=float("inf"))


def backend_problem(backend: str) -> str | None:
    """Why ``--backend`` cannot run the validation here (None when it can): the cases are CPU
    tensors, on which the Triton kernels run only through the interpreter."""
    cpu = torch.device("cpu")
    if available(backend, cpu) or backend == "auto":
        return None
    if backend != "triton":
        return _unavailable_reason(backend, cpu)
    if not triton_installed():
        return _unavailable_reason(backend, cpu)
    return (
        "--backend triton runs Triton kernels on CUDA tensors, or on CPU tensors through the Triton "
        "interpreter; the validation's cases are CPU tensors, so set TRITON_INTERPRET=1 before Python "
        "starts: TRITON_INTERPRET=1 python -m mtlkernels.validate --backend triton"
    )


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(prog="python -m mtlkernels.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS), metavar="METHOD",
                        help=f"methods to check (default: all of {', '.join(METHODS)})")
    parser.add_argument("--K", nargs="+", type=int, default=[2, 3, 8], help="numbers of tasks of the generated cases (default: 2 3 8)")
    parser.add_argument("--N", type=int, default=1000, help="gradient length of the generated cases (default: 1000)")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32", "float64"],
                        help="dtypes J is given in; each has its own tolerance (default: both)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "triton"),
                        help="backend of the Gram, solve and combination (default: auto); triton without CUDA "
                             "run needs TRITON_INTERPRET=1 set before Python starts")
    parser.add_argument("--gradients", nargs="*", default=[], metavar="FILE",
                        help="torch.save'd [K, N] task gradients of your own model, checked as well")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare against the importable peers (torchjd, LibMTL)")
    parser.add_argument("--draws", type=int, default=25,
                        help="random draws per K of the rank-deficient float32 Gram family (4 Grams each)")
    parser.add_argument("--wrappers", action=argparse.BooleanOptionalAction, default=True,
                        help="also check the drop-in optimizers' scenarios on a small model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated cases (default: 0)")
    args = parser.parse_args(argv)
    problem = backend_problem(args.backend)
    if problem is not None:
        parser.error(problem)  # exits with status 2

    have = peers.installed() if args.peers else {}
    checks: list[Check] = []
    for name, J, with_peers in cases(args.K, args.N, args.seed, args.gradients):
        for method in args.methods:
            for dtype in args.dtype:
                checks.append(check_reference(method, name, J.to(getattr(torch, dtype)), args.seed, args.backend))
            for peer in (p for p, ok in have.items() if ok and with_peers):
                check = check_peer(peer, method, name, J, args.seed, args.backend)
                if check is not None:
                    checks.append(check)
    for K in args.K:
        for draw in range(args.draws):
            for name, gram in rank_deficient_grams(K, args.seed + 1000 * draw + K):
                checks += [check_invariants(method, f"{name} K={K} #{draw}", gram, args.backend) for method in args.methods]
    if args.wrappers:
        checks += wrapper_checks(args.seed, args.backend) + wrapper_reference_checks(args.seed, args.backend)
    report(checks, args)
    return checks


def report(checks: list[Check], args: argparse.Namespace) -> None:
    have = peers.installed() if args.peers else {}
    print(f"mtlkernels validation · backend={args.backend} · N={args.N} · peers: "
          + (", ".join(p for p, ok in have.items() if ok) or "none" if args.peers else "off"))
    for peer in (p for p, ok in have.items() if not ok):
        print(f"  {peer} left out: {peers.missing_reason(peer)}")
    print(f"{'method':<9} {'against':<10} {'checks':>6} {'max error':>10} {'tolerance':>10} {'max certificate':>16}  result")
    failed = [c for c in checks if not c.passed]
    for method in dict.fromkeys(c.method for c in checks):
        for against in dict.fromkeys(c.against for c in checks if c.method == method):
            group = [c for c in checks if c.method == method and c.against == against]
            worst = max(group, key=lambda c: c.error / c.tolerance)
            certs = [c.certificate for c in group if c.certificate is not None]
            cert = f"{max(certs):.2e}" if certs else "-"
            ok = all(c.passed for c in group)
            print(f"{method:<9} {against:<10} {len(group):>6} {worst.error:>10.2e} {worst.tolerance:>10.0e} {cert:>16}  {'pass' if ok else 'FAIL'}")
    for c in failed:
        print(f"  FAIL {c.method} vs {c.against} on {c.case}: error {c.error:.3e} > {c.tolerance:.0e}")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")


if __name__ == "__main__":
    sys.exit(1 if any(not c.passed for c in main()) else 0)
