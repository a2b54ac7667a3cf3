"""The demo prints one row per method with finite numbers."""
from mtlkernels import METHODS
from mtlkernels.demo import main


def test_demo_table(capsys):
    main(["--tasks", "3", "--width", "16", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in METHODS}
    assert set(rows) == set(METHODS)
    assert "nan" not in out.lower()
