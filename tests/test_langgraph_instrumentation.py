"""LangGraph instrumentation on real graphs (fake chat models, no network) with real
checkpointers (SqliteSaver on a file, InMemorySaver): node runs as agent spans, channel
versions as facts, a stale channel version flagged, the correct twins clean."""

from __future__ import annotations

import asyncio
import importlib.metadata
import operator
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import StaleReadError, agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import langgraph as lg
from otel_agent_state.instrumentation.langgraph import LangGraphInstrumentor

from .conftest import Telemetry

WAIT_S = 10


class Desk(TypedDict, total=False):
    question: str
    policy: str
    plan: str
    notes: Annotated[list[str], operator.add]
    answer: str


class Job(TypedDict, total=False):
    docs: list[str]
    doc: str
    summaries: Annotated[list[str], operator.add]
    report: str


def _say(text: str) -> str:
    """One reply from a fake chat model (langchain-core), as a node would call an LLM."""
    model = GenericFakeChatModel(messages=iter([AIMessage(content=text)]))
    return str(model.invoke(text).content)


async def _asay(text: str) -> str:
    model = GenericFakeChatModel(messages=iter([AIMessage(content=text)]))
    return str((await model.ainvoke(text)).content)


class Hooks:
    """Synchronisation the tests put into nodes (the graph itself stays ordinary)."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=WAIT_S)  # researcher and critic meet
        self.in_research = threading.Event()
        self.release_research = threading.Event()
        self.release_research.set()
        self.writer_ran = threading.Event()
        self.in_planning = threading.Event()
        self.release_planning = threading.Event()
        self.release_planning.set()


def build_desk(checkpointer: BaseCheckpointSaver[Any] | None, hooks: Hooks) -> Any:
    """planner -> (researcher || critic) -> writer, sharing the thread's state."""

    def planner(state: Desk) -> Desk:
        hooks.in_planning.set()
        if not hooks.release_planning.wait(WAIT_S):
            raise TimeoutError("planning was never released")
        return {"plan": _say(f"plan for {state['question']}")}

    def researcher(state: Desk) -> Desk:
        hooks.barrier.wait()
        hooks.in_research.set()
        if not hooks.release_research.wait(WAIT_S):
            raise TimeoutError("research was never released")
        return {"notes": [_say("sources")]}

    def critic(state: Desk) -> Desk:
        hooks.barrier.wait()
        return {"notes": [_say("risks")]}

    def writer(state: Desk) -> Desk:
        hooks.writer_ran.set()
        return {"answer": _say(f"answer under {state.get('policy')}")}

    graph = StateGraph(Desk)
    graph.add_node("planner", planner)
    graph.add_node("researcher", researcher)
    graph.add_node("critic", critic)
    graph.add_node("writer", writer)
    graph.add_edge(START, "planner")
    graph.add_edge("planner", "researcher")
    graph.add_edge("planner", "critic")
    graph.add_edge(["researcher", "critic"], "writer")
    graph.add_edge("writer", END)
    return graph.compile(checkpointer=checkpointer)


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[LangGraphInstrumentor]:
    instrumentor = LangGraphInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield instrumentor
    instrumentor.uninstrument()


class IntVersionSaver(InMemorySaver):
    """A checkpointer with the base class's plain int channel versions (1, 2, 3...)."""

    def get_next_version(self, current: Any, channel: None) -> Any:
        return BaseCheckpointSaver.get_next_version(self, current, channel)


@pytest.fixture(params=["sqlite", "memory", "int-versions"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCheckpointSaver[Any]]:
    if request.param == "memory":
        yield InMemorySaver()
        return
    if request.param == "int-versions":
        yield IntVersionSaver()
        return
    conn = sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _nodes(telemetry: Telemetry) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in telemetry.spans():
        attrs = _attrs(span)
        if attrs.get(A.GEN_AI_OPERATION_NAME) == "invoke_agent" and lg.NODE in attrs:
            out.setdefault(str(attrs[lg.NODE]), []).append(span)
    return out


def _children(telemetry: Telemetry, parent: ReadableSpan, prefix: str) -> list[ReadableSpan]:
    return [
        s
        for s in telemetry.spans()
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and s.name.startswith(prefix)
    ]


def _read_versions(span: ReadableSpan) -> dict[str, str]:
    attrs = _attrs(span)
    return dict(zip(attrs[A.READ_FACTS], attrs[A.READ_VERSIONS], strict=True))


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    """Run `target` in a thread that carries the caller's trace context (same workflow)."""
    ctx = otel_context.get_current()

    def run() -> None:
        token = otel_context.attach(ctx)
        try:
            target()
        finally:
            otel_context.detach(token)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _ordinal(saver: BaseCheckpointSaver[Any], thread_id: str, channel: str) -> int:
    """The newest ordinal of `channel` in any checkpoint the saver holds for the thread."""
    best = -1
    for item in saver.list({"configurable": {"thread_id": thread_id}}):
        raw = item.checkpoint["channel_versions"].get(channel)
        if raw is not None:
            found = lg.ordinal(raw)
            assert found is not None
            best = max(best, found)
    return best


# --------------------------------------------------------------------------- correct graphs


def test_parallel_graph_nodes_are_agents_and_a_correct_workflow_has_no_findings(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, saver: BaseCheckpointSaver[Any]
) -> None:
    hooks = Hooks()
    app = build_desk(saver, hooks)
    cfg = {"configurable": {"thread_id": "case-1"}}
    with workflow("support-desk"):
        first = app.invoke({"question": "refund?", "policy": "p1"}, cfg)
        # Another agent updates the policy between runs: the next run starts from it.
        with agent("curator"):
            app.update_state(cfg, {"policy": "p2"}, as_node="planner")
        hooks.barrier.reset()
        second = app.invoke({"question": "refund again?"}, cfg)
    assert first["answer"] == "answer under p1"
    assert second["answer"] == "answer under p2"
    assert sorted(first["notes"]) == ["risks", "sources"]

    assert telemetry.anomalies() == [], [_attrs(s) for s in telemetry.anomalies()]

    nodes = _nodes(telemetry)
    assert sorted(nodes) == ["critic", "planner", "researcher", "writer"]
    for name, spans in nodes.items():
        assert len(spans) == 2  # one per run
        for span in spans:
            attrs = _attrs(span)
            assert attrs[A.GEN_AI_AGENT_NAME] == name
            assert span.name == f"invoke_agent {name}"
            assert attrs[lg.THREAD_ID] == "case-1"
            # its read ran in the node's own context (thread), as its child
            (read,) = _children(telemetry, span, "agentstate.read")
            assert _attrs(read)[A.GEN_AI_AGENT_NAME] == name
    # researcher and critic met at a barrier: they really ran at the same time
    research, critique = nodes["researcher"][0], nodes["critic"][0]
    assert research.start_time is not None and critique.end_time is not None
    assert research.start_time < critique.end_time
    assert critique.start_time is not None and research.end_time is not None
    assert critique.start_time < research.end_time

    # The writer of the second run read the curator's policy at the version it committed.
    writer_read = _children(telemetry, nodes["writer"][1], "agentstate.read")[0]
    versions = _read_versions(writer_read)
    assert versions["langgraph:case-1/policy"] == f"n:{_ordinal(saver, 'case-1', 'policy')}"
    # planner wrote `plan` in its own write span, committed by the checkpoint put
    (plan_write,) = _children(telemetry, nodes["planner"][0], "agentstate.write")
    plan_attrs = _attrs(plan_write)
    assert plan_attrs[A.WRITE_FACTS] == ("langgraph:case-1/plan",)
    assert plan_attrs[A.COMMITTED] is False
    commits = [
        s
        for s in telemetry.spans()
        if _attrs(s).get(A.TXN_ID) == plan_attrs[A.TXN_ID] and A.TXN_OUTCOME in _attrs(s)
    ]
    assert [_attrs(s)[A.TXN_OUTCOME] for s in commits] == ["commit"]
    # both branches appended to `notes` in one superstep: one merged write, no lost update
    merged = [
        s
        for s in telemetry.spans()
        if s.name == "agentstate.write langgraph"
        and _attrs(s).get(A.WRITE_FACTS) == ("langgraph:case-1/notes",)
    ]
    assert len(merged) == 2
    assert _attrs(merged[0])[lg.NODE] == "critic+researcher"
    # the curator's update is a committed write of the curator
    (update,) = [s for s in telemetry.spans() if _attrs(s).get(lg.AS_NODE) == ("planner",)]
    assert _attrs(update)[A.GEN_AI_AGENT_NAME] == "curator"
    assert _attrs(update)[A.WRITE_FACTS] == ("langgraph:case-1/policy",)


@pytest.mark.asyncio
async def test_async_graph_parallel_branches_get_their_own_agent_spans(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    both_running = asyncio.Event()
    running: set[str] = set()

    async def branch(name: str) -> Desk:
        running.add(name)
        if len(running) == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), WAIT_S)  # both tasks in flight at once
        return {"notes": [await _asay(name)]}

    async def researcher(state: Desk) -> Desk:
        return await branch("researcher")

    async def critic(state: Desk) -> Desk:
        return await branch("critic")

    async def writer(state: Desk) -> Desk:
        return {"answer": await _asay(",".join(sorted(state["notes"])))}

    graph = StateGraph(Desk)
    graph.add_node("researcher", researcher)
    graph.add_node("critic", critic)
    graph.add_node("writer", writer)
    graph.add_edge(START, "researcher")
    graph.add_edge(START, "critic")
    graph.add_edge(["researcher", "critic"], "writer")
    app = graph.compile(checkpointer=InMemorySaver())
    out = await app.ainvoke({"question": "q"}, {"configurable": {"thread_id": "async-1"}})
    assert out["answer"] == "critic,researcher"
    assert telemetry.anomalies() == []
    nodes = _nodes(telemetry)
    assert sorted(nodes) == ["critic", "researcher", "writer"]
    (graph_span,) = [s for s in telemetry.spans() if s.name.startswith("invoke_workflow")]
    for name, (span,) in nodes.items():
        assert _attrs(span)[A.GEN_AI_AGENT_NAME] == name
        assert span.parent is not None and span.parent.span_id == graph_span.context.span_id
        (read,) = _children(telemetry, span, "agentstate.read")
        assert _attrs(read)[A.GEN_AI_AGENT_NAME] == name
    assert (_attrs(nodes["writer"][0])[lg.STEP]) == 2


# --------------------------------------------------------------------------- stale version


def _stale_run(
    telemetry: Telemetry, saver: BaseCheckpointSaver[Any], thread_id: str
) -> tuple[Any, dict[str, Any]]:
    """The desk run on `thread_id`, while the curator updates the policy mid-run: research
    waits until the curator's update_state has committed."""
    hooks = Hooks()
    hooks.release_research.clear()
    app = build_desk(saver, hooks)
    cfg = {"configurable": {"thread_id": thread_id}}
    outcome: dict[str, Any] = {"hooks": hooks}

    def curator() -> None:
        try:
            assert hooks.in_research.wait(WAIT_S)
            with agent("curator"):
                app.update_state(cfg, {"policy": "p2"}, as_node="planner")
        finally:
            hooks.release_research.set()

    with workflow("support-desk"):
        thread = _in_thread(curator)
        try:
            # durability="sync": each superstep is saved before the next starts, so the
            # curator builds on the run's latest checkpoint (see docs/langgraph.md, forks)
            outcome["result"] = app.invoke(
                {"question": "refund?", "policy": "p1"}, cfg, durability="sync"
            )
        except StaleReadError as exc:
            outcome["error"] = exc
        finally:
            thread.join(WAIT_S)
    return app, outcome


def test_a_node_acting_on_a_channel_version_older_than_a_committed_one_is_flagged(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, saver: BaseCheckpointSaver[Any]
) -> None:
    _, outcome = _stale_run(telemetry, saver, "case-7")
    assert outcome["result"]["answer"] == "answer under p1"  # the run kept its old view

    (anomaly,) = telemetry.anomalies()
    attrs = _attrs(anomaly)
    curator_version = _ordinal(saver, "case-7", "policy")
    assert attrs[A.ANOMALY_KIND] == "stale_read"
    assert attrs[A.ANOMALY_FACT] == "langgraph:case-7/policy"
    assert attrs[A.ANOMALY_EXPECTED] == f"n:{curator_version}"
    observed = attrs[A.ANOMALY_OBSERVED]
    assert observed.startswith("n:") and int(observed[2:]) < curator_version
    assert attrs[A.ANOMALY_AGENTS] == ("writer", "curator")
    assert attrs[A.ANOMALY_SEVERITY] == "error"  # the writer wrote its answer on it

    writer = _nodes(telemetry)["writer"][0]
    (read,) = _children(telemetry, writer, "agentstate.read")
    assert anomaly.parent is not None and anomaly.parent.span_id == read.context.span_id
    (update,) = [s for s in telemetry.spans() if _attrs(s).get(lg.AS_NODE) == ("planner",)]
    assert update.context.span_id in {link.context.span_id for link in anomaly.links}
    assert _read_versions(read)["langgraph:case-7/policy"] == observed
    # researcher and critic read the same old version, but before the curator committed
    for name in ("researcher", "critic"):
        (early,) = _children(telemetry, _nodes(telemetry)[name][0], "agentstate.read")
        assert _read_versions(early)["langgraph:case-7/policy"] == observed
    events = [e for e in writer.events if e.name == A.ANOMALY_EVENT]
    assert len(events) == 1


def test_raise_mode_stops_the_node_before_it_acts_on_the_stale_version(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, tmp_path: Path
) -> None:
    configure(on_anomaly="raise")
    conn = sqlite3.connect(tmp_path / "raise.db", check_same_thread=False)
    try:
        _, outcome = _stale_run(telemetry, SqliteSaver(conn), "case-8")
    finally:
        conn.close()
    error = outcome.get("error")
    assert isinstance(error, StaleReadError), outcome
    assert error.anomaly.fact == "langgraph:case-8/policy"
    assert not outcome["hooks"].writer_ran.is_set()
    writer = _nodes(telemetry)["writer"][0]
    assert writer.status.status_code.name == "ERROR"


# --------------------------------------------------------------------------- attribution


def test_explicit_agent_and_genai_spans_around_the_graph_name_its_nodes(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    hooks = Hooks()
    app = build_desk(InMemorySaver(), hooks)
    with agent("orchestrator"):
        app.invoke({"question": "q", "policy": "p"}, {"configurable": {"thread_id": "a-1"}})
    tracer = telemetry.provider.get_tracer("some.agent.framework")
    hooks.barrier.reset()
    with tracer.start_as_current_span(
        "invoke_agent support",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"},
    ):
        app.invoke({"question": "q", "policy": "p"}, {"configurable": {"thread_id": "a-2"}})
    by_thread: dict[str, set[str]] = {}
    for name, spans in _nodes(telemetry).items():
        for span in spans:
            attrs = _attrs(span)
            by_thread.setdefault(str(attrs[lg.THREAD_ID]), set()).add(
                f"{name}:{attrs[A.GEN_AI_AGENT_NAME]}"
            )
    assert by_thread["a-1"] == {
        "planner:orchestrator",
        "researcher:orchestrator",
        "critic:orchestrator",
        "writer:orchestrator",
    }
    assert by_thread["a-2"] == {
        "planner:support",
        "researcher:support",
        "critic:support",
        "writer:support",
    }
    assert telemetry.anomalies() == []


def test_subgraph_nodes_are_named_after_themselves(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    class Inner(TypedDict):
        draft: str

    def polish(state: Inner) -> Inner:
        return {"draft": _say(state["draft"] + "!")}

    inner = StateGraph(Inner)
    inner.add_node("polish", polish)
    inner.add_edge(START, "polish")
    inner.add_edge("polish", END)

    class Outer(TypedDict):
        draft: str

    outer = StateGraph(Outer)
    outer.add_node("editor", inner.compile())
    outer.add_edge(START, "editor")
    app = outer.compile(checkpointer=InMemorySaver())
    assert app.invoke({"draft": "hi"}, {"configurable": {"thread_id": "sub-1"}}) == {"draft": "hi!"}
    nodes = _nodes(telemetry)
    (editor,) = nodes["editor"]
    (inner_span,) = nodes["polish"]
    assert _attrs(inner_span)[A.GEN_AI_AGENT_NAME] == "polish"
    assert _attrs(editor)[A.GEN_AI_AGENT_NAME] == "editor"
    ns = str(_attrs(inner_span)[lg.CHECKPOINT_NS])
    assert ns.startswith("editor:")
    (read,) = _children(telemetry, inner_span, "agentstate.read")
    assert _attrs(read)[A.READ_FACTS] == (f"langgraph:sub-1/{ns}/draft",)
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- failures, set-up


def test_a_failing_node_propagates_its_error_and_ends_every_span(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    class Boom(Exception):
        pass

    def ok(state: Desk) -> Desk:
        return {"notes": ["ok"]}

    def broken(state: Desk) -> Desk:
        raise Boom("model refused")

    graph = StateGraph(Desk)
    graph.add_node("ok", ok)
    graph.add_node("broken", broken)
    graph.add_edge(START, "ok")
    graph.add_edge(START, "broken")
    app = graph.compile(checkpointer=InMemorySaver())
    with pytest.raises(Boom, match="model refused"):
        app.invoke({"question": "q"}, {"configurable": {"thread_id": "f-1"}})
    nodes = _nodes(telemetry)
    assert nodes["broken"][0].status.status_code.name == "ERROR"
    assert nodes["ok"][0].status.status_code.name == "UNSET"
    assert nodes["ok"][0].end_time is not None
    assert telemetry.anomalies() == []
    # the failed superstep was never applied nor saved: no write of `notes` was recorded
    writes = [s for s in telemetry.spans() if A.WRITE_FACTS in _attrs(s)]
    assert [_attrs(s)[A.WRITE_FACTS] for s in writes] == [("langgraph:f-1/question",)]


def test_without_a_checkpointer_nodes_are_agents_but_no_state_is_recorded(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    app = build_desk(None, Hooks())
    app.invoke({"question": "q", "policy": "p"})
    assert sorted(_nodes(telemetry)) == ["critic", "planner", "researcher", "writer"]
    assert not [s for s in telemetry.spans() if A.OP in _attrs(s)]


def test_uninstrument_restores_langgraph(telemetry: Telemetry) -> None:
    import langgraph.pregel._loop as loop_module
    import langgraph.pregel._runner as runner_module
    import langgraph.pregel.main as main_module

    originals = (
        runner_module.run_with_retry,
        loop_module.apply_writes,
        main_module.Pregel.__dict__["stream"],
        loop_module.PregelLoop.__dict__["tick"],
    )
    instrumentor = LangGraphInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert runner_module.run_with_retry is not originals[0]
    instrumentor.uninstrument()
    assert (
        runner_module.run_with_retry,
        loop_module.apply_writes,
        main_module.Pregel.__dict__["stream"],
        loop_module.PregelLoop.__dict__["tick"],
    ) == originals
    build_desk(InMemorySaver(), Hooks()).invoke(
        {"question": "q"}, {"configurable": {"thread_id": "u-1"}}
    )
    assert telemetry.spans() == []


def test_entry_point_and_dependencies() -> None:
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
        if e.name == "agentstate_langgraph"
    ]
    assert entry.load() is LangGraphInstrumentor
    assert LangGraphInstrumentor().instrumentation_dependencies() == ("langgraph >= 1.0, < 2",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, "n:3"),
        (7.0, "n:7"),
        (7.9, "n:7"),
        ("00000000000000000000000000000012.0.48230512217389457", "n:12"),
        ("5", "n:5"),
        (None, "none"),
    ],
)
def test_channel_versions_become_ordinals(raw: object, expected: str) -> None:
    assert lg.version_text(raw) == expected


def test_versions_without_an_ordinal_become_digests() -> None:
    text = lg.version_text("abc-def")
    assert text.startswith("h:") and text == lg.version_text("abc-def")
    assert lg.ordinal(True) is None and lg.ordinal(float("nan")) is None
    assert lg.channel_fact("t", "", "plan") == "langgraph:t/plan"
    assert lg.channel_fact("t", "team:1", "plan") == "langgraph:t/team:1/plan"
    assert not lg.is_state_channel("branch:to:writer") and lg.is_state_channel("plan")


def test_two_runs_interleaving_on_one_thread(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, saver: BaseCheckpointSaver[Any]
) -> None:
    """Run A pauses in research; run B on the same thread (another worker, same checkpointer)
    runs to the end; A then finishes on its own, older view of the thread."""
    hooks_a, hooks_b = Hooks(), Hooks()
    hooks_a.release_research.clear()
    app_a, app_b = build_desk(saver, hooks_a), build_desk(saver, hooks_b)
    cfg = {"configurable": {"thread_id": "case-9"}}
    results: dict[str, Any] = {}

    def run_b() -> None:
        try:
            assert hooks_a.in_research.wait(WAIT_S)
            with agent("worker-b"):
                results["b"] = app_b.invoke({"question": "refund?", "policy": "p2"}, cfg)
        finally:
            hooks_a.release_research.set()

    with workflow("two-workers"):
        thread = _in_thread(run_b)
        results["a"] = app_a.invoke({"question": "refund?", "policy": "p1"}, cfg, durability="sync")
        thread.join(WAIT_S)
    assert results["b"]["answer"] == "answer under p2"
    assert results["a"]["answer"] == "answer under p1"

    found = {
        (str(_attrs(a)[A.ANOMALY_KIND]), str(_attrs(a)[A.ANOMALY_FACT]))
        for a in telemetry.anomalies()
    }
    # A's writer started after B had committed a newer policy: a stale read
    assert ("stale_read", "langgraph:case-9/policy") in found, found
    (stale,) = [
        a
        for a in telemetry.anomalies("stale_read")
        if _attrs(a)[A.ANOMALY_FACT] == "langgraph:case-9/policy"
    ]
    assert _attrs(stale)[A.ANOMALY_AGENTS][0] == "writer"
    assert _attrs(stale)[A.ANOMALY_EXPECTED] == f"n:{_ordinal(saver, 'case-9', 'policy')}"
    # both writers read `answer` before either wrote it, and both wrote it: A's answer
    # replaced B's in the thread, a lost update
    assert ("lost_update", "langgraph:case-9/answer") in found, found


@pytest.mark.asyncio
async def test_async_send_fan_out_with_async_sqlite_saver(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, tmp_path: Path
) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    def fan_out(state: Job) -> list[Send]:
        return [Send("summarize", {"doc": doc}) for doc in state["docs"]]

    async def summarize(state: Job) -> Job:
        return {"summaries": [await _asay(f"summary of {state['doc']}")]}

    async def report(state: Job) -> Job:
        return {"report": await _asay(" | ".join(sorted(state["summaries"])))}

    graph = StateGraph(Job)
    graph.add_node("summarize", summarize)
    graph.add_node("report", report)
    graph.add_conditional_edges(START, fan_out, ["summarize"])
    graph.add_edge("summarize", "report")
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "async.db")) as saver:
        app = graph.compile(checkpointer=saver)
        with workflow("digest"):
            out = await app.ainvoke(
                {"docs": ["a", "b", "c"]}, {"configurable": {"thread_id": "send-1"}}
            )
    assert out["report"] == "summary of a | summary of b | summary of c"
    assert telemetry.anomalies() == []
    nodes = _nodes(telemetry)
    assert len(nodes["summarize"]) == 3
    assert {_attrs(s)[A.GEN_AI_AGENT_NAME] for s in nodes["summarize"]} == {"summarize"}
    (report_span,) = nodes["report"]
    (read,) = _children(telemetry, report_span, "agentstate.read")
    summaries_version = _read_versions(read)["langgraph:send-1/summaries"]
    # the three pushes were merged into one write, whose version the report read
    (merged,) = [
        s
        for s in telemetry.spans()
        if _attrs(s).get(A.WRITE_FACTS) == ("langgraph:send-1/summaries",)
    ]
    assert _attrs(merged)[A.WRITE_VERSIONS] == (summaries_version,)
    assert _attrs(merged)[lg.NODE] == "summarize"


LAZY = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_agent_state.instrumentation.langgraph import LangGraphInstrumentor

provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
LangGraphInstrumentor().instrument(tracer_provider=provider)
assert "langgraph" not in sys.modules, "instrument() imported langgraph"

from typing import TypedDict
from langgraph.graph import START, StateGraph

class S(TypedDict):
    x: int

graph = StateGraph(S)
graph.add_node("double", lambda s: {"x": s["x"] * 2})
graph.add_edge(START, "double")
assert graph.compile().invoke({"x": 2}) == {"x": 4}
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_langgraph_is_wrapped_when_imported_not_before() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "['invoke_agent double', 'invoke_workflow LangGraph']" in done.stdout


def test_fact_rules_name_channels(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor
) -> None:
    configure(rules=[{"name": "desk_policy", "keys": ["langgraph:{thread}/policy"]}])
    _, outcome = _stale_run(telemetry, InMemorySaver(), "case-10")
    assert outcome["result"]["answer"] == "answer under p1"
    (anomaly,) = telemetry.anomalies()
    assert _attrs(anomaly)[A.ANOMALY_FACT] == "desk_policy/case-10"
    (counted,) = [
        p
        for p in telemetry.metric_points(A.METRIC_ANOMALIES)
        if p.attributes["kind"] == "stale_read"
    ]
    assert counted.attributes["fact_rule"] == "desk_policy"


def test_an_update_racing_a_node_that_writes_the_same_channel_is_a_lost_update(
    telemetry: Telemetry, instrumented: LangGraphInstrumentor, saver: BaseCheckpointSaver[Any]
) -> None:
    """The supervisor sets the plan while the planner is still writing its own: both start
    from the same (empty) plan, and the planner's checkpoint, saved later, drops the
    supervisor's plan from the thread."""
    hooks = Hooks()
    hooks.release_planning.clear()
    app = build_desk(saver, hooks)
    cfg = {"configurable": {"thread_id": "case-11"}}

    def supervisor() -> None:
        try:
            assert hooks.in_planning.wait(WAIT_S)
            with agent("supervisor"):
                app.update_state(cfg, {"plan": "escalate"}, as_node="planner")
        finally:
            hooks.release_planning.set()

    with workflow("plan-race"):
        thread = _in_thread(supervisor)
        result = app.invoke({"question": "refund?", "policy": "p1"}, cfg, durability="sync")
        thread.join(WAIT_S)
    assert result["plan"] == "plan for refund?"  # the supervisor's plan is gone
    assert app.get_state(cfg).values["plan"] == "plan for refund?"
    (lost,) = telemetry.anomalies("lost_update")
    attrs = _attrs(lost)
    assert attrs[A.ANOMALY_FACT] == "langgraph:case-11/plan"
    assert attrs[A.ANOMALY_OBSERVED] == "none"  # both started from no plan
    assert attrs[A.ANOMALY_AGENTS] == ("supervisor", "planner")
    (update,) = [s for s in telemetry.spans() if _attrs(s).get(lg.AS_NODE) == ("planner",)]
    assert _attrs(update)[A.READ_VERSIONS] == ("none",)
    assert attrs[A.ANOMALY_EXPECTED] == _attrs(update)[A.WRITE_VERSIONS][0]
    # nothing read the supervisor's plan after it was lost, and nobody read stale
    assert {str(_attrs(a)[A.ANOMALY_KIND]) for a in telemetry.anomalies()} == {"lost_update"}
