"""redis-py instrumentation on the real Redis server (dbs 1 and 2 only), with the real SDK
and our processor: span shapes, versions, transactions, findings and their correct twins,
threads and asyncio tasks, raise mode, odd keys and values, client errors."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from opentelemetry import context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_agent_state import StaleReadError, agent, configure, observe_write, workflow
from otel_agent_state import attributes as A
from otel_agent_state.core import config
from otel_agent_state.instrumentation import _redis_commands
from otel_agent_state.instrumentation._wrapping import chain_of
from otel_agent_state.instrumentation.redis import RedisInstrumentor
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry

pytestmark = pytest.mark.redis

NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
NO_RETRY_ASYNC = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)

SYNC_DB = 1
ASYNC_DB = 2

RULES = [
    {
        "name": "credit_score",
        "keys": ["sqlite:*/credit_scores/{id}", "redis:*/credit_score:{id}"],
        "version": {"column": "version", "json_field": "version"},
    },
    {"name": "profile", "keys": ["redis:*/profile:{id}"], "version": {"hash_field": "rev"}},
    {
        "name": "session",
        "keys": [{"pattern": "redis:*/session:{id}", "tier": "primary"}],
    },
]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def reads(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.READ_FACTS, ()), a.get(A.READ_VERSIONS, ()), strict=True))


def writes(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.WRITE_FACTS, ()), a.get(A.WRITE_VERSIONS, ()), strict=True))


def redis_spans(telemetry: Telemetry) -> list[ReadableSpan]:
    return [s for s in telemetry.spans() if attrs(s).get(A.DB_SYSTEM_NAME) == "redis"]


def score(version: int, value: int = 700) -> str:
    return json.dumps({"score": value, "version": version})


@pytest.fixture
def client(telemetry: Telemetry, redis_url: str) -> Iterator[redis.Redis]:
    configure(rules=RULES)
    _redis_commands.hash_states.clear()
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    conn = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}")
    conn.flushdb()
    telemetry.exporter.clear()
    yield conn
    RedisInstrumentor().uninstrument()
    conn.flushdb()
    conn.close()


@pytest.fixture
def primary(telemetry: Telemetry, tmp_path: Path) -> Iterator[Path]:
    """The credit scores' primary store: a real SQLite file, instrumented too."""
    path = tmp_path / "scores.db"
    setup = sqlite3.connect(path)
    setup.executescript(
        "CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);"
        "INSERT INTO credit_scores VALUES (42, 680, 1);"
    )
    setup.commit()
    setup.close()
    instrumentor = SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield path
    instrumentor.uninstrument()


# --------------------------------------------------------------------------- span shapes


def test_command_spans_follow_db_conventions_and_carry_facts(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    with agent("writer"):
        assert client.set("credit_score:1", score(3)) is True
        assert client.get("credit_score:1") == score(3).encode()
        assert client.get("credit_score:2") is None
        assert client.ping() is True
    set_span, get_span, miss_span, ping_span = redis_spans(telemetry)
    a = attrs(set_span)
    assert set_span.name == "SET"
    assert a[A.DB_SYSTEM_NAME] == "redis" and a[A.DB_NAMESPACE] == str(SYNC_DB)
    assert a[A.DB_OPERATION_NAME] == "SET" and a[A.DB_QUERY_SUMMARY] == "SET"
    assert a[A.STORE] == "redis" and a[A.TIER] == "cache" and a[A.OP] == "write"
    assert a[A.GEN_AI_AGENT_NAME] == "writer"
    assert writes(set_span) == {"credit_score/1": "n:3"}
    assert reads(get_span) == {"credit_score/1": "n:3"}
    assert attrs(get_span)[A.CONSISTENCY] == "linearizable"
    assert reads(miss_span) == {"credit_score/2": "none"}
    # Never values or keys in the database attributes.
    for span in (set_span, get_span):
        assert not any("700" in str(v) or "credit_score:1" in str(v) for v in attrs(span).values())
    # Unknown commands: a plain database span, no state.
    assert ping_span.name == "PING" and A.OP not in attrs(ping_span)
    assert A.STORE not in attrs(ping_span)


def test_versions_of_each_command_family(client: redis.Redis, telemetry: Telemetry) -> None:
    client.set("plain", "v1")
    client.get("plain")
    client.mset({"plain": "v2", "other": 7})
    client.mget("plain", "other", "nothing")
    client.incr("counter")
    client.incrby("counter", 5)
    client.get("counter")
    client.hset("profile:9", mapping={"name": "ada", "rev": 4})
    client.hget("profile:9", "name")
    client.hgetall("profile:9")
    client.hset("profile:9", "name", "grace")  # no rev: read again for the version
    client.hset("h", mapping={"a": 1, "b": 2})
    client.hget("h", "a")
    client.hdel("h", "a")
    client.hmget("h", "b")
    client.getdel("plain")
    client.execute_command("SETEX", "session:1", 60, "x")  # setex() is deprecated
    client.expire("session:1", 100)
    client.expire("other", 0)
    client.unlink("counter")
    client.setnx("other", 1)
    client.getex("other", ex=30)
    spans = redis_spans(telemetry)
    by = [(s.name, reads(s), writes(s)) for s in spans]
    set_v1 = by[0][2]["redis:1/plain"]
    assert by[1][1] == {"redis:1/plain": set_v1}
    v2 = by[2][2]["redis:1/plain"]
    assert v2 != set_v1 and set(by[2][2]) == {"redis:1/plain", "redis:1/other"}
    assert by[3][1] == {"redis:1/plain": v2, "redis:1/other": by[2][2]["redis:1/other"]} | {
        "redis:1/nothing": "none"
    }
    first, second, got = by[4], by[5], by[6]
    assert first[1] == {} and first[2]["redis:1/counter"].startswith("h:")
    assert second[1] == {"redis:1/counter": first[2]["redis:1/counter"]}  # its own basis
    assert attrs(spans[5])[A.OP] == "read_write"
    assert got[1] == {"redis:1/counter": second[2]["redis:1/counter"]}
    assert by[7][2] == {"profile/9": "n:4"}
    assert by[8][1] == {"profile/9": "n:4"}  # a field read maps to the whole hash state
    assert by[9][1] == {"profile/9": "n:4"}
    assert by[10][2] == {"profile/9": "n:4"}  # rev unchanged: still version 4
    hash_v = by[11][2]["redis:1/h"]
    assert by[12][1] == {"redis:1/h": hash_v}
    after_del = by[13][2]["redis:1/h"]
    assert after_del not in (hash_v, "none")
    assert by[14][1] == {"redis:1/h": after_del}
    assert by[15][1] == {"redis:1/plain": v2} and by[15][2] == {"redis:1/plain": "none"}
    assert attrs(spans[15])[A.OP] == "read_write"
    assert by[16][2]["session/1"].startswith("h:")
    assert attrs(spans[16])[A.TIER] == "primary"  # the rule's key pattern says so
    assert by[17][2] == {} and A.OP not in attrs(spans[17])  # a TTL is not a write
    assert by[18][2] == {"redis:1/other": "none"}  # expire now: deleted
    assert attrs(spans[18])[A.OP] == "delete"
    assert by[19][2] == {"redis:1/counter": "none"}
    assert by[20][2]["redis:1/other"] not in (by[2][2]["redis:1/other"], "none")  # "1", not "7"
    assert by[21][1] == {"redis:1/other": by[20][2]["redis:1/other"]}


def test_hash_writes_without_the_field_read_the_hash_again_untraced(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    client.hset("h", "a", "1")
    ((name, w),) = [(s.name, writes(s)) for s in redis_spans(telemetry)]
    assert name == "HSET"  # the follow-up HGETALL made no span
    client.hgetall("h")
    assert reads(redis_spans(telemetry)[-1]) == w


def test_decode_responses_client_gives_the_same_versions(
    client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    text = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}", decode_responses=True)
    client.set("k", "é-value")
    assert text.get("k") == "é-value"
    text.hset("h", mapping={"x": "1"})
    assert client.hgetall("h") == {b"x": b"1"}
    text.close()
    s = redis_spans(telemetry)
    assert reads(s[1]) == writes(s[0])
    assert reads(s[3]) == writes(s[2])


# --------------------------------------------------------------------------- pipelines


def test_transaction_is_a_mutation_scope(client: redis.Redis, telemetry: Telemetry) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.get("credit_score:1").set("credit_score:1", score(2)).delete("plain")
        pipe.incr("counter")
        assert pipe.execute() == [None, True, 0, 1]
    (span,) = redis_spans(telemetry)
    a = attrs(span)
    assert span.name == "MULTI"
    assert a[A.DB_OPERATION_NAME] == "MULTI" and a["db.operation.batch.size"] == 4
    assert a[A.DB_QUERY_SUMMARY] == "MULTI GET SET DEL INCRBY"
    assert a[A.OP] == "read_write"
    assert reads(span) == {"credit_score/1": "none"}
    assert writes(span) == {
        "credit_score/1": "n:2",
        "redis:1/plain": "none",
        "redis:1/counter": writes(span)["redis:1/counter"],
    }
    assert a[A.TXN_ID] and a[A.TXN_OUTCOME] == "commit" and a[A.COMMITTED] is True


def test_plain_pipeline_records_every_command(client: redis.Redis, telemetry: Telemetry) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set("a", 1).set("b", 2).get("a").hgetall("nothing")
    assert pipe.execute() == [True, True, b"1", {}]
    (span,) = redis_spans(telemetry)
    a = attrs(span)
    assert span.name == "PIPELINE" and A.TXN_ID not in a and A.TXN_OUTCOME not in a
    assert set(writes(span)) == {"redis:1/a", "redis:1/b"}
    assert reads(span) == {"redis:1/nothing": "none"}  # a read of its own write is not one
    # raise_on_error=False: a failed command changed nothing, the others are recorded.
    telemetry.exporter.clear()
    pipe = client.pipeline(transaction=False)
    pipe.hset("a", "f", "v").set("c", 3)
    result = pipe.execute(raise_on_error=False)
    assert isinstance(result[0], redis.ResponseError) and result[1] is True
    (span,) = redis_spans(telemetry)
    assert set(writes(span)) == {"redis:1/c"}


def test_watch_error_is_a_rollback(
    client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    other = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}")
    client.set("k", "1")
    telemetry.exporter.clear()
    with client.pipeline() as pipe:
        pipe.watch("k")
        assert pipe.get("k") == b"1"
        other.set("k", "2")
        pipe.multi()
        pipe.set("k", "3")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    other.close()
    assert client.get("k") == b"2"
    names = [s.name for s in redis_spans(telemetry)]
    assert names == ["WATCH", "GET", "SET", "MULTI", "GET"]
    multi = redis_spans(telemetry)[3]
    a = attrs(multi)
    assert a[A.TXN_OUTCOME] == "rollback" and a[A.TXN_ID]
    assert writes(multi) == {} and multi.status.status_code == StatusCode.UNSET


def test_queued_error_aborts_the_transaction(client: redis.Redis, telemetry: Telemetry) -> None:
    pipe = client.pipeline()
    pipe.set("k", "1")
    pipe.execute_command("SET", "k")  # wrong arity: refused when queued, EXECABORT
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert client.get("k") is None
    multi = redis_spans(telemetry)[0]
    assert attrs(multi)[A.TXN_OUTCOME] == "rollback" and writes(multi) == {}
    assert multi.status.status_code == StatusCode.ERROR


def test_exec_time_error_still_commits_the_other_commands(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    client.set("str", "x")
    telemetry.exporter.clear()
    pipe = client.pipeline()
    pipe.set("k", "1").hset("str", "f", "v")  # WRONGTYPE at EXEC time; SET k is applied
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pipe.execute()
    assert client.get("k") == b"1"
    multi, get = redis_spans(telemetry)
    assert attrs(multi)[A.TXN_OUTCOME] == "commit"
    assert writes(multi) == {"redis:1/k": reads(get)["redis:1/k"]}


# --------------------------------------------------------------------------- findings


def rescore(path: Path, client: redis.Redis, invalidate: bool) -> None:
    with agent("credit-scorer"):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
        conn.close()
        if invalidate:
            client.delete("credit_score:42")


def assess(path: Path, client: redis.Redis) -> int:
    with agent("risk-assessor"):
        cached = client.get("credit_score:42")
        if cached is not None:
            return int(json.loads(cached)["score"])
        conn = sqlite3.connect(path)
        value, version = conn.execute(
            "SELECT score, version FROM credit_scores WHERE id = 42"
        ).fetchone()
        conn.close()
        client.set("credit_score:42", score(version, value))
        return int(value)


def test_credit_score_stale_cache_read_is_flagged(
    client: redis.Redis, primary: Path, telemetry: Telemetry
) -> None:
    client.set("credit_score:42", score(1, 680))  # filled before the workflow
    with workflow("credit"):
        rescore(primary, client, invalidate=False)
        assert assess(primary, client) == 680  # the agent acted on the old score
    (stale,) = telemetry.anomalies("stale_read")
    a = attrs(stale)
    assert a[A.ANOMALY_FACT] == "credit_score/42"
    assert (a[A.ANOMALY_OBSERVED], a[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
    assert a[A.ANOMALY_AGENTS] == ("risk-assessor", "credit-scorer")
    (cache_read,) = [s for s in redis_spans(telemetry) if reads(s)]
    assert stale.parent is not None and stale.parent.span_id == cache_read.context.span_id
    assert attrs(cache_read)[A.GEN_AI_AGENT_NAME] == "risk-assessor"
    assert [x.name for x in telemetry.anomalies()] == ["agentstate.anomaly stale_read"]


def test_write_then_invalidate_is_not_flagged(
    client: redis.Redis, primary: Path, telemetry: Telemetry
) -> None:
    client.set("credit_score:42", score(1, 680))
    with workflow("credit"):
        rescore(primary, client, invalidate=True)
        assert assess(primary, client) == 750  # miss -> primary -> refill
        assert assess(primary, client) == 750  # hit on the refilled cache
    assert telemetry.anomalies() == []
    cache_reads = [reads(s) for s in redis_spans(telemetry) if reads(s)]
    assert cache_reads == [{"credit_score/42": "none"}, {"credit_score/42": "n:2"}]


def test_write_then_refill_is_not_flagged(client: redis.Redis, telemetry: Telemetry) -> None:
    client.set("credit_score:42", score(1, 680))
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", 2, store="postgresql")
            client.set("credit_score:42", score(2, 750))  # write-through
        with agent("risk-assessor"):
            assert json.loads(client.get("credit_score:42") or "{}")["version"] == 2
    assert telemetry.anomalies() == []


def read_primary(path: Path) -> int:
    conn = sqlite3.connect(path)
    (value,) = conn.execute("SELECT score FROM credit_scores WHERE id = 42").fetchone()
    conn.close()
    return int(value)


def test_cache_aside_fills_and_invalidations_are_copies_not_versions(
    client: redis.Redis, primary: Path, telemetry: Telemetry
) -> None:
    """No primary write in the trace: cache fills (digest versions, no version field in the
    cached text) and invalidations must not make primary reads, or cache hits, stale."""
    with workflow("credit"):
        with agent("filler"):
            assert client.get("credit_score:42") is None
            client.set("credit_score:42", str(read_primary(primary)))  # plain text: a digest
        with agent("other-filler"):
            client.set("credit_score:42", str(read_primary(primary)))
        with agent("reader"):
            assert read_primary(primary) == 680
            assert client.get("credit_score:42") == b"680"
        with agent("invalidator"):
            client.delete("credit_score:42")
            assert read_primary(primary) == 680
    assert telemetry.anomalies() == []
    fill = next(s for s in redis_spans(telemetry) if s.name == "SET")
    assert writes(fill)["credit_score/42"].startswith("h:")


def _two_tier_call(client: redis.Redis, how: str) -> None:
    """Write a primary key and drop a cache key in one call."""
    if how == "raw multi":
        for command in (("MULTI",), ("SET", "session:1", "s"), ("DEL", "credit_score:42")):
            client.execute_command(*command)
        client.execute_command("EXEC")
        return
    pipe = client.pipeline(transaction=how == "multi")
    pipe.set("session:1", "s")
    pipe.delete("credit_score:42")
    pipe.execute()


@pytest.mark.parametrize("how", ["multi", "plain", "raw multi"])
def test_a_call_over_two_tiers_puts_each_tier_on_a_span_of_its_own(
    client: redis.Redis, telemetry: Telemetry, how: str
) -> None:
    # A span has one tier: before, the cache key's delete was recorded in the primary tier
    # and, being the same fact, replaced the primary write on the span.
    client.set("credit_score:42", score(1))
    telemetry.exporter.clear()
    _two_tier_call(client, how)
    [main] = [s for s in redis_spans(telemetry) if writes(s)]
    [part] = [s for s in telemetry.spans() if s.name == "agentstate.keys cache"]
    assert (attrs(main)[A.TIER], list(writes(main))) == ("primary", ["session/1"])
    assert (attrs(part)[A.TIER], writes(part)) == ("cache", {"credit_score/42": "none"})
    assert part.parent is not None and part.parent.span_id == main.context.span_id
    assert part.start_time == main.start_time  # dated from the call, not after it
    if how == "plain":
        assert attrs(part)[A.COMMITTED] is True and A.TXN_ID not in attrs(part)
    else:  # the part's writes end with the call's transaction
        assert attrs(main)[A.TXN_OUTCOME] == "commit"
        assert (attrs(part)[A.TXN_ID], attrs(part)[A.COMMITTED]) == (attrs(main)[A.TXN_ID], False)


@pytest.fixture
def stale_cache(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """Raise mode, and the score cached at version 1 (680): stale once `rescore` has run."""
    monkeypatch.setenv(config.ENV_ON_ANOMALY, "raise")
    config.set_settings(config.settings_from_env())
    configure(rules=RULES)
    client.set("credit_score:42", score(1, 680))
    return client


def test_raise_mode_stops_a_stale_read_in_a_calls_second_tier(
    stale_cache: redis.Redis, primary: Path
) -> None:
    client = stale_cache
    with workflow("credit"):
        rescore(primary, client, invalidate=False)
        with agent("risk-assessor"), pytest.raises(StaleReadError) as caught:
            pipe = client.pipeline(transaction=False)
            pipe.set("session:1", "s")  # the call's first tier: primary
            pipe.get("credit_score:42")  # the stale cached score, in the cache tier
            pipe.execute()
    assert caught.value.anomaly.fact == "credit_score/42"


def test_raise_mode_stops_the_stale_value(
    stale_cache: redis.Redis, primary: Path, telemetry: Telemetry
) -> None:
    client = stale_cache
    seen: list[Any] = []
    with workflow("credit"):
        rescore(primary, client, invalidate=False)
        with agent("risk-assessor"), pytest.raises(StaleReadError) as caught:
            seen.append(client.get("credit_score:42"))
    assert seen == []  # the value never reached the agent
    anomaly = caught.value.anomaly
    assert (anomaly.fact, anomaly.observed_version, anomaly.expected_version) == (
        "credit_score/42",
        "n:1",
        "n:2",
    )
    (span,) = [s for s in redis_spans(telemetry) if reads(s)]
    assert span.status.status_code == StatusCode.ERROR
    # A fresh read goes through.
    telemetry.exporter.clear()
    with workflow("credit"), agent("risk-assessor"):
        client.delete("credit_score:42")
        assert client.get("credit_score:42") is None
    assert telemetry.anomalies() == []


def _in_threads(*targets: Any) -> None:
    parent = context.get_current()

    def run(target: Any) -> None:
        token = context.attach(parent)
        try:
            target()
        finally:
            context.detach(token)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_lost_update_between_agents_in_threads(
    client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    client.set("balance", 1000)
    barrier = threading.Barrier(2, timeout=10)

    def spend(name: str, amount: int) -> Any:
        def run() -> None:
            conn = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}")
            with agent(name):
                balance = int(conn.get("balance") or 0)
                barrier.wait()  # both read before either writes
                if name == "bob":
                    barrier.wait()
                conn.set("balance", balance - amount)
                if name == "alice":
                    barrier.wait()
            conn.close()

        return run

    with workflow("payouts"):
        _in_threads(spend("alice", 100), spend("bob", 300))
    assert client.get("balance") == b"700"
    (lost,) = telemetry.anomalies("lost_update")
    a = attrs(lost)
    assert a[A.ANOMALY_FACT] == "redis:1/balance"
    assert a[A.ANOMALY_AGENTS] == ("alice", "bob")
    assert str(a[A.ANOMALY_OBSERVED]).startswith("h:")
    assert len(lost.links) == 3


def test_optimistic_lock_twin_is_not_a_lost_update(
    client: redis.Redis, telemetry: Telemetry, redis_url: str
) -> None:
    client.set("balance", 1000)
    barrier = threading.Barrier(2, timeout=10)

    def spend(name: str, amount: int) -> Any:
        def run() -> None:
            conn = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}")
            first = True
            with agent(name), conn.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch("balance")
                        balance = int(pipe.get("balance") or 0)
                        if first:
                            barrier.wait()
                            if name == "bob":
                                barrier.wait()
                        pipe.multi()
                        pipe.set("balance", balance - amount)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
                    finally:
                        if first and name == "alice":
                            barrier.wait()
                        first = False
            conn.close()

        return run

    with workflow("payouts"):
        _in_threads(spend("alice", 100), spend("bob", 300))
    assert client.get("balance") == b"600"
    assert telemetry.anomalies() == []
    outcomes = [attrs(s).get(A.TXN_OUTCOME) for s in redis_spans(telemetry) if s.name == "MULTI"]
    assert sorted(outcomes) == ["commit", "commit", "rollback"]


def test_atomic_increments_are_not_lost_updates(client: redis.Redis, telemetry: Telemetry) -> None:
    client.set("hits", 10)
    with workflow("count"):
        with agent("a"):
            client.get("hits")
        with agent("b"):
            client.get("hits")
        with agent("a"):
            client.incr("hits")
        with agent("b"):
            client.incr("hits")
    assert client.get("hits") == b"12"
    assert telemetry.anomalies() == []


def test_transfer_failing_between_two_sets_is_orphaned_but_not_inside_multi(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    client.mset({"acct:A": 100, "acct:B": 0})
    with workflow("payout"), pytest.raises(RuntimeError), agent("transfer"):
        client.get("acct:A")
        client.set("acct:A", 0)
        raise RuntimeError("crashed before crediting B")
    (orphan,) = telemetry.anomalies("orphaned_mutation")
    assert attrs(orphan)[A.ANOMALY_FACT] == "redis:1/acct:A"
    # The twin: both writes in one MULTI/EXEC, committed together before the failure.
    telemetry.exporter.clear()
    client.mset({"acct:A": 100, "acct:B": 0})
    with workflow("payout"), pytest.raises(RuntimeError), agent("transfer"):
        client.get("acct:A")
        client.pipeline().set("acct:A", 0).set("acct:B", 100).execute()
        raise RuntimeError("crashed after the transaction")
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- asyncio


def test_async_client_agents_in_tasks(telemetry: Telemetry, redis_url: str) -> None:
    configure(rules=RULES)
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)

    async def main() -> None:
        conn = redis.asyncio.Redis.from_url(f"{redis_url}/{ASYNC_DB}")
        await conn.flushdb()
        await conn.set("balance", 1000)
        telemetry.exporter.clear()
        both_read = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None
        alice_wrote = asyncio.Event()
        reads_done = [0]
        ready = asyncio.Event()

        async def spend(name: str, amount: int) -> None:
            with agent(name):
                balance = int(await conn.get("balance") or 0)
                if both_read is not None:
                    await both_read.wait()
                else:
                    reads_done[0] += 1
                    if reads_done[0] == 2:
                        ready.set()
                    await ready.wait()
                if name == "bob":
                    await alice_wrote.wait()
                await conn.set("balance", balance - amount)
                if name == "alice":
                    alice_wrote.set()

        with workflow("payouts"):
            await asyncio.gather(spend("alice", 100), spend("bob", 300))
            with agent("auditor"):
                async with conn.pipeline(transaction=True) as pipe:
                    pipe.get("balance").hset("audit", mapping={"n": 1})
                    await pipe.execute()
        assert await conn.get("balance") == b"700"
        await conn.flushdb()
        await conn.aclose()

    try:
        asyncio.run(main())
    finally:
        RedisInstrumentor().uninstrument()
    (lost,) = telemetry.anomalies("lost_update")
    assert attrs(lost)[A.ANOMALY_AGENTS] == ("alice", "bob")
    spans = redis_spans(telemetry)
    agents = {(s.name, attrs(s).get(A.GEN_AI_AGENT_NAME)) for s in spans if A.OP in attrs(s)}
    assert agents == {("GET", "alice"), ("GET", "bob"), ("SET", "alice"), ("SET", "bob")} | {
        ("MULTI", "auditor"),
        ("GET", "tests"),  # the check after the workflow: the service's name
    }
    (multi,) = [s for s in spans if s.name == "MULTI"]
    assert attrs(multi)[A.TXN_OUTCOME] == "commit"
    assert attrs(multi)[A.DB_NAMESPACE] == str(ASYNC_DB)
    assert set(writes(multi)) == {f"redis:{ASYNC_DB}/audit"}
    assert writes(multi)[f"redis:{ASYNC_DB}/audit"].startswith("h:")  # read again, untraced


def test_async_raise_mode_and_errors(telemetry: Telemetry, redis_url: str) -> None:
    configure(rules=RULES, on_anomaly="raise")
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)

    async def main() -> list[Any]:
        conn = redis.asyncio.Redis.from_url(f"{redis_url}/{ASYNC_DB}")
        await conn.set("credit_score:7", score(1))
        out: list[Any] = []
        with workflow("w"):
            with agent("scorer"):
                observe_write("credit_score/7", 2, store="postgresql")
            with agent("reader"):
                with pytest.raises(StaleReadError):
                    out.append(await conn.get("credit_score:7"))
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    await conn.hget("credit_score:7", "f")
                await conn.delete("credit_score:7")
                out.append(await conn.get("credit_score:7"))
        bad = redis.asyncio.Redis(host="127.0.0.1", port=1, db=ASYNC_DB, retry=NO_RETRY_ASYNC)
        with pytest.raises(redis.ConnectionError):
            await bad.get("x")
        await bad.aclose()
        await conn.flushdb()
        await conn.aclose()
        return out

    try:
        assert asyncio.run(main()) == [None]
    finally:
        RedisInstrumentor().uninstrument()
    assert len(telemetry.anomalies("stale_read")) == 1
    errors = [s for s in redis_spans(telemetry) if s.status.status_code == StatusCode.ERROR]
    assert [s.name for s in errors] == ["GET", "HGET", "GET"]


# --------------------------------------------------------------------------- robustness


def test_binary_non_utf8_and_huge_keys_and_values(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    huge_key = b"k" * 1_000_000
    huge_value = b"\x00\xff" * 2_000_000
    keys: list[Any] = [b"\xff\xfe\x00bin", "é/ü:%", huge_key, 12345, 1.5]
    for key in keys:
        assert client.set(key, huge_value) is True
        assert client.get(key) == huge_value
    client.set("credit_score:99", b"\xff not json")
    assert client.get("credit_score:99") == b"\xff not json"
    spans = redis_spans(telemetry)
    assert len(spans) == 2 * len(keys) + 2
    for set_span, get_span in zip(spans[::2], spans[1::2], strict=True):
        assert reads(get_span) == writes(set_span)
        (fact,) = writes(set_span)
        assert len(fact) <= len("redis:1/") + _redis_commands.MAX_KEY_CHARS
    facts = [next(iter(writes(s))) for s in spans[::2]]
    assert facts[:2] == ["redis:1/%FF%FE%00bin", "redis:1/%C3%A9/%C3%BC:%25"]
    assert facts[3:] == ["redis:1/12345", "redis:1/1.5", "credit_score/99"]


def test_client_errors_propagate_unchanged(client: redis.Redis, telemetry: Telemetry) -> None:
    client.set("s", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.hget("s", "f")
    with pytest.raises(redis.ResponseError):
        client.execute_command("NOSUCHCOMMAND", "x")
    bad = redis.Redis(host="127.0.0.1", port=1, db=SYNC_DB, retry=NO_RETRY)
    with pytest.raises(redis.ConnectionError):
        bad.get("x")
    with pytest.raises(redis.ConnectionError):
        bad.pipeline().set("a", 1).execute()
    bad.close()
    assert client.get("s") == b"x"  # still working
    spans = redis_spans(telemetry)
    failed = [s for s in spans if s.status.status_code == StatusCode.ERROR]
    assert [s.name for s in failed] == ["HGET", "NOSUCHCOMMAND", "GET", "MULTI"]
    for span in failed:
        assert A.READ_FACTS not in attrs(span) and A.WRITE_FACTS not in attrs(span)
        assert [e.name for e in span.events] == ["exception"]
    assert attrs(failed[-1])[A.TXN_OUTCOME] == "rollback"


def test_uninstrument_restores_redis_py(redis_url: str, telemetry: Telemetry) -> None:
    originals = {
        (cls, name): cls.__dict__[name]
        for cls, name in [
            (redis.client.Redis, "execute_command"),
            (redis.client.Pipeline, "execute"),
            (redis.client.Pipeline, "immediate_execute_command"),
            (redis.asyncio.client.Redis, "execute_command"),
            (redis.asyncio.client.Pipeline, "execute"),
        ]
    }
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    assert all(len(chain_of(cls, name)) == 2 for cls, name in originals)
    RedisInstrumentor().uninstrument()
    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is original
    conn = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}")
    conn.set("k", "v")
    conn.delete("k")
    conn.close()
    assert redis_spans(telemetry) == []


def test_json_commands_on_this_server(client: redis.Redis, telemetry: Telemetry) -> None:
    """RedisJSON when the server has it (Redis Stack, Redis 8); otherwise the commands fail
    as the server says and record nothing (the mapping itself: test_redis_commands.py)."""
    modules = {
        str(m.get(b"name", m.get("name", b"")), "utf-8").lower() for m in client.module_list()
    }
    doc = {"score": 700, "version": 5}
    telemetry.exporter.clear()
    if "rejson" not in modules:
        with pytest.raises(redis.ResponseError):
            client.json().set("credit_score:5", "$", doc)
        with pytest.raises(redis.ResponseError):
            client.json().get("credit_score:5")
        spans = redis_spans(telemetry)
        assert [s.name for s in spans] == ["JSON.SET", "JSON.GET"]
        for span in spans:
            assert A.OP not in attrs(span) and span.status.status_code == StatusCode.ERROR
        return
    client.json().set("credit_score:5", "$", doc)
    assert client.json().get("credit_score:5") == doc
    assert client.json().get("credit_score:5", "$.version") == [5]
    client.json().set("credit_score:5", "$.version", 6)
    client.json().delete("credit_score:5")
    spans = redis_spans(telemetry)
    assert writes(spans[0]) == {"credit_score/5": "n:5"}
    assert reads(spans[1]) == {"credit_score/5": "n:5"}
    assert reads(spans[2]) == {"credit_score/5": "n:5"}
    assert writes(spans[3]) == {"credit_score/5": "n:6"}  # read again after a partial write
    assert writes(spans[4]) == {"credit_score/5": "none"}


# --------------------------------------------------------------------------- merges, failures


def fields(span: ReadableSpan) -> dict[str, str]:
    """`agentstate.write.fields` per written fact ("" for a whole-value write)."""
    a = attrs(span)
    found = a.get(A.WRITE_FIELDS)
    return dict(zip(a.get(A.WRITE_FACTS, ()), found, strict=True)) if found else {}


def test_hash_merge_writes_carry_their_fields(client: redis.Redis, telemetry: Telemetry) -> None:
    client.hset("session:1", mapping={"tone": "formal", "b,%": "x"})
    client.hset("session:1", "tone", "casual")
    client.hdel("session:1", "tone")
    client.set("plain", "1")
    pipe = client.pipeline(transaction=False)
    pipe.hset("session:2", "lang", "fr").set("plain", "2").hsetnx("session:2", "tz", "UTC")
    pipe.execute()
    hset_both, hset_one, hdel, set_span, pipeline = redis_spans(telemetry)
    assert fields(hset_both) == {"session/1": "b%2C%2525,tone"}  # names escaped, sorted
    assert fields(hset_one) == fields(hdel) == {"session/1": "tone"}
    assert A.WRITE_FIELDS not in attrs(set_span)  # a SET replaces the whole value
    # The pipeline's first key is a primary one: the cache key goes on a child span.
    [cache_part] = [s for s in telemetry.spans() if s.name == "agentstate.keys cache"]
    assert fields(pipeline) == {"session/2": "lang,tz"}
    assert set(writes(cache_part)) == {"redis:1/plain"} and not fields(cache_part)
    for span in (hset_both, set_span, pipeline, cache_part):
        assert attrs(span)[A.COMMITTED] is True  # applied as it ran


def test_failed_plain_pipeline_keeps_the_writes_before_the_failed_command(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    client.set("str", "x")
    telemetry.exporter.clear()
    pipe = client.pipeline(transaction=False)
    pipe.set("a", "1").hset("str", "f", "v").set("b", "2")  # HSET: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="Command # 2"):
        pipe.execute()
    assert client.mget("a", "b") == [b"1", b"2"]
    span, check = redis_spans(telemetry)
    a = attrs(span)
    assert span.status.status_code == StatusCode.ERROR
    # SET a ran before the failed command: applied. Whether SET b ran is not known.
    assert writes(span) == {"redis:1/a": reads(check)["redis:1/a"]}
    assert a[A.COMMITTED] is True and a[A.UNRESOLVED] == "outcome unknown"
    # A later command of unknown outcome on the same key hides the earlier write's result.
    telemetry.exporter.clear()
    pipe = client.pipeline(transaction=False)
    pipe.set("a", "3").hset("str", "f", "v").set("a", "4")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    (span,) = redis_spans(telemetry)
    assert writes(span) == {} and attrs(span)[A.UNRESOLVED] == "outcome unknown"


def test_failed_pipeline_in_a_failed_agent_is_an_orphan(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    client.set("str", "x")
    with workflow("payout"), pytest.raises(redis.ResponseError), agent("payments"):
        pipe = client.pipeline(transaction=False)
        pipe.set("session:A", "900").hset("str", "f", "v")
        pipe.execute()
    (orphan,) = telemetry.anomalies("orphaned_mutation")
    assert attrs(orphan)[A.ANOMALY_FACT] == "session/A"


@pytest.fixture
def single(client: redis.Redis, redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(f"{redis_url}/{SYNC_DB}", single_connection_client=True)
    yield conn
    conn.close()


def test_raw_multi_records_the_queued_commands_at_exec(
    single: redis.Redis, client: redis.Redis, telemetry: Telemetry
) -> None:
    single.set("counter", "5")
    telemetry.exporter.clear()
    assert single.execute_command("MULTI") in (b"OK", True, "OK")
    single.execute_command("SET", "credit_score:1", score(2))
    single.execute_command("HSET", "session:1", "tone", "formal")
    single.execute_command("INCR", "counter")
    single.execute_command("GET", "other")
    assert single.execute_command("EXEC") == [b"OK", 1, 6, None]
    spans = redis_spans(telemetry)  # the hash is read again after EXEC, untraced
    assert [s.name for s in spans] == ["MULTI", "SET", "HSET", "INCR", "GET", "EXEC"]
    assert all(A.OP not in attrs(s) for s in spans[:-1])  # queued: nothing applied yet
    exec_span = spans[-1]
    a = attrs(exec_span)
    assert a[A.STORE] == "redis" and a[A.OP] == "read_write"
    assert a[A.TXN_OUTCOME] == "commit" and a[A.TXN_ID] and a[A.COMMITTED] is True
    # The cache tier was touched first; the primary key's write goes on a child span that
    # ends with the transaction.
    assert set(writes(exec_span)) == {"credit_score/1", "redis:1/counter"}
    assert writes(exec_span)["credit_score/1"] == "n:2"
    assert set(reads(exec_span)) == {"redis:1/other", "redis:1/counter"}  # INCR read 5
    assert reads(exec_span)["redis:1/other"] == "none"
    [primary_part] = [s for s in telemetry.spans() if s.name == "agentstate.keys primary"]
    p = attrs(primary_part)
    assert set(writes(primary_part)) == {"session/1"} and fields(primary_part) == {
        "session/1": "tone"
    }
    assert (p[A.TIER], p[A.TXN_ID], p[A.COMMITTED]) == ("primary", a[A.TXN_ID], False)
    # The client is out of MULTI: the next command is recorded as it runs.
    telemetry.exporter.clear()
    single.set("after", "1")
    (after,) = redis_spans(telemetry)
    assert set(writes(after)) == {"redis:1/after"}


def test_raw_multi_discarded_or_aborted_records_nothing(
    single: redis.Redis, telemetry: Telemetry
) -> None:
    single.execute_command("MULTI")
    single.execute_command("SET", "k", "1")
    single.execute_command("DISCARD")
    single.execute_command("MULTI")
    single.execute_command("SET", "k", "2")
    with pytest.raises(redis.ResponseError):
        single.execute_command("SET", "k")  # wrong arity: refused, the EXEC aborts
    with pytest.raises(redis.ResponseError, match="discarded because of previous errors"):
        single.execute_command("EXEC")
    assert single.get("k") is None
    spans = redis_spans(telemetry)
    assert [s.name for s in spans] == [
        "MULTI",
        "SET",
        "DISCARD",
        "MULTI",
        "SET",
        "SET",
        "EXEC",
        "GET",
    ]
    assert all(A.WRITE_FACTS not in attrs(s) for s in spans)
    assert attrs(spans[2])[A.TXN_OUTCOME] == "rollback"
    assert reads(spans[-1]) == {"redis:1/k": "none"}


@pytest.mark.parametrize("retries", [0, 2])
def test_raw_multi_ends_when_the_connection_is_replaced(
    client: redis.Redis, telemetry: Telemetry, redis_url: str, retries: int
) -> None:
    """Killed while in MULTI: with retries redis-py reconnects and sends the next command
    again on a new connection, outside any MULTI, so it runs at once and is recorded as it
    runs; without, the ConnectionError ends the transaction and the next command does."""
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), retries)
    single = redis.Redis.from_url(
        f"{redis_url}/{SYNC_DB}", single_connection_client=True, retry=retry
    )
    single_id = single.client_id()
    single.execute_command("MULTI")
    client.client_kill_filter(_id=single_id)
    if not retries:
        with pytest.raises(redis.ConnectionError):
            single.execute_command("SET", "k", "0")
    single.execute_command("SET", "k", "1")  # on a fresh connection: applied at once
    assert client.get("k") == b"1"
    with pytest.raises(redis.ResponseError, match="without MULTI"):
        single.execute_command("EXEC")
    single.close()
    spans = [s for s in redis_spans(telemetry) if s.status.status_code != StatusCode.ERROR]
    sets = [s for s in spans if s.name == "SET"]
    assert [writes(s) for s in sets] == [{"redis:1/k": reads(spans[-1])["redis:1/k"]}]


def test_async_raw_multi_and_failed_pipeline(telemetry: Telemetry, redis_url: str) -> None:
    configure(rules=RULES)
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)

    async def main() -> None:
        conn = redis.asyncio.Redis.from_url(
            f"{redis_url}/{ASYNC_DB}", single_connection_client=True
        )
        await conn.flushdb()
        await conn.set("str", "x")
        telemetry.exporter.clear()
        await conn.execute_command("MULTI")
        await conn.execute_command("HSET", "session:1", "tone", "formal")
        await conn.execute_command("DEL", "gone")
        assert await conn.execute_command("EXEC") == [1, 0]
        pipe = conn.pipeline(transaction=False)
        pipe.set("a", "1").hset("str", "f", "v")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await pipe.execute()
        await conn.flushdb()
        await conn.aclose()

    try:
        asyncio.run(main())
    finally:
        RedisInstrumentor().uninstrument()
    multi, hset, delete, exec_span, pipeline, _ = redis_spans(telemetry)
    assert all(A.OP not in attrs(s) for s in (multi, hset, delete))
    assert attrs(exec_span)[A.TXN_OUTCOME] == "commit"
    assert fields(exec_span) == {"session/1": "tone"}
    [cache_part] = [s for s in telemetry.spans() if s.name == "agentstate.keys cache"]
    assert writes(cache_part) == {f"redis:{ASYNC_DB}/gone": "none"}
    assert attrs(cache_part)[A.TXN_ID] == attrs(exec_span)[A.TXN_ID]
    assert set(writes(pipeline)) == {f"redis:{ASYNC_DB}/a"}
    assert attrs(pipeline)[A.COMMITTED] is True
    assert pipeline.status.status_code == StatusCode.ERROR
