"""Triton Gram pass: Γ = J·Jᵀ = Σ_n J[:, n]·J[:, n]ᵀ over a list of blocks [K, n_b], reading J once.

Stage 1 (``_gram_partial_kernel``): a persistent grid splits the columns of all blocks (one launch,
through an address table, see :mod:`._launch`); each program accumulates its share of Γ with
``tl.dot`` on tensor cores and writes it to a [P, K, K] partial buffer. Stage 2
(``_gram_reduce_kernel``) sums the P partials in a fixed order (deterministic, no atomics) and
writes the full symmetric Γ, reading only the upper triangle so Γ is exactly symmetric.

Small K is packed: with K_pad = next_pow2(K) < 16, row q = (k, r) of a 16-row tile holds column
segment r of task k, so the MMA's 16 rows are all real data; Γ is the sum of the diagonal
(r = r') K_pad×K_pad blocks of the 16×16 product. K_pad > 64 is tiled: one program per
upper-triangle pair of 64-row tiles and column range (programs of one range run side by side,
so the second read of a tile comes from L2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._checks import check_option
from . import _launch

#: bytes of J one program loads per step (a [ROWS, SEG] tile) and the pipeline's stages, by the
#: dot's input precision. Sized so that every default shape compiles for sm_90 without spilling
#: registers: 3×tf32 holds each operand twice (high and low parts), so its steps are small and
#: more of them are kept in flight; 16-bit J is upcast to float32 in registers.
STEP_BYTES = 16 * 1024
STEP_BYTES_TF32X3, STAGES_TF32X3, MIN_SEGMENT_TF32X3 = 4 * 1024, 5, 32
STEP_BYTES_16BIT, STAGES_16BIT = 8 * 1024, 4
#: tl.dot input precisions: exact fp32 products, 3×tf32 (≈ fp32), one tf32 (10-bit mantissa)
PRECISIONS = ("ieee", "tf32x3", "tf32")
#: rows of the dot's operands: tl.dot needs ≥ 16; above MAX_TILE_K, Γ is tiled
MIN_ROWS, MAX_TILE_K = 16, 64
#: partials the reduce kernel sums per step
REDUCE_BLOCK_P = 16


@triton.jit
def _gram_rows(
    x_ptr, src, stride, n, col0, tile, K,
    ROWS: tl.constexpr, PACK: tl.constexpr, SEG: tl.constexpr, TILE_K: tl.constexpr,
    MASK_COLS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """[ROWS, SEG] tile of one block: row q is task tile·TILE_K + q // PACK over the columns
    col0 + (q % PACK)·SEG + [0, SEG), upcast to ACC_DTYPE; zero past K (and past n if MASK_COLS)."""
    q = tl.arange(0, ROWS)
    task = tile * TILE_K + q // PACK
    cols = col0 + (q % PACK)[:, None] * SEG + tl.arange(0, SEG)[None, :]
    mask = (task < K)[:, None]
    if MASK_COLS:
        mask = mask & (cols < n)
    rows = x_ptr + src + task[:, None].to(tl.int64) * stride
    return tl.load(rows + cols, mask=mask, other=0.0).to(ACC_DTYPE)


@triton.jit
def _gram_step(
    acc, x_ptr, src, stride, n, col0, ti, tj, K,
    ROWS: tl.constexpr, PACK: tl.constexpr, SEG: tl.constexpr, TILE_K: tl.constexpr, TILES: tl.constexpr,
    MASK_COLS: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, RESTART: tl.constexpr,
):
    """acc += A·Bᵀ for the row tiles A (ti) and B (tj) of one chunk of columns.

    RESTART: the tensor cores sum this step's SEG products from zero and the step's sum is added to
    ``acc`` by an ordinary (round-to-nearest) float32 addition. Tensor-core accumulation does not
    round to nearest, so a program that kept adding into the MMA accumulator over its whole column
    range (tens of thousands of MMAs at N = 1e8) could bias Γ's diagonal; restarting bounds each
    such chain to one step. (The 3×tf32 float32 path is decomposed this way by Triton already.)"""
    a = _gram_rows(x_ptr, src, stride, n, col0, ti, K, ROWS, PACK, SEG, TILE_K, MASK_COLS, ACC_DTYPE)
    if TILES == 1:
        b = a
    else:
        b = _gram_rows(x_ptr, src, stride, n, col0, tj, K, ROWS, PACK, SEG, TILE_K, MASK_COLS, ACC_DTYPE)
    if RESTART:
        # from acc·0, not a literal zero: Triton folds add(acc, dot(a, b, 0)) back into dot(a, b, acc)
        return acc + tl.dot(a, tl.trans(b), acc * 0.0, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    return tl.dot(a, tl.trans(b), acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _gram_partial_kernel(
    x_ptr, table_ptr, partial_ptr, K, PROGRAM_RECORDS,
    ROWS: tl.constexpr, PACK: tl.constexpr, SEG: tl.constexpr, TILE_K: tl.constexpr,
    TILES: tl.constexpr, PAIRS: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, RESTART: tl.constexpr,
):
    """partial[p, tile ti, tile tj] = Σ over program p's columns of J[ti]·J[tj]ᵀ (RESTART: see
    :func:`_gram_step`)."""
    BLOCK_N: tl.constexpr = PACK * SEG
    pid = tl.program_id(0)
    pair = pid % PAIRS  # the tile pair varies fastest: programs on one column range run together
    pid_n = pid // PAIRS
    ti = 0  # pair → (ti, tj) over the upper triangle, row by row
    for t in tl.static_range(1, TILES):
        ti += (pair >= t * TILES - t * (t - 1) // 2).to(tl.int32)
    tj = pair - (ti * TILES - ti * (ti - 1) // 2) + ti

    program = table_ptr + PROGRAM_RECORDS + 2 * pid_n
    chunk = tl.load(program)
    chunk_end = tl.load(program + 2)
    block = tl.load(program + 1)
    acc = tl.zeros([ROWS, ROWS], dtype=ACC_DTYPE)
    while chunk < chunk_end:
        record = table_ptr + 5 * block  # 5 int64 fields per block (see _launch)
        src = tl.load(record)
        stride = tl.load(record + 1)
        n = tl.load(record + 2)
        first = tl.load(record + 3)
        if ALIGNED:
            src = tl.multiple_of(src, VEC)
            stride = tl.multiple_of(stride, VEC)
        stop = tl.minimum(chunk_end, first + tl.cdiv(n, BLOCK_N))
        full_stop = tl.minimum(stop, first + n // BLOCK_N)
        for c in range(chunk, full_stop):  # whole chunks: no column mask, 16-byte loads
            acc = _gram_step(acc, x_ptr, src, stride, n, (c - first) * BLOCK_N, ti, tj, K,
                             ROWS, PACK, SEG, TILE_K, TILES, False, ACC_DTYPE, PRECISION, RESTART)
        if full_stop < stop:  # the block's last, partial chunk
            acc = _gram_step(acc, x_ptr, src, stride, n, (full_stop - first) * BLOCK_N, ti, tj, K,
                             ROWS, PACK, SEG, TILE_K, TILES, True, ACC_DTYPE, PRECISION, RESTART)
        chunk = stop
        block += 1

    if PACK > 1:  # Γ = Σ_r of the (r, r) blocks of the packed product
        q = tl.arange(0, ROWS)
        acc = tl.where((q[:, None] % PACK) == (q[None, :] % PACK), acc, 0.0)
        gram = tl.sum(tl.sum(tl.reshape(acc, (TILE_K, PACK, TILE_K, PACK)), axis=3), axis=1)
    else:
        gram = acc
    offs = tl.arange(0, TILE_K)
    rows = ti * TILE_K + offs
    cols = tj * TILE_K + offs
    mask = (rows < K)[:, None] & (cols < K)[None, :]
    tl.store(partial_ptr + pid_n * K * K + rows[:, None] * K + cols[None, :], gram, mask=mask)


@triton.jit
def _gram_reduce_kernel(partial_ptr, out_ptr, K, P, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr, SUM_DTYPE: tl.constexpr):
    """Γ[i, j] = Σ_p partial[p, min(i, j), max(i, j)], summed in a fixed order."""
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    in_gram = e < K * K
    i = e // K
    j = e % K
    upper = tl.minimum(i, j) * K + tl.maximum(i, j)
    total = tl.zeros([BLOCK_E], dtype=SUM_DTYPE)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & in_gram[None, :]
        part = tl.load(partial_ptr + p[:, None] * (K * K) + upper[None, :], mask=mask, other=0.0)
        total += tl.sum(part.to(SUM_DTYPE), axis=0)
    tl.store(out_ptr + e, total.to(out_ptr.dtype.element_ty), mask=in_gram)


@dataclass(frozen=True)
class GramConfig:
    """Launch shape of the partial kernel (the launcher's heuristics; override to tune or test).

    rows: rows of the dot's operands; pack: column segments per task row (small K);
    segment: columns per segment (the dot's reduction length); tile_k/tiles: Γ tile side and
    tiles per side; programs: column ranges (grid = programs × tile pairs).
    """

    rows: int
    pack: int
    segment: int
    tile_k: int
    tiles: int
    programs: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def block_n(self) -> int:
        return self.pack * self.segment

    @property
    def pairs(self) -> int:
        return self.tiles * (self.tiles + 1) // 2


def gram_config(
    K: int, dtype: torch.dtype, device: torch.device, programs_per_sm: int = 2, precision: str | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> GramConfig:
    """Default shape: a ≥16-row dot (packed for small K, tiled above 64) and a step size by precision.

    precision: the dot's input precision (default :func:`default_precision`): with "tf32x3", 4 KB
    of J per step (at least 32 columns) over 5 stages; 16-bit J, 8 KB over 4 stages; otherwise
    16 KB over 3 stages. accumulate_dtype (default float64 for float64 J, else float32): a float64
    accumulator of 64 rows takes 8 warps.
    """
    if precision is not None:
        check_option("precision", precision, PRECISIONS)
    k_pad = _launch.next_power_of_2(K)
    if k_pad <= MIN_ROWS:
        rows, pack, tile_k, tiles = MIN_ROWS, MIN_ROWS // k_pad, k_pad, 1
    elif k_pad <= MAX_TILE_K:
        rows, pack, tile_k, tiles = k_pad, 1, k_pad, 1
    else:
        rows, pack, tile_k, tiles = MAX_TILE_K, 1, MAX_TILE_K, -(-K // MAX_TILE_K)
    accumulate = accumulate_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    precision = precision or default_precision(dtype, accumulate)
    if precision == "tf32x3":
        segment = max(MIN_SEGMENT_TF32X3, STEP_BYTES_TF32X3 // (rows * dtype.itemsize))
        stages = STAGES_TF32X3
    elif dtype.itemsize == 2:
        segment, stages = max(16, STEP_BYTES_16BIT // (rows * dtype.itemsize)), STAGES_16BIT
    else:
        segment, stages = max(16, STEP_BYTES // (rows * dtype.itemsize)), 3
    pairs = tiles * (tiles + 1) // 2
    programs = max(1, _launch.persistent_programs(device, programs_per_sm) // pairs)
    warps = 8 if accumulate == torch.float64 and rows == MAX_TILE_K else 4
    return GramConfig(rows, pack, segment, tile_k, tiles, programs, num_warps=warps, num_stages=stages)


def reduce_block(K: int) -> int:
    """Entries of Γ one program of the reduce kernel sums (the grid covers the K² entries): at most
    256, so a float64 [REDUCE_BLOCK_P, 256] tile fits 4 warps' registers and K = 64 runs 16 programs."""
    return min(256, _launch.next_power_of_2(K * K))


def default_precision(dtype: torch.dtype, accumulate_dtype: torch.dtype) -> str:
    """tl.dot input precision: fp16/bf16 values are exact in tf32; fp32 takes 3×tf32 (≈ fp32)."""
    if accumulate_dtype == torch.float64:
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "tf32"


def restarts_accumulation(dtype: torch.dtype, accumulate_dtype: torch.dtype, precision: str) -> bool:
    """Whether each step's tensor-core sum starts from zero and is added to the float32
    accumulator on CUDA cores: for 16-bit J on tensor cores, whose products are exact and whose
    accumulation is then the only rounding (see :func:`_gram_step`)."""
    return dtype.itemsize == 2 and accumulate_dtype == torch.float32 and precision != "ieee"


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def triton_gram(
    blocks: list[Tensor],
    *,
    out_dtype: torch.dtype | None = None,
    accumulate_dtype: torch.dtype | None = None,
    precision: str | None = None,
    config: GramConfig | None = None,
) -> Tensor:
    """Γ = J·Jᵀ [K, K] on J's device from blocks [K, n_b] (any row stride), with no host sync.

    Args:
        blocks: per-parameter task gradients, fp16/bf16/fp32/fp64, one device and dtype.
        out_dtype: dtype of Γ; default the accumulation dtype.
        accumulate_dtype: float32 (default; float64 for float64 J) or float64, e.g. for gradients
            whose squared norms pass float32's 3.4e38 (entries ≳ 1e19).
        precision: tl.dot input precision ("ieee", "tf32x3", "tf32"); see :func:`default_precision`.
        config: launch shape; default :func:`gram_config`.
    """
    blocks = _launch.unit_column_stride([b for b in blocks if b.shape[1] > 0])
    if not blocks:
        raise ValueError("J has N = 0 columns: the Gram matrix needs at least one column")
    K, dtype, device = blocks[0].shape[0], blocks[0].dtype, blocks[0].device
    if accumulate_dtype is None:
        accumulate_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if accumulate_dtype not in _TL_DTYPES:
        raise ValueError(f"accumulate_dtype={accumulate_dtype} is not supported; choose torch.float32 or torch.float64")
    if dtype == torch.float64 and accumulate_dtype != torch.float64:
        raise ValueError("float64 J is accumulated in float64; accumulate_dtype=torch.float32 would lose it")
    out_dtype = out_dtype or accumulate_dtype
    if out_dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"out_dtype={out_dtype} is not a floating dtype")
    precision = precision or default_precision(dtype, accumulate_dtype)
    check_option("precision", precision, PRECISIONS)
    config = config or gram_config(K, dtype, device, precision=precision, accumulate_dtype=accumulate_dtype)

    table = _launch.address_table(blocks, None, config.block_n, config.programs)
    partial = torch.empty(table.programs, K, K, dtype=accumulate_dtype, device=device)
    _gram_partial_kernel[(table.programs * config.pairs,)](
        blocks[table.src_base], table.table, partial, K, table.program_records,
        ROWS=config.rows, PACK=config.pack, SEG=config.segment, TILE_K=config.tile_k,
        TILES=config.tiles, PAIRS=config.pairs, ALIGNED=table.aligned, VEC=_launch.vector_width(dtype),
        ACC_DTYPE=_TL_DTYPES[accumulate_dtype], PRECISION=precision,
        RESTART=restarts_accumulation(dtype, accumulate_dtype, precision),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    out = torch.empty(K, K, dtype=out_dtype, device=device)
    block_e = reduce_block(K)
    sum_dtype = torch.float64 if torch.float64 in (accumulate_dtype, out_dtype) else torch.float32
    _gram_reduce_kernel[(triton.cdiv(K * K, block_e),)](
        partial, out, K, table.programs, BLOCK_P=REDUCE_BLOCK_P, BLOCK_E=block_e, SUM_DTYPE=_TL_DTYPES[sum_dtype],
    )
    return out


__all__ = ["GramConfig", "default_precision", "gram_config", "triton_gram"]
