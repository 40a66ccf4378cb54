"""Agent attribution from spans other agent instrumentations make (GenAI `invoke_agent`
spans with `gen_ai.agent.name` / `gen_ai.agent.id`, OpenInference, OpenLLMetry, AgentOps,
ADK-style tool spans; made with the plain SDK tracer, nothing of our API), the SPEC §3 order
(agent scope → nearest span naming an agent → baggage → framework hint → service.name), tool
calls as acts with their decision inputs, and `check` attributing exactly as the processor.
The real packages' spans are tested end to end in tests/test_frameworks_*.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import agent, decision, observe_read, observe_write, offline, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry
from .otlp_json import otlp_request


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


# ---------------------------------------------------------------------- every convention


def _offline_findings(telemetry: Telemetry) -> list[tuple[str, str, tuple[str, ...], str]]:
    """What `check` finds in the exported spans (our own anomaly spans are left out)."""
    records = list(offline.spans_from_otlp_json(otlp_request(telemetry.spans())))
    found = []
    for trace_id in {r.trace_id for r in records}:
        found.extend(offline.check_trace([r for r in records if r.trace_id == trace_id]))
    return sorted((f.kind.value, f.fact, tuple(f.agents), f.severity.value) for f in found)


def _online_findings(telemetry: Telemetry) -> list[tuple[str, str, tuple[str, ...], str]]:
    return sorted(
        (
            str(_attrs(a)[A.ANOMALY_KIND]),
            str(_attrs(a)[A.ANOMALY_FACT]),
            tuple(_attrs(a)[A.ANOMALY_AGENTS]),
            str(_attrs(a)[A.ANOMALY_SEVERITY]),
        )
        for a in telemetry.anomalies()
    )


AGENT_SPANS: dict[str, dict[str, Any]] = {
    "openinference": {"openinference.span.kind": "AGENT", "agent.name": "oi-agent"},
    "openllmetry": {"traceloop.span.kind": "agent", "traceloop.entity.name": "tl-agent"},
    "agentops": {"agentops.span.kind": "agent", "agent.name": "ao-agent"},
}


@pytest.mark.parametrize("convention", sorted(AGENT_SPANS))
def test_each_conventions_agent_span_names_its_agent_and_its_findings(
    telemetry: Telemetry, convention: str
) -> None:
    tracer = _framework(telemetry)
    attrs = AGENT_SPANS[convention]
    name = str(attrs.get("agent.name") or attrs.get("traceloop.entity.name"))
    with tracer.start_as_current_span("workflow"):
        with tracer.start_as_current_span("writer", attributes={**attrs, **_renamed(attrs)}):
            observe_read("conv/1", "n:1")
            observe_write("conv/1", "n:2")
        with tracer.start_as_current_span("reader", attributes=attrs):
            with tracer.start_as_current_span("step"):
                observe_read("conv/1", "n:1")  # stale
            observe_write("conv/2", "n:1")  # and it acted on it
    assert _agent_of(telemetry, "conv/1") == ["writer-agent", "writer-agent", name]
    expected = [("stale_read", "conv/1", (name, "writer-agent"), "error")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def _renamed(attrs: dict[str, Any]) -> dict[str, Any]:
    """The same convention's attributes naming another agent, `writer-agent`."""
    return {k: "writer-agent" for k in ("agent.name", "traceloop.entity.name") if k in attrs}


def test_openinference_agent_named_only_when_it_ends_is_named_by_its_span(
    telemetry: Telemetry,
) -> None:
    # openai-agents under OpenInference: kind AGENT at the start, `agent.name` at the end;
    # the span's name is the agent's name all along. A nameless AGENT root (its workflow)
    # is named by its span too, and the agent inside it wins.
    tracer = _framework(telemetry)
    with tracer.start_as_current_span(
        "Agent workflow", attributes={"openinference.span.kind": "AGENT"}
    ):
        with tracer.start_as_current_span(
            "planner", attributes={"openinference.span.kind": "AGENT"}
        ) as span:
            observe_read("oi/late", "n:1")
            span.set_attribute("agent.name", "planner")
        observe_read("oi/root", "n:1")
    assert _agent_of(telemetry, "oi/late") == ["planner"]
    assert _agent_of(telemetry, "oi/root") == ["Agent workflow"]


def test_adk_tool_span_names_its_agent_whose_span_is_not_current(telemetry: Telemetry) -> None:
    # ADK: `invoke_agent` is started but never made current; `execute_tool` is, and names
    # the agent. A stale read inside the tool is a read a decision depended on.
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("runner"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("adk/1", "n:2")
        hidden = tracer.start_span(
            "invoke_agent risk",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "risk"},
        )
        with tracer.start_as_current_span(
            "execute_tool lookup",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": "risk"},
        ):
            observe_read("adk/1", "n:1")
        hidden.end()
    assert _agent_of(telemetry, "adk/1") == ["scorer", "risk"]
    expected = [("stale_read", "adk/1", ("risk", "scorer"), "error")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def test_baggage_names_the_agent_after_every_span_that_does(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    token = otel_context.attach(baggage.set_baggage(A.GEN_AI_AGENT_NAME, "carried"))
    try:
        with tracer.start_as_current_span("handler"):  # a service the agent called
            observe_read("bag/only", "n:1")
            with _invoke_agent(tracer, "local"):
                observe_read("bag/span-wins", "n:1")
            with tracer.start_as_current_span("node", attributes={"langgraph.node": "hinted"}):
                observe_read("bag/over-hint", "n:1")
    finally:
        otel_context.detach(token)
    assert _agent_of(telemetry, "bag/only") == ["carried"]
    assert _agent_of(telemetry, "bag/span-wins") == ["local"]
    assert _agent_of(telemetry, "bag/over-hint") == ["carried"]


def test_langgraph_hints_of_openinference_and_openllmetry(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    metadata = '{"ls_integration": "langgraph", "langgraph_step": 1, "langgraph_node": "scorer"}'
    with tracer.start_as_current_span(
        "scorer", attributes={"openinference.span.kind": "CHAIN", "metadata": metadata}
    ):
        observe_read("lg/oi", "n:1")
    # OpenLLMetry names the graph an agent; its nodes are the agents (task spans).
    graph = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "LangGraph",
        "gen_ai.provider.name": "langgraph",
    }
    with (
        tracer.start_as_current_span("invoke_agent LangGraph", attributes=graph),
        tracer.start_as_current_span(
            "LangGraph.workflow", attributes={**graph, "traceloop.span.kind": "workflow"}
        ),
        tracer.start_as_current_span(
            "execute_task risk",
            attributes={
                "traceloop.span.kind": "task",
                "traceloop.entity.name": "risk",
                "traceloop.association.properties.langgraph_node": "risk",
            },
        ),
    ):
        observe_read("lg/tl", "n:1")
    assert _agent_of(telemetry, "lg/oi") == ["scorer"]
    assert _agent_of(telemetry, "lg/tl") == ["risk"]


# ---------------------------------------------------------------------- tool calls as acts

TOOL_SPANS: dict[str, dict[str, Any]] = {
    "genai": {"gen_ai.operation.name": "execute_tool"},
    "openinference": {"openinference.span.kind": "TOOL"},
    "openllmetry": {"traceloop.span.kind": "tool"},
}


@pytest.mark.parametrize("convention", sorted(TOOL_SPANS))
def test_a_tool_call_after_a_stale_read_is_an_act_and_records_its_inputs(
    telemetry: Telemetry, convention: str
) -> None:
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("workflow"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("tool/score", "n:2")
        with _invoke_agent(tracer, "risk"):
            observe_read("tool/score", "n:1")  # stale: a warning until risk acts
            observe_read("tool/limit", "n:4")
            with tracer.start_as_current_span("lookup", attributes=TOOL_SPANS[convention]):
                pass  # the tool reads and writes nothing: calling it is the act
    tool = telemetry.span_named("lookup")
    assert _attrs(tool)[A.DECISION_INPUTS] == ("tool/score@n:1", "tool/limit@n:4")
    expected = [("stale_read", "tool/score", ("risk", "scorer"), "error")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def test_a_stale_read_with_no_tool_call_after_it_stays_a_warning(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("workflow"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("tool/score", "n:2")
        chat = {"gen_ai.operation.name": "chat"}  # a model call is no act
        with _invoke_agent(tracer, "risk"), tracer.start_as_current_span("chat", attributes=chat):
            observe_read("tool/score", "n:1")
    expected = [("stale_read", "tool/score", ("risk", "scorer"), "warning")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def test_divergent_view_between_agents_that_only_call_tools(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    both_read = threading.Barrier(2, timeout=10)
    with workflow("planning"):
        observe_write("plan/9", "n:1")
        observe_write("plan/9", "n:2")
        parent = trace.set_span_in_context(trace.get_current_span())

        def run(name: str, version: str) -> None:
            attrs = {"openinference.span.kind": "AGENT", "agent.name": name}
            with tracer.start_as_current_span(name, context=parent, attributes=attrs):
                observe_read("plan/9", version)
                both_read.wait()
                tool = {"openinference.span.kind": "TOOL"}
                with tracer.start_as_current_span(f"{name}-tool", attributes=tool):
                    pass

        threads = [
            threading.Thread(target=run, args=("alpha", "n:2")),
            threading.Thread(target=run, args=("beta", "n:1")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    kinds = sorted(k for k, *_ in _online_findings(telemetry))
    assert kinds == ["divergent_view", "stale_read"]
    (divergent,) = telemetry.anomalies("divergent_view")
    assert set(_attrs(divergent)[A.ANOMALY_AGENTS]) == {"alpha", "beta"}
    assert _online_findings(telemetry) == _offline_findings(telemetry)


def test_a_span_with_a_decision_intent_is_a_decision_scope(telemetry: Telemetry) -> None:
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("workflow"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("intent/1", "n:2")
        with _invoke_agent(tracer, "risk"):
            observe_read("intent/1", "n:1")
            intent = {A.DECISION_INTENT: "approve loan"}  # no agentstate.scope
            with tracer.start_as_current_span("approve", attributes=intent):
                pass
    assert _attrs(telemetry.span_named("approve"))[A.DECISION_INPUTS] == ("intent/1@n:1",)
    expected = [("stale_read", "intent/1", ("risk", "scorer"), "error")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def test_our_decision_records_what_was_read_before_it_and_inside_it(
    telemetry: Telemetry,
) -> None:
    with agent("risk"):
        observe_read("dec/limit", "n:3")
        with decision("approve"):
            observe_read("dec/score", "n:2")
            observe_read("dec/limit", "n:3")  # read again: listed once
    span = telemetry.span_named("decision approve")
    assert _attrs(span)[A.DECISION_INPUTS] == ("dec/limit@n:3", "dec/score@n:2")


@pytest.mark.parametrize("convention", sorted(TOOL_SPANS))
def test_a_tool_span_that_says_so_only_when_it_ends_is_still_an_act(
    telemetry: Telemetry, convention: str
) -> None:
    # Both LangChain instrumentations set their attributes when the span ends.
    tracer = _framework(telemetry)
    with tracer.start_as_current_span("workflow"):
        with _invoke_agent(tracer, "scorer"):
            observe_write("late/score", "n:2")
        with _invoke_agent(tracer, "risk"):
            observe_read("late/score", "n:1")
            with tracer.start_as_current_span("lookup") as tool:
                tool.set_attributes(TOOL_SPANS[convention])
    expected = [("stale_read", "late/score", ("risk", "scorer"), "error")]
    assert _online_findings(telemetry) == expected
    assert _offline_findings(telemetry) == expected


def test_openllmetry_agent_span_named_after_it_started_is_named_by_its_span(
    telemetry: Telemetry,
) -> None:
    # OpenLLMetry's CrewAI agent spans: `<role>.agent` with the kind at the start, the
    # name attributes set just after.
    tracer = _framework(telemetry)
    kind = {"traceloop.span.kind": "agent"}
    with (
        tracer.start_as_current_span("crewai.workflow"),
        tracer.start_as_current_span("Researcher.agent", attributes=kind) as span,
    ):
        span.set_attribute("gen_ai.agent.name", "Researcher")
        observe_read("tl/late", "n:1")
    assert _agent_of(telemetry, "tl/late") == ["Researcher"]
