"""examples/langgraph_support_memory.py runs as a program: the faulty run prints the stale
memory finding, the correct twin prints none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "langgraph_support_memory.py"


def _run(*args: str, workdir: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_faulty_run_flags_the_stale_memory(tmp_path: Path) -> None:
    out = _run(workdir=tmp_path / "faulty")
    assert "STALE READ of langgraph:customer-42/tier [error]" in out, out
    assert "agents: responder, memory-curator" in out, out
    assert "a 15 EUR fee (standard customer)" in out, out
    assert "=> 1 anomaly:" in out, out
    assert (tmp_path / "faulty" / "checkpoints.db").exists()


def test_correct_twin_has_no_findings(tmp_path: Path) -> None:
    out = _run("--correct", workdir=tmp_path / "correct")
    assert "no fee (premium customer)" in out, out
    assert "=> no anomalies" in out, out
    assert "STALE" not in out, out
