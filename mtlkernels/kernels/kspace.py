"""Register-resident K×K building blocks for the on-device K-space solves.

A single Triton program holds the (padded) BLOCK_K×BLOCK_K matrix in registers, in float64, and
works on it with masked reductions; every solve kernel (``solve_<method>.py``) is built from these,
so the weights are computed on the GPU with no host synchronisation. Padding convention: rows and
columns ≥ K are zero in Γ and identity in a system matrix, so they never change a result.
"""
import triton
import triton.language as tl


@triton.jit
def load_square(ptr, K, BLOCK_K: tl.constexpr):
    """Γ [K, K] (row-major, any float dtype) → float64 [BLOCK_K, BLOCK_K], zero outside K×K."""
    offs = tl.arange(0, BLOCK_K)
    mask = (offs[:, None] < K) & (offs[None, :] < K)
    return tl.load(ptr + offs[:, None] * K + offs[None, :], mask=mask, other=0.0).to(tl.float64)


@triton.jit
def diagonal(A, BLOCK_K: tl.constexpr):
    """diag(A) as a [BLOCK_K] vector."""
    offs = tl.arange(0, BLOCK_K)
    return tl.sum(tl.where(offs[:, None] == offs[None, :], A, 0.0), axis=1)


@triton.jit
def entry(v, i, BLOCK_K: tl.constexpr):
    """v[i] for a register vector v and a (runtime) index i."""
    return tl.sum(tl.where(tl.arange(0, BLOCK_K) == i, v, 0.0), axis=0)


@triton.jit
def matvec(A, x):
    """A·x for a register matrix A [B, B] and vector x [B]."""
    return tl.sum(A * x[None, :], axis=1)


@triton.jit
def solve(A, b, BLOCK_K: tl.constexpr, rtol):
    """x with A·x = b by Gauss–Jordan elimination with partial pivoting, all in registers.

    A pivot below rtol·max|A| marks its column dependent: that unknown is set to 0 and the
    elimination goes on, so a singular A gives a basic solution, never NaN. Returns (x, rank).
    """
    offs = tl.arange(0, BLOCK_K)
    rows = offs[:, None]
    cols = offs[None, :]
    tol = rtol * tl.max(tl.max(tl.abs(A), axis=1), axis=0)
    rank = 0
    for k in range(BLOCK_K):
        col_k = tl.sum(tl.where(cols == k, A, 0.0), axis=1)
        p = tl.argmax(tl.where(offs >= k, tl.abs(col_k), -1.0), axis=0)
        row_k = tl.sum(tl.where(rows == k, A, 0.0), axis=0)
        row_p = tl.sum(tl.where(rows == p, A, 0.0), axis=0)
        b_k = tl.sum(tl.where(offs == k, b, 0.0), axis=0)
        b_p = tl.sum(tl.where(offs == p, b, 0.0), axis=0)
        A = tl.where(rows == k, row_p[None, :], tl.where(rows == p, row_k[None, :], A))
        b = tl.where(offs == k, b_p, tl.where(offs == p, b_k, b))
        pivot = tl.sum(tl.where(offs == k, row_p, 0.0), axis=0)
        independent = tl.abs(pivot) > tol
        rank += independent.to(tl.int32)
        # a dependent column: make it an identity column with a zero right-hand side (x_k = 0)
        row_new = tl.where(independent, row_p / tl.where(independent, pivot, 1.0), tl.where(offs == k, 1.0, 0.0))
        b_new = tl.where(independent, b_p / tl.where(independent, pivot, 1.0), 0.0)
        col_k = tl.sum(tl.where(cols == k, A, 0.0), axis=1)
        factor = tl.where(offs == k, 0.0, tl.where(independent, col_k, 0.0))
        A = A - factor[:, None] * row_new[None, :]
        b = b - factor * b_new
        A = tl.where(rows == k, row_new[None, :], A)
        b = tl.where(offs == k, b_new, b)
    return b, rank


@triton.jit
def pad_identity(A, K, BLOCK_K: tl.constexpr):
    """Put ones on the padded part of the diagonal (indices ≥ K) so A is a valid system matrix."""
    offs = tl.arange(0, BLOCK_K)
    return tl.where((offs[:, None] == offs[None, :]) & (offs[:, None] >= K), 1.0, A)
