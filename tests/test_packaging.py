"""The built wheel installs and works where users run it: ``pip wheel .`` here, then that wheel
installed in a fresh virtual environment that sees torch but neither the source tree nor a
compiler (PATH holds only the environment's own bin/), run from a directory outside the tree. The
smoke run blocks ``import triton`` (an optional dependency), loads the C++ extension from the
wheel, aggregates with every method (the extension against plain torch) and takes one optimizer
step; the command lines answer without a traceback."""
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
import torch

import mtlkernels

ROOT = Path(__file__).resolve().parents[1]

SMOKE = textwrap.dedent(
    """
    import json, sys
    sys.modules["triton"] = None  # as on a CPU-only install without the optional extra
    import torch
    import mtlkernels as mk
    from mtlkernels import _extension
    from mtlkernels.backend import triton_installed
    assert _extension.available, _extension.import_error
    torch.manual_seed(0)
    J = torch.randn(3, 200, dtype=torch.float64)
    errors = {}  # the C++ extension's passes and solves against plain torch
    for method in mk.METHODS:
        options = {"losses": torch.ones(3, dtype=torch.float64)} if method == "mgda" else {}
        fast, plain = mk.aggregate(J, method, backend="cpp", **options), mk.aggregate(J, method, backend="torch", **options)
        errors[method] = float((fast.direction - plain.direction).norm() / plain.direction.norm())
    model = torch.nn.ModuleList([torch.nn.Linear(4, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(3))])
    opt = mk.CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    z = torch.tanh(model[0](torch.randn(16, 4)))
    opt.backward([head(z).pow(2).mean() for head in model[1]])
    opt.step()
    try:
        mk.gram(J, backend="triton")
        triton_error = None
    except RuntimeError as exc:
        triton_error = str(exc)
    print(json.dumps({"file": mk.__file__, "extension": _extension._module.__file__, "version": mk.__version__,
                      "cpu_isa": mk.cpu_isa(), "triton": triton_installed(), "triton_error": triton_error,
                      "errors": errors}))
    """
)


def _torch_site() -> str:
    """The site-packages directory torch is installed in (the fresh environment sees it through a .pth file)."""
    return str(Path(torch.__file__).resolve().parents[1])


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_source_tree_or_a_compiler(tmp_path):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("building the wheel needs a C++ compiler")
    wheels = tmp_path / "wheels"
    # --no-build-isolation: the build requirements (setuptools, pybind11, ninja) are the test extras'
    # own, so the test needs no network; in-tree builds reuse build/'s compiled objects (ninja).
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(wheels)], check=True, cwd=tmp_path, timeout=900)
    (wheel,) = wheels.glob("mtlkernels-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.startswith("mtlkernels/_C") and n.endswith(".so") for n in names), "the wheel lacks the C++ extension"
    assert "mtlkernels/py.typed" in names
    assert not any(n.startswith(("tests/", "csrc/", "bench/")) for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "triton" in r and "extra ==" not in r], f"triton must be optional: {requires}"
    assert any("triton" in r and "extra == \"triton\"" in r for r in requires), requires
    assert f"Version: {mtlkernels.__version__}" in metadata

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (purelib / "torch_site.pth").write_text(_torch_site() + "\n")  # torch, not the editable mtlkernels beside it
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "-q", "--target", str(purelib), str(wheel)], check=True, cwd=tmp_path)

    python = env_dir / "bin" / "python"
    bare = {"PATH": str(env_dir / "bin"), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([str(python), *args], cwd=tmp_path, env=bare, capture_output=True, text=True)  # noqa: E731
    assert run("-c", "import shutil; assert not (shutil.which('c++') or shutil.which('gcc') or shutil.which('cc'))").returncode == 0
    smoke = run("-c", SMOKE)
    assert smoke.returncode == 0, smoke.stderr
    facts = json.loads(smoke.stdout)
    assert Path(facts["file"]).is_relative_to(purelib) and Path(facts["extension"]).is_relative_to(purelib)
    assert facts["version"] == mtlkernels.__version__
    assert facts["triton"] is False and "needs the triton package" in facts["triton_error"]
    assert all(error < 1e-10 for error in facts["errors"].values()), facts["errors"]
    version = run("-m", "mtlkernels", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"mtlkernels {mtlkernels.__version__}", version.stderr
    triton_cli = run("-m", "mtlkernels.validate", "--backend", "triton")
    assert triton_cli.returncode == 2 and "Traceback" not in triton_cli.stderr
    assert "needs the triton package" in triton_cli.stderr or "TRITON_INTERPRET=1" in triton_cli.stderr
