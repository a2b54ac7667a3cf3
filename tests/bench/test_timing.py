"""mtlkernels.bench.timing.measure_graph: CUDA-graph timing (GPU), and its refusal elsewhere."""
from __future__ import annotations

import math

import pytest
import torch

from _devices import requires_cuda
from mtlkernels.bench.timing import measure_graph


def test_measure_graph_needs_cuda():
    with pytest.raises(ValueError, match="measure_graph times CUDA graphs; got device cpu"):
        measure_graph(lambda: None, torch.device("cpu"))


@requires_cuda
def test_measure_graph_replays_every_captured_call():
    """The function runs warmup times eagerly, then calls × (1 upload replay + replays) times
    from the graph; the times are finite and non-negative."""
    counter = torch.zeros((), dtype=torch.int64, device="cuda")
    x = torch.randn(1 << 20, device="cuda")
    y = torch.empty_like(x)

    def fn() -> None:
        y.copy_(x)
        counter.add_(1)

    timing = measure_graph(fn, torch.device("cuda"), calls=5, replays=3, warmup=2)
    torch.cuda.synchronize()
    assert int(counter) == 2 + 5 * (1 + 3)
    assert timing.repeats == 15 and math.isfinite(timing.median_s) and timing.p20_s >= 0.0
    assert torch.equal(y, x)
