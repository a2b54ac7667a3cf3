"""Test-wide setup. Without CUDA, Triton kernels run through the interpreter on CPU tensors; the
variable must be set before triton.jit decorates any kernel, i.e. before mtlkernels is imported.

Shared helpers live beside this file and are imported by name: _devices.py (device and skip
marks), cases.py (task-gradient families), peers.py (peer oracles; MTLKERNELS_REQUIRE_PEERS=1
turns a missing peer from a skip into a failure)."""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))

from _hypothesis import AVAILABLE as HYPOTHESIS_AVAILABLE, settings  # noqa: E402
from peers import load_libmtl_without_torchvision  # noqa: E402

# Reproducible property tests: each test draws the same examples on every run (CI included), so a
# red run is a real regression, not a lucky draw. HYPOTHESIS_PROFILE=explore draws fresh ones.
# Without hypothesis (a bare GPU machine) the property tests skip and the rest runs (_hypothesis.py).
if HYPOTHESIS_AVAILABLE:
    settings.register_profile("ci", derandomize=True, database=None)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

load_libmtl_without_torchvision()


@pytest.fixture(scope="module")
def single_thread():
    """torch single-threaded for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``),
    restored after: K×K linear algebra gains nothing from torch's thread pool, and on a loaded
    machine its spin-waits make each tiny call take milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
