"""The compiled extension ``mtlkernels._C``, loaded once, with a clear error when it is missing."""
from __future__ import annotations

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

REBUILD_HINT = (
    "Rebuild it from the repository root with `pip install -e .` "
    "(or `python setup.py build_ext --inplace`); it needs a C++17 compiler, pybind11 and ninja."
)


def extension() -> ModuleType:
    """Return ``mtlkernels._C`` or raise a RuntimeError that says how to build it."""
    if _module is None:
        raise RuntimeError(f"the mtlkernels C++ extension is not available ({import_error}). {REBUILD_HINT}")
    return _module
