"""The entry points that make no host synchronisation on CUDA and can be captured in a CUDA graph
— the list in docs/gpu_solves.md, "What waits for the host" — each checked on a GPU (skipped
without one): every call inside ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising CUDA
call raises), then captured once and replayed on new values written into the same buffers, the
replay's direction and weights equal to eager calls on the same values.

The entry points that do synchronise (by design or for now) are listed there too; the tests here
only cover the sync-free ones.
"""
from __future__ import annotations

import pytest
import torch

import mtlkernels as mk
from _devices import no_host_sync, requires_cuda
from cases import conflicting_J
from mtlkernels.methods import make_weighting
from mtlkernels.methods.pcgrad import draw_orders

K, N = 5, 3000
#: every method, with the options that make a replay comparable with an eager call (PCGrad:
#: fixed orders; a graph replays the device RNG's draws, which eager calls do not repeat)
METHODS = {
    "mean": {},
    "pcgrad": {"order": draw_orders(K, torch.Generator().manual_seed(0))},
    "cagrad": {"c": 0.4},
    "nash_mtl": {"update_weights_every": 2},
    "imtl": {},
    "mgda": {"normalization": "l2"},
    "mgda_losses": {"normalization": "loss+"},
}


def make_aggregator(name: str) -> mk.Aggregator:
    method = "mgda" if name == "mgda_losses" else name
    return mk.Aggregator(make_weighting(method, **METHODS[name]))


def task_gradients(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    J = conflicting_J(K, N, seed=seed).float().cuda()
    losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64, device="cuda") * (1 + seed % 3)
    return J, losses


@requires_cuda
@pytest.mark.parametrize("name", list(METHODS))
def test_aggregate_is_sync_free_and_graph_capturable(name):
    """``Aggregator(method)(J, losses=..., out=[d])`` on CUDA J (losses a CUDA tensor where the
    method reads them): no synchronising call, and a captured call replays like eager calls."""
    losses_needed = name == "mgda_losses"
    captured, eager = make_aggregator(name), make_aggregator(name)
    J, losses = task_gradients(0)
    d = torch.empty(N, device="cuda")

    def call(agg: mk.Aggregator, J: torch.Tensor, losses: torch.Tensor, out: torch.Tensor) -> mk.AggregationResult:
        return agg(J, losses=losses if losses_needed else None, out=[out])

    for agg in (captured, eager):  # compile the kernels and build the address tables
        call(agg, J, losses, d)
    with no_host_sync():
        call(captured, J, losses, d)
        call(eager, J, losses, d)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = call(captured, J, losses, d)
    d_eager = torch.empty_like(d)
    for seed in (1, 2, 3):
        new_J, new_losses = task_gradients(seed)
        J.copy_(new_J)
        losses.copy_(new_losses)
        graph.replay()
        expected = call(eager, new_J, new_losses, d_eager)
        torch.cuda.synchronize()
        assert torch.equal(result.weights, expected.weights), (name, seed)
        assert torch.equal(d, d_eager), (name, seed)


@requires_cuda
def test_losses_given_as_host_values_make_no_sync():
    """Losses as Python floats (or a CPU tensor) are checked on the host and copied to the device
    without waiting: no synchronising call (not capturable: the copy reads host memory)."""
    agg = mk.Aggregator("mgda", normalization="loss")
    J, _ = task_gradients(0)
    agg(J, losses=[1.0, 2.0, 0.5, 1.5, 1.0])
    with no_host_sync():
        agg(J, losses=[1.0, 2.0, 0.5, 1.5, 1.0])
        agg(J, losses=torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0]))


@requires_cuda
def test_bad_device_losses_give_nan_weights_without_a_sync():
    agg = mk.Aggregator("mgda", normalization="loss")
    J, losses = task_gradients(0)
    agg(J, losses=losses)
    losses[2] = -1.0
    with no_host_sync():
        result = agg(J, losses=losses)
    assert torch.isnan(result.weights).all()
