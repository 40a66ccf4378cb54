"""LanceDB instrumentation on real embedded tables in temp dirs: span shape, facts, versions,
findings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest
from lancedb.query import LanceVectorQueryBuilder
from lancedb.table import LanceTable
from opentelemetry import context as otel_context
from opentelemetry.trace import StatusCode

from otel_agent_state import StaleReadError, agent, configure, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.lancedb import LanceDBInstrumentor, parse_id_columns

from .conftest import Telemetry
from .vector_support import check_stale_memory, lost_update_in_threads

SECRET = "the customer's account number is 0042"
VECTOR = [0.9, 0.1, 0.0, 0.2]
VERSIONED = [
    {
        "name": "memory",
        "keys": [
            {"pattern": "lancedb:memories/{id}", "tier": "primary"},
            {"pattern": "lancedb:memories_index/{id}", "tier": "index"},
        ],
        "version": {"column": "version"},
    }
]
DIGESTED = [{"name": "memory", "keys": ["lancedb:memories/{id}", "lancedb:memories_index/{id}"]}]


def _row(memory_id: int, text: str, version: int, vector: list[float] = VECTOR) -> dict[str, Any]:
    return {"id": memory_id, "vector": vector, "text": text, "version": version}


@pytest.fixture
def tables(telemetry: Telemetry, tmp_path: Path) -> Iterator[tuple[LanceTable, LanceTable]]:
    db = lancedb.connect(str(tmp_path / "lance"))
    primary = db.create_table("memories", data=[_row(7, "customer prefers email", 1)])
    index = db.create_table("memories_index", data=[_row(7, "customer prefers email", 1)])
    instrumentor = LanceDBInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield primary, index
    instrumentor.uninstrument()


def _attrs(telemetry: Telemetry, name: str) -> dict[str, Any]:
    return dict(telemetry.span_named(name).attributes or {})


def test_span_shape_facts_and_versions(
    telemetry: Telemetry, tables: tuple[LanceTable, LanceTable]
) -> None:
    primary, _ = tables
    with agent("curator"):
        primary.add([_row(8, SECRET, 1, [0.1, 0.9, 0, 0]), _row(9, "plan: premium", 1)])
    add = _attrs(telemetry, "add memories")
    assert add[A.DB_SYSTEM_NAME] == "lancedb"
    assert (add[A.DB_COLLECTION_NAME], add[A.DB_OPERATION_NAME]) == ("memories", "add")
    assert add[A.DB_QUERY_SUMMARY] == "add memories"
    assert (add[A.STORE], add[A.TIER], add[A.OP], add[A.COMMITTED]) == (
        "lancedb",
        "index",
        "write",
        True,
    )
    assert add[A.GEN_AI_AGENT_NAME] == "curator"
    assert add[A.WRITE_FACTS] == ("lancedb:memories/8", "lancedb:memories/9")
    assert add["agentstate.write.store_order"] == primary.version
    written = dict(zip(add[A.WRITE_FACTS], add[A.WRITE_VERSIONS], strict=True))
    assert all(v.startswith("h:") for v in written.values())
    for value in add.values():
        assert SECRET not in str(value) and "0.9" not in str(value)
    assert [s.name for s in telemetry.spans()] == ["add memories", "invoke_agent curator"]

    hits = primary.search([0.1, 0.9, 0, 0]).limit(2).to_list()
    assert hits[0]["id"] == 8
    search = _attrs(telemetry, "search memories")
    assert search[A.OP] == "read"
    assert search[A.READ_FACTS][0] == "lancedb:memories/8"
    assert search[A.READ_VERSIONS][0] == written["lancedb:memories/8"]

    primary.update(where="id = 8", values={"text": "redacted"})
    update = _attrs(telemetry, "update memories")
    assert update[A.WRITE_FACTS] == ("lancedb:memories/8",)
    assert update[A.WRITE_VERSIONS] != (written["lancedb:memories/8"],)
    rows = primary.search().where("id = 8").to_list()  # to_list runs to_arrow: one span
    assert [r["text"] for r in rows] == ["redacted"]
    reads = [s for s in telemetry.spans() if s.name == "search memories"]
    assert len(reads) == 2
    assert (reads[-1].attributes or {})[A.READ_VERSIONS] == update[A.WRITE_VERSIONS]

    primary.search().select(["id", "text"]).to_list()
    assert (telemetry.spans()[-1].attributes or {})[A.UNRESOLVED] == "columns not selected"

    primary.delete("text = 'redacted'")
    delete = _attrs(telemetry, "delete memories")
    assert (delete[A.OP], delete[A.WRITE_FACTS], delete[A.WRITE_VERSIONS]) == (
        "delete",
        ("lancedb:memories/8",),
        ("none",),
    )


def test_merge_insert_arrow_data_and_version_column(
    telemetry: Telemetry, tables: tuple[LanceTable, LanceTable]
) -> None:
    configure(rules=VERSIONED)
    primary, _ = tables
    data = pa.Table.from_pylist(
        [_row(7, "customer prefers phone", 2), _row(10, "new memory", 1)],
        schema=primary.schema,
    )
    primary.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
    merge = _attrs(telemetry, "merge_insert memories")
    assert (merge[A.TIER], merge[A.WRITE_FACTS], merge[A.WRITE_VERSIONS]) == (
        "primary",
        ("memory/7", "memory/10"),
        ("n:2", "n:1"),
    )
    # a projection with the version column is still versioned
    primary.search().where("id = 7").select(["id", "version"]).to_list()
    assert _attrs(telemetry, "search memories")[A.READ_VERSIONS] == ("n:2",)


def test_configured_id_column_and_errors(telemetry: Telemetry, tmp_path: Path) -> None:
    assert parse_id_columns("memories=memory_id, *=key") == ("key", {"memories": "memory_id"})
    db = lancedb.connect(str(tmp_path / "lance"))
    table = db.create_table(
        "notes", data=[{"note_id": "a/1", "vector": VECTOR, "body": "x", "version": 1}]
    )
    instrumentor = LanceDBInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, id_columns={"notes": "note_id"})
    try:
        table.update(where="note_id = 'a/1'", values={"body": "y"})
        assert _attrs(telemetry, "update notes")[A.WRITE_FACTS] == ("lancedb:notes/a%2F1",)
        with pytest.raises(Exception) as caught:
            table.add([{"note_id": "b", "vector": [1.0, 2.0], "body": "z", "version": 1}])
        assert type(caught.value).__module__.split(".")[0] in ("pyarrow", "lancedb", "builtins")
        failed = telemetry.span_named("add notes")
        assert failed.status.status_code == StatusCode.ERROR
    finally:
        instrumentor.uninstrument()


# --------------------------------------------------------------------------- findings


def _workflow(primary: LanceTable, index: LanceTable, sync: bool) -> str:
    with workflow("support-ticket"):
        with agent("indexer"):  # syncs the index from the primary: a copy (SPEC §5)
            [row] = primary.search().where("id = 7").to_list()
            index.update(where="id = 7", values={"text": row["text"], "version": row["version"]})
        with agent("memory-curator"):
            primary.update(where="id = 7", values={"text": "customer prefers phone", "version": 2})
            if sync:
                index.update(
                    where="id = 7", values={"text": "customer prefers phone", "version": 2}
                )
        with agent("responder"), decision("reply-channel"):
            hits = index.search(VECTOR).limit(1).to_list()
    return str(hits[0]["text"])


@pytest.mark.parametrize("rules", [VERSIONED, DIGESTED], ids=["column", "digest"])
def test_stale_memory_retrieval_flagged_and_twin_clean(
    telemetry: Telemetry, tables: tuple[LanceTable, LanceTable], rules: list[Any]
) -> None:
    configure(rules=rules)
    primary, index = tables
    # With digests the index's value is judged through the indexer's copy of the primary's.
    assert _workflow(primary, index, sync=False) == "customer prefers email"
    versions = ("n:1", "n:2") if rules is VERSIONED else None
    check_stale_memory(telemetry, "update memories", "search memories_index", versions)

    telemetry.exporter.clear()
    assert _workflow(primary, index, sync=True) == "customer prefers phone"
    assert telemetry.anomalies() == []


def test_lost_update_two_agents_in_threads(
    telemetry: Telemetry, tables: tuple[LanceTable, LanceTable]
) -> None:
    configure(rules=DIGESTED)
    primary, _ = tables

    def read() -> dict[str, Any]:
        [seen] = primary.search().where("id = 7").to_list()
        return dict(seen)

    def write(name: str, seen: dict[str, Any]) -> None:
        text = f"{seen['text']} ({name})".replace("'", "''")
        primary.update(where="id = 7", values_sql={"text": f"'{text}'"})

    lost_update_in_threads(telemetry, read, write)
    assert primary.search().where("id = 7").to_list()[0]["text"] == "customer prefers email (bob)"


@pytest.mark.parametrize(("alice", "bob", "lost"), [("text", "version", 0), ("text", "text", 1)])
def test_column_updates_lose_only_the_columns_both_set(
    telemetry: Telemetry, tables: tuple[LanceTable, LanceTable], alice: str, bob: str, lost: int
) -> None:
    """`update(values=...)` sets those columns of the stored rows and keeps the others: two
    agents that both read the row and update different columns lose nothing."""
    configure(rules=DIGESTED)
    primary, _ = tables
    columns = {"alice": alice, "bob": bob}
    values = {"text": "customer prefers phone", "version": 5}
    both_read, alice_wrote = threading.Barrier(2, timeout=30), threading.Event()

    def work(parent: Any, name: str) -> None:
        token = otel_context.attach(parent)
        try:
            with agent(name):
                primary.search().where("id = 7").to_list()
                both_read.wait()  # both read before either writes; alice writes first
                if name == "bob":
                    alice_wrote.wait(30)
                column = columns[name]
                value = f"{values[column]} ({name})" if column == "text" else values[column]
                primary.update(where="id = 7", values={column: value})
                alice_wrote.set()
        finally:
            otel_context.detach(token)

    with workflow("memories"):
        parent = otel_context.get_current()
        threads = [threading.Thread(target=work, args=(parent, n)) for n in columns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    [row] = primary.search().where("id = 7").to_list()
    assert row["text"] == f"customer prefers phone ({'bob' if lost else 'alice'})"
    assert row["version"] == (1 if lost else 5)
    assert len(telemetry.anomalies("lost_update")) == lost
    update = [s for s in telemetry.spans() if s.name == "update memories"][-1]
    assert (update.attributes or {})[A.WRITE_FIELDS] == (bob,)


def test_raise_mode(telemetry: Telemetry, tables: tuple[LanceTable, LanceTable]) -> None:
    configure(rules=VERSIONED, on_anomaly="raise")
    primary, index = tables
    with workflow("support-ticket"):
        with agent("memory-curator"):
            primary.update(where="id = 7", values={"version": 2})
        with agent("responder"), pytest.raises(StaleReadError) as caught:
            index.search(VECTOR).limit(1).to_list()
    found = caught.value.anomaly
    assert (found.fact, found.observed_version, found.expected_version) == (
        "memory/7",
        "n:1",
        "n:2",
    )
    assert telemetry.span_named("search memories_index").status.status_code == StatusCode.ERROR


def test_uninstrument_restores_the_original_methods(telemetry: Telemetry, tmp_path: Path) -> None:
    originals = {m: LanceTable.__dict__[m] for m in ("add", "update", "delete")}
    to_arrow = LanceVectorQueryBuilder.__dict__["to_arrow"]
    instrumentor = LanceDBInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert LanceTable.__dict__["add"] is not originals["add"]
    instrumentor.uninstrument()
    for name, function in originals.items():
        assert LanceTable.__dict__[name] is function
    assert LanceVectorQueryBuilder.__dict__["to_arrow"] is to_arrow
    table = lancedb.connect(str(tmp_path / "l")).create_table("m", data=[_row(1, "x", 1)])
    table.add([_row(2, "y", 1)])
    table.search(VECTOR).to_list()
    assert telemetry.spans() == []
