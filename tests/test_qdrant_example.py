"""examples/rag_memory_qdrant.py as a user runs it: plain `python` and under the launcher.

`check_example` is shared by the Chroma and LanceDB example tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")

STALE = (
    "FINDING stale_read memory/1 observed=n:1 expected=n:2 "
    "agents=responder,memory-curator severity=error"
)


def run_example(script: str, tmp_path: Path, *args: str, launcher: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none")
    env.update(OTEL_LOGS_EXPORTER="none", ANONYMIZED_TELEMETRY="False")
    prefix = [str(LAUNCHER), "--service_name", "rag"] if launcher else []
    result = subprocess.run(
        [*prefix, sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_example(script: str, read_span: str, tmp_path: Path) -> None:
    """The stale retrieval is flagged, its correct twin is not, with and without the launcher."""
    out = run_example(script, tmp_path)
    assert "responder retrieved 'customer prefers email'" in out
    assert out.count("FINDING") == 1 and STALE in out, out

    out = run_example(script, tmp_path, "--correct")
    assert "responder retrieved 'customer prefers phone calls'" in out
    assert "FINDING" not in out and "no state anomalies" in out

    out = run_example(script, tmp_path, launcher=True)
    assert out.count("FINDING") == 1 and STALE in out, out
    assert '"name": "agentstate.anomaly stale_read"' in out  # the console exporter's span
    assert f'"name": "{read_span}"' in out
    out = run_example(script, tmp_path, "--correct", launcher=True)
    assert "FINDING" not in out and '"agentstate.anomaly.kind"' not in out
    assert f'"name": "{read_span}"' in out


def test_qdrant_example(tmp_path: Path) -> None:
    check_example("rag_memory_qdrant.py", "query_points memories_index", tmp_path)
