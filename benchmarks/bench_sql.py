"""The SQL analysis per execution: the cached cost applications pay on every statement, and the
uncached cost of a statement's first execution (fast path, sqlglot), per dialect.

Statements are the SQL corpus (tests/sql_corpus/, what SQLAlchemy, Django and LangGraph emit).
`--baseline FILE` also times an older single-file `_sql.py` (e.g. from `git show`) the same way.

    .venv/bin/python benchmarks/bench_sql.py [--baseline /tmp/_sql_old.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "sql_corpus"


def corpus() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for dialect in ("sqlite", "postgresql", "mysql"):
        rows = [json.loads(line) for line in (CORPUS / f"{dialect}.jsonl").read_text().splitlines()]
        out[dialect] = list(dict.fromkeys((r["sql"], r["paramstyle"]) for r in rows))
    return out


def per_call(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median seconds per call of `fn` over `repeat` timed loops (about 50 ms each)."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start > 0.05:
            break
        loops *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def each(statements: list[str], analyse: Callable[[str], Any]) -> Callable[[], None]:
    def run() -> None:
        for sql in statements:
            analyse(sql)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, help="an older _sql.py to time the same way")
    args = parser.parse_args()
    from otel_agent_state.instrumentation import _sql, _sqlglot
    from otel_agent_state.instrumentation.sqlalchemy import normalise

    texts = corpus()
    print(f"sqlglot: {'available' if _sqlglot.AVAILABLE else 'missing'}")
    print("| dialect | statements | cached analyse | fast path (uncached) | sqlglot (uncached) |")
    print("|---|---|---|---|---|")
    for dialect, rows in texts.items():
        statements = [sql for sql, _ in rows]
        n = len(statements)
        for sql in statements:
            _sql.analyse(sql, dialect)  # warm the cache
        cached = per_call(each(statements, lambda s, d=dialect: _sql.analyse(s, d))) / n
        fast = per_call(each(statements, lambda s, d=dialect: _sql.fast_path(s, d)), 3) / n
        deep = per_call(each(statements, lambda s, d=dialect: _sqlglot.analyse(s, d)), 3) / n
        print(
            f"| {dialect} | {n} | {cached * 1e9:.0f} ns | {fast * 1e6:.1f} µs"
            f" | {deep * 1e6:.1f} µs |"
        )
    rows = [r for r in texts["postgresql"] if r[1] != "qmark"]
    raw = normalise.__wrapped__
    uncached = per_call(lambda: [raw(sql, style) for sql, style in rows]) / len(rows)
    for sql, style in rows:
        normalise(sql, style)
    hit = per_call(lambda: [normalise(sql, style) for sql, style in rows]) / len(rows)
    print(f"SQLAlchemy normalise(): {uncached * 1e6:.1f} µs uncached, {hit * 1e9:.0f} ns cached")
    if args.baseline:
        spec = importlib.util.spec_from_file_location("_sql_baseline", args.baseline)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old
        spec.loader.exec_module(old)
        for dialect, rows in texts.items():
            statements = [sql for sql, _ in rows]
            d = "postgresql" if dialect == "postgresql" else "sqlite"
            for sql in statements:
                old.analyse(sql, d)
            cached = per_call(each(statements, lambda s, d=d: old.analyse(s, d))) / len(rows)
            uncached = per_call(
                each(statements, lambda s, d=d: old._analyse_text.__wrapped__(s, d)), 3
            ) / len(rows)
            print(
                f"baseline {dialect}: cached {cached * 1e9:.0f} ns,"
                f" uncached {uncached * 1e6:.1f} µs"
            )


if __name__ == "__main__":
    main()
