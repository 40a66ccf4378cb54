"""The benchmark runner works end to end (tiny sizes; no figure is asserted: speed is
measured by benchmarks/run.py, never by tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _runner(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`benchmarks/run.py` with these options, from the repository root."""
    return subprocess.run(
        [sys.executable, "benchmarks/run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_benchmark_runner_prints_a_table_and_writes_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = _runner("--quick", "--only", "sqlite3", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "| sqlite3 SELECT by primary key: ours vs contrib |" in result.stdout
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks")
    assert (ROOT / "benchmarks" / "analysis.md").read_text(encoding="utf-8") in text
    # A later --only run refreshes its own rows and keeps the others, with their dates.
    result = _runner("--quick", "--only", "exporter_down", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "| sqlite3 SELECT" not in result.stdout
    text = out.read_text(encoding="utf-8")
    assert "| sqlite3 SELECT by primary key: ours vs contrib |" in text
    assert "| app speed with the collector unreachable" in text
    assert "exporter_down 20" in text and "sqlite3 20" in text
    assert (tmp_path / "BENCHMARKS.json").exists()


def test_unknown_benchmark_names_are_a_clear_error() -> None:
    result = _runner("--only", "nope", "--no-write", timeout=60)
    assert result.returncode != 0
    assert "unknown benchmark(s) ['nope']" in result.stderr
