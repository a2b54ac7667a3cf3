"""What the benchmarks measure: one *case* per (suite, method, K, N, dtype), each timing ours, the
plain-torch way, the peers that implement the method, and the memory floor, in the same run.

A case is a list of named callables over the same J; :func:`run_case` times them all and returns
one row: times, the floor, and the ratios (to the floor, and each peer's time over ours).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..testing import peers
from ..aggregate import Aggregator
from ..combine import combine
from ..gram import gram
from .timing import Timing, measure

METHODS = ("mean", "pcgrad", "cagrad", "nash_mtl", "imtl", "mgda", "upgrad", "dualproj", "gradvac", "fairgrad", "config",
           "aligned_mtl")


@dataclass
class Row:
    suite: str
    method: str
    K: int
    N: int
    dtype: str
    device: str
    times: dict[str, Timing] = field(default_factory=dict)
    floor_s: float = float("nan")
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        ours = self.times["mtlkernels"].median_s
        out: dict[str, Any] = {
            "suite": self.suite, "method": self.method, "K": self.K, "N": self.N, "dtype": self.dtype,
            "device": self.device, "floor_s": self.floor_s, "ratio_to_floor": ours / self.floor_s,
        }
        for name, t in self.times.items():
            out[f"{name}_s"] = t.median_s
            out[f"{name}_p20_s"] = t.p20_s
            out[f"{name}_p80_s"] = t.p80_s
            if name != "mtlkernels":
                out[f"speedup_vs_{name}"] = t.median_s / ours
        out["skipped"] = self.skipped
        return out


def make_J(K: int, N: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    J = torch.randn(K, N, generator=g, device=device, dtype=torch.float32)
    J[1::2] -= 1.5 * J[0]  # conflicts, so the surgery/solvers have work to do
    return J.to(dtype)


#: (K, N, dtype, device type) → seconds of one read of a J of that size, measured once per run
_FLOORS: dict[tuple[int, int, torch.dtype, str], float] = {}


def read_floor(J: Tensor, device: torch.device, min_time_s: float) -> float:
    """Seconds for one streaming read of J: the best of at least 3 × ``min_time_s`` of reading
    it (the faster of two ways), measured once per size of J in a run, so that every row on that
    J is divided by the same floor, not by a noisy one of its own."""
    key = (J.shape[0], J.shape[1], J.dtype, device.type)
    if key not in _FLOORS:
        flat = J.reshape(-1)
        budget = max(3 * min_time_s, 0.05)
        candidates = [measure(lambda: flat.sum(dtype=torch.float32), device, min_time_s=budget, max_repeats=500).best_s]
        if device.type == "cuda":
            copy = torch.empty_like(flat)
            # a device-to-device copy moves 2× the bytes of a read: half its time is one read
            candidates.append(measure(lambda: copy.copy_(flat), device, min_time_s=budget, max_repeats=500).best_s / 2)
        _FLOORS[key] = min(candidates)
    return _FLOORS[key]


def _peer_callables(method: str, J: Tensor) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """The peers' way of doing the same aggregation on J, and why a peer was left out."""
    K = J.shape[0]
    calls: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    have = peers.installed()
    if method in peers.TORCHJD_CLASSES and have["torchjd"]:
        if J.dtype in (torch.float32, torch.float64):
            agg = peers.torchjd_aggregator(method, K)
            calls["torchjd"] = lambda: agg(J)
        else:
            skipped["torchjd"] = f"does not run on {J.dtype}"
    if method in peers.LIBMTL_CLASSES and have["libmtl"]:
        if method == "cagrad" and K != 3:
            skipped["libmtl"] = "LibMTL 1.1.5 hard-codes K = 3 in CAGrad"
        elif J.dtype != torch.float32 or J.device.type != "cpu":
            skipped["libmtl"] = "driven on float32 CPU tensors only"
        else:
            driver = peers.libmtl_driver(peers.LIBMTL_CLASSES[method], K, J.shape[1], J.dtype, J.device)
            kwargs = {"cagrad": {"calpha": 0.5, "rescale": 1}, "mgda": {"mgda_gn": "none"}, "gradvac": {"beta": 0.5}}.get(method, {})
            calls["libmtl"] = lambda: peers.libmtl_run(driver, J, **kwargs)
    for peer, classes in (("torchjd", peers.TORCHJD_CLASSES), ("libmtl", peers.LIBMTL_CLASSES)):
        if method in classes and not have[peer]:
            skipped[peer] = peers.missing_reason(peer) or "not importable"
    return calls, skipped


def aggregate_case(method: str, K: int, N: int, dtype: torch.dtype, device: torch.device, min_time_s: float, with_peers: bool = True) -> Row:
    """Full aggregate(): ours (auto backend) vs plain torch (backend="torch") vs the peers.

    Floor: two streaming reads of J (Gram + combination), measured in the same run.
    """
    J = make_J(K, N, dtype, device)
    row = Row("aggregate", method, K, N, str(dtype).removeprefix("torch."), device.type)
    ours = Aggregator(method)  # MGDA: normalization="none", as J alone gives no losses
    torch_way = Aggregator(method, backend="torch")
    calls: dict[str, Callable[[], object]] = {"mtlkernels": lambda: ours(J), "torch": lambda: torch_way(J)}
    if with_peers:
        peer_calls, row.skipped = _peer_callables(method, J)
        calls.update(peer_calls)
    for name, fn in calls.items():
        row.times[name] = measure(fn, device, min_time_s=min_time_s)
    row.floor_s = 2 * read_floor(J, device, min_time_s)
    return row


def passes_case(op: str, K: int, N: int, dtype: torch.dtype, device: torch.device, min_time_s: float) -> Row:
    """One pass alone: ``gram`` (vs torch J @ Jᵀ) or ``combine`` (vs torch w @ J); floor: one read of J."""
    J = make_J(K, N, dtype, device)
    w = torch.rand(K, device=device)
    row = Row("passes", op, K, N, str(dtype).removeprefix("torch."), device.type)
    if op == "gram":
        calls = {"mtlkernels": lambda: gram(J), "torch": lambda: J @ J.T}
    else:
        out = torch.empty(N, dtype=dtype, device=device)
        calls = {"mtlkernels": lambda: combine(w, J, out=[out]), "torch": lambda: w.to(dtype) @ J}
    for name, fn in calls.items():
        row.times[name] = measure(fn, device, min_time_s=min_time_s)
    row.floor_s = read_floor(J, device, min_time_s)
    return row
