"""A ``torch.compile``d trunk under the wrappers: the K per-task backward passes through the
compiled graph (``retain_graph`` between them) give the same steps as the eager model, for every
method, on the parameter path and the features path. "aot_eager" (Dynamo + AOTAutograd, the graph
capture the wrappers meet) runs for every method; Inductor, which compiles C++ on the CPU (about
30 s on a cold cache), runs once."""
import pytest
import torch

import mtlkernels as mk
from mtl_model import TrunkHeads, batch, task_losses

WRAPPERS = [("PCGrad", {"seed": 0}), ("CAGrad", {}), ("NashMTL", {}), ("IMTL", {}), ("MGDA", {})]
# (wrapper, options, features path?): every wrapper on both paths, MGDAUB on the one it is made for
CASES = [(w, o, f) for w, o in WRAPPERS for f in (False, True)] + [("MGDAUB", {}, True)]


def _steps(compile_backend, wrapper, options, features=False, steps=2):
    """Parameters after ``steps`` steps of the eager model and of the same model with a compiled trunk."""
    results = []
    for compiled in (False, True):
        model = TrunkHeads(K=3)
        x, y = batch(K=3)
        if compiled:
            model.trunk = torch.compile(model.trunk, backend=compile_backend)
        opt = getattr(mk, wrapper)(torch.optim.SGD(model.parameters(), lr=0.1), **options)
        for _ in range(steps):
            opt.zero_grad()
            losses, z = task_losses(model, x, y)
            opt.backward(losses, features=z if features else None)
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    return results


def _assert_same(eager, compiled):
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("wrapper, options, features", CASES,
                         ids=[f"{w}-{'features' if f else 'parameters'}" for w, _, f in CASES])
def test_compiled_trunk_steps_equal_eager(wrapper, options, features):
    eager, compiled = _steps("aot_eager", wrapper, options, features)
    _assert_same(eager, compiled)


@pytest.mark.slow
def test_inductor_compiled_trunk_steps_equal_eager():
    try:
        eager, compiled = _steps("inductor", "CAGrad", {})
    except Exception as error:  # Inductor needs a working C++ toolchain on the CPU
        if "InductorError" in type(error).__name__ or "CppCompileError" in repr(error):
            pytest.skip(f"Inductor cannot compile on this machine: {type(error).__name__}")
        raise
    _assert_same(eager, compiled)
