"""One place for dispatch: which implementation runs an operation for a given device.

Every operation (``gram``, ``combine``, each method's K-space solve) keeps a table
``{backend name: implementation}``. ``backend="auto"`` picks the first available entry of
``AUTO_ORDER`` for the tensors' device: the C++ extension on the CPU, Triton on CUDA, and plain
torch everywhere as the fallback. Naming a backend forces it (``"triton"`` on CPU tensors needs
``TRITON_INTERPRET=1``, which is how CI exercises the kernels).

K-space solves also have a size limit per backend (:func:`max_tasks`): the C++ solves take
K ≤ 256, the on-device Triton solves K ≤ 64 (Γ lives in one program's registers). Beyond its
limit a solve runs in torch, whether the backend was chosen by "auto" or named.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Collection, Mapping, TypeVar

import torch

from . import _extension
from ._checks import check_option

BACKENDS = ("auto", "torch", "cpp", "triton")

AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")}

#: the largest K of the on-device solves: Γ is held as a BLOCK_K × BLOCK_K float64 register tile
TRITON_MAX_TASKS = 64

F = TypeVar("F", bound=Callable)


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: the oldest Triton the kernels compile with: 3.3 brought ``tl.gather`` (the K-space solves)
TRITON_MIN_VERSION = (3, 3)


@functools.lru_cache(maxsize=None)
def triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed triton package, or None when it does not import (an
    optional dependency: ``mtlkernels[triton]``, or brought by a CUDA build of torch)."""
    try:
        import triton
    except ImportError:
        return None
    parts = (triton.__version__.split(".") + ["0"])[:2]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)  # type: ignore[return-value]


def triton_installed() -> bool:
    """True when a triton the kernels compile with (:data:`TRITON_MIN_VERSION` or newer) imports."""
    version = triton_version()
    return version is not None and version >= TRITON_MIN_VERSION


def check_backend(backend: str) -> str:
    check_option("backend", backend, BACKENDS)
    return backend


def max_tasks(backend: str) -> int | None:
    """The largest K a K-space solve on ``backend`` takes (None: no limit). The C++ limit is the
    extension's own (``mtlkernels._C.max_tasks``)."""
    if backend == "cpp":
        return _extension.max_tasks
    return TRITON_MAX_TASKS if backend == "triton" else None


#: the backends that resolve to "cpp" on a CPU tensor when the operation has it and K fits ("auto":
#: AUTO_ORDER["cpu"] starts with it)
_CPP_ON_CPU = ("auto", "cpp")


def cpp_on_cpu(implemented: Collection[str], backend: str, K: int | None = None) -> bool:
    """Whether :func:`resolve` gives "cpp" for a CPU tensor: the common case, decided first (a
    few comparisons, no device object)."""
    return backend in _CPP_ON_CPU and "cpp" in implemented and _extension.available and (K is None or K <= _extension.max_tasks)


def resolve(op: str, implemented: Collection[str], backend: str, device: torch.device, K: int | None = None) -> str:
    """The backend that runs ``op`` (implemented on ``implemented``, "torch" among them) for
    ``backend`` on ``device``; with ``K``, a backend whose :func:`max_tasks` is below K gives way
    to "torch". A named backend that is not implemented or cannot run on ``device`` raises."""
    if device.type == "cpu" and cpp_on_cpu(implemented, backend, K):
        return "cpp"
    check_backend(backend)
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("torch",)):
            if name in implemented and available(name, device) and _fits(name, K):
                return name
        return "torch"
    if backend not in implemented:
        raise ValueError(f"{op} has no {backend!r} implementation; available: {sorted(implemented)}")
    if not available(backend, device):
        raise RuntimeError(_unavailable_reason(backend, device))
    return backend if _fits(backend, K) else "torch"


def select(op: str, impls: Mapping[str, F], backend: str, device: torch.device) -> F:
    """Return the implementation of ``op`` for ``backend`` on ``device`` (see module docstring)."""
    return impls[resolve(op, impls, backend, device)]


def _fits(backend: str, K: int | None) -> bool:
    limit = max_tasks(backend) if K is not None else None
    return limit is None or K <= limit


def available(backend: str, device: torch.device) -> bool:
    if backend == "torch":
        return True
    if backend == "cpp":
        return device.type == "cpu" and _extension.available
    if backend == "triton":
        if not triton_installed():
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return False


def _unavailable_reason(backend: str, device: torch.device) -> str:
    if backend == "cpp":
        if device.type != "cpu":
            return f"backend='cpp' runs on CPU tensors only; these are on {device}"
        return f"backend='cpp' needs the C++ extension ({_extension.import_error}). {_extension.REBUILD_HINT}"
    if backend == "triton":
        version = triton_version()
        if version is None:
            return (
                "backend='triton' needs the triton package, which is not installed (CUDA builds of torch bring it; "
                'on a CPU-only install: pip install "mtlkernels[triton]" and set TRITON_INTERPRET=1)'
            )
        if version < TRITON_MIN_VERSION:
            have, need = ".".join(map(str, version)), ".".join(map(str, TRITON_MIN_VERSION))
            return (
                f"backend='triton' needs triton >= {need} (tl.gather); triton {have} is installed "
                f"(torch 2.7's CUDA wheels bring 3.3): upgrade torch, or use backend='torch'"
            )
        if device.type == "cpu":
            return "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before mtlkernels is imported"
        return f"backend='triton' needs triton installed and CUDA tensors; got {device}"
    return f"backend={backend!r} is not available on {device}"
