"""redis-py Redis Cluster clients (`redis.cluster` and `redis.asyncio.cluster`) on a real
one-node cluster started for the session (conftest `redis_cluster`), next to a plain client
on the shared Redis server (db 6 only): the same commands, pipelines and transactions give
the same span shapes, facts and versions; follow-up reads never go through a pipeline; the
detectors see cluster reads; a command a pipeline sends again after a redirection (a real
two-node cluster with a moved slot) gets no span of its own; uninstrument restores redis-py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_agent_state import StaleReadError, agent, configure, observe_write, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import _redis_commands
from otel_agent_state.instrumentation._wrapping import chain_of
from otel_agent_state.instrumentation.redis import RedisInstrumentor

from .conftest import (
    ClusterNode,
    Telemetry,
    cluster_binaries_missing,
    redis_cli,
    start_cluster_node,
    wait_cluster_ok,
    wait_until,
)
from .test_redis_instrumentation import attrs, reads, redis_spans, writes

pytestmark = pytest.mark.redis

PLAIN_DB = 6  # the plain client the cluster is compared with (other suites use dbs 1-5)

RULES = [
    {
        "name": "credit_score",
        "keys": ["postgresql:*/credit_scores/{id}", "redis:*/credit_score:{id}"],
        "version": {"column": "version", "json_field": "version"},
    },
    {"name": "profile", "keys": ["redis:*/profile:{id}"], "version": {"hash_field": "rev"}},
    {"name": "session", "keys": [{"pattern": "redis:*/session:{id}", "tier": "primary"}]},
]

CLUSTER_TARGETS = [
    (redis.cluster.RedisCluster, "execute_command"),
    (redis.cluster.ClusterPipeline, "execute"),
    (redis.cluster.TransactionStrategy, "_immediate_execute_command"),
    (redis.asyncio.cluster.RedisCluster, "execute_command"),
    (redis.asyncio.cluster.ClusterPipeline, "execute"),
    (redis.asyncio.cluster.TransactionStrategy, "_immediate_execute_command"),
]
# redis-py's own: a cluster client refuses some commands before sending them.
CLIENT_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)
ORIGINALS = {target: target[0].__dict__[target[1]] for target in CLUSTER_TARGETS}


def shape(span: ReadableSpan) -> tuple[str, dict[str, Any], StatusCode]:
    """What a span says, whichever client made it: the plain client's db number in fact
    keys and `db.namespace` taken out, a transaction id only as present."""
    out: dict[str, Any] = {}
    for key, value in attrs(span).items():
        if not key.startswith(("agentstate.", "db.")) or key == A.DB_NAMESPACE:
            continue
        if key in (A.READ_FACTS, A.WRITE_FACTS):
            value = tuple(f.replace(f"redis:{PLAIN_DB}/", "redis:0/") for f in value)
        out[key] = "<id>" if key == A.TXN_ID else value
    return span.name, out, span.status.status_code


def shapes(telemetry: Telemetry) -> list[tuple[str, dict[str, Any], StatusCode]]:
    spans = [s for s in telemetry.spans() if s.name.startswith("agentstate.keys")]
    return [shape(s) for s in redis_spans(telemetry) + spans]


def score(version: int, value: int = 700) -> str:
    return json.dumps({"score": value, "version": version})


def cluster_client(node: ClusterNode, **options: Any) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(host="127.0.0.1", port=node.port, **options)


@pytest.fixture
def cluster(
    redis_cluster: ClusterNode, telemetry: Telemetry
) -> Iterator[redis.cluster.RedisCluster]:
    """A cluster client, instrumented (made before: its start-up commands are not ours to
    compare), on an empty cluster."""
    configure(rules=RULES)
    _redis_commands.hash_states.clear()
    conn = cluster_client(redis_cluster)
    conn.flushall()
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    telemetry.exporter.clear()
    yield conn
    RedisInstrumentor().uninstrument()
    conn.flushall()
    conn.close()


@pytest.fixture
def plain(cluster: redis.cluster.RedisCluster, redis_url: str) -> Iterator[redis.Redis]:
    """The plain client to compare with (after `cluster`: instrumented, same rules)."""
    conn = redis.Redis.from_url(f"{redis_url}/{PLAIN_DB}")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def compare(
    telemetry: Telemetry, run: Callable[[Any], None], plain: Any, cluster: Any
) -> list[Any]:
    """Run `run` on the plain client, then on the cluster client: the same spans."""
    telemetry.exporter.clear()
    _redis_commands.hash_states.clear()
    run(plain)
    expected = shapes(telemetry)
    telemetry.exporter.clear()
    run(cluster)
    got = shapes(telemetry)
    assert got == expected
    assert {attrs(s)[A.DB_NAMESPACE] for s in redis_spans(telemetry)} == {"0"}
    return got


# --------------------------------------------------------------------------- commands


def commands(client: Any) -> None:
    assert client.set("credit_score:1", score(3)) is True
    assert client.get("credit_score:1") == score(3).encode()
    assert client.get("missing") is None
    client.set("plain", "v1")
    client.getdel("plain")
    client.setnx("plain", "v2")
    client.incr("counter")
    client.incrby("counter", 4)
    client.get("counter")
    client.execute_command("DEL", "counter")  # (delete() goes through a pipeline: below)
    client.mset({"{u}a": 1, "{u}b": 2})
    client.mget("{u}a", "{u}b", "{u}c")
    client.hset("profile:1", mapping={"name": "ada", "rev": 4})
    client.hget("profile:1", "name")  # a field read: the whole hash state seen before
    client.hset("profile:1", "name", "grace")  # no rev: the hash is read again
    client.hgetall("profile:1")
    client.hset("h", mapping={"a": 1, "b": 2})
    client.hgetall("h")
    client.hmget("h", "a", "b")
    client.hdel("h", "a")  # read again: its version is that of what is left
    client.hget("h", "b")
    client.hget("unseen", "x")  # a field of a state never seen: unresolved
    client.execute_command("SETEX", "session:1", 60, "s")  # a primary-tier key
    client.expire("plain", 0)
    assert client.ping() is True


def test_commands_give_the_plain_clients_facts_and_versions(
    cluster: redis.cluster.RedisCluster, plain: redis.Redis, telemetry: Telemetry
) -> None:
    got = compare(telemetry, commands, plain, cluster)
    by_name = [(name, a) for name, a, _ in got]
    assert by_name[0] == (
        "SET",
        {
            A.DB_SYSTEM_NAME: "redis",
            A.DB_OPERATION_NAME: "SET",
            A.DB_QUERY_SUMMARY: "SET",
            A.OP: "write",
            A.TIER: "cache",
            A.STORE: "redis",
            A.WRITE_FACTS: ("credit_score/1",),
            A.WRITE_VERSIONS: ("n:3",),
            A.COMMITTED: True,
        },
    )
    spans = redis_spans(telemetry)
    hget_known, rewrite, whole = spans[13], spans[14], spans[15]
    assert reads(hget_known) == {"profile/1": "n:4"}
    assert writes(rewrite) == {"profile/1": "n:4"} and reads(whole) == {"profile/1": "n:4"}
    after_hdel, hget_rest = spans[19], spans[20]
    assert reads(hget_rest) == writes(after_hdel) and writes(after_hdel)["redis:0/h"] != "none"
    assert attrs(spans[21])[A.UNRESOLVED] == "partial read" and A.OP not in attrs(spans[21])
    assert attrs(spans[22])[A.TIER] == "primary"
    # The follow-up reads (HGETALL after HSET/HDEL) made no span.
    assert [s.name for s in spans].count("HGETALL") == 2


def test_multi_key_deletes_are_a_pipeline_of_one_command_per_slot(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    """redis-py sends a cluster client's delete()/unlink() as a pipeline, one DEL per slot:
    one span, with every key's invalidation."""
    cluster.set("a", 1)
    cluster.set("b", 2)
    telemetry.exporter.clear()
    assert cluster.delete("a", "b", "c") == 2
    (span,) = redis_spans(telemetry)
    a = attrs(span)
    assert (span.name, a["db.operation.batch.size"], a[A.DB_QUERY_SUMMARY]) == (
        "PIPELINE",
        3,
        "PIPELINE DEL",
    )
    assert a[A.OP] == "delete" and a[A.COMMITTED] is True
    assert writes(span) == {"redis:0/a": "none", "redis:0/b": "none", "redis:0/c": "none"}


def test_encoding_and_decoding_clients_give_the_same_versions(
    cluster: redis.cluster.RedisCluster, redis_cluster: ClusterNode, telemetry: Telemetry
) -> None:
    """Versions digest the bytes Redis stores: a latin-1 client's "é" is b"\\xe9" (its nodes'
    connection settings, not the cluster pipeline's default encoder, say so)."""
    latin = cluster_client(redis_cluster, encoding="latin-1", decode_responses=True)
    telemetry.exporter.clear()
    latin.set("k", "é")
    assert cluster.get("k") == b"\xe9"
    latin.pipeline().hset("h", "f", "é").execute()
    assert cluster.hgetall("h") == {b"f": b"\xe9"}
    assert latin.get("k") == "é"
    latin.close()
    set_span, get_span, pipe_span, hgetall_span, text_get = redis_spans(telemetry)
    assert reads(get_span) == writes(set_span) == reads(text_get)
    assert reads(hgetall_span) == writes(pipe_span)


# --------------------------------------------------------------------------- pipelines


def pipelines(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set("a", 1).set("b", 2).get("a").hgetall("nothing").hset("profile:2", "name", "x")
    assert pipe.execute() == [True, True, b"1", {}, 1]
    pipe = client.pipeline(transaction=False)
    pipe.hset("a", "f", "v").set("c", 3)
    result = pipe.execute(raise_on_error=False)  # the failed command changed nothing
    assert isinstance(result[0], redis.ResponseError) and result[1] is True
    pipe = client.pipeline(transaction=False)
    pipe.set("session:2", "s").delete("credit_score:9")  # two tiers: a child span
    pipe.execute()


def test_plain_pipeline_records_every_command(
    cluster: redis.cluster.RedisCluster, plain: redis.Redis, telemetry: Telemetry
) -> None:
    got = compare(telemetry, pipelines, plain, cluster)
    first = got[0][1]
    assert got[0][0] == "PIPELINE" and A.TXN_ID not in first
    assert first[A.DB_QUERY_SUMMARY] == "PIPELINE SET GET HGETALL HSET"
    assert set(first[A.WRITE_FACTS]) == {"redis:0/a", "redis:0/b", "profile/2"}
    assert first[A.READ_FACTS] == ("redis:0/nothing",)
    assert got[1][1][A.WRITE_FACTS] == ("redis:0/c",)
    assert [name for name, _, _ in got][-1] == "agentstate.keys cache"


def failing_pipelines(client: Any) -> None:
    client.set("str", "x")
    for transaction in (False, True):
        pipe = client.pipeline(transaction=transaction)
        pipe.set("{str}a", "1").hset("str", "f", "v").set("{str}b", "2")  # HSET: WRONGTYPE
        with pytest.raises(redis.ResponseError, match=r"Command # 2 .* WRONGTYPE"):
            pipe.execute()
    pipe = client.pipeline(transaction=False)
    pipe.set("{str}a", "3").hset("str", "f", "v").set("{str}a", "4")  # a later write: unknown
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    pipe = client.pipeline(transaction=True)
    pipe.set("{str}c", "1").execute_command("SET", "{str}c")  # refused when queued: EXECABORT
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        pipe.execute()
    assert client.mget("{str}a", "{str}b", "{str}c") == [b"4", b"2", None]


def test_failed_pipelines_record_what_plain_pipelines_record(
    cluster: redis.cluster.RedisCluster, plain: redis.Redis, telemetry: Telemetry
) -> None:
    got = compare(telemetry, failing_pipelines, plain, cluster)
    _, plain_pipe, multi, unknown, aborted, _ = got
    assert plain_pipe[0] == "PIPELINE" and plain_pipe[2] == StatusCode.ERROR
    # The command before the failed one was applied; whether the later one ran is unknown.
    assert plain_pipe[1][A.WRITE_FACTS] == ("redis:0/{str}a",)
    assert plain_pipe[1][A.COMMITTED] is True
    assert plain_pipe[1][A.UNRESOLVED] == "outcome unknown"
    assert multi[0] == "MULTI" and multi[1][A.TXN_OUTCOME] == "commit"
    assert multi[1][A.WRITE_FACTS] == ("redis:0/{str}a",)
    assert A.WRITE_FACTS not in unknown[1] and unknown[1][A.UNRESOLVED] == "outcome unknown"
    assert aborted[1][A.TXN_OUTCOME] == "rollback" and A.WRITE_FACTS not in aborted[1]


def transactions(client: Any, other: Any) -> None:
    # A cluster transaction's keys share one slot: "{credit_score:1}n" hashes as the first.
    with client.pipeline(transaction=True) as pipe:
        pipe.get("credit_score:1").set("credit_score:1", score(2)).incr("{credit_score:1}n")
        pipe.hset("{credit_score:1}h", "f", "v")  # read again after EXEC
        assert [bool(r) for r in pipe.execute()] == [False, True, True, True]
    client.set("{t}k", "1")
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{t}k")
        assert pipe.get("{t}k") == b"1"
        other.set("{t}k", "2")
        pipe.multi()
        pipe.set("{t}k", "3")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{t}k")
        value = int(pipe.get("{t}k") or 0)
        pipe.multi()
        pipe.set("{t}k", value + 1)
        pipe.execute()
    assert client.get("{t}k") == b"3"


def test_transactions_and_optimistic_locks_match_the_plain_client(
    cluster: redis.cluster.RedisCluster,
    plain: redis.Redis,
    telemetry: Telemetry,
    redis_cluster: ClusterNode,
    redis_url: str,
) -> None:
    other_plain = redis.Redis.from_url(f"{redis_url}/{PLAIN_DB}")
    other_cluster = cluster_client(redis_cluster)
    telemetry.exporter.clear()
    got = compare(
        telemetry,
        lambda c: transactions(c, other_plain if c is plain else other_cluster),
        plain,
        cluster,
    )
    other_plain.close()
    other_cluster.close()
    names = [name for name, _, _ in got]
    assert names == ["MULTI", "SET", "WATCH", "GET", "SET", "MULTI", "WATCH", "GET", "MULTI", "GET"]
    txn = got[0][1]
    assert txn[A.TXN_OUTCOME] == "commit" and txn[A.COMMITTED] is True
    assert txn[A.READ_FACTS] == ("credit_score/1",) and txn[A.READ_VERSIONS] == ("none",)
    assert txn[A.WRITE_FACTS] == (
        "credit_score/1",
        "redis:0/{credit_score:1}n",
        "redis:0/{credit_score:1}h",
    )
    assert txn[A.WRITE_VERSIONS][0] == "n:2" and txn[A.WRITE_VERSIONS][2].startswith("h:")
    # The WATCH phase: a span per command, the read recorded; a changed key: a rollback.
    assert got[3][1][A.READ_FACTS] == ("redis:0/{t}k",)
    rollback = got[5]
    assert rollback[1][A.TXN_OUTCOME] == "rollback" and rollback[2] == StatusCode.UNSET
    assert got[8][1][A.TXN_OUTCOME] == "commit" and got[7][1][A.READ_VERSIONS]


def test_cross_slot_transaction_is_refused_and_records_nothing(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    pipe = cluster.pipeline(transaction=True)
    pipe.set("a", 1).set("b", 2)
    with pytest.raises(redis.exceptions.CrossSlotTransactionError):
        pipe.execute()
    assert cluster.exists("a") == 0
    multi = next(s for s in redis_spans(telemetry) if s.name == "MULTI")
    assert multi.status.status_code == StatusCode.ERROR
    assert writes(multi) == {} and attrs(multi)[A.TXN_OUTCOME] == "rollback"


# --------------------------------------------------------------------------- follow-up reads


def test_follow_up_reads_never_go_through_the_pipeline(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    """HSET of one field under a `hash_field` rule: the version is the hash's rev, read again
    after the write. A cluster pipeline would only queue that read: it runs as the cluster
    client would run it, and the pipeline stays empty."""
    cluster.hset("profile:7", mapping={"name": "ada", "rev": 5})
    cluster.hset("profile:7", "name", "grace")
    pipe = cluster.pipeline()
    pipe.hset("profile:7", "name", "joan").hdel("profile:7", "nothing-there")
    assert pipe.execute() == [0, 0]
    assert len(pipe) == 0 and pipe.execute() == []  # nothing of ours left queued
    with cluster.pipeline(transaction=True) as txn:
        txn.hset("profile:7", "tone", "formal")
        txn.execute()
        assert len(txn) == 0
    spans = redis_spans(telemetry)
    assert [s.name for s in spans] == ["HSET", "HSET", "PIPELINE", "MULTI"]
    assert [writes(s) for s in spans] == [{"profile/7": "n:5"}] * 4
    assert attrs(spans[1])[A.WRITE_FIELDS] == ("name",)
    assert cluster.hgetall("profile:7") == {
        b"name": b"joan",
        b"rev": b"5",
        b"tone": b"formal",
    }


# --------------------------------------------------------------------------- asyncio


async def async_run(node: ClusterNode, telemetry: Telemetry) -> list[Any]:
    conn = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=node.port)
    await conn.initialize()  # a transaction pipeline's WATCH runs in a thread: connect first
    telemetry.exporter.clear()
    out: list[Any] = []
    out.append(await conn.set("credit_score:1", score(3)))
    out.append(await conn.get("credit_score:1"))
    out.append(await conn.hset("profile:1", mapping={"name": "ada", "rev": 4}))
    out.append(await conn.hset("profile:1", "name", "grace"))  # read again
    out.append(await conn.hget("profile:1", "name"))
    pipe = conn.pipeline()
    pipe.set("a", 1).get("a").hset("profile:2", "name", "x").hgetall("nothing")
    out.append(await pipe.execute())
    out.append(len(pipe))
    async with conn.pipeline(transaction=True) as txn:
        await txn.watch("{t}k")
        out.append(await txn.get("{t}k"))
        txn.multi()
        txn.set("{t}k", 1).hset("{t}h", "f", "v")
        out.append(await txn.execute())
    await conn.set("str", "x")
    pipe = conn.pipeline()
    pipe.set("{str}a", "1").hset("str", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await pipe.execute()
    with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot"):
        await conn.mget("a", "str")
    await conn.aclose()
    return out


def test_asyncio_cluster_client_matches_the_sync_one(
    cluster: redis.cluster.RedisCluster, redis_cluster: ClusterNode, telemetry: Telemetry
) -> None:
    def run_sync(conn: redis.cluster.RedisCluster) -> None:
        conn.set("credit_score:1", score(3))
        conn.get("credit_score:1")
        conn.hset("profile:1", mapping={"name": "ada", "rev": 4})
        conn.hset("profile:1", "name", "grace")
        conn.hget("profile:1", "name")
        conn.pipeline().set("a", 1).get("a").hset("profile:2", "name", "x").hgetall(
            "nothing"
        ).execute()
        with conn.pipeline(transaction=True) as txn:
            txn.watch("{t}k")
            txn.get("{t}k")
            txn.multi()
            txn.set("{t}k", 1).hset("{t}h", "f", "v")
            txn.execute()
        conn.set("str", "x")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            conn.pipeline().set("{str}a", "1").hset("str", "f", "v").execute()
        with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot"):
            conn.mget("a", "str")

    run_sync(cluster)
    expected = shapes(telemetry)
    cluster.flushall()
    _redis_commands.hash_states.clear()
    out = asyncio.run(async_run(redis_cluster, telemetry))
    assert out[5] == [True, b"1", 1, {}] and out[6] == 0  # no follow-up left queued
    assert out[8] == [True, 1]
    got = shapes(telemetry)
    assert got == expected
    names = [name for name, _, _ in got]
    assert names[-4:] == ["MULTI", "SET", "PIPELINE", "MGET"]
    assert got[3][1][A.WRITE_VERSIONS] == ("n:4",)  # read again through the cluster client
    assert got[5][1][A.WRITE_VERSIONS][-1].startswith("h:")  # profile:2, read again
    assert got[-2][2] == got[-1][2] == StatusCode.ERROR


# --------------------------------------------------------------------------- findings


def test_stale_cache_read_through_the_cluster_is_flagged(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    cluster.set("credit_score:42", score(1, 680))  # cached before the workflow
    telemetry.exporter.clear()
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", 2, store="postgresql")
        with agent("risk-assessor"):
            assert json.loads(cluster.get("credit_score:42") or "")["score"] == 680
    (stale,) = telemetry.anomalies("stale_read")
    a = attrs(stale)
    assert a[A.ANOMALY_FACT] == "credit_score/42"
    assert (a[A.ANOMALY_OBSERVED], a[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
    assert a[A.ANOMALY_AGENTS] == ("risk-assessor", "credit-scorer")
    (read,) = [s for s in redis_spans(telemetry) if reads(s)]
    assert stale.parent is not None and stale.parent.span_id == read.context.span_id
    # Raise mode: the stale value never reaches the agent; a pipeline's stale read neither.
    configure(on_anomaly="raise")
    seen: list[Any] = []
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", 2, store="postgresql")
        with agent("risk-assessor"):
            with pytest.raises(StaleReadError):
                seen.append(cluster.get("credit_score:42"))
            with pytest.raises(StaleReadError):
                seen.append(cluster.pipeline().get("credit_score:42").execute())
    assert seen == []


def test_write_then_invalidate_through_the_cluster_is_not_flagged(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    cluster.set("credit_score:42", score(1, 680))
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", 2, store="postgresql")
            cluster.delete("credit_score:42")
        with agent("risk-assessor"):
            assert cluster.get("credit_score:42") is None
            cluster.set("credit_score:42", score(2, 750))
            assert json.loads(cluster.get("credit_score:42") or "")["version"] == 2
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- errors


def test_client_errors_propagate_unchanged_and_raw_multi_opens_nothing(
    cluster: redis.cluster.RedisCluster, redis_cluster: ClusterNode, telemetry: Telemetry
) -> None:
    RedisInstrumentor().uninstrument()
    bare = cluster_client(redis_cluster)  # the same calls without instrumentation
    bare.set("s", "x")
    expected = []
    for call in (
        lambda c: c.hget("s", "f"),
        lambda c: c.mget("a", "s"),
        lambda c: c.execute_command("MULTI"),  # no key: redis-py cannot route it
    ):
        with pytest.raises(CLIENT_ERRORS) as caught:
            call(bare)
        expected.append((type(caught.value), str(caught.value)))
        RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
        with pytest.raises(CLIENT_ERRORS) as caught:
            call(cluster)
        RedisInstrumentor().uninstrument()
        assert (type(caught.value), str(caught.value)) == expected[-1]
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    bare.close()
    assert "Missing key" in expected[-1][1]
    assert cluster.set("after", "1") is True  # not taken as queued in a transaction
    spans = redis_spans(telemetry)
    assert [(s.name, s.status.status_code) for s in spans] == [
        ("HGET", StatusCode.ERROR),
        ("MGET", StatusCode.ERROR),
        ("MULTI", StatusCode.ERROR),
        ("SET", StatusCode.UNSET),
    ]
    assert all(A.OP not in attrs(s) for s in spans[:3])
    assert set(writes(spans[3])) == {"redis:0/after"}


def test_raw_multi_sent_to_a_node_is_followed_to_its_exec(
    cluster: redis.cluster.RedisCluster, telemetry: Telemetry
) -> None:
    """With `target_nodes` redis-py sends MULTI on one node's pooled connection: the commands
    that follow are queued there (one slot's keys) and applied at EXEC, as on a plain client."""
    node = cluster.get_default_node()
    assert cluster.execute_command("MULTI", target_nodes=node) in (b"OK", True, "OK")
    assert cluster.set("{x}a", "v") is False  # redis-py's reading of QUEUED
    cluster.hset("{x}h", "f", "1")
    assert cluster.execute_command("EXEC", target_nodes=node) == [b"OK", 1]
    spans = redis_spans(telemetry)
    assert [s.name for s in spans] == ["MULTI", "SET", "HSET", "EXEC"]
    assert all(A.OP not in attrs(s) for s in spans[:3])  # queued: nothing applied yet
    exec_span = attrs(spans[3])
    assert exec_span[A.TXN_OUTCOME] == "commit" and exec_span[A.COMMITTED] is True
    assert set(writes(spans[3])) == {"redis:0/{x}a", "redis:0/{x}h"}
    telemetry.exporter.clear()
    assert cluster.get("{x}a") == b"v"
    assert reads(redis_spans(telemetry)[0]) == {"redis:0/{x}a": writes(spans[3])["redis:0/{x}a"]}


# --------------------------------------------------------------------------- redirections


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[ClusterNode, ClusterNode]]:
    """A real two-node cluster: node A holds every slot, node B none yet (it stays a
    primary when it loses its last slot: replica migration off)."""
    cluster_binaries_missing()
    a = start_cluster_node(tmp_path / "a")
    b = start_cluster_node(tmp_path / "b", "--cluster-allow-replica-migration", "no")
    try:
        redis_cli(a.port, "cluster", "addslotsrange", 0, 16383)
        redis_cli(b.port, "cluster", "meet", "127.0.0.1", a.port)
        b_id = b.node_id
        wait_until(
            lambda: any(
                line.startswith(b_id) and " connected" in line
                for line in redis_cli(a.port, "cluster", "nodes").splitlines()
            ),
            "node B to join node A",
        )
        wait_cluster_ok(a, b)
        yield a, b
    finally:
        b.stop()
        a.stop()


def move_slot(key: str, a: ClusterNode, b: ClusterNode) -> None:
    """Give `key`'s (empty) slot to B: A then answers MOVED for it."""
    slot = redis_cli(a.port, "cluster", "keyslot", key)
    owner = b.node_id
    for node in (b, a):
        assert redis_cli(node.port, "cluster", "setslot", slot, "node", owner) == "OK"


def test_commands_a_pipeline_sends_again_after_moved_get_no_span_of_their_own(
    two_nodes: tuple[ClusterNode, ClusterNode], telemetry: Telemetry
) -> None:
    a, b = two_nodes
    configure(rules=RULES)
    sync_client = cluster_client(a)  # its slot table: everything on A
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    try:
        move_slot("moved:1", a, b)
        telemetry.exporter.clear()
        pipe = sync_client.pipeline()
        assert pipe.set("moved:1", "1").get("moved:1").execute() == [True, b"1"]
        assert sync_client.get_node_from_key("moved:1").port == b.port  # it was redirected

        async def run() -> list[Any]:
            conn = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=a.port)
            await conn.initialize()
            move_slot("moved:2", a, b)
            pipe = conn.pipeline()
            result = await pipe.set("moved:2", "2").get("moved:2").execute()
            assert conn.get_node_from_key("moved:2").port == b.port
            await conn.aclose()
            return list(result)

        assert asyncio.run(run()) == [True, b"2"]
        assert sync_client.get("moved:1") == b"1"
    finally:
        RedisInstrumentor().uninstrument()
        sync_client.close()
    spans = redis_spans(telemetry)
    assert [s.name for s in spans] == ["PIPELINE", "PIPELINE", "GET"]
    first, second, check = spans
    assert writes(first) == {"redis:0/moved:1": reads(check)["redis:0/moved:1"]}
    assert set(writes(second)) == {"redis:0/moved:2"}
    for span in (first, second):
        assert attrs(span)[A.COMMITTED] is True and span.status.status_code == StatusCode.UNSET


# --------------------------------------------------------------------------- uninstrument


def test_uninstrument_restores_the_cluster_methods(
    redis_cluster: ClusterNode, telemetry: Telemetry
) -> None:
    conn = cluster_client(redis_cluster)
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    try:
        for cls, name in CLUSTER_TARGETS:
            chain = chain_of(cls, name)
            assert len(chain) == 2 and chain[1] is ORIGINALS[(cls, name)], (cls, name)
    finally:
        RedisInstrumentor().uninstrument()
    for (cls, name), original in ORIGINALS.items():
        assert cls.__dict__[name] is original, (cls, name)
    telemetry.exporter.clear()
    conn.set("k", "v")
    conn.pipeline().get("k").execute()
    conn.delete("k")
    conn.close()
    assert redis_spans(telemetry) == []
