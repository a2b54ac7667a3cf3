"""Launch arithmetic shared by the streaming kernels (gram, combine): grid size, vector widths,
and the device-side address table that lets one launch walk a list of blocks of J.

The address table (multi-tensor-apply style) is one int64 tensor:

    records[b]  = (src_offset, src_row_stride, n_cols, chunk_begin, dst_offset)   for block b
    programs[p] = (chunk_begin, first_block)                                      for program p, p ≤ P

Offsets are in elements from the lowest-addressed block (``src_base``/``dst_base``), so a kernel
addresses every block from one pointer argument. Block b is cut into chunks of ``block_n`` columns
(chunks are numbered across all blocks in order); program p walks chunks [programs[p][0],
programs[p+1][0]) starting in block programs[p][1]. Tables are cached by the blocks' addresses,
so a training loop that reuses its gradient buffers builds each table once: later calls (and CUDA
graph capture) launch with no host-to-device copy and no host synchronisation.
"""
from __future__ import annotations

import bisect
import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

#: programs of a persistent grid under TRITON_INTERPRET=1 (each one is simulated in turn)
INTERPRETER_PROGRAMS = 4

#: address tables kept per process; tables used while a CUDA graph is captured are never evicted
TABLE_CACHE_SIZE = 1024


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def previous_power_of_2(n: int) -> int:
    """The largest power of two ≤ n (n ≥ 1)."""
    return 1 << (n.bit_length() - 1)


def vector_width(dtype: torch.dtype) -> int:
    """Elements per 16-byte access."""
    return 16 // dtype.itemsize


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device: torch.device, per_multiprocessor: int) -> int:
    """Programs of a persistent grid: a few per SM on CUDA, a small fixed number when interpreted."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return per_multiprocessor * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class AddressTable:
    """A built table and what the launcher needs beside it (see the module docstring)."""

    table: Tensor
    src_base: int  # index (into the non-empty blocks) of the lowest-addressed source block
    dst_base: int  # same for the outputs (0 when there are none)
    programs: int  # P: programs that have work (grid size along N)
    program_records: int  # element index of programs[0] in ``table``
    aligned: bool  # every block row (and output) starts on a 16-byte boundary


_tables: OrderedDict[tuple, tuple[AddressTable, Tensor | None]] = OrderedDict()
_pinned_keys: set[tuple] = set()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def address_table(srcs: list[Tensor], dsts: list[Tensor] | None, block_n: int, programs: int) -> AddressTable:
    """The (cached) table for non-empty source blocks [K, n_b] (column stride 1) and optional
    outputs (contiguous, n_b elements each), cut into chunks of ``block_n`` over ≤ ``programs``."""
    device = srcs[0].device
    K = srcs[0].shape[0]
    row_strides = [s.stride(0) if K > 1 else 0 for s in srcs]
    key = (
        device, block_n, programs, srcs[0].dtype, dsts[0].dtype if dsts else None,
        tuple(zip((s.data_ptr() for s in srcs), row_strides, (s.shape[1] for s in srcs))),
        tuple(d.data_ptr() for d in dsts) if dsts else (),
    )
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        if _capturing(device):
            _pinned_keys.add(key)
        return hit[0]

    src_base, src_offsets = _offsets(srcs, "J")
    dst_base, dst_offsets = _offsets(dsts, "out") if dsts else (0, [0] * len(srcs))
    chunk_begin = [0]
    for s in srcs:
        chunk_begin.append(chunk_begin[-1] + -(-s.shape[1] // block_n))
    chunks = chunk_begin[-1]
    P = max(1, min(programs, chunks))
    records = []
    for b, s in enumerate(srcs):
        records += [src_offsets[b], row_strides[b], s.shape[1], chunk_begin[b], dst_offsets[b]]
    program_records = len(records)
    for p in range(P + 1):
        begin = p * chunks // P
        records += [begin, min(len(srcs) - 1, bisect.bisect_right(chunk_begin, begin) - 1)]

    aligned = _aligned(srcs, src_base, src_offsets + row_strides) and (
        not dsts or _aligned(dsts, dst_base, dst_offsets)
    )
    host = torch.tensor(records, dtype=torch.int64)
    if device.type == "cuda":  # pinned + non_blocking: the copy is queued, the host never waits
        host = host.pin_memory()
        table = host.to(device, non_blocking=True)
    else:
        table, host = host, None
    entry = AddressTable(table, src_base, dst_base, P, program_records, aligned)
    _tables[key] = (entry, host)
    if _capturing(device):
        _pinned_keys.add(key)
    _evict()
    return entry


def _offsets(tensors: list[Tensor], name: str) -> tuple[int, list[int]]:
    """Index of the lowest-addressed tensor and every tensor's element offset from it."""
    ptrs = [t.data_ptr() for t in tensors]
    base = min(range(len(ptrs)), key=ptrs.__getitem__)
    size = tensors[0].element_size()
    offsets = []
    for i, ptr in enumerate(ptrs):
        delta = ptr - ptrs[base]
        if delta % size:
            raise ValueError(f"{name}[{i}] is not aligned to its {size}-byte elements")
        offsets.append(delta // size)
    return base, offsets


def _aligned(tensors: list[Tensor], base: int, element_offsets: list[int]) -> bool:
    vec = vector_width(tensors[0].dtype)
    return tensors[base].data_ptr() % 16 == 0 and all(o % vec == 0 for o in element_offsets)


def _evict() -> None:
    while len(_tables) > TABLE_CACHE_SIZE + len(_pinned_keys):
        for key in _tables:
            if key not in _pinned_keys:
                del _tables[key]
                break
        else:
            return


def clear_table_cache() -> None:
    """Forget every cached address table (captured CUDA graphs must not be replayed afterwards)."""
    _tables.clear()
    _pinned_keys.clear()


def unit_column_stride(blocks: list[Tensor]) -> list[Tensor]:
    """Blocks with column stride 1 (the kernels' layout); any other layout is copied once."""
    return [b if b.shape[1] <= 1 or b.stride(1) == 1 else b.contiguous() for b in blocks]
