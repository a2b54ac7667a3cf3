"""Triton combination pass: d = wᵀJ = Σₖ wₖ·J[k], written into each block's output in one launch.

A persistent grid walks the columns of all blocks through an address table (see :mod:`._launch`):
block b of J ([K, n_b], any row stride) is combined into out[b] (contiguous, n_b elements, e.g. a
parameter's ``.grad``), optionally added to what out[b] holds. The weights are read from device
memory as float64 and products are summed in float64 — a weight may lie beyond the float32 range
while its term does not, and the pass is memory-bound, so the wide FMAs cost nothing (H100: ~20
float64 FMAs per loaded element are available at full bandwidth) — and each output element is
rounded once to its tensor's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch

#: elements of J one program loads per step (all its [BLOCK_K, BLOCK_N] row tiles together): 32
#: per thread at 4 warps, each summed in float64 — so that every default shape compiles for sm_90
#: without spilling registers (≤ 128 per thread aligned, 4 programs per SM)
STEP_ELEMENTS = 4096
#: columns one program combines per step
MAX_BLOCK_N = 2048


@triton.jit
def _combine_chunk(
    x_ptr, out_ptr, w_ptr, src, stride, dst, n, col0, K,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, MASK_COLS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    """out[dst + col0 + i] (+)= Σₖ w[k]·x[src + k·stride + col0 + i] for i < BLOCK_N (and < n if MASK_COLS)."""
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < n
    d = tl.zeros([BLOCK_N], dtype=tl.float64)
    for kt in tl.static_range(K_TILES):  # unrolled: every row tile's loads can be in flight together
        task = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + task, mask=task < K, other=0.0)
        mask = (task < K)[:, None]
        if MASK_COLS:
            mask = mask & col_mask[None, :]
        x = tl.load(x_ptr + src + task[:, None].to(tl.int64) * stride + cols[None, :], mask=mask, other=0.0)
        d += tl.sum(w[:, None] * x.to(tl.float64), axis=0)
    out = out_ptr + dst + cols
    if ACCUMULATE:
        if MASK_COLS:
            d += tl.load(out, mask=col_mask, other=0.0).to(tl.float64)
        else:
            d += tl.load(out).to(tl.float64)
    if out_ptr.dtype.element_ty != tl.float64:  # round via float32: one well-defined step per dtype
        d = d.to(tl.float32)
    if MASK_COLS:
        tl.store(out, d.to(out_ptr.dtype.element_ty), mask=col_mask)
    else:
        tl.store(out, d.to(out_ptr.dtype.element_ty))


@triton.jit
def _combine_kernel(
    x_ptr, out_ptr, w_ptr, table_ptr, K, PROGRAM_RECORDS,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, ALIGNED: tl.constexpr, VEC_X: tl.constexpr,
    VEC_OUT: tl.constexpr, ACCUMULATE: tl.constexpr,
):
    """Program p combines the chunks [programs[p], programs[p+1]) of the address table."""
    program = table_ptr + PROGRAM_RECORDS + 2 * tl.program_id(0)
    chunk = tl.load(program)
    chunk_end = tl.load(program + 2)
    block = tl.load(program + 1)
    while chunk < chunk_end:
        record = table_ptr + 5 * block  # 5 int64 fields per block (see _launch)
        src = tl.load(record)
        stride = tl.load(record + 1)
        n = tl.load(record + 2)
        first = tl.load(record + 3)
        dst = tl.load(record + 4)
        if ALIGNED:
            src = tl.multiple_of(src, VEC_X)
            stride = tl.multiple_of(stride, VEC_X)
            dst = tl.multiple_of(dst, VEC_OUT)
        stop = tl.minimum(chunk_end, first + tl.cdiv(n, BLOCK_N))
        full_stop = tl.minimum(stop, first + n // BLOCK_N)
        for c in range(chunk, full_stop):  # whole chunks: no column mask, 16-byte accesses
            _combine_chunk(x_ptr, out_ptr, w_ptr, src, stride, dst, n, (c - first) * BLOCK_N, K,
                           BLOCK_N, BLOCK_K, K_TILES, False, ACCUMULATE)
        if full_stop < stop:  # the block's last, partial chunk
            _combine_chunk(x_ptr, out_ptr, w_ptr, src, stride, dst, n, (full_stop - first) * BLOCK_N, K,
                           BLOCK_N, BLOCK_K, K_TILES, True, ACCUMULATE)
        chunk = stop
        block += 1


@dataclass(frozen=True)
class CombineConfig:
    """Launch shape (the launcher's heuristics; override to tune or test): columns and tasks per
    step, and persistent programs."""

    block_n: int
    block_k: int
    programs: int
    num_warps: int = 4


def combine_config(K: int, dtype: torch.dtype, device: torch.device, programs_per_sm: int = 4) -> CombineConfig:
    """Default shape: row tiles of up to 16 tasks × a power of two of columns, as many as keep all
    ⌈K/16⌉ tiles within :data:`STEP_ELEMENTS`: at least one 128-byte line per row, at most
    :data:`MAX_BLOCK_N` columns (the float64 sums of a step stay in registers)."""
    block_k = min(16, _launch.next_power_of_2(K))
    rows = triton.cdiv(K, block_k) * block_k
    block_n = min(MAX_BLOCK_N, max(128 // dtype.itemsize, _launch.previous_power_of_2(STEP_ELEMENTS // rows)))
    return CombineConfig(block_n, block_k, _launch.persistent_programs(device, programs_per_sm))


def triton_combine(
    weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool = False,
    *, config: CombineConfig | None = None,
) -> None:
    """out[b] (+)= wᵀ·blocks[b] for every block, one launch per output dtype, no host sync.

    Args:
        weights: [K] on J's device (any float dtype; used as float64, on the device).
        blocks: [K, n_b] fp16/bf16/fp32/fp64, one device and dtype, any row stride.
        outs: contiguous outputs with n_b elements each, on J's device.
        accumulate: add into the outputs instead of overwriting them.
        config: launch shape; default :func:`combine_config`.
    """
    pairs = [(b, o) for b, o in zip(blocks, outs) if b.shape[1] > 0]
    if not pairs:
        return
    blocks = _launch.unit_column_stride([b for b, _ in pairs])
    K, dtype, device = blocks[0].shape[0], blocks[0].dtype, blocks[0].device
    w = weights.to(device=device, dtype=torch.float64).contiguous()
    config = config or combine_config(K, dtype, device)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, (_, o) in enumerate(pairs):
        by_dtype.setdefault(o.dtype, []).append(i)
    for out_dtype, members in by_dtype.items():
        srcs = [blocks[i] for i in members]
        dsts = [pairs[i][1].view(-1) for i in members]
        table = _launch.address_table(srcs, dsts, config.block_n, config.programs)
        _combine_kernel[(table.programs,)](
            srcs[table.src_base], dsts[table.dst_base], w, table.table, K, table.program_records,
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, K_TILES=triton.cdiv(K, config.block_k), ALIGNED=table.aligned,
            VEC_X=_launch.vector_width(dtype), VEC_OUT=_launch.vector_width(out_dtype),
            ACCUMULATE=accumulate, num_warps=config.num_warps,
        )


__all__ = ["CombineConfig", "combine_config", "triton_combine"]
