"""Zero-code use (SPEC §2), end to end: the real `opentelemetry-instrument` launcher with
opentelemetry-distro's configurator and the console exporter, on an application that
imports nothing of ours."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
APP = EXAMPLES / "credit_agents_sqlite.py"
RULES = EXAMPLES / "credit_facts.toml"


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
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    run_env.update(
        OTEL_AGENTSTATE_CONFIG=str(RULES),
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
            str(APP),
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
    assert "risk-assessor saw score 680" in result.stdout
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
    assert "risk-assessor saw score 750" in result.stdout
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
    assert "risk-assessor saw score 680" in result.stdout
    assert f"{tmp_path / 'bad.toml'}:3: rule 'x': key pattern 'no-store-prefix'" in result.stderr


def test_we_register_no_configurator_and_distro_stays_the_one() -> None:
    configurators = {ep.value for ep in entry_points(group="opentelemetry_configurator")}
    assert configurators == {"opentelemetry.distro:OpenTelemetryConfigurator"}
    ours = {
        ep.name: ep.value
        for ep in entry_points(group="opentelemetry_instrumentor")
        if ep.value.startswith("otel_agent_state")
    }
    # One entry point per public module under instrumentation/, named agentstate_<module>,
    # each a BaseInstrumentor (so OTEL_PYTHON_DISABLED_INSTRUMENTATIONS can switch it off).
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )

    import otel_agent_state.instrumentation as package

    modules = {
        p.stem for p in Path(package.__file__).parent.glob("*.py") if not p.stem.startswith("_")
    }
    assert set(ours) == {f"agentstate_{m}" for m in modules}
    for name, value in ours.items():
        module, _, attr = value.partition(":")
        assert module == f"otel_agent_state.instrumentation.{name.removeprefix('agentstate_')}"
        assert issubclass(getattr(importlib.import_module(module), attr), BaseInstrumentor)
    hooks = [ep.value for ep in entry_points(group="opentelemetry_post_instrument")]
    assert "otel_agent_state.autoinstrument:install_processor" in hooks


ABANDONED = """
import sqlite3, sys
from opentelemetry import trace

tracer = trace.get_tracer("my.agents")
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.executescript(
    "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER);"
    "INSERT INTO accounts VALUES ('A', 1000);"
)
span = tracer.start_span(
    "invoke_agent payments",
    attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "payments"},
)
with trace.use_span(span, end_on_exit=False):
    conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 'A'")
print("exiting with the agent span still open", flush=True)
"""


def test_scope_open_at_process_exit_is_reported_before_exporters_stop(tmp_path: Path) -> None:
    app = tmp_path / "abandoned.py"
    app.write_text(ABANDONED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(
        OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"
    )
    result = subprocess.run(
        [str(LAUNCHER), sys.executable, str(app), str(tmp_path / "app.db")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [orphan] = [s for s in _spans(result.stdout) if s["name"].startswith("agentstate.anomaly")]
    attrs = orphan["attributes"]
    assert attrs["agentstate.anomaly.kind"] == "orphaned_mutation"
    assert attrs["agentstate.anomaly.fact"] == "sqlite:app/accounts/A"
    assert attrs["agentstate.anomaly.agents"] == ["payments"]
    assert "never ended" in attrs["agentstate.anomaly.summary"]
