"""SPEC §2: our redis instrumentation next to contrib's opentelemetry-instrumentation-redis
(0.66b2), in either load order, on the real server (db 1 and 2) and on a real one-node
Redis Cluster of the tests' own (conftest `redis_cluster`).

Whatever the order, ours sits innermost (next to redis-py's function) and contrib's wrapper
outermost: contrib's span is the one database span per command and carries our attributes
as well as its own. Uninstrumenting either one first leaves the other working.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.cluster
import redis.client
import redis.cluster
from opentelemetry.instrumentation.redis import RedisInstrumentor as ContribRedisInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import StatusCode

from otel_agent_state import StaleReadError, agent, configure, observe_write, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import redis as ours_module
from otel_agent_state.instrumentation._wrapping import chain_of
from otel_agent_state.instrumentation.redis import RedisInstrumentor

from .conftest import ClusterNode, Telemetry
from .semconv_support import MODES, semconv_mode

pytestmark = pytest.mark.redis

ORDERS = ["contrib_first", "ours_first"]
CONTRIB_SCOPE = "opentelemetry.instrumentation.redis"
OURS_SCOPE = "otel_agent_state.instrumentation.redis"
RULES = [
    {
        "name": "credit_score",
        "keys": ["postgresql:*/credit_scores/{id}", "redis:*/credit_score:{id}"],
        "version": {"column": "version", "json_field": "version"},
    }
]
TARGETS = [
    (redis.client.Redis, "execute_command"),
    (redis.client.Pipeline, "execute"),
    (redis.client.Pipeline, "immediate_execute_command"),
    (redis.asyncio.client.Redis, "execute_command"),
    (redis.asyncio.client.Pipeline, "execute"),
    (redis.asyncio.client.Pipeline, "immediate_execute_command"),
    (redis.cluster.RedisCluster, "execute_command"),
    (redis.cluster.ClusterPipeline, "execute"),
    (redis.asyncio.cluster.RedisCluster, "execute_command"),
    (redis.asyncio.cluster.ClusterPipeline, "execute"),
]
ORIGINALS = {target: target[0].__dict__[target[1]] for target in TARGETS}


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def db_spans(telemetry: Telemetry) -> list[ReadableSpan]:
    return [s for s in telemetry.spans() if any(k.startswith("db.") for k in attrs(s))]


def is_ours(link: Any) -> bool:
    wrapper = getattr(link, "_self_wrapper", None)
    return getattr(wrapper, "__module__", "") == ours_module.__name__


def is_contrib(link: Any) -> bool:
    wrapper = getattr(link, "_self_wrapper", None)
    return getattr(wrapper, "__module__", "").startswith(CONTRIB_SCOPE)


@contextmanager
def stack(order: str, provider: TracerProvider, unwrap: str = "ours_first") -> Iterator[None]:
    ours, contrib = RedisInstrumentor(), ContribRedisInstrumentor()
    first, second = (ours, contrib) if order == "ours_first" else (contrib, ours)
    first.instrument(tracer_provider=provider)
    second.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        for instrumentor in (ours, contrib) if unwrap == "ours_first" else (contrib, ours):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        for (cls, name), original in ORIGINALS.items():
            assert cls.__dict__[name] is original, (cls, name)


@pytest.fixture
def client(telemetry: Telemetry, redis_url: str) -> Iterator[redis.Redis]:
    configure(rules=RULES)
    conn = redis.Redis.from_url(f"{redis_url}/1")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.mark.parametrize("order", ORDERS)
def test_contrib_outermost_ours_innermost(order: str, telemetry: Telemetry) -> None:
    with stack(order, telemetry.provider):
        for cls, name in TARGETS:
            chain = chain_of(cls, name)
            assert len(chain) == 3, (cls, name)
            assert is_contrib(chain[0]) and is_ours(chain[1])
            assert chain[2] is ORIGINALS[(cls, name)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ORDERS)
def test_one_span_per_command_with_both_sets_of_attributes(
    order: str, mode: str, client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    """contrib's span carries ours; our stable db.* only when contrib is in a stable
    convention mode too (issue 19: its default mode keeps its old attributes alone)."""
    stable = mode != "default"
    with semconv_mode(mode), stack(order, telemetry.provider), agent("worker"):
        assert client.set("credit_score:1", json.dumps({"version": 3})) is True
        assert json.loads(client.get("credit_score:1") or "")["version"] == 3
        with client.pipeline() as pipe:
            assert pipe.get("credit_score:1").delete("credit_score:1").execute()[1] == 1
        assert client.ping() is True

        async def run() -> Any:
            conn = redis.asyncio.Redis.from_url(f"{redis_url}/2")
            value = await conn.get("missing")
            await conn.aclose()
            return value

        assert asyncio.run(run()) is None
    spans = db_spans(telemetry)
    assert [s.name for s in spans] == ["SET", "GET", "GET DEL", "PING", "GET"]  # contrib names
    assert {scope(s) for s in spans} == {CONTRIB_SCOPE}  # no duplicates of ours
    set_span, get_span, multi, ping, async_get = (attrs(s) for s in spans)
    for a in (set_span, get_span, multi):
        assert a[A.STORE] == "redis"  # ours
        assert a.get(A.DB_SYSTEM_NAME) == ("redis" if stable else None), a
        assert A.DB_QUERY_SUMMARY in a if stable else A.DB_QUERY_SUMMARY not in a
        assert a[A.GEN_AI_AGENT_NAME] == "worker"
        if not stable:
            assert a["db.system"] == "redis"  # contrib's
    if not stable:
        assert get_span["db.statement"] == "GET ?"
    assert set_span[A.WRITE_FACTS] == ("credit_score/1",)
    assert set_span[A.WRITE_VERSIONS] == ("n:3",)
    assert get_span[A.READ_VERSIONS] == ("n:3",)
    assert multi[A.TXN_OUTCOME] == "commit" and multi[A.WRITE_VERSIONS] == ("none",)
    assert A.OP not in ping
    assert async_get[A.READ_FACTS] == ("redis:2/missing",)
    assert async_get.get(A.DB_NAMESPACE) == ("2" if stable else None)


@pytest.mark.parametrize("unwrap", ["ours_first", "contrib_first"])
@pytest.mark.parametrize("order", ORDERS)
def test_uninstrument_either_order_leaves_the_other_working(
    order: str, unwrap: str, client: redis.Redis, telemetry: Telemetry
) -> None:
    with stack(order, telemetry.provider, unwrap=unwrap):
        if unwrap == "ours_first":
            RedisInstrumentor().uninstrument()
            assert client.set("k", "v") is True
            (span,) = db_spans(telemetry)
            assert scope(span) == CONTRIB_SCOPE
            assert not any(k.startswith("agentstate.") for k in attrs(span))
        else:
            ContribRedisInstrumentor().uninstrument()
            assert client.set("k", "v") is True
            (span,) = db_spans(telemetry)
            assert scope(span) == OURS_SCOPE
            assert attrs(span)[A.WRITE_FACTS] == ("redis:1/k",)
    telemetry.exporter.clear()
    assert client.get("k") == b"v"
    assert db_spans(telemetry) == []


@pytest.mark.parametrize("order", ORDERS)
def test_stale_read_on_the_contrib_span_and_raise_mode(
    order: str, client: redis.Redis, telemetry: Telemetry
) -> None:
    client.set("credit_score:42", json.dumps({"score": 680, "version": 1}))
    telemetry.exporter.clear()
    with stack(order, telemetry.provider):
        with workflow("credit"):
            with agent("credit-scorer"):
                observe_write("credit_score/42", 2, store="postgresql")
            with agent("risk-assessor"):
                client.get("credit_score:42")
        (stale,) = telemetry.anomalies("stale_read")
        (read,) = [s for s in db_spans(telemetry) if s.name == "GET"]
        assert scope(read) == CONTRIB_SCOPE
        assert stale.parent is not None and stale.parent.span_id == read.context.span_id
        assert attrs(stale)[A.ANOMALY_AGENTS] == ("risk-assessor", "credit-scorer")
        configure(on_anomaly="raise")
        telemetry.exporter.clear()
        with workflow("credit"):
            with agent("credit-scorer"):
                observe_write("credit_score/42", 2, store="postgresql")
            with agent("risk-assessor"), pytest.raises(StaleReadError):
                client.get("credit_score:42")
        (read,) = [s for s in db_spans(telemetry) if s.name == "GET"]
        assert scope(read) == CONTRIB_SCOPE and read.status.status_code == StatusCode.ERROR


def test_contrib_instrument_client_on_top_of_ours(
    client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    """contrib's per-client wrapping sits on the instance, outside our class wrapper."""
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    try:
        ContribRedisInstrumentor.instrument_client(client, tracer_provider=telemetry.provider)
        with agent("worker"):
            client.set("credit_score:3", json.dumps({"version": 9}))
        (span,) = db_spans(telemetry)
        assert scope(span) == CONTRIB_SCOPE
        assert attrs(span)[A.WRITE_VERSIONS] == ("n:9",) and attrs(span)["db.system"] == "redis"
        ContribRedisInstrumentor.uninstrument_client(client)
        telemetry.exporter.clear()
        assert json.loads(client.get("credit_score:3") or "")["version"] == 9
        (span,) = db_spans(telemetry)
        assert scope(span) == OURS_SCOPE and attrs(span)[A.READ_VERSIONS] == ("n:9",)
    finally:
        RedisInstrumentor().uninstrument()


@pytest.mark.parametrize("order", ORDERS)
def test_async_watch_and_transaction_under_contrib(
    order: str, telemetry: Telemetry, redis_url: str
) -> None:
    configure(rules=RULES)

    async def run() -> list[Any]:
        conn = redis.asyncio.Redis.from_url(f"{redis_url}/2")
        await conn.flushdb()
        await conn.set("n", 1)
        async with conn.pipeline() as pipe:
            await pipe.watch("n")
            value = int(await pipe.get("n") or 0)
            pipe.multi()
            pipe.set("n", value + 1)
            result = await pipe.execute()
        await conn.flushdb()
        await conn.aclose()
        return list(result)

    with stack(order, telemetry.provider):
        telemetry.exporter.clear()
        assert asyncio.run(run()) == [True]
    spans = [s for s in db_spans(telemetry) if s.name not in ("FLUSHDB",)]
    assert {scope(s) for s in spans} == {CONTRIB_SCOPE}
    get = next(s for s in spans if s.name == "GET")
    multi = next(s for s in spans if attrs(s).get(A.TXN_ID))
    assert attrs(get)[A.READ_FACTS] == ("redis:2/n",)
    assert attrs(multi)[A.TXN_OUTCOME] == "commit" and attrs(multi)[A.COMMITTED] is True
    assert attrs(multi)[A.WRITE_FACTS] == ("redis:2/n",)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ORDERS)
def test_cluster_client_one_span_per_command_with_both_sets_of_attributes(
    order: str, mode: str, telemetry: Telemetry, redis_cluster: ClusterNode
) -> None:
    stable = mode != "default"
    configure(rules=RULES)
    conn = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    conn.flushall()
    with semconv_mode(mode), stack(order, telemetry.provider), agent("worker"):
        assert conn.set("credit_score:1", json.dumps({"version": 3})) is True
        assert json.loads(conn.get("credit_score:1") or "")["version"] == 3
        with conn.pipeline() as pipe:
            pipe.get("credit_score:1")
            pipe.delete("credit_score:1")  # a cluster pipeline's delete() returns None
            assert pipe.execute()[1] == 1
        with conn.pipeline(transaction=True) as pipe:
            pipe.watch("credit_score:2")  # a WATCH phase command: contrib has no span for it
            assert pipe.get("credit_score:2") is None
            pipe.multi()
            pipe.set("credit_score:2", json.dumps({"version": 1}))
            assert pipe.execute() == [b"OK"]

        async def run() -> Any:
            client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
            value = await client.get("missing")
            await client.aclose()
            return value

        assert asyncio.run(run()) is None
    conn.flushall()
    conn.close()
    spans = db_spans(telemetry)
    names = [s.name for s in spans]
    assert names == ["SET", "GET", "GET DEL", "WATCH", "GET", "SET", "GET"]  # contrib's names
    assert [scope(s) for s in spans] == [CONTRIB_SCOPE] * 3 + [OURS_SCOPE] * 2 + [CONTRIB_SCOPE] * 2
    set_span, get_span, pipeline, watch, watched_get, multi, async_get = (attrs(s) for s in spans)
    for a in (set_span, get_span, pipeline, multi, async_get):
        assert a[A.STORE] == "redis" and a[A.GEN_AI_AGENT_NAME] == "worker"  # ours
        if stable:
            assert a[A.DB_SYSTEM_NAME] == "redis" and a[A.DB_NAMESPACE] == "0"
        else:  # contrib's alone (no db.system: it finds no pool on a cluster)
            assert "db.statement" in a and A.DB_SYSTEM_NAME not in a and A.DB_NAMESPACE not in a
    if not stable:
        assert get_span["db.statement"] == "GET ?"
    assert set_span[A.WRITE_FACTS] == ("credit_score/1",) and set_span[A.WRITE_VERSIONS] == ("n:3",)
    assert get_span[A.READ_VERSIONS] == ("n:3",)
    assert pipeline.get(A.DB_OPERATION_NAME) == ("PIPELINE" if stable else None)
    assert pipeline[A.COMMITTED] is True
    assert pipeline[A.READ_VERSIONS] == ("n:3",) and pipeline[A.WRITE_VERSIONS] == ("none",)
    assert A.OP not in watch and watched_get[A.READ_VERSIONS] == ("none",)
    assert multi[A.TXN_OUTCOME] == "commit" and multi[A.WRITE_VERSIONS] == ("n:1",)
    assert async_get[A.READ_FACTS] == ("redis:0/missing",)
