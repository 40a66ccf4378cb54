"""`otel-agent-state demo`, run as a user runs it: plainly and under the launcher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
CLI = BIN / "otel-agent-state"


def _env(**extra: str) -> dict[str, str]:
    # AGENTSTATE_REDIS_URL / _POSTGRES_DSN would move the demo onto servers (test_demo_servers).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PYTHONPATH", "AGENTSTATE_"))
    }
    env.update(extra)
    return env


def _sections(stdout: str) -> tuple[str, str]:
    faulty, _, correct = stdout.partition("correct workflow:")
    return faulty, correct


def test_demo_flags_each_failure_and_not_the_correct_workflow() -> None:
    result = subprocess.run(
        [str(CLI), "demo"], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    faulty, correct = _sections(result.stdout)
    assert "=> 4 anomalies:" in faulty
    titles = re.findall(r"^\s+\d\. ([A-Z ]+) of (\S+) \[(\w+)\]$", faulty, re.MULTILINE)
    assert sorted(titles) == sorted(
        [
            ("STALE READ", "credit_score/42", "error"),
            ("STALE READ", "credit_score/42", "error"),
            ("DIVERGENT VIEW", "credit_score/42", "error"),
            ("ORPHANED MUTATION", "account/A", "error"),
        ]
    )
    assert "risk-assessor read credit_score/42 at n:1 from the cache" in faulty
    assert "limit-setter read credit_score/42 at n:1 from the replica" in faulty
    assert "credit-scorer had committed n:2" in faulty
    assert "=> no anomalies" in correct
    assert "risk-assessor  read score 750 from the primary (cache miss)" in correct


def test_demo_runs_one_workflow_on_request(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLI), "demo", "--run", "correct", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "faulty workflow:" not in result.stdout
    assert "=> no anomalies" in result.stdout
    assert (tmp_path / "app.db").exists() and (tmp_path / "replica.db").exists()


def test_demo_under_the_launcher_exports_anomaly_spans_to_the_console() -> None:
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), "--service_name", "credit-demo", str(CLI), "demo"],
        capture_output=True,
        text=True,
        env=_env(
            OTEL_TRACES_EXPORTER="console",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        ),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "=> 4 anomalies:" in result.stdout
    decoder = json.JSONDecoder()
    kinds, index = [], 0
    while (start := result.stdout.find('{\n    "name"', index)) >= 0:
        span, index = decoder.raw_decode(result.stdout, start)
        if span["name"].startswith("agentstate.anomaly"):
            kinds.append(span["attributes"]["agentstate.anomaly.kind"])
            assert span["resource"]["attributes"]["service.name"] == "credit-demo"
    assert sorted(kinds) == ["divergent_view", "orphaned_mutation", "stale_read", "stale_read"]


def test_help_teaches() -> None:
    result = subprocess.run(
        [str(CLI), "demo", "--help"], capture_output=True, text=True, env=_env(), check=False
    )
    assert result.returncode == 0
    assert "opentelemetry-instrument otel-agent-state demo" in result.stdout
    assert "--redis-url URL" in result.stdout and "--postgres-dsn DSN" in result.stdout
    assert "$AGENTSTATE_REDIS_URL" in result.stdout
    # The database the README names (and the test servers have).
    assert "postgresql://postgres@127.0.0.1:5432/test" in result.stdout
    assert "5432/postgres" not in result.stdout
    bare = subprocess.run([str(CLI)], capture_output=True, text=True, env=_env(), check=False)
    assert bare.returncode == 2
    assert "opentelemetry-instrument --service_name planner" in bare.stdout


BAD_RULE = '[[facts]]\nname = "b"\nconsistency = "strong"\nkeys = ["sqlite:*/t/{id}"]\n'


def _launch(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "facts.toml"
    config.write_text(BAD_RULE)
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(
            OTEL_AGENTSTATE_CONFIG=str(config),
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlalchemy",
        ),
        timeout=120,
        check=False,
    )


def test_a_bad_config_under_the_launcher_is_one_line(tmp_path: Path) -> None:
    """An application keeps running, unmonitored, with one line saying why."""
    app = _launch(tmp_path, str(BIN / "python"), "-c", "print('app ran')")
    assert app.returncode == 0 and app.stdout == "app ran\n"
    lines = app.stderr.strip().splitlines()
    assert len(lines) == 1, app.stderr
    assert lines[0].startswith("otel-agent-state is not active: configuration error: ")
    assert "facts.toml:3: rule 'b': unknown consistency model 'strong'" in lines[0]
    # Our own demo under the launcher stops (exit 2) without printing the error again.
    demo = _launch(tmp_path, str(CLI), "demo")
    assert demo.returncode == 2
    assert demo.stderr.strip().splitlines() == lines, demo.stderr


def test_a_bad_config_without_the_launcher_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "facts.toml"
    config.write_text(BAD_RULE)
    result = subprocess.run(
        [str(CLI), "demo"],
        capture_output=True,
        text=True,
        env=_env(OTEL_AGENTSTATE_CONFIG=str(config)),
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("otel-agent-state: configuration error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
