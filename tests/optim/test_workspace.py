"""The optimizer's workspace keeps the Triton launches aligned: every shared parameter's columns
start on a 16-byte boundary and the row stride is a multiple of 16 bytes, whatever the parameter
sizes (zero pads between them leave Γ and the direction unchanged)."""
from __future__ import annotations

import pytest
import torch

import mtlkernels as mk
from mtlkernels.jacobian import column_views
from mtlkernels.kernels._launch import address_table
from mtlkernels.optim import CAGrad
from mtlkernels.optim.roles import ParameterRoles
from mtlkernels.optim.workspace import Workspace

#: sizes that break 16-byte alignment for every dtype (odd, and 2 mod 4, 6 mod 8)
ODD_SIZES = ((3,), (5, 7), (1,), (2, 3), (6,), (4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_rows_and_blocks_are_16_byte_aligned_for_odd_sizes(dtype):
    shared = [torch.zeros(shape, dtype=dtype) for shape in ODD_SIZES]
    private = [torch.zeros(3, dtype=dtype)]
    K = 3
    ws = Workspace(K, ParameterRoles(shared, private, [(0,)]), with_rows=True, key=(), device=torch.device("cpu"))
    itemsize = dtype.itemsize
    assert ws.rows.data_ptr() % 16 == 0 and ws.rows.stride(0) * itemsize % 16 == 0
    assert ws.rows.shape[1] >= sum(p.numel() for p in shared)
    for block, p in zip(ws.blocks, shared):
        assert block.shape == (K, p.numel()) and block.data_ptr() % 16 == 0
    assert ws.private.data_ptr() % 16 == 0
    assert torch.equal(ws.rows, torch.zeros_like(ws.rows))  # the pads start (and stay) zero
    views = column_views(ws.rows, shared)  # what fill_task_gradients writes into
    assert [v.data_ptr() for v in views] == [b.data_ptr() for b in ws.blocks]
    grads = [torch.empty_like(p) for p in shared]
    assert address_table([ws.rows], None, 64, 4).aligned
    assert address_table(ws.blocks, grads, 64, 4).aligned
    packed = torch.zeros(K, sum(p.numel() for p in shared), dtype=dtype)
    assert not address_table(list(torch.split(packed, [p.numel() for p in shared], dim=1)), grads, 64, 4).aligned


def test_column_views_rejects_a_buffer_of_neither_width():
    inputs = [torch.zeros(3), torch.zeros(5)]
    with pytest.raises(ValueError, match="N = 9 columns; the inputs hold 8 elements .12 with each block padded"):
        column_views(torch.zeros(2, 9), inputs)


def test_odd_sized_parameters_step_like_aggregate_on_the_packed_gradients():
    """CAGrad through the padded workspace gives the trunk the direction mk.aggregate gives on the
    packed [K, N] task gradients, and Γ equals theirs."""
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    heads = [torch.nn.Linear(3, 1) for _ in range(3)]
    x = torch.randn(11, 5)

    def losses() -> list[torch.Tensor]:
        z = trunk(x)
        return [(head(z) ** 2).mean() * (k + 1) for k, head in enumerate(heads)]

    shared = list(trunk.parameters())
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, shared, retain_graph=True)]) for l in losses()])
    expected = mk.aggregate(J, "cagrad")
    params = shared + [p for h in heads for p in h.parameters()]
    opt = CAGrad(torch.optim.SGD(params, lr=0.1))
    result = opt.backward(losses())
    assert opt._buffers._workspace.rows.shape[1] > J.shape[1]  # the layout is padded here
    torch.testing.assert_close(result.gram.double(), expected.gram.double(), rtol=1e-12, atol=1e-12)
    direction = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(direction, expected.direction, rtol=1e-6, atol=1e-7)
