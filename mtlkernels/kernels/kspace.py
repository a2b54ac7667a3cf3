"""Register-resident K×K building blocks for the on-device K-space solves.

A single Triton program holds the (padded) BLOCK_K×BLOCK_K matrix in registers, in float64, and
works on it with masked reductions; every solve kernel (``solve_<method>.py``) is built from these,
so the weights are computed on the GPU with no host synchronisation. Padding convention: rows and
columns ≥ K are zero in Γ and identity in a system matrix, so they never change a result.
"""
from dataclasses import fields
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import TRITON_MAX_TASKS

#: the largest K whose solve runs in registers (BLOCK_K ≤ 64); the weighting hands larger problems
#: to its torch solve
MAX_TASKS = TRITON_MAX_TASKS


#: id(constants) → (constants, its constexpr arguments); holding the constants keeps their id unique
_CONSTEXPRS: dict[int, tuple[Any, dict[str, Any]]] = {}


def constexprs(constants: Any) -> dict[str, Any]:
    """A method's constants (a frozen dataclass) as kernel constexpr arguments: each field under
    its name in upper case, e.g. ``pivot_tolerance`` → ``PIVOT_TOLERANCE``. Built once per object."""
    entry = _CONSTEXPRS.get(id(constants))
    if entry is None:
        values = {field.name.upper(): getattr(constants, field.name) for field in fields(constants)}
        entry = _CONSTEXPRS[id(constants)] = (constants, values)
    return entry[1]


#: registers per thread a one-program solve may use (``maxnreg``, the most sm_80/sm_90 allow). Left
#: unset, ptxas caps a kernel to keep 2-3 programs per SM resident (168 registers at 4 warps, 128
#: at 8) and spills instead; a solve runs one program, so that occupancy buys nothing.
MAX_REGISTERS = 255


def launch_config(K: int) -> tuple[int, int]:
    """(BLOCK_K, num_warps) of a one-program K-space solve: BLOCK_K = max(16, next_pow2(K)); 4 warps
    at 16, 8 above. With ``maxnreg=MAX_REGISTERS`` every solve then compiles for sm_90 without
    spilling up to BLOCK_K = 32, except CAGrad at 32 (tests/kernels/test_compile_sm90.py)."""
    block = max(16, triton.next_power_of_2(K))
    return block, 4 if block == 16 else 8


def gram_argument(gram: Tensor, block: int) -> Tensor:
    """Γ [K, K] as a solve kernel reads it: rows :func:`row_stride` apart. At BLOCK_K = 64 a row
    holds K rounded up to a multiple of 16 (zero-padded on the right), so every row starts 16-byte
    aligned whatever K is: with K = 40 rows, the compiler would otherwise load Γ one element per
    thread, and every tile and vector would take that layout — thousands of bytes of spills per
    thread instead of none (tests/kernels/test_compile_sm90.py). Below BLOCK_K = 64 the unaligned
    layout fits, and the aligned one does not always (CAGrad at K = 24): rows stay K apart."""
    K = gram.shape[0]
    padded = -(-K // 16) * 16
    if block < 64 or padded == K:
        return gram.contiguous()
    return torch.nn.functional.pad(gram, (0, padded - K))


@triton.jit
def row_stride(K, BLOCK_K: tl.constexpr):
    """The distance between Γ's rows as :func:`gram_argument` lays them out: K rounded up to a
    multiple of 16 from BLOCK_K = 64 on (the compiler then knows every row is aligned), else K."""
    if BLOCK_K >= 64:
        return (K + 15) // 16 * 16
    else:
        return K


@triton.jit
def load_square(ptr, K, BLOCK_K: tl.constexpr, AGAIN: tl.constexpr = False):
    """Γ [K, K] (rows :func:`row_stride` apart, any float dtype) → float64 [BLOCK_K, BLOCK_K], zero
    outside K×K.

    AGAIN: a second read of a matrix already loaded, to rebuild a tile from memory instead of
    keeping it in registers across a long stretch of code; the load is volatile, so the compiler
    cannot merge it with the first one (and keep that tile live after all).
    """
    offs = tl.arange(0, BLOCK_K)
    stride = row_stride(K, BLOCK_K)
    mask = (offs[:, None] < K) & (offs[None, :] < K)
    if AGAIN:  # the addresses as one offset tile: a computation of their own, not the first load's kept live
        return tl.load(ptr + (offs[:, None] * stride + offs[None, :]), mask=mask, other=0.0, volatile=True).to(tl.float64)
    return tl.load(ptr + offs[:, None] * stride + offs[None, :], mask=mask, other=0.0).to(tl.float64)


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


@triton.jit
def column(A, j, BLOCK_K: tl.constexpr):
    """A[:, j] for a register matrix A and a (runtime) index j, as a [BLOCK_K] vector."""
    return tl.reshape(tl.gather(A, tl.full([BLOCK_K, 1], j, tl.int32), axis=1), [BLOCK_K])


@triton.jit
def element(v, i):
    """v[i] as a [1] tensor (a gather: under TRITON_INTERPRET=1 much cheaper than a masked sum)."""
    return tl.gather(v, tl.full([1], i, tl.int32), axis=0)


@triton.jit
def identity(BLOCK_K: tl.constexpr):
    """I [BLOCK_K, BLOCK_K] in float64."""
    offs = tl.arange(0, BLOCK_K)
    return tl.where(offs[:, None] == offs[None, :], 1.0, 0.0).to(tl.float64)


# The loops below spell out column/element instead of calling them: under TRITON_INTERPRET=1
# every call of a jit function (tl.sum included) costs milliseconds, which would dominate.


@triton.jit
def cholesky(A, mask, n, BLOCK_K: tl.constexpr, rtol, PREPARED: tl.constexpr = False):
    """L with A = L·Lᵀ on the rows/columns where ``mask`` holds (L is the identity elsewhere), and
    whether it succeeded: every pivot d must be finite and > rtol·max masked |Aᵢᵢ| (as
    csrc/solvers/dense.h's cholesky_solve, whose left-looking sums run in the same order as these
    right-looking updates). Indices ≥ n must be unmasked; unmasked columns cost no update, so the
    dependent steps are the masked ones. A failed pivot leaves a finite L. PREPARED: A is already
    zero off the masked rows and columns and 1 on the unmasked diagonal (no mask tile is built).
    """
    offs = tl.arange(0, BLOCK_K)
    if PREPARED:
        S = A
    else:
        pair = mask[:, None] & mask[None, :]
        # the identity off the mask, built from the mask: a constant identity tile would be hoisted
        # out of a caller's loop and held in registers all along
        S = tl.where(pair, A, tl.where((offs[:, None] == offs[None, :]) & ~pair, 1.0, 0.0))
    tol = rtol * tl.max(tl.where(mask, tl.abs(diagonal(S, BLOCK_K)), 0.0), axis=0)  # S's masked diagonal is A's
    flags = mask.to(tl.int32)
    failed = 0
    # in place: step j turns column j of S into l (zero above j) and updates the masked columns
    # after it, so S ends as L (its unmasked columns stay identity columns) with one tile, not two
    for j in range(n):
        if tl.reshape(tl.gather(flags, tl.full([1], j, tl.int32), axis=0), []) != 0:
            # column j by a masked sum, not a gather: no layout of its own for S (and for the
            # caller's tiles it is built from, which would then be held in two layouts)
            col = tl.sum(tl.where(offs[None, :] == j, S, 0.0), axis=1)
            d = tl.reshape(tl.gather(col, tl.full([1], j, tl.int32), axis=0), [])
            good = (d > tol) & (tl.abs(d) < float("inf"))
            failed = failed | (~good).to(tl.int32)
            l = tl.where(offs >= j, col / tl.sqrt(tl.where(good, d, 1.0)), 0.0)
            trailing = mask[None, :] & (offs[None, :] > j)
            S = tl.where(offs[None, :] == j, l[:, None], tl.where(trailing, S - l[:, None] * l[None, :], S))
    return S, failed == 0


@triton.jit
def cholesky_solve(L, b, mask, n, BLOCK_K: tl.constexpr):
    """x with L·Lᵀ·x = b for L from :func:`cholesky` with the same ``mask`` (forward then backward
    substitution over the masked indices; the others keep b)."""
    offs = tl.arange(0, BLOCK_K)
    diag = diagonal(L, BLOCK_K)
    flags = mask.to(tl.int32)
    y = b.to(tl.float64)
    for j in range(n):  # L·y = b, column by column
        if tl.reshape(tl.gather(flags, tl.full([1], j, tl.int32), axis=0), []) != 0:
            l = tl.sum(tl.where(offs[None, :] == j, L, 0.0), axis=1)  # column j (masked sums: L in one layout)
            y_j = tl.gather(y / diag, tl.full([1], j, tl.int32), axis=0)
            y = tl.where(offs == j, y_j, tl.where(offs > j, y - l * y_j, y))
    x = y
    for t in range(n):  # Lᵀ·x = y, from the last row up: x_j, then subtract L[j, :j]·x_j
        j = n - 1 - t
        if tl.reshape(tl.gather(flags, tl.full([1], j, tl.int32), axis=0), []) != 0:
            l = tl.sum(tl.where(offs[:, None] == j, L, 0.0), axis=0)  # row j
            x_j = tl.gather(x / diag, tl.full([1], j, tl.int32), axis=0)
            x = tl.where(offs == j, x_j, tl.where(offs < j, x - l * x_j, x))
    return x


@triton.jit
def symmetric_eigen(A, n, BLOCK_K: tl.constexpr, max_sweeps):
    """(λ, V) with A = V·diag(λ)·Vᵀ for a symmetric register matrix A, V's columns the eigenvectors.

    Jacobi rotations, as csrc/solvers/dense.h's symmetric_eigen (same rotation, same stopping rule:
    off-diagonal² ≤ 1e-30·total, at most ``max_sweeps`` sweeps), in parallel order: a sweep is
    n − 1 rounds (n even; an odd n gets a zero dummy index) of n/2 disjoint rotations applied at
    once, pairs by the round-robin tournament (x pairs with (2r − x) mod (n − 1), r with n − 1). A
    pair with A_pq = 0 is not rotated, so zero rows/columns keep λ = 0 and V = I there. n ≤ BLOCK_K.
    A round forms RᵀMR as a column rotation, a transpose and the column rotation again (the
    transpose of rotating columns then rows): M keeps one register layout, one shared-memory round
    trip per round; the diagonal and the pivots M[p, q] are read by column reductions.
    """
    offs = tl.arange(0, BLOCK_K)
    rows = offs[:, None]
    cols = offs[None, :]
    M = A
    V = tl.where(rows == cols, 1.0, 0.0).to(tl.float64)
    players = n + n % 2
    squares = M * M
    off = tl.sum(tl.sum(tl.where(rows != cols, squares, 0.0), axis=1), axis=0)
    total = tl.sum(tl.sum(tl.where(rows == cols, squares, 0.0), axis=1), axis=0)
    sweep = 0
    while (sweep < max_sweeps) & (off > 1e-30 * (total + off)) & (off != 0.0):
        for r in range(players - 1):
            partner = (2 * r - offs + 2 * (players - 1)) % (players - 1)
            partner = tl.where(offs == r, players - 1, partner)
            partner = tl.where(offs == players - 1, r, partner)
            partner = tl.where(offs < players, partner, offs)
            partner = tl.where(partner < n, partner, offs)  # the dummy's partner sits out
            lead = offs < partner  # p of the pair (p, q), p < q
            diag = tl.sum(tl.where(rows == cols, M, 0.0), axis=0)
            # M[p, q] on the p's: column q's entry in row p = partner[q], moved to position p
            apq = tl.gather(tl.sum(tl.where(rows == partner[None, :], M, 0.0), axis=0), partner, axis=0)
            aqq = tl.gather(diag, partner, axis=0)
            rotate = lead & (apq != 0.0)
            theta = (aqq - diag) / (2.0 * tl.where(rotate, apq, 1.0))
            t = tl.where(theta >= 0.0, 1.0, -1.0) / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
            c = tl.where(rotate, 1.0 / tl.sqrt(t * t + 1.0), 1.0)
            s = tl.where(rotate, t * c, 0.0)
            # the q of each pair takes its p's rotation; column p ← c·p − s·q, column q ← s·p + c·q
            c = tl.where(lead, c, tl.gather(c, partner, axis=0))
            sigma = tl.where(lead, -s, tl.gather(s, partner, axis=0))
            pairs = tl.broadcast_to(partner[None, :], (BLOCK_K, BLOCK_K))
            rotated = tl.trans(M * c[None, :] + sigma[None, :] * tl.gather(M, pairs, axis=1))
            M = rotated * c[None, :] + sigma[None, :] * tl.gather(rotated, pairs, axis=1)
            V = V * c[None, :] + sigma[None, :] * tl.gather(V, pairs, axis=1)
        sweep += 1
        squares = M * M
        off = tl.sum(tl.sum(tl.where(rows != cols, squares, 0.0), axis=1), axis=0)
        total = tl.sum(tl.sum(tl.where(rows == cols, squares, 0.0), axis=1), axis=0)
    return diagonal(M, BLOCK_K), V
