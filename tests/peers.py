"""The peer packages as test oracles: torchjd 0.18.0 and LibMTL 1.1.5 from PyPI.

LibMTL's package ``__init__`` imports torchvision (and with it a CUDA build of torch), so it is
installed with ``pip install --no-deps LibMTL==1.1.5`` and loaded without running that
``__init__``: a bare module object named ``LibMTL`` whose ``__path__`` is the installed folder is
put in ``sys.modules``, after which ``import LibMTL.weighting.<Name>`` works. A weighting class is
then driven standalone: one shared parameter θ, losses Lₖ = gₖ·θ, so task k's gradient is
exactly row k of the matrix we choose.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch
from torch import Tensor


def _libmtl_folder() -> str | None:
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def libmtl_weighting(name: str) -> type:
    """The LibMTL 1.1.5 weighting class ``name`` (e.g. "PCGrad"), loaded without torchvision."""
    if "LibMTL" not in sys.modules:
        folder = _libmtl_folder()
        if folder is None:
            pytest.skip("LibMTL is not installed (pip install --no-deps LibMTL==1.1.5)")
        package = types.ModuleType("LibMTL")
        package.__path__ = [folder]
        sys.modules["LibMTL"] = package
    return getattr(importlib.import_module(f"LibMTL.weighting.{name}"), name)


def libmtl_direction(name: str, J: Tensor, **kwargs) -> tuple[Tensor, object]:
    """Run LibMTL's weighting ``name`` on task gradients J [K, N] (float64) and return
    (the shared gradient it writes, whatever its ``backward`` returns)."""
    cls = libmtl_weighting(name)
    K, N = J.shape
    J = J.to(torch.float64)

    class Driver(cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num = K
            self.device = torch.device("cpu")
            self.rep_grad = False
            self.theta = torch.zeros(N, dtype=torch.float64, requires_grad=True)
            self.init_param()

        def get_share_params(self):
            return [self.theta]

        def zero_grad_share_params(self):
            if self.theta.grad is not None:
                self.theta.grad.zero_()

    driver = Driver()
    losses = J @ driver.theta + 1.0  # Lₖ = gₖ·θ + 1 (positive, for the loss normalisations)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # LibMTL allocates its buffers with the default dtype
    try:
        returned = driver.backward(losses, **kwargs)
    finally:
        torch.set_default_dtype(previous)
    return driver.theta.grad.detach().clone(), returned


def torchjd_aggregation():
    """The ``torchjd.aggregation`` module, or skip when torchjd is not installed."""
    return pytest.importorskip("torchjd.aggregation")
