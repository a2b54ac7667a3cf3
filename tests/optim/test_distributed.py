"""Data parallelism with torch.distributed (gloo, 2 processes on the CPU): under
DistributedDataParallel the per-task gradients are averaged once (one all-reduce of the buffer),
so two ranks on half batches equal one process on the full batch; with sharded parameters only
the K×K Gram is all-reduced and each rank's slice equals the full computation's."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddp_worker import SCENARIOS, run_named_with_an_absent_task, run_scenario, worker
from mtlkernels.optim import CAGrad

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(actual, expected):
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
            continue
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6 * max(float(e.abs().max()), 1.0))


@pytest.mark.parametrize("name, wrapper, options, features, heads_dtype", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_two_ranks_equal_one_process_on_the_full_batch(ranks, name, wrapper, options, features, heads_dtype):
    single = run_scenario(wrapper, options, features, heads_dtype, rank=None, world=1)
    for result in ranks:
        assert [g.dtype for g in result[name]["grads"]] == [p.dtype for p in single["params"]]
        _close(result[name]["grads"], single["grads"])
        _close(result[name]["params"], single["params"])
        torch.testing.assert_close(result[name]["weights"], single["weights"], rtol=1e-6, atol=1e-9)


def test_sharded_gram_all_reduce_equals_full_computation(ranks):
    single = run_scenario(CAGrad, {}, False, None, rank=None, world=1)
    n_trunk = 4
    for rank, result in enumerate(ranks):
        owned = list(range(rank, n_trunk, WORLD)) + list(range(n_trunk, len(single["params"])))
        _close([result["sharded"]["grads"][i] for i in owned], [single["grads"][i] for i in owned])
        _close(result["sharded"]["params"], single["params"])
        torch.testing.assert_close(result["sharded"]["weights"], single["weights"], rtol=1e-6, atol=1e-9)


def test_named_tasks_with_an_absent_task_under_ddp_equal_one_process(ranks):
    single = run_named_with_an_absent_task(rank=None, world=1)
    for result in ranks:
        _close(result["absent"]["params"], single["params"])
        assert [w.shape[0] for w in result["absent"]["weights"]] == [3, 2, 3]
        _close(result["absent"]["weights"], single["weights"])
        torch.testing.assert_close(result["absent"]["alpha"], single["alpha"], rtol=1e-6, atol=1e-9)
