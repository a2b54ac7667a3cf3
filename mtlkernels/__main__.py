"""``python -m mtlkernels``: what this installation runs on; ``--version`` prints the version only.

    $ python -m mtlkernels
    mtlkernels 0.1.0 (torch 2.13.0+cpu, Python 3.11.7)
    C++ extension: loaded, CPU kernels at avx512bf16 (levels: baseline, avx2, avx512, avx512bf16)
    Triton: not installed (the CUDA default; pip install "mtlkernels[triton]" for TRITON_INTERPRET=1 on CPU)
    CUDA: not available
"""
from __future__ import annotations

import argparse
import platform

import torch

from . import __version__, _extension
from .backend import triton_installed, triton_interpreted


def environment() -> list[str]:
    """One line each: the version, the C++ extension, Triton, CUDA."""
    lines = [f"mtlkernels {__version__} (torch {torch.__version__}, Python {platform.python_version()})"]
    if _extension.available:
        levels = ", ".join(_extension.cpu_isa_levels())
        lines.append(f"C++ extension: loaded, CPU kernels at {_extension.cpu_isa()} (levels: {levels})")
    else:
        lines.append(f"C++ extension: NOT loaded ({_extension.import_error}); the CPU runs plain torch. {_extension.REBUILD_HINT}")
    if not triton_installed():
        lines.append('Triton: not installed (the CUDA default; pip install "mtlkernels[triton]" for TRITON_INTERPRET=1 on CPU)')
    else:
        interpreted = ", interpreter on CPU tensors (TRITON_INTERPRET=1)" if triton_interpreted() else ""
        lines.append(f"Triton: installed{interpreted}")
    lines.append(f"CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CUDA: not available")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtlkernels", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mtlkernels {__version__}")
    parser.parse_args(argv)
    print("\n".join(environment()))


if __name__ == "__main__":
    main()
