"""qdrant-client instrumentation on real local-mode stores: span shape, facts, versions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qdrant_client
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from qdrant_client import QdrantClient, models

from otel_agent_state import agent, configure
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

from .conftest import Telemetry

SECRET = "the customer's mother's maiden name"


def _collection(client: QdrantClient, name: str = "memories") -> None:
    client.create_collection(
        name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
    )


@pytest.fixture
def client(telemetry: Telemetry, tmp_path: Path) -> Iterator[QdrantClient]:
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    store = QdrantClient(path=str(tmp_path / "qdrant"))
    _collection(store)
    yield store
    store.close()
    instrumentor.uninstrument()


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _only(telemetry: Telemetry, name: str) -> dict[str, Any]:
    return _attrs(telemetry.span_named(name))


def test_write_span_shape_semconv_and_no_values(telemetry: Telemetry, client: QdrantClient) -> None:
    point_uuid = uuid.uuid4()
    with agent("curator"):
        client.upsert(
            "memories",
            points=[
                models.PointStruct(id=7, vector=[0.1, 0.2, 0.3, 0.4], payload={"text": SECRET}),
                models.PointStruct(id=str(point_uuid), vector=[0.4, 0.3, 0.2, 0.1], payload={}),
            ],
        )
    span = telemetry.span_named("upsert memories")
    attrs = _attrs(span)
    assert span.kind.name == "CLIENT"
    assert attrs[A.DB_SYSTEM_NAME] == "qdrant"
    assert attrs[A.DB_COLLECTION_NAME] == "memories"
    assert attrs[A.DB_OPERATION_NAME] == "upsert"
    assert attrs[A.DB_QUERY_SUMMARY] == "upsert memories"
    assert attrs[A.STORE] == "qdrant"
    assert attrs[A.TIER] == "index"
    assert attrs[A.OP] == "write"
    assert attrs[A.COMMITTED] is True
    assert attrs[A.GEN_AI_AGENT_NAME] == "curator"
    assert attrs[A.WRITE_FACTS] == ("qdrant:memories/7", f"qdrant:memories/{point_uuid}")
    versions = attrs[A.WRITE_VERSIONS]
    assert all(str(v).startswith("h:") for v in versions) and versions[0] != versions[1]
    assert attrs["agentstate.write.store_order"] == 0  # local mode's operation_id
    counted = [
        p
        for p in telemetry.metric_points("agentstate.observations")
        if dict(p.attributes) == {"op": "write", "store": "qdrant", "tier": "index"}
    ]
    assert [p.value for p in counted] == [1]
    for value in attrs.values():  # payloads and vectors are never exported
        assert SECRET not in str(value) and "0.1" not in str(value)


def test_reads_record_every_returned_point_at_the_written_version(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    client.upsert(
        "memories",
        points=models.Batch(
            ids=[1, 2], vectors=[[1, 0, 0, 0], [0, 1, 0, 0]], payloads=[{"t": "a"}, {"t": "b"}]
        ),
    )
    written = dict(
        zip(
            _only(telemetry, "upsert memories")[A.WRITE_FACTS],
            _only(telemetry, "upsert memories")[A.WRITE_VERSIONS],
            strict=True,
        )
    )
    hits = client.query_points("memories", query=[1, 0.1, 0, 0], limit=5).points
    assert [h.id for h in hits] == [1, 2]
    query = _only(telemetry, "query_points memories")
    assert query[A.OP] == "read"
    assert query[A.READ_FACTS] == ("qdrant:memories/1", "qdrant:memories/2")
    assert query[A.READ_VERSIONS] == (written["qdrant:memories/1"], written["qdrant:memories/2"])
    assert query[A.CONSISTENCY] == "linearizable"

    records, _ = client.scroll("memories", limit=10)
    assert len(records) == 2
    scroll = _only(telemetry, "scroll memories")
    assert dict(zip(scroll[A.READ_FACTS], scroll[A.READ_VERSIONS], strict=True)) == written

    groups = client.query_points_groups("memories", group_by="t", query=[1, 0, 0, 0], limit=2)
    assert len(groups.groups) == 2
    grouped = _only(telemetry, "query_points_groups memories")
    assert dict(zip(grouped[A.READ_FACTS], grouped[A.READ_VERSIONS], strict=True)) == written

    client.query_batch_points(
        "memories",
        requests=[
            models.QueryRequest(query=[1, 0, 0, 0], limit=1, with_payload=True),
            models.QueryRequest(query=[0, 1, 0, 0], limit=1),  # no payload by default
        ],
    )
    batch = _only(telemetry, "query_batch_points memories")
    assert batch[A.READ_FACTS] == ("qdrant:memories/1",)
    assert batch[A.READ_VERSIONS] == (written["qdrant:memories/1"],)
    assert batch[A.UNRESOLVED] == "payload not returned"

    client.retrieve("memories", ids=[2, 99])
    retrieve = _only(telemetry, "retrieve memories")
    assert retrieve[A.READ_FACTS] == ("qdrant:memories/2", "qdrant:memories/99")
    assert retrieve[A.READ_VERSIONS] == (written["qdrant:memories/2"], "none")


def test_payload_updates_are_read_back_and_deletes_write_none(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    client.upsert(
        "memories", points=[models.PointStruct(id=3, vector=[1, 1, 0, 0], payload={"a": 1})]
    )
    client.set_payload("memories", payload={"b": 2}, points=[3])
    merged = _only(telemetry, "set_payload memories")
    client.retrieve("memories", ids=[3])
    assert merged[A.WRITE_VERSIONS] == _only(telemetry, "retrieve memories")[A.READ_VERSIONS]
    assert merged[A.WRITE_VERSIONS] != _only(telemetry, "upsert memories")[A.WRITE_VERSIONS]
    # the follow-up read that gave the merged version is not traced
    assert [s.name for s in telemetry.spans()].count("retrieve memories") == 1

    client.overwrite_payload("memories", payload={"a": 1}, points=models.PointIdsList(points=[3]))
    assert (
        _only(telemetry, "overwrite_payload memories")[A.WRITE_VERSIONS]
        == _only(telemetry, "upsert memories")[A.WRITE_VERSIONS]
    )
    client.delete("memories", points_selector=[3])
    deleted = _only(telemetry, "delete memories")
    assert deleted[A.OP] == "delete"
    assert deleted[A.WRITE_FACTS] == ("qdrant:memories/3",)
    assert deleted[A.WRITE_VERSIONS] == ("none",)


def test_payload_merges_carry_the_keys_they_set(telemetry: Telemetry, client: QdrantClient) -> None:
    """set_payload / delete_payload change the keys they name and keep the others: the
    detectors compare those keys (never values); other writes replace the whole payload."""
    client.upsert(
        "memories",
        points=[
            models.PointStruct(id=p, vector=[1, 1, 0, 0], payload={"a": 1, "b,%": 2})
            for p in (3, 4)
        ],
    )
    client.set_payload("memories", payload={"tone": "x", "b,%": 3}, points=[3, 4])
    assert _only(telemetry, "set_payload memories")[A.WRITE_FIELDS] == ("b%2C%25,tone",) * 2
    client.delete_payload("memories", keys=["tone"], points=[3])
    assert _only(telemetry, "delete_payload memories")[A.WRITE_FIELDS] == ("tone",)
    assert A.WRITE_FIELDS not in _only(telemetry, "upsert memories")
    telemetry.exporter.clear()
    # A nested path may overlap other keys: counted as a whole-payload write.
    client.set_payload("memories", payload={"c": 1}, points=[3], key="nested")
    client.delete_payload("memories", keys=["a.b"], points=[3])
    for name in ("set_payload memories", "delete_payload memories"):
        attrs = _only(telemetry, name)
        assert A.WRITE_FIELDS not in attrs and attrs[A.WRITE_FACTS] == ("qdrant:memories/3",)


def test_filter_writes_and_unversionable_reads_are_marked_unresolved(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    client.upsert(
        "memories", points=[models.PointStruct(id=4, vector=[0, 0, 1, 0], payload={"k": "x"})]
    )
    client.delete(
        "memories",
        points_selector=models.FilterSelector(
            filter=models.Filter(
                must=[models.FieldCondition(key="k", match=models.MatchValue(value="nothing"))]
            )
        ),
    )
    deleted = _only(telemetry, "delete memories")
    assert deleted[A.UNRESOLVED] == "filter selector"
    assert deleted[A.WRITE_FACTS] == ("qdrant:memories",)
    client.batch_update_points(
        "memories",
        update_operations=[
            models.SetPayloadOperation(
                set_payload=models.SetPayload(payload={"k": "y"}, points=[4])
            )
        ],
    )
    batch = _only(telemetry, "batch_update_points memories")
    assert (batch[A.OP], batch[A.UNRESOLVED], batch[A.WRITE_FACTS]) == (
        "write",
        "batch update",
        ("qdrant:memories",),
    )
    client.query_points("memories", query=[0, 0, 1, 0], with_payload=False)
    query = _only(telemetry, "query_points memories")
    assert query[A.UNRESOLVED] == "payload not returned"
    assert A.READ_FACTS not in query
    client.retrieve("memories", ids=[4], with_payload=["k"])
    assert _only(telemetry, "retrieve memories")[A.UNRESOLVED] == "partial payload"


def test_configured_payload_field_and_tier(telemetry: Telemetry, client: QdrantClient) -> None:
    configure(
        rules=[
            {
                "name": "memory",
                "keys": [{"pattern": "qdrant:memories/{id}", "tier": "primary"}],
                "version": {"payload_field": "meta.version"},
            }
        ]
    )
    client.upsert(
        "memories",
        points=[models.PointStruct(id=5, vector=[1, 0, 1, 0], payload={"meta": {"version": 3}})],
    )
    upsert = _only(telemetry, "upsert memories")
    assert (upsert[A.TIER], upsert[A.WRITE_FACTS], upsert[A.WRITE_VERSIONS]) == (
        "primary",
        ("memory/5",),
        ("n:3",),
    )
    # a partial payload that carries the version field is still versioned
    client.retrieve("memories", ids=[5], with_payload=["meta"])
    assert _only(telemetry, "retrieve memories")[A.READ_VERSIONS] == ("n:3",)


def test_client_errors_propagate_unchanged_and_are_recorded(
    telemetry: Telemetry, client: QdrantClient
) -> None:
    with pytest.raises(ValueError, match="nowhere") as caught:
        client.upsert("nowhere", points=[models.PointStruct(id=1, vector=[1, 0, 0, 0])])
    span = telemetry.span_named("upsert nowhere")
    assert span.status.status_code == StatusCode.ERROR
    assert A.WRITE_FACTS not in _attrs(span)
    assert type(caught.value) is ValueError


def test_result_sets_are_capped_per_span(telemetry: Telemetry, client: QdrantClient) -> None:
    from otel_agent_state.instrumentation import _vector

    count = 30
    client.upsert(
        "memories",
        points=models.Batch(ids=list(range(count)), vectors=[[1, 0, 0, i] for i in range(count)]),
    )
    original = _vector.MAX_FACTS_PER_SPAN
    _vector.MAX_FACTS_PER_SPAN = 10
    try:
        records, _ = client.scroll("memories", limit=count)
    finally:
        _vector.MAX_FACTS_PER_SPAN = original
    assert len(records) == count  # the application gets everything
    assert len(_only(telemetry, "scroll memories")[A.READ_FACTS]) == 10


def test_uninstrument_restores_the_original_methods(telemetry: Telemetry) -> None:
    originals = {m: QdrantClient.__dict__[m] for m in ("upsert", "query_points", "retrieve")}
    async_original = qdrant_client.AsyncQdrantClient.__dict__["upsert"]
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert QdrantClient.__dict__["upsert"] is not originals["upsert"]
    instrumentor.uninstrument()
    for name, function in originals.items():
        assert QdrantClient.__dict__[name] is function
    assert qdrant_client.AsyncQdrantClient.__dict__["upsert"] is async_original
    store = QdrantClient(":memory:")
    _collection(store)
    store.upsert("memories", points=[models.PointStruct(id=1, vector=[1, 0, 0, 0])])
    store.close()
    assert telemetry.spans() == []


def test_our_failures_never_reach_the_application(
    telemetry: Telemetry, client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_agent_state import ConfigError
    from otel_agent_state.instrumentation import qdrant as module

    client.upsert("memories", points=[models.PointStruct(id=1, vector=[1, 0, 0, 0])])

    def broken(*args: object) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(module, "_record_read", broken)
    assert [p.id for p in client.query_points("memories", query=[1, 0, 0, 0]).points] == [1]
    query = telemetry.span_named("query_points memories")  # ended, without facts
    assert A.READ_FACTS not in (query.attributes or {})

    def bad_config() -> None:
        raise ConfigError("rules.toml:3: bad rule")

    monkeypatch.setattr(module, "get_settings", bad_config)
    assert len(client.retrieve("memories", ids=[1])) == 1  # runs untraced
    assert [s.name for s in telemetry.spans()].count("retrieve memories") == 0


def test_server_client_goes_through_the_same_wrappers(telemetry: Telemetry) -> None:
    """No Qdrant server here: a remote client's own connection error passes through unchanged
    and the span records it, proving the server code path is wrapped too."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        remote = QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2, check_compatibility=False)
        with pytest.raises(Exception) as caught:
            remote.retrieve("memories", ids=[1])
        assert type(caught.value).__module__.startswith(("qdrant_client", "httpx", "httpcore"))
    finally:
        instrumentor.uninstrument()
    span = telemetry.span_named("retrieve memories")
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})[A.DB_SYSTEM_NAME] == "qdrant"
