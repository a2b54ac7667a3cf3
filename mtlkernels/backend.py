"""One place for dispatch: which implementation runs an operation for a given device.

Every operation (``gram``, ``combine``, each method's K-space solve) keeps a table
``{backend name: implementation}``. ``backend="auto"`` picks the first available entry of
``AUTO_ORDER`` for the tensors' device: the C++ extension on the CPU, Triton on CUDA, and plain
torch everywhere as the fallback. Naming a backend forces it (``"triton"`` on CPU tensors needs
``TRITON_INTERPRET=1``, which is how CI exercises the kernels).
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, TypeVar

import torch

from ._checks import check_option

BACKENDS = ("auto", "torch", "cpp", "triton")

AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")}

F = TypeVar("F", bound=Callable)


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend: str) -> str:
    check_option("backend", backend, BACKENDS)
    return backend


def select(op: str, impls: Mapping[str, F], backend: str, device: torch.device) -> F:
    """Return the implementation of ``op`` for ``backend`` on ``device`` (see module docstring)."""
    check_backend(backend)
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("torch",)):
            if name in impls and available(name, device):
                return impls[name]
        return impls["torch"]
    if backend not in impls:
        raise ValueError(f"{op} has no {backend!r} implementation; available: {sorted(impls)}")
    if not available(backend, device):
        raise RuntimeError(_unavailable_reason(backend, device))
    return impls[backend]


def available(backend: str, device: torch.device) -> bool:
    if backend == "torch":
        return True
    if backend == "cpp":
        from . import _extension

        return device.type == "cpu" and _extension.available
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return False


def _unavailable_reason(backend: str, device: torch.device) -> str:
    if backend == "cpp":
        from . import _extension

        if device.type != "cpu":
            return f"backend='cpp' runs on CPU tensors only; these are on {device}"
        return f"backend='cpp' needs the C++ extension ({_extension.import_error}). {_extension.REBUILD_HINT}"
    if backend == "triton":
        if device.type == "cpu":
            return "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before mtlkernels is imported"
        return f"backend='triton' needs triton installed and CUDA tensors; got {device}"
    return f"backend={backend!r} is not available on {device}"
