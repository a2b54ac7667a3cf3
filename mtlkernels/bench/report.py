"""Benchmark output: a printed table, JSON + CSV files, and PNG plots."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
from datetime import datetime, timezone
from typing import Any

import torch

from mtlkernels import _extension


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """One line naming the machine: CPU model, logical CPUs, and the level the CPU kernels run at."""
    isa = _extension.cpu_isa() if _extension.available else "no C++ extension"
    return f"{cpu_model()} ({os.cpu_count()} CPUs), CPU kernels at {isa}"


def environment() -> dict[str, Any]:
    """Machine, versions and date, stored beside every result."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_isa": _extension.cpu_isa() if _extension.available else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mtlkernels": version("mtlkernels"),
        "triton": version("triton"),
        "torchjd": version("torchjd"),
        "LibMTL": version("LibMTL"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def compared(peer_over_ours: float) -> str:
    """A peer's time over ours in words: "peer 5.0× slower", "peer 2.0× faster", "same"."""
    if not math.isfinite(peer_over_ours) or peer_over_ours <= 0:
        return "-"
    if round(peer_over_ours, 1) == 1.0:
        return "same"
    if peer_over_ours > 1:
        return f"peer {peer_over_ours:.1f}× slower"
    return f"peer {1 / peer_over_ours:.1f}× faster"


def _every(rows: list[dict[str, Any]]) -> set[str]:
    """The ``every<n>`` ways of the step rows (a wrapper with update_every=n)."""
    return {k.removeprefix("tax_") for r in rows for k in r if k.startswith("tax_every")}


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table: one line per case, one column per peer saying who is faster by
    how much (:func:`compared`); step rows add the K-passes baseline and the ``update_every=n``
    ways as taxes (÷ the plain step)."""
    peers = sorted({k.removeprefix("speedup_vs_") for r in rows for k in r if k.startswith("speedup_vs_")} - _every(rows))
    every = sorted(_every(rows), key=lambda name: int(name.removeprefix("every")))
    head = ["suite", "method", "K", "N", "dtype", "ours", "floor", "ours/floor"] + list(peers)
    head += ["K-passes/floor"] * any("tax_per_task_backward" in r for r in rows) + [f"{e}/floor" for e in every]
    lines = []
    for r in rows:
        cells = [r["suite"], r["method"], str(r["K"]), f"{r['N']:.0e}", r["dtype"], _fmt_time(r["mtlkernels_s"]),
                 _fmt_time(r["floor_s"]), f"{r['ratio_to_floor']:.2f}"]
        cells += [compared(r[f"speedup_vs_{p}"]) if f"speedup_vs_{p}" in r else "-" for p in peers]
        if "K-passes/floor" in head:
            cells.append(f"{r['tax_per_task_backward']:.2f}" if "tax_per_task_backward" in r else "-")
        cells += [f"{r[f'tax_{e}']:.2f}" if f"tax_{e}" in r else "-" for e in every]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in lines]
    return "\n".join(out)


def write(rows: list[dict[str, Any]], out_dir: str, command: str) -> list[str]:
    """Write results.json (rows + environment + command) and results.csv; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, csv_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")
    with open(json_path, "w") as f:
        json.dump({"environment": environment(), "command": command, "rows": rows}, f, indent=1)
    keys = sorted({k for r in rows for k in r if k != "skipped"}, key=lambda k: (k not in rows[0], k))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [json_path, csv_path]


#: line style of each implementation in the plots: ours solid, the floor dotted, peers dashed
_STYLES = {"mtlkernels": ("o", "-"), "floor": (".", ":"), "torch": ("x", "-."), "torchjd": ("s", "--"), "libmtl": ("^", "--")}


def plot(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    """One PNG per question — how does one method (or pass) scale with N, against the peers and the
    memory floor? — for each (suite, method, dtype): time vs N, one colour per K, one line style
    per implementation, the legend inside the axes; 6.4 × 4 inches, readable at README width."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return []
    paths = []
    for suite, method, dtype in sorted({(r["suite"], r["method"], r["dtype"]) for r in rows}):
        case_rows = [r for r in rows if (r["suite"], r["method"], r["dtype"]) == (suite, method, dtype)]
        Ks = sorted({r["K"] for r in case_rows})
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        names: list[str] = []
        for color, K in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, Ks):
            rs = sorted((r for r in case_rows if r["K"] == K), key=lambda r: r["N"])
            for name, (marker, line) in _STYLES.items():
                key = "floor_s" if name == "floor" else f"{name}_s"
                points = [(r["N"], r[key]) for r in rs if key in r and math.isfinite(r[key])]
                if points:
                    ax.plot(*zip(*points), marker=marker, linestyle=line, color=color, alpha=1.0 if name == "mtlkernels" else 0.6)
                    names += [name] if name not in names else []
        handles = [Line2D([], [], color=c, lw=2, label=f"K = {K}") for c, K in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, Ks)]
        labels = {"mtlkernels": "mtlkernels", "floor": "memory floor", "torch": "plain torch"}
        handles += [Line2D([], [], color="gray", marker=_STYLES[n][0], linestyle=_STYLES[n][1], label=labels.get(n, n)) for n in names]
        ax.set(xscale="log", yscale="log", xlabel="N (parameters)", ylabel="seconds (median)",
               title=f"{method} ({suite}, {dtype}, {rows[0]['device']})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, loc="best", fontsize=8, ncol=2, framealpha=0.8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{suite}_{method}_{dtype}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
