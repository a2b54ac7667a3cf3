"""Test-wide setup. Without CUDA, Triton kernels run through the interpreter on CPU tensors; the
variable must be set before triton.jit decorates any kernel, i.e. before mtlkernels is imported."""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # shared helpers: cases.py, peers.py

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Reproducible property tests: each test draws the same examples on every run (CI included), so a
# red run is a real regression, not a lucky draw. HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
