"""The compiled extension ``mtlkernels._C``, loaded once, with a clear error when it is missing."""
from __future__ import annotations

import os
from types import ModuleType

try:
    from . import _C as _module

    available: bool = True
    import_error: BaseException | None = None
    #: the largest K the C++ K-space solves take (kMaxTasks in csrc/solvers/binding.h)
    max_tasks: int = _module.max_tasks
except ImportError as exc:  # not built, or built for another Python/CPU
    _module = None
    available = False
    import_error = exc
    max_tasks = 0

#: names a lower instruction-set level for the CPU kernels than the best this CPU runs
CPU_ISA_ENV = "MTLKERNELS_CPU_ISA"


def _apply_cpu_isa_env() -> None:
    """Run the CPU kernels at the level named by ``MTLKERNELS_CPU_ISA``, if set.

    Raises:
        RuntimeError: the variable names no level of this build, or one this CPU cannot run
            (a forced level is never silently replaced by another).
    """
    level = os.environ.get(CPU_ISA_ENV, "").strip()
    if _module is None or not level:
        return
    try:
        _module.set_cpu_isa(level)
    except ValueError as exc:
        raise RuntimeError(f"{CPU_ISA_ENV}={level!r}: {exc}") from None


_apply_cpu_isa_env()

REBUILD_HINT = (
    "Rebuild it from the repository root with `pip install -e .` "
    "(or `python setup.py build_ext --inplace`); it needs a C++17 compiler, pybind11 and ninja."
)


def extension() -> ModuleType:
    """Return ``mtlkernels._C`` or raise a RuntimeError that says how to build it."""
    if _module is None:
        raise RuntimeError(f"the mtlkernels C++ extension is not available ({import_error}). {REBUILD_HINT}")
    return _module


def cpu_isa() -> str:
    """The instruction-set level the CPU kernels run at: ``"baseline"`` (x86-64 SSE2, or the
    portable build on other architectures), ``"avx2"`` (AVX2 + FMA + F16C), ``"avx512"`` (AVX-512
    F/BW/VL/DQ) or ``"avx512bf16"`` (``avx512`` with bfloat16 Gram tiles through AVX512-BF16).

    The best level this CPU runs, unless ``MTLKERNELS_CPU_ISA`` named a lower one at import.
    """
    return extension().cpu_isa()


def cpu_isa_levels() -> list[str]:
    """The levels of :func:`cpu_isa` this build has and this CPU runs, lowest first."""
    return list(extension().cpu_isa_levels())


def set_cpu_isa(level: str) -> None:
    """Run the CPU kernels at ``level`` (one of :func:`cpu_isa_levels`) from now on.

    Raises:
        ValueError: ``level`` is not one of :func:`cpu_isa_levels`; the active level is unchanged.
    """
    extension().set_cpu_isa(level)
