"""The CPU kernels' instruction-set levels (csrc/kernels/cpu_dispatch.cpp): the levels found match
the CPU's flags, the Gram and combination kernels agree with float64 torch at every level this
CPU runs, MTLKERNELS_CPU_ISA picks the level at import, and bad names are refused."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtlkernels as mk
from mtlkernels import _extension
from mtlkernels.combine import _combine_cpp
from mtlkernels.gram import _gram_cpp
from _devices import requires_cpp
from cases import cpu_gram_tolerance, random_J

pytestmark = requires_cpp

#: every level a build can have, lowest first, and the /proc/cpuinfo flags each one needs
LEVEL_FLAGS = {
    "baseline": set(),
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx512bf16": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
}
X86 = platform.machine().lower() in ("x86_64", "amd64")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: unit roundoff of each output dtype (the combination is rounded once to it)
ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
REPO = Path(__file__).resolve().parents[2]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(params=list(LEVEL_FLAGS))
def level(request):
    """Run the test body at one level (skipped where the CPU lacks it), then restore the level."""
    if request.param not in _extension.cpu_isa_levels():
        pytest.skip(f"this CPU or build does not run level {request.param}")
    before = mk.cpu_isa()
    _extension.set_cpu_isa(request.param)
    assert mk.cpu_isa() == request.param
    yield request.param
    _extension.set_cpu_isa(before)


@pytest.mark.skipif(not (X86 and sys.platform.startswith("linux")), reason="reads x86 flags from /proc/cpuinfo")
def test_levels_match_the_cpu_flags():
    flags = cpu_flags()
    expected = [name for name, needs in LEVEL_FLAGS.items() if needs <= flags]
    assert _extension.cpu_isa_levels() == expected
    assert mk.cpu_isa() == expected[-1] or os.environ.get(_extension.CPU_ISA_ENV)


def test_other_architectures_have_the_baseline():
    assert _extension.cpu_isa_levels()[0] == "baseline"
    if not X86:
        assert _extension.cpu_isa_levels() == ["baseline"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, N", [(1, 1000), (3, 7), (5, 100003), (8, 4099), (13, 20011)])
def test_gram_at_every_level(level, K, N, dtype):
    J = random_J(K, N, seed=K * 7 + N, dtype=dtype)
    G = _gram_cpp([J])
    J64 = J.double()
    ref = J64 @ J64.T
    norms = ref.diagonal().sqrt()
    assert G.dtype == torch.float64 and torch.equal(G, G.T)
    error, bound = (G - ref).abs(), cpu_gram_tolerance(dtype, level, N) * norms[:, None] * norms[None, :]
    assert (error <= bound).all(), f"{level}: max error / bound = {(error / bound.clamp_min(1e-300)).max():.3g}"


def test_bfloat16_gram_out_of_float32_range_at_every_level(level):
    """Rows beyond the float32 panel sums' safe range are redone in float64 at every level."""
    J = random_J(4, 5000, seed=3, dtype=torch.float32)
    J[1] *= 2.0**70
    J = J.bfloat16()
    G, J64 = _gram_cpp([J]), J.double()
    torch.testing.assert_close(G, J64 @ J64.T, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, N", [(1, 999), (3, 100003), (8, 4097), (17, 33)])
def test_combine_at_every_level(level, K, N, dtype, out_dtype):
    J = random_J(K, N, seed=K + N, dtype=dtype)
    w = torch.randn(K, generator=torch.Generator().manual_seed(N), dtype=torch.float64)
    base = torch.randn(N, generator=torch.Generator().manual_seed(K), dtype=torch.float64).to(out_dtype)
    out = base.clone()
    _combine_cpp(w, [J], [out], True)
    d = base.double() + w @ J.double()
    scale = base.double().abs() + w.abs() @ J.double().abs()
    subnormal = torch.finfo(out_dtype).smallest_normal * torch.finfo(out_dtype).eps
    bound = ROUNDOFF[out_dtype] * d.abs() + (K + 1) * 2.0**-53 * scale + subnormal
    if out_dtype in (torch.float16, torch.bfloat16):  # rounded through float32 first
        bound += 2.0**-24 * d.abs()
    error = (out.double() - d).abs()
    assert (error <= bound).all(), f"{level}: max error / bound = {(error / bound.clamp_min(1e-300)).max():.3g}"


def test_set_cpu_isa_refuses_unknown_names_and_keeps_the_level():
    before = mk.cpu_isa()
    with pytest.raises(ValueError, match="unknown CPU ISA level 'sse9'.*baseline"):
        _extension.set_cpu_isa("sse9")
    assert mk.cpu_isa() == before


def test_set_cpu_isa_refuses_a_level_the_cpu_lacks():
    missing = [name for name in ("avx2", "avx512", "avx512bf16") if name not in _extension.cpu_isa_levels()]
    if not X86 or not missing:
        pytest.skip("this CPU runs every level of the build")
    before = mk.cpu_isa()
    with pytest.raises(ValueError, match="this CPU lacks"):
        _extension.set_cpu_isa(missing[0])
    assert mk.cpu_isa() == before


def run_python(code: str, env_value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MTLKERNELS_CPU_ISA=env_value, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_level_at_import():
    code = (
        "import torch, mtlkernels as mk; from mtlkernels.gram import _gram_cpp; "
        "J = torch.randn(3, 1000); G = _gram_cpp([J]); "
        "print(mk.cpu_isa(), bool(torch.allclose(G, J.double() @ J.double().T, rtol=1e-12, atol=0)))"
    )
    result = run_python(code, "baseline")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["baseline", "True"]


def test_environment_variable_with_a_bad_level_fails_the_import():
    result = run_python("import mtlkernels", "avx1024")
    assert result.returncode != 0
    assert "MTLKERNELS_CPU_ISA='avx1024'" in result.stderr and "unknown CPU ISA level" in result.stderr
