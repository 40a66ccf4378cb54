"""Findings from plain qdrant-client calls on real local-mode stores: a stale memory
retrieval from a lagging copy, its correct twin, raise mode, lost updates (sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.trace import StatusCode
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from otel_agent_state import StaleReadError, agent, configure, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

from .conftest import Telemetry
from .vector_support import check_stale_memory, lost_update_in_threads

# The primary collection and an index copy that a sync job fills (and may lag behind).
VERSIONED = [
    {
        "name": "memory",
        "keys": [
            {"pattern": "qdrant:memories/{id}", "tier": "primary"},
            {"pattern": "qdrant:memories_index/{id}", "tier": "index"},
        ],
        "version": {"payload_field": "version"},
    }
]
DIGESTED = [  # no version field: keyed digests of the payload
    {
        "name": "memory",
        "keys": [
            {"pattern": "qdrant:memories/{id}", "tier": "primary"},
            {"pattern": "qdrant:memories_index/{id}", "tier": "index"},
        ],
    }
]
VECTOR = [0.9, 0.1, 0.0, 0.2]


def _point(version: int, text: str) -> models.PointStruct:
    return models.PointStruct(id=7, vector=VECTOR, payload={"text": text, "version": version})


def _seed(client: QdrantClient) -> None:
    for name in ("memories", "memories_index"):
        client.create_collection(
            name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        client.upsert(name, points=[_point(1, "customer prefers email")])


@pytest.fixture
def client(telemetry: Telemetry, tmp_path: Path) -> Iterator[QdrantClient]:
    store = QdrantClient(path=str(tmp_path / "qdrant"))
    _seed(store)  # before instrumenting: the initial state
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield store
    instrumentor.uninstrument()
    store.close()


def _workflow(client: QdrantClient, replicate: bool) -> list[Any]:
    with workflow("support-ticket"):
        with agent("memory-curator"):
            client.upsert("memories", points=[_point(2, "customer prefers phone")])
            if replicate:  # the correct twin: the index copy caught up before anyone reads
                client.upsert("memories_index", points=[_point(2, "customer prefers phone")])
        with agent("responder"), decision("reply-channel"):
            hits = client.query_points("memories_index", query=VECTOR, limit=3).points
    return hits


def test_stale_memory_retrieval_from_a_lagging_index_is_flagged(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    configure(rules=VERSIONED)
    hits = _workflow(client, replicate=False)
    assert hits[0].payload == {"text": "customer prefers email", "version": 1}
    check_stale_memory(telemetry, "upsert memories", "query_points memories_index", ("n:1", "n:2"))
    read = telemetry.span_named("query_points memories_index").attributes or {}
    assert (read[A.TIER], read[A.READ_FACTS], read[A.READ_VERSIONS]) == (
        "index",
        ("memory/7",),
        ("n:1",),
    )


def test_correct_twin_index_caught_up_is_not_flagged(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    configure(rules=VERSIONED)
    hits = _workflow(client, replicate=True)
    assert hits[0].payload == {"text": "customer prefers phone", "version": 2}
    assert telemetry.anomalies() == []


def test_stale_retrieval_with_digest_versions(telemetry: Telemetry, client: QdrantClient) -> None:
    configure(rules=DIGESTED)
    with workflow("support-ticket"):
        with agent("memory-curator"):
            # the curator writes v1 everywhere, then v2 to the primary only
            client.upsert("memories_index", points=[_point(1, "customer prefers email")])
            client.upsert("memories", points=[_point(2, "customer prefers phone")])
        with agent("responder"):
            client.retrieve("memories_index", ids=[7])
    [index_write, _] = [s for s in telemetry.spans() if s.name.startswith("upsert ")]
    old = (index_write.attributes or {})[A.WRITE_VERSIONS][0]
    new = (telemetry.span_named("upsert memories").attributes or {})[A.WRITE_VERSIONS][0]
    assert str(old).startswith("h:") and old != new
    [anomaly] = telemetry.anomalies("stale_read")
    attrs = anomaly.attributes or {}
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == (
        "memory/7",
        old,
        new,
    )
    assert attrs[A.ANOMALY_SEVERITY] == "warning"


def test_raise_mode_stops_the_stale_memory_before_the_agent_gets_it(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    configure(rules=VERSIONED, on_anomaly="raise")
    with workflow("support-ticket"):
        with agent("memory-curator"):
            client.upsert("memories", points=[_point(2, "customer prefers phone")])
        with agent("responder"):
            with pytest.raises(StaleReadError) as caught:
                client.query_points("memories_index", query=VECTOR, limit=3)
            fresh = client.retrieve("memories", ids=[7])
    assert fresh[0].payload == {"text": "customer prefers phone", "version": 2}
    found = caught.value.anomaly
    assert (found.fact, found.observed_version, found.expected_version) == (
        "memory/7",
        "n:1",
        "n:2",
    )
    read = telemetry.span_named("query_points memories_index")
    assert read.status.status_code == StatusCode.ERROR
    assert len(telemetry.anomalies("stale_read")) == 1


def test_lost_update_two_agents_in_threads_rewrite_the_same_memory(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    configure(rules=DIGESTED)

    def read() -> models.Record:
        [seen] = client.retrieve("memories", ids=[7])
        return seen

    def write(name: str, seen: models.Record) -> None:
        text = str((seen.payload or {})["text"]) + f" ({name})"
        client.upsert("memories", points=[_point(2, text)])

    lost = lost_update_in_threads(telemetry, read, write)
    # bob writes last: his write silently overwrites alice's
    [bob_write] = [
        s
        for s in telemetry.spans()
        if s.name == "upsert memories" and (s.attributes or {})[A.GEN_AI_AGENT_NAME] == "bob"
    ]
    assert lost.parent is not None and lost.parent.span_id == bob_write.context.span_id


def test_read_modify_write_in_turn_is_not_a_lost_update(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    configure(rules=DIGESTED)
    with workflow("support-ticket"):
        for name in ("alice", "bob"):
            with agent(name):
                [seen] = client.retrieve("memories", ids=[7])
                text = str((seen.payload or {})["text"]) + f" +{name}"
                client.upsert("memories", points=[_point(2, text)])
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- asyncio


@pytest_asyncio.fixture
async def aclient(telemetry: Telemetry, tmp_path: Path) -> AsyncIterator[AsyncQdrantClient]:
    store = AsyncQdrantClient(path=str(tmp_path / "aqdrant"))
    for name in ("memories", "memories_index"):
        await store.create_collection(
            name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        await store.upsert(name, points=[_point(1, "customer prefers email")])
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield store
    instrumentor.uninstrument()
    await store.close()


@pytest.mark.asyncio
async def test_async_concurrent_agents_lost_update(
    telemetry: Telemetry, aclient: AsyncQdrantClient
) -> None:
    configure(rules=DIGESTED)
    both_read = asyncio.Barrier(2)

    async def rewrite(name: str) -> None:
        async with agent(name):
            [seen] = await aclient.retrieve("memories", ids=[7])
            await both_read.wait()  # both read v1 before either writes
            text = str((seen.payload or {})["text"]) + f" ({name})"
            await aclient.upsert("memories", points=[_point(2, text)])

    async with workflow("support-ticket"):
        await asyncio.gather(rewrite("alice"), rewrite("bob"))
    [lost] = telemetry.anomalies("lost_update")
    attrs = lost.attributes or {}
    assert attrs[A.ANOMALY_FACT] == "memory/7"
    assert set(attrs[A.ANOMALY_AGENTS]) == {"alice", "bob"}
    writes = [s for s in telemetry.spans() if s.name == "upsert memories"]
    assert {(s.attributes or {})[A.GEN_AI_AGENT_NAME] for s in writes} == {"alice", "bob"}


@pytest.mark.asyncio
async def test_async_stale_retrieval_and_its_twin(
    telemetry: Telemetry, aclient: AsyncQdrantClient
) -> None:
    configure(rules=VERSIONED)

    async def curator(replicate: bool) -> None:
        async with agent("memory-curator"):
            await aclient.upsert("memories", points=[_point(2, "customer prefers phone")])
            if replicate:
                await aclient.upsert("memories_index", points=[_point(2, "customer prefers phone")])

    async def responder() -> Any:
        async with agent("responder"):
            return (await aclient.query_points("memories_index", query=VECTOR)).points

    async with workflow("ticket-1"):
        await asyncio.gather(curator(replicate=False))
        [hit] = await asyncio.gather(responder())
    assert hit[0].payload["version"] == 1
    check_stale_memory(
        telemetry, "upsert memories", "query_points memories_index", ("n:1", "n:2"), "warning"
    )

    telemetry.exporter.clear()
    async with workflow("ticket-2"):
        await curator(replicate=True)
        hits = await responder()
    assert hits[0].payload["version"] == 2
    assert telemetry.anomalies() == []
