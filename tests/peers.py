"""The peer packages and the authors' algorithms as test oracles.

Every test that needs a peer (torchjd, LibMTL, cvxpy, mpmath) reaches it through
:func:`require_peer` or the wrappers below: when the peer cannot be imported the test is skipped,
or fails when ``MTLKERNELS_REQUIRE_PEERS=1`` (as CI sets it, so a missing oracle is never a silent
skip).

LibMTL 1.1.5's package ``__init__`` imports torchvision's model zoo, which the weighting modules do
not use (and which a CPU build of torch does not have). :func:`load_libmtl_without_torchvision`,
called from tests/conftest.py and bench/conftest.py, makes ``import LibMTL.weighting.<Name>`` work
here without running that ``__init__``; the package's drivers (:mod:`mtlkernels.testing.peers`)
then import LibMTL the ordinary way.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
import pytest
import torch
from torch import Tensor

from mtlkernels.testing import peers

#: set to 1 (CI does) to turn a missing peer into a failing test instead of a skip
REQUIRE_PEERS = os.environ.get("MTLKERNELS_REQUIRE_PEERS", "0") not in ("", "0")


def load_libmtl_without_torchvision() -> None:
    """Register a bare ``LibMTL`` package (``__path__`` = the installed folder, ``__init__`` not run)
    in ``sys.modules``, so its weighting modules import without torchvision. No-op when LibMTL is
    not installed or already imported."""
    if "LibMTL" in sys.modules:
        return
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("LibMTL")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["LibMTL"] = package


def _missing(message: str) -> NoReturn:
    """Skip the calling test for a missing peer, or fail it under MTLKERNELS_REQUIRE_PEERS=1."""
    if REQUIRE_PEERS:
        pytest.fail(f"{message} (MTLKERNELS_REQUIRE_PEERS=1: peers are required)", pytrace=False)
    pytest.skip(message)


def require_peer(module: str) -> ModuleType:
    """Import ``module`` (e.g. "torchjd.aggregation", "cvxpy", "LibMTL.weighting") and return it;
    when it cannot be imported, skip the test (fail it under MTLKERNELS_REQUIRE_PEERS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        _missing(f"peer {module} cannot be imported: {type(error).__name__}: {error}")


def require_peers(*names: str) -> None:
    """Skip the test (fail it under MTLKERNELS_REQUIRE_PEERS=1) unless every named peer of
    :mod:`mtlkernels.testing.peers` ("torchjd", "libmtl") imports."""
    for name in names:
        reason = peers.missing_reason(name)
        if reason is not None:
            _missing(f"peer {name}: {reason}")


def installed_peers() -> dict[str, bool]:
    """:func:`mtlkernels.testing.peers.installed`, but under MTLKERNELS_REQUIRE_PEERS=1 a test
    asking fails when a peer is missing."""
    if REQUIRE_PEERS:
        require_peers(*peers.installed())
    return peers.installed()


def torchjd_aggregation() -> ModuleType:
    """The ``torchjd.aggregation`` module (skip/fail when torchjd cannot be imported)."""
    return require_peer("torchjd.aggregation")


def libmtl_weighting(name: str) -> type:
    """The LibMTL 1.1.5 weighting class ``name`` (e.g. "PCGrad") (skip/fail when LibMTL cannot be
    imported)."""
    require_peers("libmtl")
    return peers.libmtl_weighting(name)


def libmtl_driver(name: str, K: int, N: int, dtype: torch.dtype = torch.float64) -> Any:
    """:func:`mtlkernels.testing.peers.libmtl_driver` (skip/fail when LibMTL cannot be imported)."""
    libmtl_weighting(name)
    return peers.libmtl_driver(name, K, N, dtype)


def libmtl_direction(name: str, J: Tensor, **kwargs) -> tuple[Tensor, object]:
    """Run LibMTL's weighting ``name`` on task gradients J [K, N] (float64) and return
    (the shared gradient it writes, whatever its ``backward`` returns)."""
    libmtl_weighting(name)
    return peers.libmtl_direction(name, J.double(), **kwargs)


def authors_min_norm_element(gram: np.ndarray, stop: float = 1e-5, safety_cap: int = 100_000) -> np.ndarray:
    """The MGDA authors' Frank–Wolfe solver (``find_min_norm_element``) written from its
    description, on Γ [K, K]: best pair of tasks by the closed-form two-vector problem (γ clamped
    to [0.001, 0.999] at the ends); for K = 2 that pair; else projected steps (step to the simplex
    boundary along the centred negative gradient, projected) with the two-point line search
    between the iterate and that point, until the weights change by < ``stop`` in l1, returning
    the iterate before that step. Their 250-iteration cap is never enforced; ``safety_cap`` only
    bounds the loop here."""
    G = np.asarray(gram, dtype=np.float64)
    K = G.shape[0]
    if K == 1:
        return np.ones(1)

    def pair(aa: float, ab: float, bb: float) -> tuple[float, float]:  # min_γ ‖γa + (1−γ)b‖²
        if ab >= aa:
            return 0.999, aa
        if ab >= bb:
            return 0.001, bb
        gamma = (bb - ab) / (aa + bb - 2.0 * ab)
        return gamma, bb + gamma * (ab - bb)

    def project(y: np.ndarray) -> np.ndarray:  # Euclidean projection onto the simplex
        s = np.sort(y)[::-1]
        excess = np.cumsum(s) - 1.0
        ranks = np.arange(1, y.size + 1)
        k = ranks[s - excess / ranks > 0][-1]
        return np.maximum(y - excess[k - 1] / k, 0.0)

    _, i, j, gamma = min((pair(G[i, i], G[i, j], G[j, j])[1], i, j, pair(G[i, i], G[i, j], G[j, j])[0])
                         for i in range(K) for j in range(i + 1, K))
    w = np.zeros(K)
    w[i], w[j] = gamma, 1.0 - gamma
    if K == 2:
        return w
    for _ in range(safety_cap):
        descent = -(G @ w)
        direction = descent - descent.mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            to_bounds = np.concatenate([np.where(direction < 0, -w / direction, np.inf),
                                        np.where(direction > 0, (1.0 - w) / direction, np.inf)])
        to_bounds = to_bounds[to_bounds > 1e-7]
        candidate = project(w + (to_bounds.min() if to_bounds.size else 1.0) * direction)
        gamma, _ = pair(w @ G @ w, w @ G @ candidate, candidate @ G @ candidate)
        updated = gamma * w + (1.0 - gamma) * candidate
        if np.abs(updated - w).sum() < stop:
            return w
        w = updated
    return w
