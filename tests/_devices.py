"""Device and skip marks and the no-host-sync check shared by the tests (tests/conftest.py has set TRITON_INTERPRET=1 on a
machine without CUDA before this imports mtlkernels)."""
import contextlib
from typing import Callable, Iterator

import pytest
import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.backend import triton_interpreted

#: where the Triton kernels run: the GPU, or CPU tensors under TRITON_INTERPRET=1
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_cuda(test: Callable) -> Callable:
    """A GPU-only test: skipped without CUDA, and marked ``gpu`` so that ``pytest -m gpu`` selects
    exactly these (the first stage of bench/run_gpu.sh)."""
    return pytest.mark.gpu(_skip_without_cuda(test))

requires_cpp = pytest.mark.skipif(not _extension.available, reason=f"C++ extension not built: {_extension.import_error}")

#: Triton kernels on TRITON_DEVICE: on CPU tensors only through the interpreter
requires_triton = pytest.mark.skipif(
    TRITON_DEVICE == "cpu" and not triton_interpreted(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1"
)

#: the Triton solves are checked against the C++ solve of the same Γ
requires_cpp_oracle = pytest.mark.skipif(not _extension.available, reason="the C++ solver is the oracle: extension not built")


def poison_empty(monkeypatch: pytest.MonkeyPatch, module) -> None:
    """Make every ``torch.empty`` called from ``module`` (a kernel launcher) NaN (floats), True
    (bool) or -7 (ints), so an output the kernel does not write shows."""
    empty = torch.empty

    def poisoned(*size, dtype=None, device=None, **kwargs):
        out = empty(*size, dtype=dtype, device=device, **kwargs)
        return out.fill_(float("nan") if out.is_floating_point() else True if out.dtype == torch.bool else -7)

    monkeypatch.setattr(module.torch, "empty", poisoned)


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Within the block, any CUDA call that makes the host wait for the GPU raises (torch's sync
    debug mode "error"); the GPU is idle when it starts, so earlier work does not count."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def solve_without_host_sync(J: torch.Tensor, weighting) -> tuple:
    """``mk.aggregate(J, weighting)`` and the solve of its Γ again, both inside :func:`no_host_sync`
    (after a first aggregate outside it, which compiles the kernels). Returns (result, solution)."""
    mk.aggregate(J, weighting)
    with no_host_sync():
        result = mk.aggregate(J, weighting)
        solution = weighting(result.gram)
    return result, solution
