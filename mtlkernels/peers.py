"""Deprecated alias of :mod:`mtlkernels.testing.peers`; import from there. Kept so that existing
``from mtlkernels.peers import ...`` lines keep working."""
from .testing.peers import (
    LIBMTL_CLASSES,
    TORCHJD_CLASSES,
    installed,
    libmtl_direction,
    libmtl_driver,
    libmtl_pcgrad_orders,
    libmtl_run,
    libmtl_weighting,
    missing_reason,
    torchjd_aggregator,
    torchjd_pcgrad_orders,
)

__all__ = [
    "LIBMTL_CLASSES",
    "TORCHJD_CLASSES",
    "installed",
    "libmtl_direction",
    "libmtl_driver",
    "libmtl_pcgrad_orders",
    "libmtl_run",
    "libmtl_weighting",
    "missing_reason",
    "torchjd_aggregator",
    "torchjd_pcgrad_orders",
]
