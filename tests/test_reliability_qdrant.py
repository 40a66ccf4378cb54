"""Reliability of the qdrant-client instrumentation on a real local-mode store (tmp dir):
arbitrary point ids (invalid ones too), nested / huge / odd payloads and random operation
sequences give the instrumented client exactly the uninstrumented client's results (same
store state, instrumentation suppressed) or the same exception type and message."""

from __future__ import annotations

import asyncio
import inspect
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.utils import suppress_instrumentation
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from otel_agent_state import agent, configure, workflow
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

from .conftest import Telemetry

HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
COLLECTIONS = ["rel", "raw"]  # "rel" has a version payload field, "raw" uses digests


def norm(value: Any) -> Any:
    if isinstance(value, BaseException):
        return ("error", type(value), str(value))
    if hasattr(value, "model_dump"):
        return norm(value.model_dump())
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", norm(call()))
    except Exception as exc:  # the application's view: exact type and message
        return ("raised", type(exc), str(exc))


@dataclass
class Store:
    client: QdrantClient
    telemetry: Telemetry

    seed: list[tuple[Any, ...]]

    def reset(self) -> None:
        with suppress_instrumentation():
            for name in COLLECTIONS:
                if self.client.collection_exists(name):
                    self.client.delete_collection(name)
                self.client.create_collection(
                    name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT)
                )
                points = [models.PointStruct(id=i, vector=v, payload=p) for i, v, p in self.seed]
                if points:
                    self.client.upsert(name, points=points)
        self.telemetry.exporter.clear()

    def snapshot(self) -> Any:
        with suppress_instrumentation():
            return {
                name: norm(
                    self.client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
                )
                for name in COLLECTIONS
            }

    def plain(self, body: Callable[[], Any]) -> Any:
        self.reset()
        with suppress_instrumentation():
            result = body()
        return result, self.snapshot()

    def traced(self, body: Callable[[], Any]) -> Any:
        self.reset()
        with workflow("reliability"), agent("fuzzer"):
            result = body()
        assert self.telemetry.processor.ledger.stats().traces == 0  # the trace closed
        return result, self.snapshot()


@pytest.fixture
def store(telemetry: Telemetry, tmp_path: Path) -> Iterator[Store]:
    configure(
        rules=[
            {
                "name": "memory",
                "keys": [{"pattern": "qdrant:rel/{id}", "tier": "primary"}],
                "version": {"payload_field": "meta.version"},
            }
        ]
    )
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield Store(client, telemetry, [])
    client.close()
    instrumentor.uninstrument()


# --------------------------------------------------------------------------- strategies

UUIDS = [str(uuid.UUID(int=n)) for n in (1, 2, 2**127)]
VALID_IDS = st.one_of(st.integers(0, 4), st.sampled_from(UUIDS[:2]))
IDS = st.one_of(
    VALID_IDS,
    VALID_IDS,
    VALID_IDS,
    VALID_IDS,
    st.integers(-5, -1),  # invalid
    st.sampled_from([2**64, 2**64 - 1, 1.5, "", "not-a-uuid", "00000000000000000000000000000001"]),
    st.text(max_size=6),
    st.none(),
)
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=10)  # surrogates too
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities too
    TEXT,
    st.binary(max_size=6),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é"]), st.integers(50_000, 300_000)),
)
PAYLOAD_VALUE = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
VERSIONS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), TEXT, st.none(), st.lists(st.integers(), max_size=2)
)
PAYLOADS = st.one_of(
    st.none(),
    st.dictionaries(TEXT, PAYLOAD_VALUE, max_size=4),
    st.builds(
        lambda v, rest: {**rest, "meta": {"version": v}},
        VERSIONS,
        st.dictionaries(TEXT, PAYLOAD_VALUE, max_size=2),
    ),
    st.builds(lambda v: {"meta": v}, PAYLOAD_VALUE),  # meta not an object
    st.builds(lambda d: {1: d}, PAYLOAD_VALUE),  # a non-text key
)
VALID_VECTORS = st.lists(st.floats(-1, 1), min_size=4, max_size=4)
SAFE_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**62), 2**62), st.floats(-1e9, 1e9), TEXT
)
SAFE_VALUE = st.recursive(
    SAFE_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
SAFE_PAYLOADS = st.one_of(
    st.dictionaries(TEXT, SAFE_VALUE, max_size=3),
    st.builds(
        lambda v, rest: {**rest, "meta": {"version": v}},
        VERSIONS,
        st.dictionaries(TEXT, SAFE_VALUE, max_size=2),
    ),
    st.builds(lambda n: {"doc": "é" * n, "meta": {"version": n}}, st.integers(100_000, 300_000)),
)
VECTORS = st.one_of(
    VALID_VECTORS,
    VALID_VECTORS,
    VALID_VECTORS,
    st.lists(st.floats(), min_size=0, max_size=5),  # wrong size, NaN
)


@st.composite
def operation(draw: st.DrawFn) -> tuple[str, Callable[[QdrantClient], Any]]:
    name = draw(st.sampled_from([*COLLECTIONS, *COLLECTIONS, *COLLECTIONS, "missing"]))
    if draw(st.booleans()):  # a point or two that likely exist (local mode: KeyError if not)
        ids = draw(st.lists(VALID_IDS, min_size=1, max_size=2))
    else:
        ids = draw(st.lists(IDS, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=4))
    as_iter = draw(st.integers(0, 3)) == 0  # ids and points as a one-shot iterator
    kind = draw(
        st.sampled_from(
            [
                "upsert",
                "upsert_valid",
                "upsert_valid",
                "upsert_batch",
                "retrieve",
                "set_payload",
                "overwrite_payload",
                "delete_payload",
                "clear_payload",
                "delete",
                "scroll",
                "query_points",
            ]
        )
    )
    if kind == "upsert":
        points = [(pid, draw(VECTORS), draw(PAYLOADS)) for pid in ids]

        def run(c: QdrantClient) -> Any:
            structs = [models.PointStruct(id=i, vector=v, payload=p) for i, v, p in points]
            return c.upsert(name, points=iter(structs) if as_iter else structs)

    elif kind == "upsert_valid":
        valid = draw(
            st.lists(st.tuples(VALID_IDS, VALID_VECTORS, SAFE_PAYLOADS), min_size=1, max_size=4)
        )

        def run(c: QdrantClient) -> Any:
            structs = [models.PointStruct(id=i, vector=v, payload=p) for i, v, p in valid]
            return c.upsert(name, points=structs)

    elif kind == "upsert_batch":
        vectors = [draw(VECTORS) for _ in ids]
        payloads = [draw(PAYLOADS) for _ in ids]

        def run(c: QdrantClient) -> Any:
            batch = models.Batch(ids=ids, vectors=vectors, payloads=payloads)
            return c.upsert(name, points=batch)

    elif kind == "retrieve":
        with_payload = draw(st.one_of(st.booleans(), st.just(["meta"]), st.just(["x"])))

        def run(c: QdrantClient) -> Any:
            return c.retrieve(name, ids=iter(ids) if as_iter else ids, with_payload=with_payload)

    elif kind in ("set_payload", "overwrite_payload"):
        payload = draw(PAYLOADS)
        key = draw(st.one_of(st.none(), st.none(), st.just("meta"), TEXT))

        def run(c: QdrantClient) -> Any:
            if kind == "set_payload":
                return c.set_payload(name, payload=payload, points=ids, key=key)
            return c.overwrite_payload(name, payload=payload, points=ids)

    elif kind == "delete_payload":
        keys = draw(st.lists(st.one_of(st.just("meta"), st.just("meta.version"), TEXT), max_size=3))

        def run(c: QdrantClient) -> Any:
            return c.delete_payload(name, keys=keys, points=ids)

    elif kind in ("clear_payload", "delete"):

        def run(c: QdrantClient) -> Any:
            selector = models.PointIdsList(points=ids)
            method = c.clear_payload if kind == "clear_payload" else c.delete
            return method(name, points_selector=selector)

    elif kind == "scroll":
        limit = draw(st.integers(-1, 5))

        def run(c: QdrantClient) -> Any:
            return c.scroll(name, limit=limit, with_payload=True)

    else:
        vector = draw(VECTORS)

        def run(c: QdrantClient) -> Any:
            return c.query_points(name, query=vector, limit=3, with_payload=True)

    return kind, run


def _run(client: QdrantClient, ops: list[tuple[str, Callable[[QdrantClient], Any]]]) -> Any:
    return [(kind, outcome(lambda run=run: run(client))) for kind, run in ops]  # type: ignore[misc]


@settings(HYPOTHESIS, max_examples=80)
@given(
    seed=st.lists(st.tuples(VALID_IDS, VALID_VECTORS, SAFE_PAYLOADS), max_size=6),
    ops=st.lists(operation(), min_size=1, max_size=6),
)
def test_arbitrary_points_and_payloads_match_the_uninstrumented_client(
    store: Store, seed: list[tuple[Any, ...]], ops: list[tuple[str, Callable[[QdrantClient], Any]]]
) -> None:
    store.seed = seed
    expected = store.plain(lambda: _run(store.client, ops))
    assert store.traced(lambda: _run(store.client, ops)) == expected
    for kind, result in expected[0]:  # --hypothesis-show-statistics: what was covered
        event(f"{kind}: {'ok' if result[0] == 'ok' else result[1].__name__}")
    assert store.telemetry.anomalies() == []  # one agent, one store: nothing to find


def _run_async(
    client: AsyncQdrantClient,
    seed: list[tuple[Any, ...]],
    ops: list[tuple[str, Callable[[Any], Any]]],
    traced: bool,
) -> Any:
    async def main() -> Any:
        with suppress_instrumentation():
            for name in COLLECTIONS:
                if await client.collection_exists(name):
                    await client.delete_collection(name)
                await client.create_collection(
                    name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT)
                )
                if seed:
                    points = [models.PointStruct(id=i, vector=v, payload=p) for i, v, p in seed]
                    await client.upsert(name, points=points)
        out = []
        for kind, run in ops:
            try:
                result = run(client)
                if inspect.isawaitable(result):
                    result = await result
                out.append((kind, ("ok", norm(result))))
            except Exception as exc:
                out.append((kind, ("raised", type(exc), str(exc))))
        with suppress_instrumentation():
            state = {
                name: norm(
                    await client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
                )
                for name in COLLECTIONS
            }
        return out, state

    if not traced:
        with suppress_instrumentation():
            return asyncio.run(main())
    with workflow("reliability"), agent("fuzzer"):
        return asyncio.run(main())  # the task copies the caller's context


@settings(HYPOTHESIS, max_examples=40)
@given(
    seed=st.lists(st.tuples(VALID_IDS, VALID_VECTORS, SAFE_PAYLOADS), max_size=6),
    ops=st.lists(operation(), min_size=1, max_size=6),
)
def test_arbitrary_points_on_the_async_client_match(
    store: Store,
    tmp_path: Path,
    seed: list[tuple[Any, ...]],
    ops: list[tuple[str, Callable[[Any], Any]]],
) -> None:
    client = AsyncQdrantClient(path=str(tmp_path / "qdrant-async"))
    try:
        expected = _run_async(client, seed, ops, traced=False)
        store.telemetry.exporter.clear()
        assert _run_async(client, seed, ops, traced=True) == expected
        assert store.telemetry.processor.ledger.stats().traces == 0
        assert store.telemetry.anomalies() == []
    finally:
        asyncio.run(client.close())
