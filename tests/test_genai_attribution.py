"""Agent attribution from spans other agent instrumentations make by the GenAI conventions
(`invoke_agent` spans with `gen_ai.agent.name` / `gen_ai.agent.id`, made with the plain SDK
tracer, nothing of our API), and the SPEC §3 order: explicit agent() scope → nearest GenAI
agent ancestor → framework hint → service.name."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import agent, observe_read, observe_write, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry


def _framework(telemetry: Telemetry) -> trace.Tracer:
    """The tracer of some other agent framework's instrumentation."""
    return telemetry.provider.get_tracer("other.agent.framework", "1.0")


def _invoke_agent(tracer: trace.Tracer, name: str | None, agent_id: str | None = None) -> Any:
    attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.system": "x"}
    if name is not None:
        attrs["gen_ai.agent.name"] = name
    if agent_id is not None:
        attrs["gen_ai.agent.id"] = agent_id
    return tracer.start_as_current_span(f"invoke_agent {name or agent_id}", attributes=attrs)


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _observations(telemetry: Telemetry, fact: str) -> list[ReadableSpan]:
    return [
        s
        for s in telemetry.spans()
        if fact in (_attrs(s).get(A.READ_FACTS) or ()) + (_attrs(s).get(A.WRITE_FACTS) or ())
    ]


def _agent_of(telemetry: Telemetry, fact: str) -> list[str]:
    return [str(_attrs(s)[A.GEN_AI_AGENT_NAME]) for s in _observations(telemetry, fact)]


def test_observations_under_a_genai_agent_span_are_that_agents(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("crew kickoff"):
        with _invoke_agent(tracer, "researcher", "agent-7"):
            with tracer.start_as_current_span("execute_tool search"):  # a plain span between
                observe_read("memory/1", "n:1")
            observe_write("memory/1", "n:2")
        with _invoke_agent(tracer, None, "agent-9"):  # only an id: the id names it
            observe_read("memory/2", "n:1")
    assert _agent_of(telemetry, "memory/1") == ["researcher", "researcher"]
    assert _agent_of(telemetry, "memory/2") == ["agent-9"]


def test_anomalies_name_the_genai_agents(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("workflow"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("credit_score/42", "n:2")
        with _invoke_agent(tracer, "risk"):
            observe_read("credit_score/42", "n:1")
            observe_write("decision/42", "n:1")  # it acted on the stale score
    (anomaly,) = telemetry.anomalies("stale_read")
    attrs = _attrs(anomaly)
    assert attrs[A.ANOMALY_AGENTS] == ("risk", "scorer")
    assert attrs[A.ANOMALY_SEVERITY] == "error"
    assert "risk read credit_score/42 at n:1" in str(attrs[A.ANOMALY_SUMMARY])
    (counted,) = [
        p for p in telemetry.metric_points(A.METRIC_ANOMALIES) if p.attributes["agent"] == "risk"
    ]
    assert counted.value == 1


def test_divergent_view_between_two_concurrent_genai_agents(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    both_read = threading.Barrier(2, timeout=10)
    with workflow("planning"):
        observe_write("plan/1", "n:1")
        parent = trace.get_current_span().get_span_context()

        def run(name: str, version: str) -> None:
            ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent))
            with tracer.start_as_current_span(
                f"invoke_agent {name}",
                context=ctx,
                attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name},
            ):
                observe_read("plan/1", version)
                both_read.wait()
                observe_write(f"task/{name}", "n:1")

        observe_write("plan/1", "n:2")  # committed before both read; one reads a replica
        threads = [
            threading.Thread(target=run, args=("alpha", "n:2")),
            threading.Thread(target=run, args=("beta", "n:1")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    kinds = {str(_attrs(a)[A.ANOMALY_KIND]) for a in telemetry.anomalies()}
    assert "divergent_view" in kinds
    (divergent,) = telemetry.anomalies("divergent_view")
    assert set(_attrs(divergent)[A.ANOMALY_AGENTS]) == {"alpha", "beta"}
    assert _attrs(divergent)[A.ANOMALY_OBSERVED] == "n:1"
    assert _attrs(divergent)[A.ANOMALY_EXPECTED] == "n:2"


@pytest.fixture
def sqlite_db(telemetry: Telemetry, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "memory.db"
    setup = sqlite3.connect(path)
    setup.executescript(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, version INTEGER);"
        "INSERT INTO notes VALUES (1, 'first', 1);"
    )
    setup.commit()
    setup.close()
    instrumentor = SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield path
    instrumentor.uninstrument()


def test_an_instrumented_sqlite_query_under_a_genai_agent_is_attributed_to_it(
    telemetry: Telemetry, sqlite_db: Path
) -> None:
    tracer = _framework(telemetry)
    with _invoke_agent(tracer, "librarian"):
        conn = sqlite3.connect(sqlite_db)
        rows = conn.execute("SELECT body FROM notes WHERE id = 1").fetchall()
        conn.close()
    assert rows == [("first",)]
    (select,) = [s for s in telemetry.spans() if _attrs(s).get(A.OP) == "read"]
    assert _attrs(select)[A.GEN_AI_AGENT_NAME] == "librarian"
    assert _attrs(select)[A.READ_FACTS] == ("sqlite:memory/notes/1",)


def test_attribution_order_explicit_then_genai_then_hint_then_service(
    telemetry: Telemetry,
) -> None:
    tracer = _framework(telemetry)
    # nothing names an agent: the service
    observe_read("f/service", "n:1")
    with tracer.start_as_current_span("graph step", attributes={"langgraph.node": "planner"}):
        # a framework hint (a LangGraph node name on a plain span)
        observe_read("f/hint", "n:1")
    with _invoke_agent(tracer, "support"):
        # the GenAI ancestor beats a framework hint below it
        with tracer.start_as_current_span("graph step", attributes={"langgraph.node": "planner"}):
            observe_read("f/genai-over-hint", "n:1")
        # an explicit agent() scope beats the GenAI ancestor around it
        with agent("refund-checker"), tracer.start_as_current_span("llm call"):
            observe_read("f/explicit", "n:1")
        # and once it has ended, the GenAI agent is back
        observe_read("f/genai", "n:1")
    assert _agent_of(telemetry, "f/service") == ["tests"]
    assert _agent_of(telemetry, "f/hint") == ["planner"]
    assert _agent_of(telemetry, "f/genai-over-hint") == ["support"]
    assert _agent_of(telemetry, "f/explicit") == ["refund-checker"]
    assert _agent_of(telemetry, "f/genai") == ["support"]


def test_spans_that_are_not_agent_spans_do_not_name_agents(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    # a chat call carries gen_ai.* but is no agent: invoke_agent without a name or id,
    # and a `chat` operation that names an agent are not agent scopes
    with tracer.start_as_current_span(
        "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
    ):
        observe_read("g/nameless", "n:1")
    with (
        _invoke_agent(tracer, "planner"),
        tracer.start_as_current_span(
            "chat gpt", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
        ),
    ):
        observe_read("g/chat", "n:1")
    assert _agent_of(telemetry, "g/nameless") == ["tests"]
    assert _agent_of(telemetry, "g/chat") == ["planner"]
