"""Compile the streaming kernels (Gram, combine) and the PCGrad and FairGrad solves (FairGrad up to
BLOCK_K = 32) for an H100 (sm_90) without a GPU and report each configuration's registers and
spills per thread, as the launchers pick them.

Run as a script in a process without TRITON_INTERPRET (the kernels must be decorated for the real
compiler): ``python tests/kernels/compile_sm90.py [--full] [--arch 90]`` prints one JSON object per
line — kernel, configuration, registers, spill store and load bytes. Each kernel goes through
``triton.compile`` (TTIR → PTX → cubin) with the arguments specialised as a launch specialises them
(16-byte-aligned pointers; K = 1 a constant; K a multiple of 16 marked so); the PTX is then
assembled again by the Triton wheel's ``ptxas -v`` with Triton's own options, whose report gives
the register and spill counts (a binary does not record its spills).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource

from mtlkernels.kernels import combine, gram, kspace, solve_fairgrad, solve_pcgrad
from mtlkernels.methods import fairgrad

#: task counts the tests cover (K = 1 is a compile-time constant; 3 and 40 are not powers of two,
#: 40 is not a multiple of 16: a 64-row tile with a masked K)
TASK_COUNTS = (1, 2, 3, 8, 16, 32, 40, 64)
#: the dtypes J can have; the launchers' defaults follow from J's dtype
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
#: the subset compiled by default: every K and dtype with 16-byte-aligned blocks (the fast path)
#: and overwritten outputs, the unaligned variant at a few K
UNALIGNED_IN_DEFAULT = (2, 16, 64)

_POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64"}
_TL = {torch.float32: triton.language.float32, torch.float64: triton.language.float64}


def ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes of one compiled PTX kernel, from ``ptxas -v`` with Triton's options."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as src:
        src.write(ptx)
        src.flush()
        done = subprocess.run(
            [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
             f"--gpu-name={sm_arch_from_capability(arch)}", src.name, "-o", "/dev/null"],
            capture_output=True, text=True, check=True,
        )
    log = done.stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "registers": int(re.search(r"Used (\d+) registers", log).group(1)),
        "spill_stores": int(spills.group(1)),
        "spill_loads": int(spills.group(2)),
    }


def compile_kernel(fn, pointers: dict[str, str], ints: dict[str, int], constexprs: dict, *, arch: int,
                   num_warps: int, num_stages: int = 3) -> dict[str, int]:
    """Compile ``fn`` for ``arch`` as a launch with these integer values would, and report it.

    pointers: argument → Triton pointer type (all 16-byte aligned); ints: integer argument → a
    representative value (1 becomes a constant, multiples of 16 are marked divisible by 16).
    """
    signature: dict[str, str] = dict(pointers)
    constants = dict(constexprs)
    attrs = {}
    for name, value in ints.items():
        signature[name] = "constexpr" if value == 1 else "i32"
        if value == 1:
            constants[name] = 1
    signature.update({name: "constexpr" for name in constexprs})
    for name in signature:
        aligned = name in pointers or (name in ints and ints[name] != 1 and ints[name] % 16 == 0)
        if aligned:
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    compiled = triton.compile(
        ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    return ptxas_report(compiled.asm["ptx"], arch)


def gram_cases(K: int, dtype: torch.dtype, aligned: bool, arch: int) -> list[dict]:
    """The Gram partial and reduce kernels as ``triton_gram`` launches them by default."""
    config = gram.gram_config(K, dtype, torch.device("cpu"))
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    partial = compile_kernel(
        gram._gram_partial_kernel,
        dict(x_ptr=_POINTER[dtype], table_ptr="*i64", partial_ptr=_POINTER[accumulate]),
        dict(K=K, PROGRAM_RECORDS=5 * 3 + 1),
        dict(ROWS=config.rows, PACK=config.pack, SEG=config.segment, TILE_K=config.tile_k, TILES=config.tiles,
             PAIRS=config.pairs, ALIGNED=aligned, VEC=16 // dtype.itemsize,
             ACC_DTYPE=_TL[accumulate],
             PRECISION=gram.default_precision(dtype, accumulate)),
        arch=arch, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    partial.update(kernel="gram_partial", K=K, dtype=str(dtype).removeprefix("torch."), aligned=aligned,
                   segment=config.segment, num_warps=config.num_warps, num_stages=config.num_stages)
    return [partial]


def gram_reduce_case(K: int, dtype: torch.dtype, arch: int) -> dict:
    """The reduce kernel for Γ of dtype ``dtype`` from float32 (float64 for float64) partials."""
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    block_e = gram.reduce_block(K)
    report = compile_kernel(
        gram._gram_reduce_kernel, dict(partial_ptr=_POINTER[accumulate], out_ptr=_POINTER[accumulate]),
        dict(K=K, P=264), dict(BLOCK_P=gram.REDUCE_BLOCK_P, BLOCK_E=block_e, SUM_DTYPE=_TL[accumulate]),
        arch=arch, num_warps=4,
    )
    report.update(kernel="gram_reduce", K=K, dtype=str(dtype).removeprefix("torch."), block_e=block_e)
    return report


def combine_case(K: int, dtype: torch.dtype, aligned: bool, accumulate: bool, arch: int) -> dict:
    """The combine kernel as ``triton_combine`` launches it by default, output dtype = J's dtype."""
    config = combine.combine_config(K, dtype, torch.device("cpu"))
    report = compile_kernel(
        combine._combine_kernel,
        dict(x_ptr=_POINTER[dtype], out_ptr=_POINTER[dtype], w_ptr="*fp64", table_ptr="*i64"),
        dict(K=K, PROGRAM_RECORDS=5 * 3 + 1),
        dict(BLOCK_N=config.block_n, BLOCK_K=config.block_k, K_TILES=triton.cdiv(K, config.block_k),
             ALIGNED=aligned, VEC_X=16 // dtype.itemsize, VEC_OUT=16 // dtype.itemsize, ACCUMULATE=accumulate),
        arch=arch, num_warps=config.num_warps,
    )
    report.update(kernel="combine", K=K, dtype=str(dtype).removeprefix("torch."), aligned=aligned,
                  accumulate=accumulate, block_n=config.block_n, block_k=config.block_k,
                  num_warps=config.num_warps)
    return report


def pcgrad_case(K: int, arch: int) -> dict:
    """The PCGrad solve on a float32 Γ as ``pcgrad_solve`` launches it."""
    block, warps = kspace.launch_config(K)
    report = compile_kernel(
        solve_pcgrad._pcgrad_solve_kernel,
        dict(gram_ptr="*fp32", order_ptr="*i64", weights_ptr="*fp64", projections_ptr="*i32", residual_ptr="*fp64"),
        dict(K=K), dict(MEAN=True, BLOCK_K=block), arch=arch, num_warps=warps,
    )
    report.update(kernel="pcgrad_solve", K=K, block_k=block, num_warps=warps)
    return report


def fairgrad_case(K: int, alpha: float, arch: int) -> dict:
    """The FairGrad solve on a float32 Γ as ``fairgrad_solve`` launches it."""
    block, warps = solve_fairgrad.launch_config(K)
    report = compile_kernel(
        solve_fairgrad._fairgrad_solve_kernel,
        dict(gram_ptr="*fp32", weights_ptr="*fp64", dropped_ptr="*i1", iterations_ptr="*i32", converged_ptr="*i1",
             certificates_ptr="*fp64"),
        dict(K=K), dict(ALPHA=alpha, BLOCK_K=block, **kspace.constexprs(fairgrad.CONSTANTS)), arch=arch, num_warps=warps,
    )
    report.update(kernel="fairgrad_solve", K=K, alpha=alpha, block_k=block, num_warps=warps)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the unaligned variants at every K")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    parser.add_argument("--kernels", default="gram,combine,pcgrad,fairgrad", help="comma-separated subset")
    args = parser.parse_args(argv)
    kernels = set(args.kernels.split(","))
    for K in TASK_COUNTS:
        alignments = (True, False) if args.full or K in UNALIGNED_IN_DEFAULT else (True,)
        for dtype in DTYPES:
            for aligned in alignments:
                reports = []
                if "gram" in kernels:
                    reports += gram_cases(K, dtype, aligned, args.arch)
                if "combine" in kernels:
                    reports.append(combine_case(K, dtype, aligned, False, args.arch))
                    if args.full:
                        reports.append(combine_case(K, dtype, aligned, True, args.arch))
                for report in reports:
                    print(json.dumps(report), flush=True)
            if "gram" in kernels and dtype in (torch.float32, torch.float64):
                print(json.dumps(gram_reduce_case(K, dtype, args.arch)), flush=True)
        if "pcgrad" in kernels:
            print(json.dumps(pcgrad_case(K, args.arch)), flush=True)
        if "fairgrad" in kernels and solve_fairgrad.launch_config(K)[0] <= 32:  # BLOCK_K = 64 spills (documented)
            for alpha in (1.0, 2.0):  # α = 1 takes the exact powers, α = 2 exp/log
                print(json.dumps(fairgrad_case(K, alpha, args.arch)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
