"""Milvus Lite (embedded, on disk) through our pymilvus instrumentation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pymilvus import MilvusClient

from otel_agent_state import agent, api, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.milvus import MilvusInstrumentor

from .conftest import Telemetry
from .vector_support import check_stale_memory, lost_update_in_threads

VECTOR = [0.9, 0.1, 0.0, 0.2]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    """One Milvus Lite database for the module (it starts a local server process)."""
    path = tmp_path_factory.mktemp("milvus") / "memories.db"
    client = MilvusClient(str(path))
    yield client
    client.close()


@pytest.fixture
def milvus(client: MilvusClient, telemetry: Telemetry) -> Iterator[tuple[MilvusClient, str]]:
    """A fresh collection per test (names unique), with our instrumentation on."""
    name = f"mem_{uuid.uuid4().hex[:10]}"
    client.create_collection(name, dimension=4)
    instrumentor = MilvusInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield client, name
    instrumentor.uninstrument()
    with suppress_instrumentation():
        client.drop_collection(name)


def _entity(version: int, text: str, pk: int = 7) -> dict[str, Any]:
    return {"id": pk, "vector": VECTOR, "text": text, "version": version}


def _observations(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in telemetry.spans() if A.OP in (s.attributes or {})]


def test_each_operation_observes_entities(
    milvus: tuple[MilvusClient, str], telemetry: Telemetry
) -> None:
    client, name = milvus
    with workflow("support"), agent("curator"):
        client.insert(name, [_entity(1, "email")])
        client.upsert(name, [_entity(2, "phone")])
        got = client.get(name, ids=[7, 8])
        queried = client.query(name, filter="id in [7]", output_fields=["*"])
        hits = client.search(name, data=[VECTOR], limit=1, output_fields=["*"])
        partial = client.query(name, filter="id in [7]", output_fields=["text"])
        client.delete(name, ids=[7])
        client.delete(name, filter="id in [9]")
    assert got[0]["text"] == "phone" and queried[0]["version"] == 2
    assert hits[0][0]["entity"]["text"] == "phone" and partial[0]["text"] == "phone"
    fact = f"milvus:{name}/7"
    ins, ups, get, query, search, part, delete, by_filter = _observations(telemetry)
    assert [o[A.DB_OPERATION_NAME] for o in (ins, ups, get, query, search, part)] == [
        "insert",
        "upsert",
        "get",
        "query",
        "search",
        "query",
    ]
    assert ins[A.WRITE_FACTS] == (fact,) and ins[A.TIER] == "index"
    v1, v2 = ins[A.WRITE_VERSIONS][0], ups[A.WRITE_VERSIONS][0]
    assert v1.startswith("h:") and v1 != v2
    assert get[A.READ_FACTS] == (fact, f"milvus:{name}/8")
    assert get[A.READ_VERSIONS] == (v2, "none")
    assert query[A.READ_VERSIONS] == (v2,) and search[A.READ_VERSIONS] == (v2,)
    assert A.READ_FACTS not in part and part[A.UNRESOLVED] == "partial entity"
    assert delete[A.WRITE_VERSIONS] == ("none",) and delete[A.OP] == "delete"
    assert by_filter[A.WRITE_FACTS] == (f"milvus:{name}",)
    assert telemetry.anomalies() == []


def test_configured_version_field(milvus: tuple[MilvusClient, str], telemetry: Telemetry) -> None:
    client, name = milvus
    api.configure(
        rules=[
            {
                "name": "memory",
                "keys": [f"milvus:{name}/{{id}}"],
                "version": {"payload_field": "version"},
            }
        ]
    )
    with workflow("support"), agent("curator"):
        client.insert(name, [_entity(3, "email")])
        client.query(name, filter="id in [7]", output_fields=["version"])
    write, read = _observations(telemetry)
    assert write[A.WRITE_VERSIONS] == ("n:3",) and read[A.READ_VERSIONS] == ("n:3",)
    assert write[A.WRITE_FACTS] == ("memory/7",)


@pytest.mark.parametrize("synced", [False, True])
def test_superseded_memory_from_a_lagging_index(
    client: MilvusClient, telemetry: Telemetry, synced: bool
) -> None:
    """The curator updates memory 7 in the primary collection; the responder searches the
    index collection a sync job copies it into, which lags unless the job ran first."""
    suffix = uuid.uuid4().hex[:8]
    primary, index = f"mem_{suffix}", f"idx_{suffix}"
    api.configure(
        rules=[
            {
                "name": "memory",
                "keys": [
                    {"pattern": f"milvus:{primary}/{{id}}", "tier": "primary"},
                    {"pattern": f"milvus:{index}/{{id}}", "tier": "index"},
                ],
                "version": {"payload_field": "version"},
            }
        ]
    )
    for name in (primary, index):
        client.create_collection(name, dimension=4)
        with suppress_instrumentation():
            client.insert(name, [_entity(1, "customer prefers email")])
    instrumentor = MilvusInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        with workflow("support-ticket"):
            with agent("memory-curator"):
                client.upsert(primary, [_entity(2, "customer prefers phone")])
                if synced:
                    client.upsert(index, [_entity(2, "customer prefers phone")])
            with agent("responder"), decision("reply channel"):
                hits = client.search(index, data=[VECTOR], limit=1, output_fields=["*"])
    finally:
        instrumentor.uninstrument()
        with suppress_instrumentation():
            for name in (primary, index):
                client.drop_collection(name)
    text = hits[0][0]["entity"]["text"]
    assert text == ("customer prefers phone" if synced else "customer prefers email")
    if synced:
        assert telemetry.anomalies() == []
        return
    attrs = check_stale_memory(telemetry, f"upsert {primary}", f"search {index}", ("n:1", "n:2"))
    assert attrs[A.ANOMALY_FACT] == "memory/7"


def test_two_agents_overwrite_one_memory(
    milvus: tuple[MilvusClient, str], telemetry: Telemetry
) -> None:
    client, name = milvus
    api.configure(rules=[{"name": "memory", "keys": [f"milvus:{name}/{{id}}"]}])
    with suppress_instrumentation():
        client.insert(name, [_entity(1, "customer prefers email")])

    def read() -> dict[str, Any]:
        [seen] = client.get(name, ids=[7])
        return dict(seen)

    def write(agent_name: str, seen: dict[str, Any]) -> None:
        text = f"{seen['text']}; noted by {agent_name}"
        client.upsert(name, [_entity(int(seen["version"]) + 1, text)])

    lost_update_in_threads(telemetry, read, write)
    with suppress_instrumentation():
        [final] = client.get(name, ids=[7])
    assert final["text"] == "customer prefers email; noted by bob"


def test_sequential_edits_are_silent(
    milvus: tuple[MilvusClient, str], telemetry: Telemetry
) -> None:
    client, name = milvus
    api.configure(rules=[{"name": "memory", "keys": [f"milvus:{name}/{{id}}"]}])
    with suppress_instrumentation():
        client.insert(name, [_entity(1, "customer prefers email")])
    with workflow("support-ticket"):
        for agent_name in ("alice", "bob"):
            with agent(agent_name):
                [seen] = client.get(name, ids=[7])
                client.upsert(name, [_entity(int(seen["version"]) + 1, f"{seen['text']}!")])
    assert telemetry.anomalies() == []


def test_uninstrument_restores_the_client(client: MilvusClient, telemetry: Telemetry) -> None:
    before = {m: vars(MilvusClient)[m] for m in ("insert", "get", "search")}
    instrumentor = MilvusInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert vars(MilvusClient)["insert"] is not before["insert"]
    instrumentor.uninstrument()
    assert {m: vars(MilvusClient)[m] for m in before} == before


def test_suppressed_calls_make_no_spans(
    milvus: tuple[MilvusClient, str], telemetry: Telemetry
) -> None:
    client, name = milvus
    with suppress_instrumentation():
        client.insert(name, [_entity(1, "email")])
        assert client.get(name, ids=[7])[0]["text"] == "email"
    assert telemetry.spans() == []
