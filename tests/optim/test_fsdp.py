"""FSDP2 (``fully_shard``, gloo, 2 processes on the CPU): every method on the local shards —
per-task gradient slices, local partial Gram, one K×K all-reduce, local combination — equals one
process on the global batch, after one and after several steps (float64 to 1e-6, float32 to
1e-5 relative), with the trunk and the root resharded after forward or kept unsharded, and with
a task absent from a step; a non-finite task on one rank is refused on every rank with nothing
changed."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsdp_worker import SCENARIOS, STEPS, run, worker

WORLD = 2
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _gathered(ranks, name, step):
    """The full parameters after ``step``: the ranks' Shard(0) slices concatenated."""
    per_rank = [result[name]["params"][step] for result in ranks]
    return [torch.cat(slices, dim=0) for slices in zip(*per_rank)]


@pytest.mark.parametrize("name, wrapper, options, dtype, reshard, absent", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_sharded_steps_equal_one_process_on_the_global_batch(ranks, name, wrapper, options, dtype, reshard, absent):
    single = run(wrapper, options, dtype, rank=None, world=1, absent=absent)
    tol = TOLERANCE[dtype]
    for step in (0, STEPS - 1):
        for actual, expected in zip(_gathered(ranks, name, step), single["params"][step]):
            assert actual.dtype == expected.dtype and actual.shape == expected.shape
            torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(float(expected.abs().max()), 1.0))
        for result in ranks:
            torch.testing.assert_close(result[name]["weights"][step], single["weights"][step], rtol=tol, atol=tol)


def test_a_nonfinite_task_on_one_rank_is_refused_on_every_rank_with_nothing_changed(ranks):
    for result in ranks:
        facts = result["nonfinite"]
        assert facts["error"] is not None and "task 1" in facts["error"] and "nothing was changed" in facts["error"]
        for key in ("params", "grads", "momentum"):
            for a, b in zip(facts["after"][key], facts["before"][key]):
                assert (a is None and b is None) or torch.equal(a, b), key
        assert torch.equal(facts["after"]["alpha"], facts["before"]["alpha"])


def test_what_the_fsdp_path_refuses_raises_before_anything_changes(ranks):
    for result in ranks:
        facts = result["refusals"]
        assert "features= with FSDP-sharded parameters is not supported" in facts["features"]
        assert "grad_scaler= with FSDP-sharded parameters is not supported" in facts["grad_scaler"]
        assert "distributed='replicated' does not fit them" in facts["replicated"]
        assert "update_every > 1 with FSDP-sharded parameters is not supported" in facts["update_every"]
        assert "apply fully_shard to the root module too" in facts["partial"]
        for name in ("features", "grad_scaler", "replicated", "update_every"):
            assert all(facts[name + "_grads"]), name  # no .grad was written
