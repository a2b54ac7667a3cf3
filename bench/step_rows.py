"""The parameter path's K task gradients on the step benchmark's model, three ways, taking turns in
one run: the K backward passes alone (``torch.autograd.grad``, nothing kept), the same passes with
each gradient copied into the [K, N] rows (``jacobian.fill_task_gradients``: the path under a
process group), and the passes adding into the rows in place through ``.grad``
(``workspace.fill_rows_through_grad``: the default). Ratios to the passes alone; medians and
p20/p80 over ``--rounds`` rounds.

    OMP_NUM_THREADS=1 python bench/step_rows.py [--K 4] [--N 2e6] [--rounds 40]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from mtlkernels.bench.report import machine_summary
from mtlkernels.bench.step import StepProblem
from mtlkernels.jacobian import fill_task_gradients
from mtlkernels.optim.roles import ParameterRoles
from mtlkernels.optim.workspace import Buffers, fill_rows_through_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--N", type=float, default=2e6)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    K = args.K
    problem = StepProblem.build(K, int(args.N), torch.float32, torch.device("cpu"))
    model = problem.model
    shared = list(model.trunk.parameters())
    heads = [list(head.parameters()) for head in model.heads]
    private = [p for ps in heads for p in ps]
    owned, start = [], 0
    for ps in heads:
        owned.append(list(range(start, start + len(ps))))
        start += len(ps)
    roles = ParameterRoles(shared, private, [(k,) for k, ps in enumerate(heads) for _ in ps])
    ws = Buffers().workspace(K, roles, with_rows=True)

    def losses() -> list[torch.Tensor]:
        z = problem.trunk_forward(model)
        return problem.losses(model, [z] * K)

    def passes_alone() -> None:
        for k, loss in enumerate(losses()):
            torch.autograd.grad(loss, shared + heads[k], retain_graph=k < K - 1)

    def grad_and_copy() -> None:
        fill_task_gradients(losses(), shared, ws.rows, private=owned, private_inputs=private, private_out=ws.private_views)

    def through_grad() -> None:
        fill_rows_through_grad(losses(), shared, ws.rows, ws.blocks, private=owned, private_inputs=private,
                               private_out=ws.private_views, retain_graph=False)

    grad_and_copy()
    copied = ws.rows.clone()
    through_grad()
    assert torch.equal(copied, ws.rows), "the two ways of filling the rows disagree"
    ways = {"K passes alone": passes_alone, "autograd.grad + copy": grad_and_copy, "in place through .grad": through_grad}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["K passes alone"])
    n = sum(p.numel() for p in shared)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {machine_summary()} · torch {torch.__version__}")
    print(f"# K = {K}, trunk N = {n:,}, batch {len(problem.inputs)}, {args.rounds} rounds")
    for name, t in times.items():
        t = sorted(t)
        median = statistics.median(t)
        print(f"{name:24s} {median * 1e3:8.1f} ms  ÷ passes alone {median / base:5.2f}  "
              f"(p20 {t[len(t) // 5] * 1e3:.1f}, p80 {t[4 * len(t) // 5] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
