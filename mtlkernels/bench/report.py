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


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table: one line per case, peers as speed-up columns."""
    peers = sorted({k.removeprefix("speedup_vs_") for r in rows for k in r if k.startswith("speedup_vs_")})
    head = ["suite", "method", "K", "N", "dtype", "ours", "floor", "ours/floor"] + [f"{p}/ours" for p in peers]
    lines = []
    for r in rows:
        cells = [r["suite"], r["method"], str(r["K"]), f"{r['N']:.0e}", r["dtype"], _fmt_time(r["mtlkernels_s"]),
                 _fmt_time(r["floor_s"]), f"{r['ratio_to_floor']:.2f}"]
        cells += [f"{r[f'speedup_vs_{p}']:.1f}x" if f"speedup_vs_{p}" in r else "-" for p in peers]
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


def plot(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    """PNG plots per suite: time vs N per method (ours solid, peers dashed) and ratio to the floor."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for suite in sorted({r["suite"] for r in rows}):
        suite_rows = [r for r in rows if r["suite"] == suite]
        groups = sorted({(r["method"], r["K"], r["dtype"]) for r in suite_rows})
        methods = sorted({g[0] for g in groups})
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
        for ax, method in zip(axes[0], methods):
            for (m, K, dtype) in groups:
                if m != method:
                    continue
                rs = sorted((r for r in suite_rows if (r["method"], r["K"], r["dtype"]) == (m, K, dtype)), key=lambda r: r["N"])
                Ns = [r["N"] for r in rs]
                line = ax.plot(Ns, [r["mtlkernels_s"] for r in rs], "o-", label=f"ours K={K} {dtype}")[0]
                ax.plot(Ns, [r["floor_s"] for r in rs], ":", color=line.get_color(), alpha=0.6)
                for peer, marker in (("torchjd", "s--"), ("libmtl", "^--"), ("torch", "x-.")):
                    pts = [(r["N"], r[f"{peer}_s"]) for r in rs if f"{peer}_s" in r]
                    if pts:
                        ax.plot(*zip(*pts), marker, color=line.get_color(), alpha=0.5, label=f"{peer} K={K}")
            ax.set(xscale="log", yscale="log", xlabel="N", ylabel="seconds", title=f"{suite}: {method}")
            ax.legend(fontsize=6)
        fig.suptitle("solid: mtlkernels, dotted: memory floor, dashed: peers, dash-dot: plain torch", fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{suite}_time.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = [f"{r['method']}\nK={r['K']} N={r['N']:.0e}" for r in suite_rows]
        ax.bar(range(len(suite_rows)), [r["ratio_to_floor"] for r in suite_rows])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(suite_rows)), labels, rotation=90, fontsize=5)
        ax.set(ylabel="time / memory floor", title=f"{suite}: ours vs the measured floor")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{suite}_ratio_to_floor.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
