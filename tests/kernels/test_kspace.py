"""The register-resident K×K building blocks, under TRITON_INTERPRET=1 on the CPU (or on CUDA)."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from _devices import TRITON_DEVICE as DEVICE, requires_triton  # noqa: E402
from mtlkernels.kernels import kspace  # noqa: E402

pytestmark = requires_triton


@triton.jit
def _solve_kernel(a_ptr, b_ptr, x_ptr, rank_ptr, K, BLOCK_K: tl.constexpr):
    offs = tl.arange(0, BLOCK_K)
    A = kspace.pad_identity(kspace.load_square(a_ptr, K, BLOCK_K), K, BLOCK_K)
    b = tl.load(b_ptr + offs, mask=offs < K, other=0.0).to(tl.float64)
    x, rank = kspace.solve(A, b, BLOCK_K, 1e-13)
    tl.store(x_ptr + offs, x, mask=offs < K)
    tl.store(rank_ptr, rank)


def run_solve(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, int]:
    K = A.shape[0]
    x = torch.full((K,), float("nan"), dtype=torch.float64, device=DEVICE)
    rank = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    block = max(16, triton.next_power_of_2(K))
    _solve_kernel[(1,)](kspace.gram_argument(A.to(DEVICE), block), b.to(DEVICE), x, rank, K, BLOCK_K=block)
    return x.cpu(), int(rank.item()) - (block - K)  # padded identity rows count towards rank


@pytest.mark.parametrize("K", [1, 2, 3, 17, 40, 64])
def test_solve_matches_torch(K):
    g = torch.Generator().manual_seed(K)
    A = torch.randn(K, K, generator=g, dtype=torch.float64) + K * torch.eye(K, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    x, rank = run_solve(A, b)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)
    assert rank == K


def test_solve_needs_pivoting():
    A = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    x, _ = run_solve(A, torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([3.0, 2.0], dtype=torch.float64))


def test_singular_gives_finite_basic_solution():
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    A = torch.outer(v, v)  # rank 1
    b = A @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # consistent right-hand side
    x, rank = run_solve(A, b)
    assert rank == 1
    assert torch.isfinite(x).all()
    torch.testing.assert_close(A @ x, b)
