"""``python -m benchmarks [--quick] [--only NAME ...]``: run every benchmark.

Runs each ``benchmarks/bench_*.py`` module's ``run(quick)``, prints one table,
writes ``benchmarks/results/latest.json`` and ``latest.png`` (``quick.json`` and
``quick.png`` with ``--quick``, so a quick run never overwrites the full one).
With ``--only``, the re-run benchmarks' rows replace theirs in the existing file
and the others are kept.
The chart needs matplotlib (``pip install matplotlib``); without it the chart is
skipped with a message.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import re
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from ._harness import load, row

RESULTS = Path(__file__).resolve().parent / "results"


def modules() -> list[str]:
    """The benchmark modules, ``bench_*`` in this package, sorted."""
    here = [str(Path(__file__).resolve().parent)]
    return sorted(
        m.name for m in pkgutil.iter_modules(here) if m.name.startswith("bench_")
    )


def machine() -> dict[str, Any]:
    """What the figures came from."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow-cpu") or version("tensorflow"),
        "anyio": version("anyio"),
        "trio": version("trio"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def run_all(
    names: list[str], quick: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        label = getattr(module, "NAME", name)
        print(f"== {label} ({name}) ...", flush=True)
        start, before = time.perf_counter(), load()
        try:
            got = module.run(quick=quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            got = [row(f"{label}: FAILED", float("nan"), "", "", False, repr(exc))]
        for r in got:
            r.setdefault("benchmark", label)
        took = time.perf_counter() - start
        timings[label] = {
            "seconds": round(took, 1),
            "load_before": before,
            "load_after": load(),
        }
        print_table(got)
        print(
            f"   ({took:.0f} s, load {before[0]:.2f} -> {load()[0]:.2f})\n", flush=True
        )
        rows += got
    return rows, timings


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    marks = {True: "ok", False: "MISS", None: "-"}
    width = max((len(r["figure"]) for r in rows), default=10)
    for r in rows:
        value = f"{_fmt(r['value'])} {r['unit']}"
        print(
            f"  {r['figure']:<{width}}  {value:>14}  {marks[r['ok']]:>4}  {r['target']}"
        )


def _limit(target: str) -> float | None:
    match = re.search(r"[<>]=?\s*([0-9.]+)", target)
    return float(match.group(1)) if match else None


def chart(rows: list[dict[str, Any]], info: dict[str, Any], path: Path) -> bool:
    """Horizontal bars per figure, one panel per unit; targets as ticks."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: chart skipped (pip install matplotlib).")
        return False
    units = [u for u in ("x", "ms", "us/step") if any(r["unit"] == u for r in rows)]
    sizes = [sum(r["unit"] == u for r in rows) for u in units]
    fig, axes = plt.subplots(
        len(units),
        1,
        figsize=(12, 1.2 + 0.32 * sum(sizes) + 0.6 * len(units)),
        gridspec_kw={"height_ratios": sizes},
        squeeze=False,
    )
    colors = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    for ax, unit in zip(axes[:, 0], units, strict=True):
        mine = [r for r in rows if r["unit"] == unit and r["value"] == r["value"]]
        ys = range(len(mine))
        ax.barh(ys, [r["value"] for r in mine], color=[colors[r["ok"]] for r in mine])
        for y, r in zip(ys, mine, strict=True):
            limit = _limit(r["target"])
            if limit is not None:
                ax.plot([limit, limit], [y - 0.4, y + 0.4], color="black", lw=2)
            ax.text(r["value"], y, f" {_fmt(r['value'])}", va="center", fontsize=7)
        ax.set_yticks(list(ys), [r["figure"] for r in mine], fontsize=7)
        ax.invert_yaxis()
        if unit != "x":
            ax.set_xscale("log")
        ax.set_xlabel(
            {
                "x": "ratio (black tick: target)",
                "ms": "ms, log scale",
                "us/step": "us per step, log scale",
            }[unit],
            fontsize=8,
        )
    fig.suptitle(
        f"asyncsess benchmarks - {info['cpu']} x{info['cores']}, Python "
        f"{info['python']}, TF {info['tensorflow']}, {info['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def merge_rerun(
    previous: dict[str, Any],
    rows: list[dict[str, Any]],
    timings: dict[str, Any],
    info: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """*previous* results with the benchmarks in *timings* replaced by *rows*.

    Rows keep their place; the machine info stays the full run's, with each
    re-run listed under ``reruns``.
    """
    fresh: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        fresh.setdefault(r["benchmark"], []).append(r)
    merged: list[dict[str, Any]] = []
    for r in previous["rows"]:
        label = r.get("benchmark")
        if label not in timings:
            merged.append(r)
        elif label in fresh:
            merged += fresh.pop(label)
    for left in fresh.values():
        merged += left
    kept = dict(previous["machine"])
    rerun = {k: info[k] for k in ("date", "load_at_start", "load_at_end", "seconds")}
    kept["reruns"] = [*kept.get("reruns", []), {"benchmarks": sorted(timings), **rerun}]
    return merged, {**previous["benchmarks"], **timings}, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (< 2 min)")
    parser.add_argument("--only", nargs="*", help="benchmark modules, e.g. bench_step")
    args = parser.parse_args(argv)
    names = modules()
    if args.only:
        names = [
            n for n in names if n in args.only or n.removeprefix("bench_") in args.only
        ]
    info = machine()
    info["load_at_start"] = load()
    start = time.perf_counter()
    rows, timings = run_all(names, args.quick)
    info["load_at_end"] = load()
    info["seconds"] = round(time.perf_counter() - start, 1)
    print("== all figures")
    print_table(rows)
    stem = "quick" if args.quick else "latest"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stem}.json"
    if args.only and out.exists():  # re-ran some: keep the others' figures
        rows, timings, info = merge_rerun(
            json.loads(out.read_text()), rows, timings, info
        )
        print("== all figures, with the re-run ones replaced")
        print_table(rows)
    report = {"quick": args.quick, "machine": info, "benchmarks": timings, "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    png = RESULTS / f"{stem}.png"
    if chart(rows, info, png):
        print(f"wrote {png}")
    print(
        f"{info['seconds']:.0f} s in all; load {info['load_at_start'][0]:.2f} -> "
        f"{info['load_at_end'][0]:.2f} on {info['cores']} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
