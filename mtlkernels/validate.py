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
from .methods import METHODS
from .testing import peers
from .testing.cases import adversarial_cases, conflicting_J, random_J

#: the diagnostics key that certifies each method's solve (0 = exact)
CERTIFICATES = {
    "pcgrad": "orthogonality_residual",
    "cagrad": "kkt_residual",
    "nash_mtl": "kept_residual",
    "imtl": "residual",
    "mgda": "kkt_residual",
}

#: allowed error against the reference, by the dtype J is given in
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

#: rounding floor F relative to Σᵢ|wᵢ|‖gᵢ‖ (float32 J: combined in float32 — a few ulps)
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-2}

#: ill-conditioned by construction: Γ of gradients equal up to 1e-6 pins the weights down only to
#: ~1e-6 relative, so directions agree to ~1e-6 whatever the solver
ILL_CONDITIONED = {"near_collinear": 1e-5}


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
    """PCGrad's visiting orders, drawn once so the fast path and the reference use the same."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(K, generator=g) for _ in range(K)])


def method_options(method: str, K: int, seed: int) -> dict[str, Any]:
    return {"order": fixed_order(K, seed)} if method == "pcgrad" else {}


def check_reference(method: str, case: str, J: Tensor, seed: int, backend: str) -> Check:
    options = method_options(method, J.shape[0], seed)
    ours = aggregate(J, method, backend=backend, **options)
    ref = getattr(reference, method)(J.double(), **options)
    tol = max(TOLERANCE[J.dtype], ILL_CONDITIONED.get(case, 0.0))
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
    if method == "cagrad":
        options["rescale"] = 0
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
    ("libmtl", "pcgrad"): (_libmtl_run, 1e-12),
    ("libmtl", "imtl"): (_libmtl_run, 1e-9),
    ("libmtl", "cagrad"): (_libmtl_run, 1e-4),  # LibMTL: SLSQP, ftol 1e-6 on the dual
    ("libmtl", "mgda"): (_libmtl_run, 1e-9),  # objective: ours ≤ its Frank–Wolfe's
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


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(prog="python -m mtlkernels.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--K", nargs="+", type=int, default=[2, 3, 8])
    parser.add_argument("--N", type=int, default=1000)
    parser.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32", "float64"])
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "triton"))
    parser.add_argument("--gradients", nargs="*", default=[], metavar="FILE", help="torch.save'd [K, N] task gradients")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

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
