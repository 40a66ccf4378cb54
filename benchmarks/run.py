"""Run every benchmarks/bench_*.py, print one table and rewrite BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py            # full run (minutes)
    .venv/bin/python benchmarks/run.py --quick    # small sizes, for a smoke check
    .venv/bin/python benchmarks/run.py --only processor,sqlite3   # keeps the other rows
    .venv/bin/python benchmarks/run.py --render   # after editing analysis.md

Each bench module exposes `run(quick: bool) -> list[Row | dict]`. Every figure is a ratio
against a baseline measured side by side in the same run: absolute times on a small, shared
machine mean little, ratios do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Row  # noqa: E402


def _modules(only: set[str] | None) -> list[str]:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    if only:
        unknown = only - set(names)
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}")
        names = [n for n in names if n in only]
    return names


def _row(item: Any) -> Row:
    return item if isinstance(item, Row) else Row(**item)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _table(rows: list[tuple[str, Row]]) -> list[str]:
    lines = [
        "| benchmark | ours | baseline | unit | ratio | target | met | note |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for _, r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.benchmark} | {_fmt(r.ours)} | {_fmt(r.baseline)} | {r.unit} | {ratio} "
            f"| {r.target} | {met} | {r.note} |"
        )
    return lines


def _child(name: str, quick: bool) -> int:
    """Run one bench module and print its rows as JSON on stdout (progress on stderr)."""
    module = importlib.import_module(f"bench_{name}")
    rows = [_row(item).as_dict() for item in module.run(quick)]
    sys.stdout.write(json.dumps(rows))
    sys.stdout.flush()
    os._exit(0)  # exporter threads retrying a dead collector must not delay the exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke check)")
    parser.add_argument("--only", help="comma-separated benchmark names (e.g. processor,redis)")
    parser.add_argument(
        "-o",
        "--output",
        default=str(HERE.parent / "BENCHMARKS.md"),
        help="markdown file to rewrite (its rows are kept in a .json file beside it)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite the markdown from BENCHMARKS.json and analysis.md",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.quick)
    if args.render:
        _write(Path(args.output), args.quick, [], {}, [])
        return 0
    only = set(args.only.split(",")) if args.only else None
    rows: list[tuple[str, Row]] = []
    failures: list[str] = []
    measured: dict[str, str] = {}
    for name in _modules(only):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        # Each module in its own process: peak memory and interpreter state are its own.
        child = subprocess.run(
            [sys.executable, __file__, "--child", name] + (["--quick"] if args.quick else []),
            stdout=subprocess.PIPE,
            text=True,
        )
        if child.returncode == 0:
            rows.extend((name, Row(**item)) for item in json.loads(child.stdout))
            measured[name] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
        else:
            failures.append(f"{name}: exit status {child.returncode} (see the output above)")
        elapsed = time.perf_counter() - started
        print(f"[bench] {name} done in {elapsed:.1f}s", file=sys.stderr, flush=True)
    print("\n".join(_table(rows)))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if not args.no_write:
        _write(Path(args.output), args.quick, rows, measured, failures)
    return 1 if failures else 0


def _write(
    output: Path,
    quick: bool,
    rows: list[tuple[str, Row]],
    measured: dict[str, str],
    failures: list[str],
) -> None:
    """Rewrite BENCHMARKS.md. The rows of every module are kept in BENCHMARKS.json next to it,
    so `--only` refreshes its modules' rows and keeps the others' (with their dates)."""
    store = output.with_name("BENCHMARKS.json")
    results: dict[str, Any] = {}
    if store.exists():
        results = json.loads(store.read_text(encoding="utf-8"))
    for name, when in measured.items():
        results[name] = {
            "measured": when,
            "quick": quick,
            "rows": [r.as_dict() for n, r in rows if n == name],
        }
    store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    every = [(name, Row(**item)) for name in sorted(results) for item in results[name]["rows"]]
    machine = f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"
    dates = "; ".join(
        f"{name} {entry['measured']}" + (" (--quick)" if entry.get("quick") else "")
        for name, entry in sorted(results.items())
    )
    header = [
        "# Benchmarks",
        "",
        f"Generated by `.venv/bin/python benchmarks/run.py` ({machine}); each module's rows "
        f"date from its last run: {dates}. Every ratio is ours / baseline measured side by "
        "side in the same run (alternating rounds, medians); lower is better for times, "
        "higher for rates. The machine is a small shared VM whose speed drifts by up to 2x "
        "between runs: compare ratios, not absolute figures across runs.",
        "",
    ]
    if failures:
        header += ["Benchmarks that failed in the last run: " + "; ".join(failures), ""]
    analysis = (HERE / "analysis.md").read_text(encoding="utf-8")  # why, per target
    output.write_text("\n".join(header + _table(every)) + "\n\n" + analysis, encoding="utf-8")
    print(f"[bench] wrote {output} and {store.name}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
