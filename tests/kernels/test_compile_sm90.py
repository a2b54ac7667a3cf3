"""Every default launch of the Gram, combine and K-space solve kernels compiles for an H100 (sm_90)
and an A100 (sm_80) on a machine without a GPU and spills no registers (one exception: CAGrad at
BLOCK_K = 64, held to a ceiling), and fits the register file (registers × threads ≤ 64K).

A spill is a silent slowdown (local-memory traffic in the inner loop of a bandwidth-bound pass)
that no CPU test can see; here a register regression fails CI instead. The compilation and the
``ptxas -v`` report are done by ``tests/kernels/compile_sm90.py`` in a subprocess without
TRITON_INTERPRET; each line it prints is one configuration as the launchers pick it
(``gram_config``, ``reduce_block``, ``combine_config``, ``kspace.launch_config``). Compiling
also catches code the interpreter accepts but the compiler rejects (non-constexpr globals,
loop-carried values changing type).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = os.path.join(os.path.dirname(__file__), "compile_sm90.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_reports(*args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


#: registers per SM (sm_80 and sm_90): a program of T threads needs registers × T ≤ this to launch
REGISTER_FILE = 64 * 1024


def assert_no_spills(reports: list[dict], arch: int = 90) -> None:
    for r in reports:  # the register counts go to the log (pytest -rA or -s shows them)
        print(json.dumps(r))
    spilling = [r for r in reports if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"spills registers on sm_{arch}:\n" + "\n".join(map(json.dumps, spilling))
    assert all(0 < r["registers"] <= 255 for r in reports)
    too_large = [r for r in reports if "num_warps" in r and r["registers"] * 32 * r["num_warps"] > REGISTER_FILE]
    assert not too_large, "more registers than the register file holds:\n" + "\n".join(map(json.dumps, too_large))


skip_on_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile the kernels on this machine")


@skip_on_cuda
def test_default_launches_compile_without_spills():
    reports = compile_reports()
    kinds = {(r["kernel"], r["K"], r.get("dtype"), r.get("aligned")) for r in reports}
    for K in (1, 2, 3, 8, 16, 32, 40, 64):
        for dtype in ("float32", "bfloat16", "float16", "float64"):
            assert ("gram_partial", K, dtype, True) in kinds and ("combine", K, dtype, True) in kinds
    assert {("gram_partial", 64, "float32", False), ("combine", 64, "bfloat16", False)} <= kinds
    assert {r["block_k"] for r in reports if r["kernel"] == "pcgrad_solve"} == {16, 32, 64}
    assert_no_spills(reports)


@pytest.mark.slow  # a few minutes of CPU with a cold Triton cache
@skip_on_cuda
def test_every_launch_variant_compiles_without_spills():
    """Also unaligned blocks at every K and combine adding into its outputs."""
    reports = compile_reports("--full")
    assert any(r["kernel"] == "combine" and r["accumulate"] for r in reports)
    assert any(r["kernel"] == "gram_partial" and r["K"] == 40 and not r["aligned"] for r in reports)
    assert_no_spills(reports)


SOLVES = "imtl,nash_mtl,mgda,cagrad,upgrad,dualproj,gradvac,fairgrad,config,aligned_mtl"
#: (solve, K, arch) → spill-store bytes per thread that a launch may not exceed, measured
#: 2026-12-01 (Triton 3.9, maxnreg 255, 8 warps): CAGrad's path, faces, hull and eigen fallback
#: keep more float64 BLOCK_K² tiles and vectors live than 255 registers hold at BLOCK_K = 64 (16
#: warps, at most 128 registers each, spill more); GradVac at K = 40 for sm_80 is one register
#: pair over (K = 64: none). Every other solve launch spills nothing.
KNOWN_SPILLS = {
    ("cagrad_solve", 40, 90): 2452,
    ("cagrad_solve", 64, 90): 2368,
    ("cagrad_solve", 40, 80): 2116,
    ("cagrad_solve", 64, 80): 2024,
    ("gradvac_solve", 40, 80): 16,
}


@skip_on_cuda
def test_solves_compile_without_spills_at_block_16():
    """The other solves at K = 3 (BLOCK_K 16, K a runtime value): no spill."""
    reports = compile_reports("--kernels", SOLVES, "--K", "3")
    assert {r["kernel"] for r in reports} == {f"{name}_solve" for name in SOLVES.split(",")}
    assert_no_spills(reports)


def assert_solves_within_known(reports: list[dict], arch: int) -> None:
    """No spill, except the known ones, which may not grow."""
    known = [r for r in reports if (r["kernel"], r["K"], arch) in KNOWN_SPILLS]
    for r in known:
        assert r["spill_stores"] <= KNOWN_SPILLS[r["kernel"], r["K"], arch], json.dumps(r)
    assert_no_spills([r for r in reports if (r["kernel"], r["K"], arch) not in KNOWN_SPILLS], arch)


@skip_on_cuda
def test_solves_compile_without_spills_at_block_64_for_sm80():
    """sm_80 where the registers are tightest: every solve but CAGrad (slow to compile; the slow
    test below has it) at K = 40 (BLOCK_K 64, Γ's rows padded to 48: see kspace.gram_argument)."""
    reports = compile_reports("--arch", "80", "--kernels", "pcgrad," + SOLVES.replace("cagrad,", ""), "--K", "40")
    assert len(reports) == 10
    assert_solves_within_known(reports, 80)


@pytest.mark.slow  # minutes: CAGrad at BLOCK_K 64 alone compiles for ~30 s
@skip_on_cuda
def test_every_solve_launch_compiles_without_spills():
    """Every solve at K ∈ {1, 2, 3, 8, 16, 24, 32, 40, 64} (24 and 40: K not a multiple of 16 at
    BLOCK_K 32 and 64): no spill (CAGrad at BLOCK_K 64: its ceiling)."""
    reports = compile_reports("--kernels", "pcgrad," + SOLVES, "--K", "1,2,3,8,16,24,32,40,64")
    assert len({(r["kernel"], r["K"]) for r in reports}) == 11 * 9
    assert any(r["kernel"] == "cagrad_solve" and r["K"] == 40 for r in reports)
    assert_solves_within_known(reports, 90)


@pytest.mark.slow  # minutes, as above
@skip_on_cuda
def test_every_solve_launch_compiles_without_spills_for_sm80():
    """The same for sm_80 where the registers are tightest, BLOCK_K 32 and 64 at K a multiple of 16
    (K = 40 is the default test's; the BLOCK_K-16 launches use at most 182 registers there)."""
    reports = compile_reports("--arch", "80", "--kernels", "pcgrad," + SOLVES, "--K", "32,64")
    assert_solves_within_known(reports, 80)


@pytest.mark.slow  # ~2 minutes with a cold Triton cache
@skip_on_cuda
def test_solve_option_variants_compile_without_spills():
    """Each solve's other option values (MGDA's normalisations, Aligned-MTL's scale modes and
    default preference, FairGrad's α, ...) at BLOCK_K 64 for sm_90: no spill (for sm_80:
    ``--arch 80 --variants``, measured in docs/gpu_solves.md)."""
    reports = compile_reports("--kernels", "mgda,aligned_mtl,config,fairgrad,gradvac,nash_mtl", "--K", "64", "--variants")
    assert len([r for r in reports if "variant" in r]) == 18
    assert_no_spills(reports)
