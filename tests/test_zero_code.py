"""Zero-code use (SPEC §2), end to end: the real `opentelemetry-instrument` launcher with
opentelemetry-distro's configurator and the console exporter, on an application that
imports nothing of ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")

APP = textwrap.dedent(
    """
    import sqlite3, sys
    from opentelemetry import trace

    tracer = trace.get_tracer("my.agents")
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.executescript('''
        CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score, version);
        CREATE TABLE score_cache (customer_id INTEGER PRIMARY KEY, score, version);
        INSERT INTO credit_scores VALUES (42, 680, 1);
        INSERT INTO score_cache VALUES (42, 680, 1);
    ''')

    def agent_span(name):
        return tracer.start_as_current_span(
            "invoke_agent " + name,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name},
        )

    with tracer.start_as_current_span("credit-approval"):
        with agent_span("credit-scorer"):
            conn.execute(
                "UPDATE credit_scores SET score = 750, version = version + 1 WHERE customer_id = ?",
                (42,),
            )
            if len(sys.argv) > 2 and sys.argv[2] == "correct":
                conn.execute("DELETE FROM score_cache WHERE customer_id = ?", (42,))
        with agent_span("risk-assessor"):
            row = conn.execute(
                "SELECT score, version FROM score_cache WHERE customer_id = ?", (42,)
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT score, version FROM credit_scores WHERE customer_id = ?", (42,)
                ).fetchone()
            print("APP-SAW", row[0], flush=True)
    """
)

RULES = textwrap.dedent(
    """
    [[facts]]
    name = "credit_score"
    keys = [
      "sqlite:*/credit_scores/{customer_id}",
      { pattern = "sqlite:*/score_cache/{customer_id}", tier = "cache" },
    ]
    version = { column = "version" }
    """
)


def _spans(stdout: str) -> list[dict[str, Any]]:
    """The console exporter prints one JSON object per span, pretty-printed back to back."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while True:
        start = stdout.find("{", index)
        if start < 0:
            return spans
        try:
            obj, index = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            spans.append(obj)


def _launch(tmp_path: Path, *app_args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "facts.toml").write_text(RULES)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    run_env.update(
        OTEL_AGENTSTATE_CONFIG=str(tmp_path / "facts.toml"),
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    run_env.update(env)
    return subprocess.run(
        [
            str(LAUNCHER),
            "--service_name",
            "agents",
            sys.executable,
            str(tmp_path / "app.py"),
            str(tmp_path / "app.db"),
            *app_args,
        ],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_launcher_flags_the_stale_cache_read(tmp_path: Path) -> None:
    result = _launch(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "APP-SAW 680" in result.stdout
    spans = _spans(result.stdout)
    anomalies = [s for s in spans if s["name"] == "agentstate.anomaly stale_read"]
    assert len(anomalies) == 1, [s["name"] for s in spans]
    [anomaly] = anomalies
    attrs = anomaly["attributes"]
    assert attrs["agentstate.anomaly.fact"] == "credit_score/42"
    assert attrs["agentstate.anomaly.observed_version"] == "n:1"
    assert attrs["agentstate.anomaly.expected_version"] == "n:2"
    assert attrs["agentstate.anomaly.agents"] == ["risk-assessor", "credit-scorer"]
    assert attrs["agentstate.anomaly.severity"] == "warning"  # no decision, no write after it

    cache_reads = [
        s
        for s in spans
        if s["attributes"].get("agentstate.read.facts") == ["credit_score/42"]
        and s["attributes"].get("agentstate.tier") == "cache"
    ]
    assert len(cache_reads) == 1
    assert anomaly["parent_id"] == cache_reads[0]["context"]["span_id"]
    assert cache_reads[0]["attributes"]["gen_ai.agent.name"] == "risk-assessor"
    assert cache_reads[0]["attributes"]["db.system.name"] == "sqlite"
    assert cache_reads[0]["resource"]["attributes"]["service.name"] == "agents"
    [update] = [
        s for s in spans if s["attributes"].get("agentstate.write.facts") == ["credit_score/42"]
    ]
    assert [link["context"]["span_id"] for link in anomaly["links"]] == [
        update["context"]["span_id"]
    ]
    risk = [s for s in spans if s["name"] == "invoke_agent risk-assessor"]
    assert len(risk) == 1


def test_launcher_correct_workflow_has_no_anomaly(tmp_path: Path) -> None:
    result = _launch(tmp_path, "correct")
    assert result.returncode == 0, result.stderr
    assert "APP-SAW 750" in result.stdout
    spans = _spans(result.stdout)
    assert any(s["attributes"].get("agentstate.op") == "read" for s in spans)
    assert [s for s in spans if s["name"].startswith("agentstate.anomaly")] == []


def test_instrumentation_can_be_disabled_by_entry_point_name(tmp_path: Path) -> None:
    result = _launch(tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="agentstate_sqlite3")
    assert result.returncode == 0, result.stderr
    spans = _spans(result.stdout)
    assert [s["name"] for s in spans if s["name"].startswith("invoke_agent")]
    assert not any("agentstate.op" in s["attributes"] for s in spans)


def test_bad_config_is_a_clear_error_and_the_app_still_runs(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[facts]]\nname = "x"\nkeys = ["no-store-prefix"]\n')
    result = _launch(tmp_path, OTEL_AGENTSTATE_CONFIG=str(tmp_path / "bad.toml"))
    assert result.returncode == 0
    assert "APP-SAW 680" in result.stdout
    assert f"{tmp_path / 'bad.toml'}:3: rule 'x': key pattern 'no-store-prefix'" in result.stderr


def test_we_register_no_configurator_and_distro_stays_the_one() -> None:
    configurators = {ep.value for ep in entry_points(group="opentelemetry_configurator")}
    assert configurators == {"opentelemetry.distro:OpenTelemetryConfigurator"}
    ours = {
        ep.name: ep.value
        for ep in entry_points(group="opentelemetry_instrumentor")
        if ep.value.startswith("otel_agent_state")
    }
    assert ours == {
        "agentstate_sqlite3": "otel_agent_state.instrumentation.sqlite3:SQLite3Instrumentor"
    }
    hooks = [ep.value for ep in entry_points(group="opentelemetry_post_instrument")]
    assert "otel_agent_state.autoinstrument:install_processor" in hooks
