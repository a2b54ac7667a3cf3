"""Builds the C++ extension ``mtlkernels._C`` from ``csrc/`` with pybind11, compiling through ninja.

Every ``csrc/**/*.cpp`` is one translation unit; each registers its bindings itself (see
``csrc/registry.h``), so adding a solver or kernel is adding a file. The extension uses no torch
headers: it builds in seconds on any machine with a C++17 compiler, and tensors reach it as
raw pointers through the thin Python layer that checks them first.

Portable by default: nothing is built for the building machine's CPU. The CPU kernels
(``LEVEL_SOURCES``) are compiled once per instruction-set level of ``LEVELS``, each into its own
namespace, and ``csrc/kernels/cpu_dispatch.cpp`` runs the best level the CPU at hand supports (see
``csrc/kernels/cpu_dispatch.h``); everything else is built for the architecture's baseline.
``MTLKERNELS_ARCH_FLAGS`` (e.g. ``-march=native``) adds flags to every file, for a build that runs
only where it was tuned.
"""
import glob
import os
import platform
import shlex
import subprocess
import sysconfig

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wextra"]
# Extra flags for every file, opt-in (e.g. "-march=native": fastest here, may not run elsewhere).
ARCHFLAGS = os.environ.get("MTLKERNELS_ARCH_FLAGS", "")
LDFLAGS = ["-fopenmp"]
LEVEL_SOURCES = ["csrc/kernels/gram_cpu.cpp", "csrc/kernels/combine_cpu.cpp"]
X86 = platform.machine().lower() in ("x86_64", "amd64")
# Level name → its target flags (the names csrc/kernels/cpu_dispatch.cpp knows), lowest first.
if X86:
    LEVELS = {
        "baseline": ["-march=x86-64"],
        "avx2": ["-march=x86-64", "-mavx2", "-mfma", "-mf16c"],
        "avx512": ["-march=x86-64", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    }
    BASEFLAGS = ["-march=x86-64", "-DMTLK_X86_LEVELS"]
else:
    LEVELS = {"baseline": []}
    BASEFLAGS = []


class NinjaBuildExt(build_ext):
    """Compile the sources with a generated build.ninja (parallel, incremental), link with setuptools."""

    def build_extension(self, ext: Extension) -> None:
        build_dir = os.path.abspath(os.path.join(self.build_temp, ext.name))
        os.makedirs(build_dir, exist_ok=True)
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"], os.path.abspath("csrc")]
        cxx = os.environ.get("CXX", "c++")
        flags = CXXFLAGS + [f"-I{d}" for d in includes]
        quote = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
        lines = [
            f"cxxflags = {quote(flags)}",
            f"archflags = {quote(shlex.split(ARCHFLAGS))}",
            f"rule cxx\n  command = {cxx} -MMD -MF $out.d $cxxflags $target $archflags -c $in -o $out\n"
            "  depfile = $out.d\n  deps = gcc",
        ]
        # (source, object, target flags); the baseline objects first, so that where two levels
        # emit the same inline library function, the linker keeps the copy that runs on every CPU.
        builds = [(src, src.replace(os.sep, "_"), BASEFLAGS) for src in ext.sources if src not in LEVEL_SOURCES]
        for level, target in LEVELS.items():
            builds += [(src, f"{src.replace(os.sep, '_')}.{level}", target + ["-Wno-psabi", f"-DMTLK_ISA={level}"]) for src in LEVEL_SOURCES]
        objects = []
        for src, name, target in builds:
            obj = os.path.join(build_dir, name + ".o")
            lines.append(f"build {obj}: cxx {os.path.abspath(src)}\n  target = {quote(target)}")
            objects.append(obj)
        with open(os.path.join(build_dir, "build.ninja"), "w") as f:
            f.write("\n".join(lines) + "\n")
        subprocess.check_call(["ninja", "-C", build_dir] + (["-v"] if self.verbose else []))
        self.compiler.link_shared_object(
            objects, self.get_ext_fullpath(ext.name), extra_postargs=LDFLAGS, target_lang="c++"
        )


setup(
    ext_modules=[Extension("mtlkernels._C", sorted(glob.glob("csrc/**/*.cpp", recursive=True)))],
    cmdclass={"build_ext": NinjaBuildExt},
)
