"""Shared by tests/test_frameworks_*.py: run an example of examples/frameworks/ zero-code
under `opentelemetry-instrument` (console exporter) against the real PostgreSQL and Redis,
and read its findings both ways: the anomaly spans the live processor exported, and what
`otel-agent-state check` finds in the same output (offline must equal online)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from .conftest import fail_or_skip
from .test_zero_code import _spans

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "frameworks"
BOOTSTRAP = Path(__file__).resolve().parent / "apps" / "with_instrumentor.py"
LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")
CLI = Path(sys.executable).with_name("otel-agent-state")

Finding = tuple[str, str, tuple[str, ...], str]  # kind, fact, agents, severity


def stale(prefix: str) -> list[Finding]:
    """What the buggy run must report with no configuration, exactly: the risk agent read
    the score it had cached (linked to the row with no config) after the scorer replaced it,
    and acted on it (an error); and both wrote a limit computed from the same read."""
    return [
        ("lost_update", f"postgresql:test/{prefix}_limits/42", ("scorer", "risk"), "error"),
        ("stale_read", f"postgresql:test/{prefix}_scores/42", ("risk", "scorer"), "error"),
    ]


# The same with the example's fact rules (credit_store.facts_toml): the facts by rule name.
RULED: list[Finding] = [
    ("lost_update", "credit_limit/42", ("scorer", "risk"), "error"),
    ("stale_read", "credit_score/42", ("risk", "scorer"), "error"),
]


def require(*modules: str) -> None:
    """The framework packages (the `frameworks` extra): missing fails in CI, else skips."""
    for module in modules:
        if find_spec(module) is None:
            fail_or_skip(f"{module} is not installed (pip install -e '.[frameworks]')")


@dataclass
class Run:
    stdout: str
    spans: list[dict[str, Any]]
    online: list[Finding]
    offline: list[Finding]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]

    def agents_of_observations(self) -> set[str]:
        """The agents of the workflow's own reads and writes (set-up runs before it)."""
        (root,) = self.named("credit-review")
        trace_id = root["context"]["trace_id"]
        return {
            s["attributes"]["gen_ai.agent.name"]
            for s in self.spans
            if s["context"]["trace_id"] == trace_id and "agentstate.op" in s["attributes"]
        }

    def decision_inputs(self, tool_span_name: str) -> list[list[str]]:
        """The facts each span of that name had as decision inputs (versions left out:
        digests are keyed per process)."""
        return [
            [
                item.rpartition("@")[0]
                for item in s["attributes"].get("agentstate.decision.inputs", ["<missing>@"])
            ]
            for s in self.named(tool_span_name)
        ]


def run_example(
    tmp_path: Path,
    example: str,
    mode: str,
    *,
    prefix: str,
    postgres_dsn: str,
    redis_url: str,
    instrumentor: str | None = None,
    disabled: str = "",
    rules: bool = False,
    python: Path = Path(sys.executable),
    extra_env: dict[str, str] | None = None,
) -> Run:
    """Run examples/frameworks/`example` in `mode` (`stale` or `correct`) with the tables
    and keys named by `prefix`, no configuration (the example's fact rules with `rules`), and
    (when given) one GenAI instrumentor switched on by tests/apps/with_instrumentor.py,
    under `python`'s launcher (a venv of its own for frameworks that conflict)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PYTHONPATH", "OPENAI_", "TRACELOOP_"))
    }
    env.update(CREDIT_PREFIX=prefix, CREDIT_PG=postgres_dsn, CREDIT_REDIS=f"{redis_url}/0")
    env.update(extra_env or {})
    rules_file = tmp_path / "credit_facts.toml"
    rules_file.write_text(
        subprocess.run(
            [sys.executable, str(EXAMPLES / "credit_store.py")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    if rules:
        env["OTEL_AGENTSTATE_CONFIG"] = str(rules_file)
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled,
    )
    app = [str(EXAMPLES / example), mode]
    if instrumentor is not None:
        app = [str(BOOTSTRAP), instrumentor, *app]
    result = subprocess.run(
        [str(python.with_name(LAUNCHER.name)), "--service_name", "credit", str(python), *app],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    spans = _spans(result.stdout)
    online = sorted(
        (
            str(a["agentstate.anomaly.kind"]),
            str(a["agentstate.anomaly.fact"]),
            tuple(a["agentstate.anomaly.agents"]),
            str(a["agentstate.anomaly.severity"]),
        )
        for a in (s["attributes"] for s in spans if s["name"].startswith("agentstate.anomaly"))
    )
    exported = tmp_path / "spans.txt"
    exported.write_text(result.stdout)
    checked = subprocess.run(
        [str(CLI), "check", str(exported)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode in (0, 1), checked.stderr
    report = json.loads(checked.stdout)
    offline = sorted(
        (a["kind"], a["fact"], tuple(a["agents"]), a["severity"]) for a in report["anomalies"]
    )
    assert checked.returncode == (1 if any(f[3] == "error" for f in offline) else 0)
    return Run(result.stdout, spans, online, offline)
