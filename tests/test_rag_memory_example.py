"""examples/rag_memory.py as a user runs it, for each store: plain `python` and under the
launcher (which loads every agentstate_* instrumentor by entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rag_memory.py"
LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")

STALE = (
    "FINDING stale_read memory/1 observed=n:1 expected=n:2 "
    "agents=responder,memory-curator severity=error"
)


def run_example(tmp_path: Path, *args: str, launcher: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none")
    env.update(OTEL_LOGS_EXPORTER="none", ANONYMIZED_TELEMETRY="False")
    prefix = [str(LAUNCHER), "--service_name", "rag"] if launcher else []
    result = subprocess.run(
        [*prefix, sys.executable, str(EXAMPLE), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("store", "read_span"),
    [
        ("qdrant", "query_points memories_index"),
        ("chroma", "query memories_index"),
        ("lancedb", "search memories_index"),
    ],
)
def test_rag_memory_example(store: str, read_span: str, tmp_path: Path) -> None:
    """The stale retrieval is flagged, its correct twin is not, with and without the launcher."""
    out = run_example(tmp_path, "--store", store)
    assert "responder retrieved 'customer prefers email'" in out
    assert out.count("FINDING") == 1 and STALE in out, out
    assert f"from the index ({store})" in out, out

    out = run_example(tmp_path, "--store", store, "--correct")
    assert "responder retrieved 'customer prefers phone calls'" in out
    assert "FINDING" not in out and "no state anomalies" in out

    out = run_example(tmp_path, "--store", store, launcher=True)
    assert out.count("FINDING") == 1 and STALE in out, out
    assert '"name": "agentstate.anomaly stale_read"' in out  # the console exporter's span
    assert f'"name": "{read_span}"' in out
    out = run_example(tmp_path, "--store", store, "--correct", launcher=True)
    assert "FINDING" not in out and '"agentstate.anomaly.kind"' not in out
    assert f'"name": "{read_span}"' in out


def test_rag_memory_example_needs_a_known_store(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--store", "pinecone"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "invalid choice: 'pinecone'" in result.stderr
