"""The peer packages as test oracles (see mtlkernels/peers.py for how LibMTL is loaded without
torchvision); these wrappers skip the test when a peer is not installed."""
from __future__ import annotations

import pytest
from torch import Tensor

from mtlkernels import peers


def libmtl_weighting(name: str) -> type:
    """The LibMTL 1.1.5 weighting class ``name`` (e.g. "PCGrad"), loaded without torchvision."""
    if not peers.installed()["libmtl"]:
        pytest.skip("LibMTL is not installed (pip install --no-deps LibMTL==1.1.5)")
    return peers.libmtl_weighting(name)


def libmtl_direction(name: str, J: Tensor, **kwargs) -> tuple[Tensor, object]:
    """Run LibMTL's weighting ``name`` on task gradients J [K, N] (float64) and return
    (the shared gradient it writes, whatever its ``backward`` returns)."""
    libmtl_weighting(name)
    return peers.libmtl_direction(name, J.double(), **kwargs)


def torchjd_aggregation():
    """The ``torchjd.aggregation`` module, or skip when torchjd is not installed."""
    return pytest.importorskip("torchjd.aggregation")
