"""Public helpers for validation: the peer libraries torchjd and LibMTL, driven on the same task
gradients as mtlkernels.

Used by ``python -m mtlkernels.validate``, the benchmarks and the tests (never by the library
itself). Both peers are optional: :func:`installed` says which can be imported, and
:func:`missing_reason` why one cannot.

LibMTL's weightings are imported the ordinary way (``import LibMTL.weighting.<Name>``), which runs
LibMTL's package ``__init__``; LibMTL 1.1.5's imports torchvision's model zoo, so where that fails
(torchvision absent or too new) LibMTL counts as not importable and is left out, with that reason.
A weighting class is driven standalone on one shared parameter θ with per-task losses
Lₖ = gₖ·θ + 1, so task k's gradient is exactly row k of the matrix given.
"""
from __future__ import annotations

import importlib
import importlib.util
import random
from typing import Any, Callable

import torch
from torch import Tensor

#: which of our methods each peer implements, and its class name there
TORCHJD_CLASSES = {
    "mean": "Mean", "pcgrad": "PCGrad", "cagrad": "CAGrad", "nash_mtl": "NashMTL", "imtl": "IMTLG", "mgda": "MGDA",
    "upgrad": "UPGrad", "dualproj": "DualProj", "gradvac": "GradVac", "fairgrad": "FairGrad", "config": "ConFIG",
    "aligned_mtl": "AlignedMTL",
}
LIBMTL_CLASSES = {"pcgrad": "PCGrad", "cagrad": "CAGrad", "imtl": "IMTL", "mgda": "MGDA", "gradvac": "GradVac"}

#: the module each peer is imported through
_PEER_MODULES = {"torchjd": "torchjd.aggregation", "libmtl": "LibMTL.weighting"}


def missing_reason(peer: str) -> str | None:
    """None when ``peer`` ("torchjd" or "libmtl") imports, else why it cannot be used.

    Raises:
        ValueError: ``peer`` is not one of the peers driven here.
    """
    if peer not in _PEER_MODULES:
        raise ValueError(f"peer must be one of {sorted(_PEER_MODULES)}, got {peer!r}")
    module = _PEER_MODULES[peer]
    try:
        importlib.import_module(module)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == module.split(".")[0]:
            return f"{module.split('.')[0]} is not installed"
        return f"import {module} fails: {type(error).__name__}: {error}"
    return None


def installed() -> dict[str, bool]:
    """{"torchjd": importable, "libmtl": importable}."""
    return {peer: missing_reason(peer) is None for peer in _PEER_MODULES}


def libmtl_weighting(name: str) -> type:
    """The LibMTL weighting class ``name`` (e.g. "PCGrad").

    Raises:
        ImportError: LibMTL cannot be imported here (the message says why).
    """
    reason = missing_reason("libmtl")
    if reason is not None:
        raise ImportError(f"LibMTL's weighting {name} is not available: {reason}")
    return getattr(importlib.import_module(f"LibMTL.weighting.{name}"), name)


def libmtl_driver(name: str, K: int, N: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Any:
    """An instance of LibMTL's weighting ``name`` on one shared parameter θ [N] (``driver.theta``)."""
    cls = libmtl_weighting(name)

    class Driver(cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num = K
            self.device = torch.device(device)
            self.rep_grad = False
            self.theta = torch.zeros(N, dtype=dtype, device=device, requires_grad=True)
            self.init_param()

        def get_share_params(self):
            return [self.theta]

        def zero_grad_share_params(self):
            if self.theta.grad is not None:
                self.theta.grad.zero_()

    return Driver()


def libmtl_run(driver: Any, J: Tensor, **kwargs: Any) -> tuple[Tensor, Any]:
    """One LibMTL ``backward`` on task gradients J [K, N]; returns (θ.grad it wrote, its return value).

    Each loss is Lₖ = gₖ·θ + 1 computed separately, so each of LibMTL's K backward passes reads
    one row of J, as in a real model. LibMTL allocates its [K, N] buffer with torch's default
    dtype, so that is set to J's dtype for the call.
    """
    losses = torch.stack([(J[k] * driver.theta).sum() for k in range(J.shape[0])]) + 1.0
    previous = torch.get_default_dtype()
    torch.set_default_dtype(J.dtype if J.dtype in (torch.float32, torch.float64) else torch.float32)
    try:
        returned = driver.backward(losses, **kwargs)
    finally:
        torch.set_default_dtype(previous)
    return driver.theta.grad.detach().clone(), returned


def libmtl_direction(name: str, J: Tensor, **kwargs: Any) -> tuple[Tensor, Any]:
    """LibMTL weighting ``name`` applied once to J [K, N]: (shared gradient, backward's return)."""
    driver = libmtl_driver(name, J.shape[0], J.shape[1], J.dtype, J.device)
    return libmtl_run(driver, J, **kwargs)


def torchjd_aggregator(method: str, K: int, **kwargs: Any) -> Callable[[Tensor], Tensor]:
    """torchjd's aggregator for ``method`` (constructor kwargs passed through): J [K, N] → d [N]."""
    from torchjd import aggregation

    cls = getattr(aggregation, TORCHJD_CLASSES[method])
    if method == "nash_mtl":
        kwargs.setdefault("n_tasks", K)
    if method == "cagrad":
        kwargs.setdefault("c", 0.5)
    if method == "fairgrad":
        kwargs.setdefault("alpha", 1.0)  # torchjd has no default; ours is 1
    return cls(**kwargs)


def torchjd_pcgrad_orders(K: int, seed: int) -> Tensor:
    """The visiting orders torchjd's PCGrad uses after ``torch.manual_seed(seed)`` — one
    ``torch.randperm(K)`` per task from the global RNG, skipping i — as our ``order=``: the same
    permutations with i moved to the front of row i (a first visit to i is a no-op). Re-seed
    with the same value before calling torchjd."""
    torch.manual_seed(seed)
    rows = []
    for i in range(K):
        permutation = torch.randperm(K).tolist()
        rows.append([i] + [j for j in permutation if j != i])
    return torch.tensor(rows)


def libmtl_pcgrad_orders(K: int, seed: int) -> Tensor:
    """The visiting orders LibMTL's PCGrad uses after ``random.seed(seed)`` — one
    ``random.shuffle(range(K))`` per task, i included wherever it lands — as our ``order=``,
    unchanged. Re-seed with the same value before calling LibMTL."""
    random.seed(seed)
    rows = []
    for _ in range(K):
        row = list(range(K))
        random.shuffle(row)
        rows.append(row)
    return torch.tensor(rows)


def torchjd_gradvac_orders(K: int, seed: int) -> Tensor:
    """The visiting orders torchjd's GradVac uses after ``torch.manual_seed(seed)`` — per task i, one
    ``torch.randperm(K − 1)`` over the other tasks in increasing order — as our ``order=`` (i first,
    where our GradVac skips it). Re-seed with the same value before calling torchjd."""
    torch.manual_seed(seed)
    rows = []
    for i in range(K):
        others = [j for j in range(K) if j != i]
        rows.append([i] + [others[p] for p in torch.randperm(K - 1).tolist()])
    return torch.tensor(rows)


def libmtl_gradvac_orders(K: int, seed: int) -> Tensor:
    """The visiting orders LibMTL's GradVac uses after ``random.seed(seed)`` — per task i, one
    ``random.shuffle`` of the other tasks — as our ``order=`` (i first, where our GradVac skips
    it). Re-seed with the same value before calling LibMTL."""
    random.seed(seed)
    rows = []
    for i in range(K):
        others = [j for j in range(K) if j != i]
        random.shuffle(others)
        rows.append([i] + others)
    return torch.tensor(rows)
