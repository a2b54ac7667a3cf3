"""mk.combine with ``accumulate=True`` on every backend (torch, cpp, Triton under the interpreter):
out ← out + wᵀJ, against the float64 sum computed here, for one J, a block list and a split
output."""
import pytest
import torch

import mtlkernels as mk
from _devices import TRITON_DEVICE, requires_cpp, requires_triton
from cases import random_J

BACKENDS = [
    pytest.param("torch", "cpu", id="torch"),
    pytest.param("cpp", "cpu", id="cpp", marks=requires_cpp),
    pytest.param("triton", TRITON_DEVICE, id="triton", marks=requires_triton),
]
#: unit roundoff of the output dtype
ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def assert_accumulated(out: torch.Tensor, base: torch.Tensor, w: torch.Tensor, J: torch.Tensor) -> None:
    """out = base + wᵀJ to (K + 2) roundings of the output dtype, relative to |base| + |w|ᵀ|J|."""
    expected = base.double().cpu() + w.double().cpu() @ J.double().cpu()
    scale = base.double().cpu().abs() + w.double().cpu().abs() @ J.double().cpu().abs()
    error = (out.double().cpu() - expected).abs()
    assert (error <= (J.shape[0] + 2) * ROUNDOFF[out.dtype] * scale).all(), float((error / scale).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("K", [1, 3, 17])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_accumulate_adds_into_out(backend, device, K, dtype):
    N = 1000
    J = random_J(K, N, seed=K, dtype=dtype).to(device)
    w = torch.randn(K, generator=torch.Generator().manual_seed(K + 1), dtype=torch.float64).to(device)
    base = 10 * random_J(1, N, seed=K + 2, dtype=dtype)[0].to(device)  # far from 0: dropping it shows
    out = base.clone()
    assert mk.combine(w, J, out=[out], accumulate=True, backend=backend)[0] is out
    assert_accumulated(out, base, w, J)
    mk.combine(w, J, out=[out], accumulate=True, backend=backend)  # twice: base + 2·wᵀJ
    assert_accumulated(out, base, 2 * w, J)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_accumulate_blocks_and_split_outputs(backend, device):
    K = 4
    blocks = [random_J(K, n, seed=n).to(device) for n in (7, 300)]
    w = torch.randn(K, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    bases = [random_J(1, n, seed=n + 1)[0].to(device) for n in (7, 300)]
    outs = [b.clone() for b in bases]
    mk.combine(w, blocks, out=outs, accumulate=True, backend=backend)
    for out, base, block in zip(outs, bases, blocks):
        assert_accumulated(out, base, w, block)
    J = torch.cat(blocks, dim=1)  # one J written into two outputs
    outs = [b.clone() for b in bases]
    mk.combine(w, J, out=outs, accumulate=True, backend=backend)
    for out, base, block in zip(outs, bases, blocks):
        assert_accumulated(out, base, w, block)
