"""The benchmark command in its tiny configuration: every method present, every number sane, the
files written. (Speed itself is measured by the benchmark, never asserted in tests.)"""
import json
import math
import time

import pytest

from mtlkernels.bench.__main__ import _progress, main
from mtlkernels.bench.report import compared
from mtlkernels.bench.suites import METHODS
from peers import require_peers


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = main(["--suite", "tiny", "--out", str(out), "--min-time", "0.002"])
    return rows, out


def test_every_method_and_pass_present(tiny_run):
    rows, _ = tiny_run
    assert {r["method"] for r in rows if r["suite"] == "aggregate"} == set(METHODS)
    assert {r["method"] for r in rows if r["suite"] == "passes"} == {"gram", "combine"}


def test_ratios_finite_and_positive(tiny_run):
    rows, _ = tiny_run
    for r in rows:
        ratios = [v for k, v in r.items() if k.startswith(("ratio_", "speedup_vs_")) or k.endswith("_s")]
        assert ratios and all(math.isfinite(v) and v > 0 for v in ratios), r


def test_peers_timed_where_they_implement_the_method(tiny_run):
    require_peers("torchjd", "libmtl")
    rows, _ = tiny_run
    agg = {(r["method"], r["K"]): r for r in rows if r["suite"] == "aggregate"}
    assert "torchjd_s" in agg[("pcgrad", 2)] and "libmtl_s" in agg[("pcgrad", 2)]
    assert "libmtl_s" in agg[("cagrad", 3)] and "libmtl" in agg[("cagrad", 2)]["skipped"]
    assert "torchjd_s" in agg[("nash_mtl", 3)] and "libmtl_s" not in agg[("nash_mtl", 3)]


def test_files_written(tiny_run):
    rows, out = tiny_run
    data = json.loads((out / "results.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows)) and "torch" in data["environment"]
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    assert data["environment"]["cpu_model"] and data["environment"]["cpu_isa"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "aggregate_pcgrad_float32.png" in pngs and "passes_gram_float32.png" in pngs
    assert len(pngs) == len(METHODS) + 2  # one figure per method and per pass, no bar charts


def test_floor_measured_once_per_size_of_J(tiny_run):
    """Every row on one size of J is divided by the same floor (2 reads for aggregate, 1 for a pass)."""
    rows, _ = tiny_run
    floors: dict = {}
    for r in rows:
        one_read = r["floor_s"] / (2 if r["suite"] == "aggregate" else 1)
        floors.setdefault((r["K"], r["N"], r["dtype"]), set()).add(one_read)
    assert all(len(values) == 1 for values in floors.values()), floors


def test_peer_columns_say_who_is_faster():
    assert compared(5.0) == "peer 5.0× slower"
    assert compared(0.5) == "peer 2.0× faster"
    assert compared(1.02) == "same"
    assert compared(float("nan")) == "-"


def test_progress_in_a_redirected_log_has_no_carriage_returns(capsys):
    started = time.perf_counter()
    for i in range(3):
        _progress(i, 2, f"case {i}", started)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 3
