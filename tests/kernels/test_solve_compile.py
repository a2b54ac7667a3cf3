"""The on-device K-space solves compile for an H100 (sm_90) on a machine without a GPU.

The interpreter runs the kernels as Python, so it accepts code the Triton compiler rejects
(non-constexpr globals, loop-carried values changing type, unsupported float64 operations). Here
each kernel goes through the whole compiler (TTIR → PTX → cubin, ptxas from the triton wheel) at
BLOCK_K = 16, for a float32 Γ and for K = 1 (which Triton specialises as a constant), in a
subprocess without TRITON_INTERPRET. On a CUDA machine the GPU tests of each solve compile them for
real instead. The full sweep (BLOCK_K up to 64, register and spill counts) is in
README.md, "On-device K-space solves".
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

COMPILE_ALL = textwrap.dedent(
    """
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from mtlkernels.kernels import (kspace, solve_aligned_mtl, solve_cagrad, solve_config, solve_fairgrad, solve_imtl,
                                    solve_mgda, solve_nash_mtl)
    from mtlkernels.methods import aligned_mtl, cagrad, config, fairgrad, imtl, mgda, nash_mtl

    def compile_for_h100(fn, pointers, constexprs, K):
        signature = {name: kind for name, kind in pointers.items()}
        signature["K"] = "constexpr" if K == 1 else "i32"
        signature.update({name: "constexpr" for name in constexprs})
        constants = dict(constexprs, **({"K": 1} if K == 1 else {}))
        triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    f64, i1, i32 = "*fp64", "*i1", "*i32"
    gram = "*fp32"
    for K in (1, 16):
        compile_for_h100(
            solve_imtl._imtl_solve_kernel,
            dict(gram_ptr=gram, weights_ptr=f64, zero_tasks_ptr=i1, fallback_ptr=i1, unique_ptr=i1,
                 degenerate_ptr=i1, rank_ptr=i32, residual_ptr=f64),
            dict(BLOCK_K=16, **kspace.constexprs(imtl.tolerances(torch.float32))), K)
        compile_for_h100(
            solve_nash_mtl._nash_mtl_solve_kernel,
            dict(gram_ptr=gram, previous_ptr=f64, alpha_ptr=f64, weights_ptr=f64, dropped_ptr=i1,
                 iterations_ptr=i32, converged_ptr=i1, certificates_ptr=f64),
            dict(MAX_NORM=1.0, HAS_PREVIOUS=True, REUSE=False, BLOCK_K=16, **kspace.constexprs(nash_mtl.CONSTANTS)),
            K)
        compile_for_h100(
            solve_mgda._mgda_solve_kernel,
            dict(gram_ptr=gram, losses_ptr=f64, weights_ptr=f64, simplex_ptr=f64, normalizers_ptr=f64,
                 kkt_ptr=f64, objective_ptr=f64, iterations_ptr=i32, support_ptr=i32),
            dict(NORMALIZATION=3, NORMALIZED=True, BLOCK_K=16, **kspace.constexprs(mgda.CONSTANTS)), K)
        compile_for_h100(
            solve_cagrad._cagrad_solve_kernel,
            dict(gram_ptr=gram, weights_ptr=f64, active_ptr=i1, degenerate_ptr=i1, iterations_ptr=i32,
                 facts_ptr=f64),
            dict(C=0.4, FACTOR=1 / 1.16, BLOCK_K=16, **kspace.constexprs(cagrad.CONSTANTS)), K)
        compile_for_h100(
            solve_config._config_solve_kernel,
            dict(gram_ptr=gram, pref_ptr=f64, weights_ptr=f64, zero_tasks_ptr=i1, facts_ptr=f64, rank_ptr=i32,
                 equal_ptr=i1),
            dict(HAS_PREF=True, BLOCK_K=16, **kspace.constexprs(config.CONSTANTS)), K)
        compile_for_h100(
            solve_aligned_mtl._aligned_mtl_solve_kernel,
            dict(gram_ptr=gram, pref_ptr=f64, weights_ptr=f64, zero_tasks_ptr=i1, facts_ptr=f64, rank_ptr=i32),
            dict(HAS_PREF=False, SCALE_MODE=1, BLOCK_K=16, **kspace.constexprs(aligned_mtl.CONSTANTS)), K)
        compile_for_h100(
            solve_fairgrad._fairgrad_solve_kernel,
            dict(gram_ptr=gram, weights_ptr=f64, dropped_ptr=i1, iterations_ptr=i32, converged_ptr=i1,
                 certificates_ptr=f64),
            dict(ALPHA=2.0, BLOCK_K=16, **kspace.constexprs(fairgrad.CONSTANTS)), K)
        print("compiled", K)
    """
)


@pytest.mark.slow  # ~30 s of CPU with a cold Triton cache, a few seconds with a warm one
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile the kernels on this machine")
def test_solve_kernels_compile_for_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split() == ["compiled", "1", "compiled", "16"]
