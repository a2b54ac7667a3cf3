"""The functional API's contract: shapes, dtypes, blocks, out=, and clear errors."""
import pytest
import torch

import mtlkernels as mk
from cases import random_J


def test_mean_matches_reference():
    J = random_J(5, 1000, dtype=torch.float32)
    res = mk.aggregate(J, "mean")
    ref = mk.reference.mean(J)
    torch.testing.assert_close(res.direction.double(), ref.direction, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.weights.double(), ref.weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    J = random_J(3, 257, dtype=dtype)
    res = mk.aggregate(J)
    assert res.direction.dtype == dtype
    assert res.weights.dtype == torch.float64  # as solved; see test_weights_beyond_float32
    expected = res.weights.double() @ J.double()
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    torch.testing.assert_close(res.direction.double(), expected, rtol=tol, atol=tol)


def test_gram_matches_matmul():
    J = random_J(4, 1001)
    torch.testing.assert_close(mk.gram(J), J @ J.T)
    assert mk.gram(J.float()).dtype == torch.float32


def test_blocks_and_out():
    J = random_J(3, 50)
    blocks = [J[:, :20].reshape(3, 4, 5), J[:, 20:]]
    res = mk.aggregate(blocks)
    assert [d.shape for d in res.direction] == [torch.Size([20]), torch.Size([30])]
    torch.testing.assert_close(torch.cat(res.direction), J.mean(0))
    outs = [torch.full((4, 5), float("nan"), dtype=torch.float64), torch.full((30,), float("nan"), dtype=torch.float64)]
    res = mk.aggregate(J, out=outs)  # one J split over two outputs
    torch.testing.assert_close(torch.cat([o.flatten() for o in outs]), J.mean(0))
    mk.aggregate(J, out=outs, accumulate=True)
    torch.testing.assert_close(torch.cat([o.flatten() for o in outs]), 2 * J.mean(0))


@pytest.mark.parametrize(
    "J, message",
    [
        (torch.zeros(3), "2-D"),
        (torch.zeros(0, 5), "K = 0"),
        (torch.zeros(3, 0), "N = 0"),
        (torch.zeros(3, 4, dtype=torch.int64), "dtype"),
        ([], "empty"),
    ],
)
def test_bad_J(J, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mk.aggregate(J)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_named(bad):
    J = random_J(4, 100)
    J[2, 17] = bad
    with pytest.raises(ValueError, match=r"\[2\].*non-finite"):
        mk.aggregate(J)


def test_unknown_method_and_option():
    J = random_J(2, 10)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        mk.aggregate(J, "nope")
    with pytest.raises(TypeError, match="bogus"):
        mk.aggregate(J, "mean", bogus=1)
    with pytest.raises(ValueError, match="backend"):
        mk.aggregate(J, backend="fortran")


def test_cosine_and_conflicts():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    res = mk.aggregate(J)
    torch.testing.assert_close(res.cosine, torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 0]], dtype=torch.float64))
    assert int(res.conflicts) == 1


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_weights_beyond_float32(backend):
    """A weight may leave the float32 range while its term does not: the combination is exact."""
    from mtlkernels.backend import available

    if not available(backend, torch.device("cpu")):
        pytest.skip(f"backend {backend!r} is not available here")
    J = torch.zeros(2, 3)
    J[0, 0], J[1, 1] = 1e-20, 1.0
    w = torch.tensor([1e40, 2.0], dtype=torch.float64)  # 1e40 overflows float32
    d = mk.combine(w, J, backend=backend)
    torch.testing.assert_close(d, torch.tensor([1e20, 2.0, 0.0]))


def test_float32_gram_overflow_is_not_a_nan():
    """Triton accumulates Γ in float32: rows of 1e20 overflow it. When checked, Γ is recomputed in
    float64 and only a real NaN/Inf in J raises."""
    from mtlkernels.backend import available

    if not available("triton", torch.device("cpu")):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    J = random_J(3, 64, dtype=torch.float32)
    J[1] *= 1e20
    res = mk.aggregate(J, "mean", backend="triton", check_finite=True)
    assert res.gram.dtype == torch.float64 and torch.isfinite(res.gram).all()
    torch.testing.assert_close(res.gram, J.double() @ J.double().T, rtol=1e-6, atol=0)
    J[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"\[2\].*non-finite"):
        mk.aggregate(J, "mean", backend="triton", check_finite=True)
