"""Builds the C++ extension ``mtlkernels._C`` from ``csrc/`` with pybind11, compiling through ninja.

Every ``csrc/**/*.cpp`` is one translation unit; each registers its bindings itself (see
``csrc/registry.h``), so adding a solver or kernel is adding a file. The extension uses no torch
headers: it builds in seconds on any machine with a C++17 compiler, and tensors reach it as
raw pointers through the thin Python layer that checks them first.
"""
import glob
import os
import shlex
import subprocess
import sysconfig

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wextra"]
# Built where it runs (pip builds from source): tune for this CPU unless told otherwise.
ARCHFLAGS = os.environ.get("MTLKERNELS_ARCH_FLAGS", "-march=native")
LDFLAGS = ["-fopenmp"]


class NinjaBuildExt(build_ext):
    """Compile the sources with a generated build.ninja (parallel, incremental), link with setuptools."""

    def build_extension(self, ext: Extension) -> None:
        build_dir = os.path.abspath(os.path.join(self.build_temp, ext.name))
        os.makedirs(build_dir, exist_ok=True)
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"], os.path.abspath("csrc")]
        cxx = os.environ.get("CXX", "c++")
        flags = CXXFLAGS + shlex.split(ARCHFLAGS) + [f"-I{d}" for d in includes]
        objects, lines = [], [
            f"cxxflags = {' '.join(shlex.quote(f) for f in flags)}",
            f"rule cxx\n  command = {cxx} -MMD -MF $out.d $cxxflags -c $in -o $out\n  depfile = $out.d\n  deps = gcc",
        ]
        for src in ext.sources:
            obj = os.path.join(build_dir, src.replace(os.sep, "_") + ".o")
            lines.append(f"build {obj}: cxx {os.path.abspath(src)}")
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
