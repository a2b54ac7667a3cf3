"""hypothesis, when installed; otherwise stand-ins that let a test module import and skip only its
property tests. The GPU run (bench/run_gpu.sh) needs only torch, triton, numpy and pytest, so every
module it collects imports ``given``, ``settings`` and ``st`` from here rather than from hypothesis."""
from __future__ import annotations

from typing import Any, Callable

import pytest

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

    class _AbsentStrategies:
        """Stands for ``hypothesis.strategies`` and every strategy built from it at import time
        (``st.integers(1, 5)``, ``@st.composite`` functions and their calls): all are this object."""

        def __getattr__(self, name: str) -> "_AbsentStrategies":
            return self

        def __call__(self, *args: Any, **kwargs: Any) -> "_AbsentStrategies":
            return self

    st = _AbsentStrategies()  # type: ignore[assignment]

    def given(*args: Any, **kwargs: Any) -> pytest.MarkDecorator:  # type: ignore[no-redef]
        """The property test is skipped: hypothesis draws its examples."""
        return pytest.mark.skip(reason="hypothesis is not installed (property test)")

    def settings(*args: Any, **kwargs: Any) -> Callable:  # type: ignore[no-redef]
        """No settings to apply: the test is skipped by ``given``."""
        return lambda test: test

__all__ = ["AVAILABLE", "given", "settings", "st"]
