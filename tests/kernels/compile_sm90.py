"""Compile the streaming kernels (Gram, combine) and the one-program K-space solves for an H100
(sm_90) without a GPU and report each configuration's registers and spills per thread, as the
launchers pick them.

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

from mtlkernels.kernels import (
    combine, gram, kspace, solve_aligned_mtl, solve_cagrad, solve_config, solve_dual_cone, solve_fairgrad, solve_gradvac,
    solve_imtl, solve_mgda, solve_nash_mtl, solve_pcgrad,
)
from mtlkernels.methods import aligned_mtl, cagrad, config, dual_cone, fairgrad, imtl, mgda, nash_mtl

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
                   num_warps: int, num_stages: int = 3, maxnreg: int | None = None) -> dict[str, int]:
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
        options={"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg},
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
             PRECISION=gram.default_precision(dtype, accumulate),
             RESTART=gram.restarts_accumulation(dtype, accumulate, gram.default_precision(dtype, accumulate))),
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
        dict(K=K), dict(MEAN=True, BLOCK_K=block), arch=arch, num_warps=warps, maxnreg=kspace.MAX_REGISTERS,
    )
    report.update(kernel="pcgrad_solve", K=K, block_k=block, num_warps=warps)
    return report


#: the other on-device solves: (kernel, pointer arguments, constexprs) on a float32 Γ, as
#: their launchers pass them (MGDA with the loss normalisation, its largest variant)
_F64, _I1, _I32, _I64 = "*fp64", "*i1", "*i32", "*i64"
SOLVES = {
    "imtl": (solve_imtl, "_imtl_solve_kernel",
             dict(gram_ptr="*fp32", weights_ptr=_F64, zero_tasks_ptr=_I1, fallback_ptr=_I1, unique_ptr=_I1,
                  degenerate_ptr=_I1, rank_ptr=_I32, residual_ptr=_F64),
             lambda: dict(kspace.constexprs(imtl.tolerances(torch.float32)))),
    "nash_mtl": (solve_nash_mtl, "_nash_mtl_solve_kernel",
                 dict(gram_ptr="*fp32", alpha_ptr=_F64, counters_ptr=_I64, weights_ptr=_F64, dropped_ptr=_I1,
                      iterations_ptr=_I32, converged_ptr=_I1, reused_ptr=_I1, step_ptr=_I64, certificates_ptr=_F64),
                 lambda: dict(MAX_NORM=1.0, UPDATE_EVERY=2, **kspace.constexprs(nash_mtl.CONSTANTS))),
    "mgda": (solve_mgda, "_mgda_solve_kernel",
             dict(gram_ptr="*fp32", losses_ptr=_F64, weights_ptr=_F64, simplex_ptr=_F64, normalizers_ptr=_F64,
                  kkt_ptr=_F64, objective_ptr=_F64, iterations_ptr=_I32, support_ptr=_I32),
             lambda: dict(NORMALIZATION=3, NORMALIZED=True, **kspace.constexprs(mgda.CONSTANTS))),
    "cagrad": (solve_cagrad, "_cagrad_solve_kernel",
               dict(gram_ptr="*fp32", weights_ptr=_F64, active_ptr=_I1, degenerate_ptr=_I1, iterations_ptr=_I32,
                    facts_ptr=_F64),
               lambda: dict(C=0.4, FACTOR=1 / 1.16, **kspace.constexprs(cagrad.CONSTANTS))),
    "upgrad": (solve_dual_cone, "_upgrad_solve_kernel",
               dict(gram_ptr="*fp32", pref_ptr=_F64, weights_ptr=_F64, kkt_ptr=_F64, iterations_ptr=_I32),
               lambda: dict(kspace.constexprs(dual_cone.CONSTANTS))),
    "dualproj": (solve_dual_cone, "_dualproj_solve_kernel",
                 dict(gram_ptr="*fp32", pref_ptr=_F64, weights_ptr=_F64, kkt_ptr=_F64, iterations_ptr=_I32,
                      active_ptr="*i8"),
                 lambda: dict(kspace.constexprs(dual_cone.CONSTANTS))),
    "gradvac": (solve_gradvac, "_gradvac_solve_kernel",
                dict(gram_ptr="*fp32", order_ptr=_I64, targets_ptr=_F64, weights_ptr=_F64, corrections_ptr=_I32,
                     residual_ptr=_F64),
                lambda: dict(BETA=0.5, EPS=0.0, ALWAYS=True)),
    # α = 2 takes exp/log (α = 1 the exact powers): the larger variant
    "fairgrad": (solve_fairgrad, "_fairgrad_solve_kernel",
                 dict(gram_ptr="*fp32", weights_ptr=_F64, dropped_ptr=_I1, iterations_ptr=_I32, converged_ptr=_I1,
                      certificates_ptr=_F64),
                 lambda: dict(ALPHA=2.0, **kspace.constexprs(fairgrad.CONSTANTS))),
    "config": (solve_config, "_config_solve_kernel",
               dict(gram_ptr="*fp32", pref_ptr=_F64, weights_ptr=_F64, zero_tasks_ptr=_I1, facts_ptr=_F64,
                    rank_ptr=_I32, equal_ptr=_I1),
               lambda: dict(HAS_PREF=True, **kspace.constexprs(config.CONSTANTS))),
    "aligned_mtl": (solve_aligned_mtl, "_aligned_mtl_solve_kernel",
                    dict(gram_ptr="*fp32", pref_ptr=_F64, weights_ptr=_F64, zero_tasks_ptr=_I1, facts_ptr=_F64,
                         rank_ptr=_I32),
                    lambda: dict(HAS_PREF=True, SCALE_MODE=0, **kspace.constexprs(aligned_mtl.CONSTANTS))),
}


#: the other option values a weighting can compile a solve with (constexprs over SOLVES' defaults):
#: MGDA's normalisations and combinations, Aligned-MTL's scale modes and default preference,
#: ConFIG's default preference, FairGrad's exact-power α (1, ½) and a generic one (3), GradVac's
#: "corrected" target update and eps, Nash-MTL without clipping and updating every step
VARIANTS = {
    "mgda": [dict(NORMALIZATION=n, NORMALIZED=w) for n in range(4) for w in (False, True) if (n, w) != (3, True)],
    "aligned_mtl": [dict(HAS_PREF=p, SCALE_MODE=m) for p in (False, True) for m in range(3) if (p, m) != (True, 0)],
    "config": [dict(HAS_PREF=False)],
    "fairgrad": [dict(ALPHA=1.0), dict(ALPHA=0.5), dict(ALPHA=3.0)],
    "gradvac": [dict(EPS=1e-8, ALWAYS=False)],
    "nash_mtl": [dict(MAX_NORM=0.0, UPDATE_EVERY=1)],
}


def solve_case(name: str, K: int, arch: int, num_warps: int | None = None, variant: dict | None = None) -> dict:
    """One on-device solve as its launcher launches it (``num_warps`` overrides, to explore;
    ``variant``: constexprs replacing the defaults, one entry of :data:`VARIANTS`)."""
    module, kernel, pointers, constexprs = SOLVES[name]
    block, warps = kspace.launch_config(K)
    warps = num_warps or warps
    report = compile_kernel(getattr(module, kernel), pointers, dict(K=K), dict(constexprs(), BLOCK_K=block, **(variant or {})),
                            arch=arch, num_warps=warps, maxnreg=kspace.MAX_REGISTERS)
    report.update(kernel=f"{name}_solve", K=K, block_k=block, num_warps=warps)
    if variant:
        report.update(variant=variant)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the unaligned variants at every K")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    parser.add_argument("--kernels", default="gram,combine,pcgrad", help="comma-separated subset (also: " + ", ".join(SOLVES) + ")")
    parser.add_argument("--K", default=",".join(map(str, TASK_COUNTS)), help="comma-separated task counts")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16,float64", help="comma-separated J dtypes")
    parser.add_argument("--warps", type=int, help="override the solves' num_warps (to explore)")
    parser.add_argument("--variants", action="store_true", help="also the solves' other option values (VARIANTS)")
    args = parser.parse_args(argv)
    kernels = set(args.kernels.split(","))
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    for K in map(int, args.K.split(",")):
        alignments = (True, False) if args.full or K in UNALIGNED_IN_DEFAULT else (True,)
        for dtype in dtypes:
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
        for name in SOLVES:
            if name in kernels:
                print(json.dumps(solve_case(name, K, args.arch, args.warps)), flush=True)
                for variant in VARIANTS.get(name, []) if args.variants else []:
                    print(json.dumps(solve_case(name, K, args.arch, args.warps, variant)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
