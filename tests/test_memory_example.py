"""examples/memory_layers.py as a user runs it: plain `python` for each layer and workflow,
and once under the launcher (which loads every agentstate_* instrumentor by entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "memory_layers.py"
LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")


def run_example(tmp_path: Path, *args: str, launcher: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none")
    env.update(OTEL_LOGS_EXPORTER="none", MEM0_TELEMETRY="False", MEM0_DIR=str(tmp_path / "m0"))
    prefix = [str(LAUNCHER), "--service_name", "memory"] if launcher else []
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


FACTS = {
    "langgraph-store": "langgraph-store:users/u-42/memories/contact",
    "mem0": "mem0:agent_memories/",
    "milvus": "contact/7",
}


@pytest.mark.parametrize("layer", sorted(FACTS))
def test_stale_memory_and_its_twin(layer: str, tmp_path: Path) -> None:
    out = run_example(tmp_path, "--layer", layer)
    assert "responder read 'customer prefers email'" in out
    assert out.count("FINDING") == 1, out
    assert f"FINDING stale_read {FACTS[layer]}" in out, out
    assert "agents=responder,memory-curator severity=error" in out

    out = run_example(tmp_path, "--layer", layer, "--correct")
    assert "responder read 'customer prefers phone calls'" in out
    assert "FINDING" not in out and "no state anomalies" in out


@pytest.mark.parametrize("layer", sorted(FACTS))
def test_lost_update_and_its_twin(layer: str, tmp_path: Path) -> None:
    out = run_example(tmp_path, "--layer", layer, "--workflow", "lost-update")
    assert "now reads 'customer prefers email; noted by bob'" in out
    assert out.count("FINDING") == 1 and f"FINDING lost_update {FACTS[layer]}" in out, out

    out = run_example(tmp_path, "--layer", layer, "--workflow", "lost-update", "--correct")
    assert "noted by alice; noted by bob" in out and "no state anomalies" in out


def test_under_the_launcher(tmp_path: Path) -> None:
    out = run_example(tmp_path, "--layer", "mem0", launcher=True)
    assert out.count("FINDING") == 1 and f"FINDING stale_read {FACTS['mem0']}" in out, out
