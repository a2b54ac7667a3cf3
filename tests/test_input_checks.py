"""Inputs that used to be taken silently or fail with an unrelated error: each now works as a user
means it or raises an error naming the problem, identically on every CPU backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlkernels as mk

CPU_BACKENDS = ["torch", "cpp"]


@pytest.fixture
def J() -> torch.Tensor:
    return torch.randn(3, 17, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("c", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), 0.5])
def test_cagrad_c_accepts_numpy_and_0d_tensor(J, c):
    expected = mk.aggregate(J.double(), "cagrad", c=0.5, backend="torch").weights
    got = mk.aggregate(J.double(), "cagrad", c=c, backend="torch").weights
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("c", [True, "0.5", float("nan"), -0.1, torch.tensor([0.5]), 0.5 + 0j])
def test_cagrad_c_rejects_non_numbers(J, c):
    with pytest.raises(ValueError, match="c="):
        mk.aggregate(J, "cagrad", c=c)


@pytest.mark.parametrize("flag", ["yes", "false", 1, 0.0])
def test_check_finite_must_be_a_bool_or_none(J, flag):
    with pytest.raises(ValueError, match="check_finite"):
        mk.aggregate(J, "mean", check_finite=flag)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_combine_takes_a_list_of_numbers(J, backend):
    got = mk.combine([1.0, 2, -0.5], J, backend=backend)
    expected = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64) @ J.double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "weights, error",
    [
        (torch.tensor([1 + 1j, 1, 1]), TypeError),
        (torch.tensor([True, False, True]), TypeError),
        ([1.0, "2", 3.0], TypeError),
        ([1.0, 2.0], ValueError),
        ("abc", TypeError),
        (torch.ones(3, 1), ValueError),
    ],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_combine_rejects_weights_it_cannot_use(J, weights, error, backend):
    with pytest.raises(error, match="weights"):
        mk.combine(weights, J, backend=backend)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_float_out_is_rejected_and_left_untouched(J, dtype, backend):
    out = torch.zeros(J.shape[1], dtype=dtype)
    before = out.clone()
    with pytest.raises(TypeError, match=r"out\[0\] has dtype"):
        mk.aggregate(J, "mean", out=[out], backend=backend)
    assert torch.equal(out, before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_results_never_require_grad(backend):
    J = torch.randn(3, 9, requires_grad=True)
    result = mk.aggregate(J, "pcgrad", backend=backend)
    assert not result.direction.requires_grad
    assert not result.weights.requires_grad and not result.gram.requires_grad
    assert not mk.gram(J, backend=backend).requires_grad
    assert not mk.combine(torch.ones(3), J, backend=backend).requires_grad
    torch.testing.assert_close(result.direction, result.weights.float() @ J.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_norm", [np.float32(2.0), torch.tensor(2.0)])
def test_nash_mtl_max_norm_accepts_numpy_and_0d_tensor(J, max_norm):
    expected = mk.aggregate(J.double(), "nash_mtl", max_norm=2.0, backend="torch").weights
    got = mk.aggregate(J.double(), "nash_mtl", max_norm=max_norm, backend="torch").weights
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


def test_losses_on_another_device_are_not_read_on_the_host():
    """Losses on a device other than the CPU keep their device and only their size is checked
    (reading values would make the host wait for the GPU): a "meta" tensor has no values to read,
    so any read would fail here."""
    from mtlkernels._checks import check_losses

    checked = check_losses(torch.zeros(3, device="meta"), 3)
    assert checked.device.type == "meta" and checked.dtype == torch.float64 and checked.shape == (3,)
    with pytest.raises(ValueError, match="got 2 losses for K = 3 tasks"):
        check_losses(torch.zeros(2, device="meta"), 3)
    with pytest.raises(ValueError, match=r"loss of task\(s\) \[1\] is not finite"):
        check_losses(torch.tensor([1.0, float("nan"), 2.0]), 3)  # CPU values are checked
