"""Frontier propagation between two real processes on loopback, both started with the
zero-code launcher (`opentelemetry-instrument`) and OTEL_PROPAGATORS=...,agentstate:

- planner (tests/apps/planner.py): commits credit_score/42 = n:2 through sqlite3 (our
  instrumentation), then calls the agent service with requests or httpx (contrib
  instrumentations, which inject with the global propagator);
- agent service (tests/apps/agent_service.py): a wsgiref server behind contrib's WSGI
  middleware (which extracts with the global propagator); its analyst reads the score
  from a lagging replica (n:1, stale) or from the primary (n:2, correct).

The stale read must be flagged live in the agent service's own spans (console exporter).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

APPS = Path(__file__).resolve().parent / "apps"
LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")


def _spans(stdout: str) -> list[dict[str, Any]]:
    """Span objects from the console exporter's output (indented JSON, back to back)."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (start := stdout.find("{", index)) >= 0:
        try:
            obj, index = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            spans.append(obj)
    return spans


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(
        OTEL_PROPAGATORS="tracecontext,baggage,agentstate",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_AGENTSTATE_CONFIG=str(APPS / "frontier_facts.toml"),
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlalchemy",
    )
    env.update(extra)
    return env


def _db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score, version);"
        "INSERT INTO credit_scores VALUES (42, 680, 1);"
    )
    conn.commit()
    conn.close()
    return path


def _run_pair(
    tmp_path: Path,
    *,
    read_from: str,
    client: str = "requests",
    service_env: dict[str, str] | None = None,
    planner_env: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Run both processes; (agent service spans, planner spans, planner trace id)."""
    primary = _db(tmp_path / "primary.db")
    replica = _db(tmp_path / "replica.db")  # never catches up
    port_file = tmp_path / "port"
    service = subprocess.Popen(
        [
            str(LAUNCHER),
            "--service_name",
            "agent-service",
            sys.executable,
            str(APPS / "agent_service.py"),
            str(replica if read_from == "replica" else primary),
            str(port_file),
            "1",
        ],
        cwd=tmp_path,
        env=_env(**(service_env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                _, err = service.communicate(timeout=10)
                pytest.fail(f"agent service did not start: {err}")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/score/42"
        planner = subprocess.run(
            [
                str(LAUNCHER),
                "--service_name",
                "planner",
                sys.executable,
                str(APPS / "planner.py"),
                str(primary),
                url,
                client,
            ],
            cwd=tmp_path,
            env=_env(**(planner_env or {})),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert planner.returncode == 0, planner.stderr
        out, err = service.communicate(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate()
    assert service.returncode == 0, err
    said = [line for line in planner.stdout.splitlines() if line.startswith("agent service said")]
    expected = '"version": 1' if read_from == "replica" else '"version": 2'
    assert said and expected in said[0], planner.stdout
    trace_id = next(
        line.split()[1] for line in planner.stdout.splitlines() if line.startswith("trace ")
    )
    return _spans(out), _spans(planner.stdout), trace_id


def _hex(value: str) -> str:
    return value.removeprefix("0x")


def _anomalies(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith("agentstate.anomaly")]


def _read_span(spans: list[dict[str, Any]]) -> dict[str, Any]:
    [read] = [
        s for s in spans if s["attributes"].get("agentstate.read.facts") == ["credit_score/42"]
    ]
    return read


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_stale_read_of_an_upstream_write_is_flagged_downstream(tmp_path: Path, client: str) -> None:
    service_spans, planner_spans, trace_id = _run_pair(tmp_path, read_from="replica", client=client)
    [write] = [
        s
        for s in planner_spans
        if s["attributes"].get("agentstate.write.facts") == ["credit_score/42"]
    ]
    assert write["attributes"]["agentstate.write.versions"] == ["n:2"]
    read = _read_span(service_spans)
    assert read["attributes"]["agentstate.read.versions"] == ["n:1"]
    assert _hex(read["context"]["trace_id"]) == trace_id  # one trace across both processes

    [anomaly] = _anomalies(service_spans)
    attrs = anomaly["attributes"]
    assert anomaly["name"] == "agentstate.anomaly stale_read"
    assert _hex(anomaly["context"]["trace_id"]) == trace_id
    assert anomaly["parent_id"] == read["context"]["span_id"]
    assert attrs["agentstate.anomaly.fact"] == "credit_score/42"
    assert attrs["agentstate.anomaly.observed_version"] == "n:1"
    assert attrs["agentstate.anomaly.expected_version"] == "n:2"
    assert attrs["agentstate.anomaly.agents"] == ["analyst", "planner"]
    assert attrs["agentstate.anomaly.lag_ms"] >= 0
    # Evidence: the planner's write span, exported by the other process, same trace.
    links = [link["context"] for link in anomaly["links"]]
    assert [(_hex(c["trace_id"]), c["span_id"]) for c in links] == [
        (trace_id, write["context"]["span_id"])
    ]
    # The span event goes on the still-open request span (the agent span had just ended).
    [server] = [s for s in service_spans if s["kind"] == "SpanKind.SERVER"]
    [event] = [e for e in server["events"] if e["name"] == "agentstate.anomaly"]
    assert event["attributes"]["agentstate.anomaly.fact"] == "credit_score/42"
    # The upstream process saw nothing wrong on its own.
    assert _anomalies(planner_spans) == []


def test_correct_twin_reading_the_new_version_is_not_flagged(tmp_path: Path) -> None:
    service_spans, planner_spans, _ = _run_pair(tmp_path, read_from="primary")
    assert _read_span(service_spans)["attributes"]["agentstate.read.versions"] == ["n:2"]
    assert _anomalies(service_spans) == []
    assert _anomalies(planner_spans) == []


def test_read_within_the_clock_skew_tolerance_is_not_flagged(tmp_path: Path) -> None:
    """The same stale read, but the downstream allows 10 minutes of clock skew: the upstream
    commit may, on the downstream's clock, not have happened before the read started."""
    service_spans, _, _ = _run_pair(
        tmp_path,
        read_from="replica",
        service_env={"OTEL_AGENTSTATE_CLOCK_SKEW_MS": "600000"},
    )
    assert _read_span(service_spans)["attributes"]["agentstate.read.versions"] == ["n:1"]
    assert _anomalies(service_spans) == []


def test_without_the_propagator_the_downstream_cannot_know(tmp_path: Path) -> None:
    """Control: with only the W3C propagators the trace is shared but the frontier is not,
    so the live processor downstream has nothing to compare with (`check`/`serve` still
    see the whole trace)."""
    plain = {"OTEL_PROPAGATORS": "tracecontext,baggage"}
    service_spans, _, trace_id = _run_pair(
        tmp_path, read_from="replica", service_env=plain, planner_env=plain
    )
    assert _hex(_read_span(service_spans)["context"]["trace_id"]) == trace_id
    assert _anomalies(service_spans) == []
