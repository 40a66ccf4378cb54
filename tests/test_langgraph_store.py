"""LangGraph `BaseStore` (long-term memory) through our instrumentation, on the real
backends: InMemoryStore, SqliteStore (file), PostgresStore (the test server)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore, GetOp, PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite import SqliteStore
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import agent, api, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.langgraph_store import LangGraphStoreInstrumentor
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry

NS = ("users", "u-42", "memories")
FACT = "langgraph-store:users/u-42/memories/channel"


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    drivers = SQLite3Instrumentor()
    drivers.instrument(tracer_provider=telemetry.provider)
    store = LangGraphStoreInstrumentor()
    store.instrument(tracer_provider=telemetry.provider)
    yield telemetry
    store.uninstrument()
    drivers.uninstrument()


def _sqlite_store(path: Path) -> SqliteStore:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    store = SqliteStore(conn)
    with suppress_instrumentation():
        store.setup()
    return store


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _observations(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [_attrs(s) for s in telemetry.spans() if A.OP in _attrs(s)]


def _remember(store: BaseStore, channel: str, version: int) -> None:
    store.put(NS, "channel", {"channel": channel, "version": version})


def test_one_observation_per_operation_and_none_beneath(
    instrumented: Telemetry, tmp_path: Path
) -> None:
    store = _sqlite_store(tmp_path / "memory.db")
    with workflow("support"), agent("curator"):
        _remember(store, "email", 1)
        item = store.get(NS, "channel")
        hits = store.search(("users",))
        store.delete(NS, "channel")
        gone = store.get(NS, "channel")
        store.batch([GetOp(NS, "channel"), PutOp(NS, "other", {"x": 1})])
    assert item is not None and item.value["channel"] == "email" and len(hits) == 1
    assert gone is None
    observed = _observations(instrumented)
    # Only the store's spans: the sqlite3 statements beneath were not counted again.
    assert {o[A.STORE] for o in observed} == {"langgraph-store"}
    ops = [(o[A.DB_OPERATION_NAME], o[A.OP], o[A.GEN_AI_OPERATION_NAME]) for o in observed]
    assert ops == [
        ("put", "write", "upsert_memory"),
        ("get", "read", "search_memory"),
        ("search", "read", "search_memory"),
        ("delete", "delete", "delete_memory"),
        ("get", "read", "search_memory"),
        ("batch", "read_write", "upsert_memory"),
    ]
    put, get, search, delete, absent, batch = observed
    written = put[A.WRITE_VERSIONS][0]
    assert put[A.WRITE_FACTS] == (FACT,) and written.startswith("t:")
    assert get[A.READ_VERSIONS] == (written,) and search[A.READ_VERSIONS] == (written,)
    assert (delete[A.WRITE_VERSIONS], absent[A.READ_VERSIONS]) == (("none",), ("none",))
    assert put[A.GEN_AI_MEMORY_STORE_ID] == "users/u-42/memories"
    assert put[A.GEN_AI_MEMORY_RECORD_ID] == "channel"
    assert batch[A.READ_VERSIONS] == ("none",) and batch[A.GEN_AI_MEMORY_RECORD_COUNT] == 2
    assert put[A.TIER] == "primary"
    assert instrumented.anomalies() == []


def test_async_twins(instrumented: Telemetry) -> None:
    store = InMemoryStore()

    async def run() -> Any:
        with workflow("support"), agent("curator"):
            await store.aput(NS, "channel", {"channel": "email"})
            found = await store.aget(NS, "channel")
            await store.asearch(("users",))
            await store.adelete(NS, "channel")
            return found

    item = asyncio.run(run())
    assert item is not None and item.value == {"channel": "email"}
    observed = _observations(instrumented)
    assert [o[A.DB_OPERATION_NAME] for o in observed] == ["aput", "aget", "asearch", "adelete"]
    written = observed[0][A.WRITE_VERSIONS]
    assert observed[1][A.READ_VERSIONS] == written == observed[2][A.READ_VERSIONS]


def _stale_memory(
    telemetry: Telemetry, primary: BaseStore, replica: BaseStore, synced: bool
) -> str:
    """The curator updates the primary memory; the responder reads a copy of the store that
    lags (an agent process's own store loaded earlier) unless it was synced first."""
    with suppress_instrumentation():
        for store in (primary, replica):
            _remember(store, "email", 1)
    with workflow("support"):
        with agent("memory-curator"):
            _remember(primary, "phone", 2)
        if synced:
            with agent("sync"):
                item = primary.get(NS, "channel")
                assert item is not None
                replica.put(NS, "channel", item.value)
        with agent("responder"), decision("reply channel"):
            item = replica.get(NS, "channel")
            assert item is not None
            return str(item.value["channel"])


@pytest.mark.parametrize("synced", [False, True])
def test_superseded_memory_from_a_lagging_copy(instrumented: Telemetry, synced: bool) -> None:
    channel = _stale_memory(instrumented, InMemoryStore(), InMemoryStore(), synced)
    assert channel == ("phone" if synced else "email")
    stale = instrumented.anomalies("stale_read")
    if synced:
        assert instrumented.anomalies() == []
        return
    [anomaly] = stale
    attrs = _attrs(anomaly)
    assert attrs[A.ANOMALY_FACT] == FACT
    assert attrs[A.ANOMALY_AGENTS] == ("responder", "memory-curator")
    assert attrs[A.ANOMALY_SEVERITY] == "error"


def test_configured_version_field_on_sqlite(instrumented: Telemetry, tmp_path: Path) -> None:
    """SqliteStore dates items to the second: a configured JSON field versions them."""
    api.configure(
        rules=[
            {
                "name": "channel",
                "keys": ["langgraph-store:users/{user}/memories/channel"],
                "version": {"json_field": "version"},
            }
        ]
    )
    primary = _sqlite_store(tmp_path / "primary.db")
    replica = _sqlite_store(tmp_path / "replica.db")
    _stale_memory(instrumented, primary, replica, synced=False)
    [anomaly] = instrumented.anomalies("stale_read")
    attrs = _attrs(anomaly)
    assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
    assert attrs[A.ANOMALY_FACT] == "channel/u-42", attrs[A.ANOMALY_FACT]


def _read_then_write(store: BaseStore, name: str, barrier: Any) -> None:
    with agent(name):
        item = store.get(NS, "channel")
        assert item is not None
        if barrier is not None:
            barrier.wait()
            if name == "bob":
                barrier.wait()
        store.put(NS, "channel", {**item.value, "noted_by": name})
        if barrier is not None and name == "alice":
            barrier.wait()


@pytest.mark.parametrize("concurrent", [True, False])
def test_two_agents_overwrite_one_memory(instrumented: Telemetry, concurrent: bool) -> None:
    import threading

    from opentelemetry import context

    store = InMemoryStore()
    with suppress_instrumentation():
        _remember(store, "email", 1)
    barrier = threading.Barrier(2, timeout=30) if concurrent else None
    errors: list[BaseException] = []
    with workflow("support"):
        parent = context.get_current()

        def run(name: str) -> None:
            token = context.attach(parent)
            try:
                _read_then_write(store, name, barrier)
            except BaseException as exc:
                errors.append(exc)
                if barrier is not None:
                    barrier.abort()
            finally:
                context.detach(token)

        if concurrent:
            threads = [threading.Thread(target=run, args=(n,)) for n in ("alice", "bob")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            run("alice")
            run("bob")
    assert not errors
    lost = instrumented.anomalies("lost_update")
    if not concurrent:
        assert instrumented.anomalies() == []
        return
    [anomaly] = lost
    attrs = _attrs(anomaly)
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_AGENTS]) == (FACT, ("alice", "bob"))


def test_postgres_store(instrumented: Telemetry, postgres_dsn: str) -> None:
    import psycopg
    from langgraph.store.postgres import PostgresStore
    from psycopg.rows import dict_row

    schema = f"agentstate_lgs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with psycopg.connect(
            postgres_dsn,
            autocommit=True,
            prepare_threshold=0,
            row_factory=dict_row,  # type: ignore[arg-type]
            options=f"-c search_path={schema}",
        ) as conn:
            store = PostgresStore(conn)
            with suppress_instrumentation():
                store.setup()
            with workflow("support"), agent("curator"):
                _remember(store, "email", 1)
                _remember(store, "phone", 2)
                item = store.get(NS, "channel")
            assert item is not None and item.value["channel"] == "phone"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    observed = _observations(instrumented)
    assert [o[A.STORE] for o in observed] == ["langgraph-store"] * 3
    first, second, read = observed
    assert first[A.WRITE_VERSIONS] != second[A.WRITE_VERSIONS]
    assert read[A.READ_VERSIONS] == second[A.WRITE_VERSIONS]
    assert instrumented.anomalies() == []


def test_uninstrument_takes_out_only_ours(telemetry: Telemetry) -> None:
    before = (vars(BaseStore)["get"], vars(InMemoryStore)["batch"])
    instrumentor = LangGraphStoreInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert vars(BaseStore)["get"] is not before[0]
    instrumentor.uninstrument()
    assert (vars(BaseStore)["get"], vars(InMemoryStore)["batch"]) == before
    InMemoryStore().put(NS, "channel", {"channel": "email"})
    assert _observations(telemetry) == []


def test_raise_mode_halts_the_stale_read(instrumented: Telemetry) -> None:
    """OTEL_AGENTSTATE_ON_ANOMALY=raise: the superseded item never reaches the agent."""
    from otel_agent_state import StaleReadError

    api.configure(on_anomaly="raise")
    primary, replica = InMemoryStore(), InMemoryStore()
    with suppress_instrumentation():
        for store in (primary, replica):
            _remember(store, "email", 1)
    with workflow("support"):
        with agent("memory-curator"):
            _remember(primary, "phone", 2)
        with agent("responder"), pytest.raises(StaleReadError) as caught:
            replica.get(NS, "channel")
    assert caught.value.anomaly.fact == FACT


def test_graph_nodes_share_memory_through_the_store(instrumented: Telemetry) -> None:
    """In a compiled graph (our LangGraph instrumentation on), store calls made by nodes are
    the nodes' observations: the agent is the node."""
    from typing import TypedDict

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    from otel_agent_state.instrumentation.langgraph import LangGraphInstrumentor

    class State(TypedDict):
        reply: str

    def curator(state: State, *, store: BaseStore) -> dict[str, Any]:
        _remember(store, "phone", 2)
        return {}

    def responder(state: State, *, store: BaseStore) -> dict[str, Any]:
        item = store.get(NS, "channel")
        return {"reply": item.value["channel"] if item is not None else ""}

    graph = StateGraph(State)
    graph.add_node("curator", curator)
    graph.add_node("responder", responder)
    graph.add_edge(START, "curator")
    graph.add_edge("curator", "responder")
    graph.add_edge("responder", END)
    nodes = LangGraphInstrumentor()
    nodes.instrument(tracer_provider=instrumented.provider)
    try:
        app = graph.compile(store=InMemoryStore(), checkpointer=InMemorySaver())
        result = app.invoke({"reply": ""}, {"configurable": {"thread_id": "t-1"}})
    finally:
        nodes.uninstrument()
    assert result["reply"] == "phone"
    observed = [o for o in _observations(instrumented) if o[A.STORE] == "langgraph-store"]
    assert [(o[A.DB_OPERATION_NAME], o[A.GEN_AI_AGENT_NAME]) for o in observed] == [
        ("put", "curator"),
        ("get", "responder"),
    ]
    assert observed[1][A.READ_VERSIONS] == observed[0][A.WRITE_VERSIONS]
    assert instrumented.anomalies() == []


def test_suppressed_calls_make_no_spans(instrumented: Telemetry) -> None:
    store = InMemoryStore()
    with suppress_instrumentation():
        _remember(store, "email", 1)
        assert store.get(NS, "channel") is not None
        asyncio.run(store.aget(NS, "channel"))
    assert instrumented.spans() == []
