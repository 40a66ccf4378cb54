"""Reliability of the redis-py instrumentation on the real Redis server (db 4 only): for
arbitrary keys, values and commands, the instrumented client returns what redis-py returns
without us (same server state, instrumentation suppressed) or raises the same exception type
and message; timeouts and connection loss reach the application as redis-py's own errors,
and the processor's ledger stays consistent (no trace left open, no false finding)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.backoff
import redis.exceptions
import redis.retry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_agent_state import agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import _redis_commands
from otel_agent_state.instrumentation.redis import RedisInstrumentor

from .conftest import Telemetry

pytestmark = pytest.mark.redis

DB = 4
NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

RULES = [
    {
        "name": "credit_score",
        "keys": ["redis:*/credit_score:{id}"],
        "version": {"json_field": "version"},
    },
    {"name": "profile", "keys": ["redis:*/profile:{id}"], "version": {"hash_field": "rev"}},
    {"name": "session", "keys": [{"pattern": "redis:*/session:{id}", "tier": "primary"}]},
]


# --------------------------------------------------------------------------- harness


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def redis_spans(telemetry: Telemetry) -> list[ReadableSpan]:
    return [s for s in telemetry.spans() if attrs(s).get(A.DB_SYSTEM_NAME) == "redis"]


def norm(value: Any) -> Any:
    """Comparable form of a response; errors inside pipeline results by type and text."""
    if isinstance(value, BaseException):
        return ("error", type(value), str(value))
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, redis.client.Pipeline):
        return "pipeline"  # a command queued, not run
    return value


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", norm(call()))
    except Exception as exc:  # the application's view: exact type and message
        return ("raised", type(exc), str(exc))


def snapshot(conn: redis.Redis) -> list[tuple[Any, ...]]:
    """The db's content (keys, types, serialized values, whether a TTL is set)."""
    with suppress_instrumentation():
        keys = sorted(conn.scan_iter(count=1000))
        return [(k, conn.type(k), conn.dump(k), conn.ttl(k) != -1) for k in keys]


@dataclass
class Rig:
    conn: redis.Redis
    admin: redis.Redis
    telemetry: Telemetry

    def reset(self, setup: list[tuple[Any, ...]]) -> None:
        with suppress_instrumentation():
            self.conn.flushdb()
            for command in setup:
                with contextlib.suppress(redis.RedisError, UnicodeError):  # same in both runs
                    self.conn.execute_command(*command)
        self.telemetry.exporter.clear()

    def plain(self, setup: list[tuple[Any, ...]], body: Callable[[], Any]) -> Any:
        self.reset(setup)
        with suppress_instrumentation():
            result = body()
        return result, snapshot(self.conn)

    def traced(self, setup: list[tuple[Any, ...]], body: Callable[[], Any]) -> Any:
        self.reset(setup)
        with workflow("reliability"), agent("fuzzer"):
            result = body()
        assert self.telemetry.processor.ledger.stats().traces == 0  # the trace closed
        return result, snapshot(self.conn)

    def kill(self, client_id: int) -> None:
        with suppress_instrumentation():
            assert self.admin.client_kill_filter(_id=client_id) == 1


@pytest.fixture(scope="module")
def db_lock() -> Iterator[None]:
    """Runs of this module on one machine take turns: they all flush db 4."""
    with open(os.path.join(tempfile.gettempdir(), "agentstate-redis-db4.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def rig(telemetry: Telemetry, redis_url: str, db_lock: None) -> Iterator[Rig]:
    configure(rules=RULES)
    _redis_commands.hash_states.clear()
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)
    conn = redis.Redis.from_url(f"{redis_url}/{DB}")
    admin = redis.Redis.from_url(f"{redis_url}/{DB}")
    yield Rig(conn, admin, telemetry)
    RedisInstrumentor().uninstrument()
    conn.flushdb()
    conn.close()
    admin.close()


@pytest.fixture(scope="module")
def server_commands(redis_url: str) -> frozenset[bytes]:
    conn = redis.Redis.from_url(f"{redis_url}/{DB}")
    names = conn.command_list()
    conn.close()
    return frozenset((n if isinstance(n, bytes) else str(n).encode()).upper() for n in names)


# --------------------------------------------------------------------------- strategies

NAMED_KEYS = ["credit_score:1", "credit_score:2", "profile:9", "session:1", "k", "h", "n"]
HUGE = st.builds(
    lambda unit, n: unit * n, st.binary(min_size=1, max_size=4), st.integers(60_000, 250_000)
)
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates too
KEYS = st.one_of(
    st.sampled_from(NAMED_KEYS),
    st.builds(
        lambda p, i: f"{p}:{i}",
        st.sampled_from(["credit_score", "profile", "session"]),
        st.one_of(st.integers(), TEXT),
    ),
    st.binary(max_size=20),  # mostly not UTF-8
    TEXT,
    st.integers(-(2**70), 2**70),
    st.floats(),
    HUGE,
)
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=6)
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
JSON_DOCS = st.one_of(
    st.builds(
        lambda v, extra: json.dumps({**extra, "version": v}),
        JSON_ANY,
        st.dictionaries(st.text(max_size=5), JSON_ANY, max_size=3),
    ),
    st.builds(json.dumps, JSON_ANY),
    st.builds(lambda t: "{" + t, st.text(max_size=10)),  # not JSON at all
)
VALUES = st.one_of(
    st.binary(max_size=30),
    TEXT,
    st.integers(),
    st.floats(),
    JSON_DOCS,
    st.sampled_from([b"", "0", "-1", "1e400", "nan", "inf", "9223372036854775808"]),
    HUGE,
)
FIELDS = st.one_of(st.sampled_from(["rev", "version", "name", "f"]), st.binary(max_size=8), TEXT)
INTS = st.one_of(st.integers(-5, 5000), st.sampled_from([2**63, -(2**63) - 1, 2**64, "x", "1.5"]))
SECONDS = st.sampled_from([-1, 0, 100, 10**6, 2**62, "x"])  # never a TTL that runs out mid-test
TOKENS = st.sampled_from(["NX", "XX", "GET", "EX", "KEEPTTL", "WITHSCORES", "$", "$.version", "."])
ARGS = st.one_of(KEYS, VALUES, INTS, TOKENS, FIELDS, st.none(), st.booleans())

# k: key, v: value, f: field, i: integer, s: seconds, literal text otherwise.
TEMPLATES = [
    ("GET", "k"),
    ("SET", "k", "v"),
    ("SET", "k", "v", "GET"),
    ("SET", "k", "v", "NX"),
    ("SET", "k", "v", "XX", "GET"),
    ("SET", "k", "v", "EX", "s"),
    ("SETNX", "k", "v"),
    ("SETEX", "k", "s", "v"),
    ("GETSET", "k", "v"),
    ("GETDEL", "k"),
    ("GETEX", "k"),
    ("GETEX", "k", "EX", "s"),
    ("GETEX", "k", "PERSIST"),
    ("MSET", "k", "v", "k", "v"),
    ("MSETNX", "k", "v", "k", "v"),
    ("MGET", "k", "k", "k"),
    ("APPEND", "k", "v"),
    ("STRLEN", "k"),
    ("INCR", "k"),
    ("INCRBY", "k", "i"),
    ("DECRBY", "k", "i"),
    ("INCRBYFLOAT", "k", "v"),
    ("DEL", "k", "k"),
    ("UNLINK", "k"),
    ("EXISTS", "k", "k"),
    ("TYPE", "k"),
    ("EXPIRE", "k", "s"),
    ("PERSIST", "k"),
    ("HSET", "k", "f", "v"),
    ("HSET", "k", "f", "v", "f", "v"),
    ("HMSET", "k", "f", "v"),
    ("HSETNX", "k", "f", "v"),
    ("HGET", "k", "f"),
    ("HMGET", "k", "f", "f"),
    ("HGETALL", "k"),
    ("HDEL", "k", "f"),
    ("HINCRBY", "k", "f", "i"),
    ("HLEN", "k"),
    ("RPUSH", "k", "v", "v"),
    ("LPOP", "k"),
    ("LRANGE", "k", "0", "-1"),
    ("SADD", "k", "v"),
    ("SREM", "k", "v"),
    ("ZADD", "k", "i", "v"),
    ("ZSCORE", "k", "v"),
    ("RENAME", "k", "k"),
    ("RENAMENX", "k", "k"),
    ("JSON.SET", "k", "$", "v"),
    ("JSON.GET", "k"),
    ("JSON.GET", "k", "$.version"),
    ("JSON.DEL", "k"),
    ("JSON.MGET", "k", "k", "$"),
    ("PING",),
    ("ECHO", "v"),
]
# Real commands with random arguments: nothing that blocks, changes the connection or other
# dbs, reads the clock or allocates without bound.
SAFE_NAMES = sorted(
    {t[0] for t in TEMPLATES} - {"EXPIRE", "GETEX", "SETEX"}
    | {"HKEYS", "HVALS", "HEXISTS", "LLEN", "SCARD", "ZCARD", "DBSIZE", "EXISTS", "TOUCH"}
)
SETUP = [
    ("SET", "k", "v"),
    ("HSET", "k", "f", "v", "f", "v"),
    ("RPUSH", "k", "v"),
    ("SADD", "k", "v"),
    ("ZADD", "k", "i", "v"),
]


def _command_name_ok(name: Any, known: frozenset[bytes]) -> bool:
    """Not a real command once redis-py has split the name at spaces."""
    raw = name.encode("utf-8", "surrogatepass") if isinstance(name, str) else bytes(name)
    parts = raw.split()
    return not parts or parts[0].upper() not in known


@st.composite
def command(draw: st.DrawFn, pool: list[Any], known: frozenset[bytes]) -> tuple[Any, ...]:
    def fill(kind: str) -> Any:
        pick = {"v": VALUES, "f": FIELDS, "i": INTS, "s": SECONDS}.get(kind)
        if kind == "k":
            return draw(st.sampled_from(pool) | KEYS)
        return kind if pick is None else draw(pick)

    form = draw(st.sampled_from(["template", "template", "random", "unknown"]))
    if form == "template":
        return tuple(fill(kind) for kind in draw(st.sampled_from(TEMPLATES)))
    args = draw(st.lists(st.sampled_from(pool) | ARGS, max_size=5))
    if form == "random":
        return (draw(st.sampled_from(SAFE_NAMES)), *args)
    names = st.one_of(
        st.text(min_size=1, max_size=12),
        st.binary(min_size=1, max_size=12),
        st.sampled_from(["JSON.NUMINCRBY", "FT.SEARCH", "GETT", "x get", b"\xff\xfe"]),
    )
    name = draw(names.filter(lambda n: _command_name_ok(n, known)))
    return (name, *args)


@st.composite
def scenario(
    draw: st.DrawFn, known: frozenset[bytes], max_commands: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    pool = draw(st.lists(KEYS, min_size=1, max_size=4))
    setup = [
        tuple(
            draw(st.sampled_from(pool))
            if kind == "k"
            else draw({"v": VALUES, "f": FIELDS, "i": INTS}[kind])
            if kind in "vfi"
            else kind
            for kind in draw(st.sampled_from(SETUP))
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    commands = draw(st.lists(command(pool, known), min_size=1, max_size=max_commands))
    return setup, commands


# --------------------------------------------------------------------------- commands


def _run_commands(conn: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    return [outcome(lambda c=c: conn.execute_command(*c)) for c in commands]  # type: ignore[misc]


@settings(HYPOTHESIS, max_examples=120)
@given(data=st.data())
def test_arbitrary_commands_match_the_uninstrumented_client(
    rig: Rig, server_commands: frozenset[bytes], data: st.DataObject
) -> None:
    setup, commands = data.draw(scenario(server_commands, max_commands=4))
    expected = rig.plain(setup, lambda: _run_commands(rig.conn, commands))
    assert rig.traced(setup, lambda: _run_commands(rig.conn, commands)) == expected
    spans = redis_spans(rig.telemetry)
    assert len(spans) == len(commands)  # every command's span ended, once
    assert [
        attrs(a) for a in rig.telemetry.anomalies()
    ] == []  # one client on one server: nothing to find


@settings(HYPOTHESIS, max_examples=60)
@given(data=st.data())
def test_arbitrary_commands_in_raise_mode_raise_nothing_of_ours(
    rig: Rig, server_commands: frozenset[bytes], data: st.DataObject
) -> None:
    configure(rules=RULES, on_anomaly="raise")
    setup, commands = data.draw(scenario(server_commands, max_commands=6))
    expected = rig.plain(setup, lambda: _run_commands(rig.conn, commands))
    assert rig.traced(setup, lambda: _run_commands(rig.conn, commands)) == expected


def _run_async(url: str, commands: list[tuple[Any, ...]], pipeline: bool) -> list[Any]:
    async def main() -> list[Any]:
        conn = redis.asyncio.Redis.from_url(url)
        out: list[Any] = []
        try:
            for c in commands:
                try:
                    out.append(("ok", norm(await conn.execute_command(*c))))
                except Exception as exc:
                    out.append(("raised", type(exc), str(exc)))
            if pipeline:
                try:
                    async with conn.pipeline(transaction=True) as pipe:
                        for c in commands:
                            pipe.execute_command(*c)
                        out.append(("ok", norm(await pipe.execute(raise_on_error=False))))
                except Exception as exc:
                    out.append(("raised", type(exc), str(exc)))
        finally:
            await conn.aclose()
        return out

    return asyncio.run(main())  # the task runs in a copy of the caller's context


@settings(HYPOTHESIS, max_examples=50)
@given(data=st.data(), pipeline=st.booleans())
def test_arbitrary_commands_on_the_asyncio_client_match(
    rig: Rig, redis_url: str, server_commands: frozenset[bytes], data: st.DataObject, pipeline: bool
) -> None:
    setup, commands = data.draw(scenario(server_commands, max_commands=4))
    url = f"{redis_url}/{DB}"
    expected = rig.plain(setup, lambda: _run_async(url, commands, pipeline))
    assert rig.traced(setup, lambda: _run_async(url, commands, pipeline)) == expected
    assert len(redis_spans(rig.telemetry)) == len(commands) + pipeline
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


def _run_pipeline(
    conn: redis.Redis, commands: list[tuple[Any, ...]], transaction: bool, raise_on_error: bool
) -> Any:
    with conn.pipeline(transaction=transaction) as pipe:
        for c in commands:
            pipe.execute_command(*c)
        return pipe.execute(raise_on_error=raise_on_error)


@settings(HYPOTHESIS, max_examples=100)
@given(data=st.data(), transaction=st.booleans(), raise_on_error=st.booleans())
def test_arbitrary_pipelines_and_transactions_match_the_uninstrumented_client(
    rig: Rig,
    server_commands: frozenset[bytes],
    data: st.DataObject,
    transaction: bool,
    raise_on_error: bool,
) -> None:
    setup, commands = data.draw(scenario(server_commands, max_commands=6))

    def body() -> Any:
        return outcome(lambda: _run_pipeline(rig.conn, commands, transaction, raise_on_error))

    expected = rig.plain(setup, body)
    assert rig.traced(setup, body) == expected
    (span,) = redis_spans(rig.telemetry)
    assert span.name == ("MULTI" if transaction else "PIPELINE")
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


@settings(HYPOTHESIS, max_examples=50)
@given(key=TEXT | KEYS, value=TEXT | VALUES)
def test_surrogate_escape_and_decoding_clients_match(
    rig: Rig, redis_url: str, key: Any, value: Any
) -> None:
    """Clients that accept surrogates (surrogateescape) or decode responses."""
    for options in ({"encoding_errors": "surrogateescape"}, {"decode_responses": True}):
        conn = redis.Redis.from_url(f"{redis_url}/{DB}", **options)

        def body(conn: redis.Redis = conn) -> Any:
            return [
                outcome(lambda: conn.set(key, value)),
                outcome(lambda: conn.get(key)),
                outcome(lambda: conn.hset(key, "rev", value)),
                outcome(lambda: conn.mget([key, "k"])),
            ]

        expected = rig.plain([], body)
        assert rig.traced([], body) == expected
        conn.close()


# --------------------------------------------------------------------------- timeouts


def test_timeout_raises_redis_timeout_error_unchanged(rig: Rig, redis_url: str) -> None:
    conn = redis.Redis.from_url(f"{redis_url}/{DB}", socket_timeout=0.2, retry=NO_RETRY)

    def body() -> Any:
        result = outcome(lambda: conn.blpop(["rel:empty"], timeout=5))
        conn.set("after", "1")  # usable afterwards: a new connection
        return result, conn.get("after")

    expected = rig.plain([], body)
    assert expected[0][0] == ("raised", redis.exceptions.TimeoutError, expected[0][0][2])
    assert rig.traced([], body) == expected
    blpop, set_span, get_span = redis_spans(rig.telemetry)
    assert blpop.name == "BLPOP" and blpop.status.status_code == StatusCode.ERROR
    assert [e.name for e in blpop.events] == ["exception"]
    assert set_span.status.status_code == get_span.status.status_code == StatusCode.UNSET
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
    conn.close()


# --------------------------------------------------------------------------- connection loss


def test_connection_killed_between_queueing_and_exec_of_a_watched_transaction(
    rig: Rig,
) -> None:
    """WATCH pins the connection; it is killed after MULTI's commands were queued. redis-py
    raises its own error (WatchError on a watched connection); nothing ran, nothing of ours,
    and the failed transaction is no orphan although the agent failed with it."""
    setup = [("SET", "acct:A", "100")]

    def transfer() -> Any:
        with rig.conn.pipeline() as pipe:
            pipe.watch("acct:A")
            client_id = pipe.client_id()
            balance = int(pipe.get("acct:A") or 0)
            pipe.multi()
            pipe.set("acct:A", balance - 100).set("acct:B", 100)
            rig.kill(client_id)
            return pipe.execute()

    expected = rig.plain(setup, lambda: outcome(transfer))
    assert expected[0][0] == "raised" and expected[0][1].__module__.startswith("redis")
    rig.reset(setup)
    with workflow("payout"), pytest.raises(redis.RedisError) as caught, agent("payer"):
        transfer()
    assert ("raised", type(caught.value), str(caught.value)) == expected[0]
    assert snapshot(rig.conn) == expected[1]  # acct:A still 100, no acct:B
    assert rig.telemetry.processor.ledger.stats().traces == 0
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
    multi = next(s for s in redis_spans(rig.telemetry) if s.name == "MULTI")
    assert attrs(multi)[A.TXN_OUTCOME] == "rollback" and A.WRITE_FACTS not in attrs(multi)
    with suppress_instrumentation():
        assert rig.conn.get("acct:A") == b"100"  # the client works afterwards


def _raw_multi_killed(rig: Rig, conn: redis.Redis) -> Any:
    client_id = conn.client_id()
    assert conn.execute_command("MULTI") in (b"OK", True, "OK")
    assert conn.execute_command("GETSET", "acct:A", "0") == b"QUEUED"
    assert conn.execute_command("DEL", "acct:B") == b"QUEUED"
    rig.kill(client_id)
    return conn.execute_command("EXEC")


def test_raw_multi_killed_before_exec_is_no_orphan(rig: Rig, redis_url: str) -> None:
    conn = redis.Redis.from_url(f"{redis_url}/{DB}", single_connection_client=True, retry=NO_RETRY)
    setup = [("SET", "acct:A", "100")]
    expected = rig.plain(setup, lambda: outcome(lambda: _raw_multi_killed(rig, conn)))
    assert expected[0][:2] == ("raised", redis.exceptions.ConnectionError)
    rig.reset(setup)
    with workflow("payout"), pytest.raises(redis.ConnectionError) as caught, agent("payer"):
        _raw_multi_killed(rig, conn)
    assert ("raised", type(caught.value), str(caught.value)) == expected[0]
    assert snapshot(rig.conn) == expected[1]
    assert conn.get("acct:A") == b"100"  # never applied; the client reconnects
    assert rig.telemetry.processor.ledger.stats().traces == 0
    assert rig.telemetry.anomalies("orphaned_mutation") == []  # the transaction never ran
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
    conn.close()


def test_raw_multi_killed_before_exec_raises_redis_errors_only(rig: Rig, redis_url: str) -> None:
    """The app-facing half of the test above: redis-py's ConnectionError, nothing of ours."""
    conn = redis.Redis.from_url(f"{redis_url}/{DB}", single_connection_client=True, retry=NO_RETRY)
    setup = [("SET", "acct:A", "100")]

    def body() -> Any:
        result = outcome(lambda: _raw_multi_killed(rig, conn))
        return result, conn.get("acct:A")

    expected = rig.plain(setup, body)
    assert expected[0][0][:2] == ("raised", redis.exceptions.ConnectionError)
    assert rig.traced(setup, body) == expected
    conn.close()


def test_raw_multi_discarded_write_is_not_a_write(rig: Rig, redis_url: str) -> None:
    configure(rules=RULES, on_anomaly="raise")
    conn = redis.Redis.from_url(f"{redis_url}/{DB}", single_connection_client=True)
    rig.reset([("SET", "credit_score:7", json.dumps({"version": 1}))])
    with workflow("w"):
        with agent("writer"):
            conn.execute_command("MULTI")
            conn.execute_command("GETSET", "credit_score:7", json.dumps({"version": 2}))
            conn.execute_command("DISCARD")
        with agent("reader"):
            assert json.loads(conn.get("credit_score:7") or "{}") == {"version": 1}
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
    conn.close()


def _wait_blocked_then_kill(rig: Rig, client_id: int, done: threading.Event) -> None:
    deadline = time.monotonic() + 10
    with suppress_instrumentation():
        while time.monotonic() < deadline and not done.is_set():
            clients = rig.admin.client_list()
            if any(int(c["id"]) == client_id and c.get("cmd") == "blpop" for c in clients):
                rig.admin.client_kill_filter(_id=client_id)
                return
            time.sleep(0.01)


def test_connection_killed_mid_pipeline(rig: Rig, redis_url: str) -> None:
    """Killed while the pipeline's BLPOP blocks: the SET before it ran, the one after did
    not; redis-py's ConnectionError reaches the app and the agent fails without an orphan
    of ours (nothing the span shows was applied)."""
    conn = redis.Redis.from_url(f"{redis_url}/{DB}", retry=NO_RETRY)

    def run_pipeline() -> Any:
        client_id = conn.client_id()  # the pool's one connection, used by the pipeline next
        done = threading.Event()
        killer = threading.Thread(target=_wait_blocked_then_kill, args=(rig, client_id, done))
        killer.start()
        try:
            pipe = conn.pipeline(transaction=False)
            pipe.set("before", "1").blpop(["rel:empty"], timeout=20).set("after", "1")
            return pipe.execute()
        finally:
            done.set()
            killer.join()

    expected = rig.plain([], lambda: outcome(run_pipeline))
    assert expected[0][:2] == ("raised", redis.exceptions.ConnectionError)
    assert [k for k, *_ in expected[1]] == [b"before"]
    rig.reset([])
    with workflow("w"), pytest.raises(redis.ConnectionError) as caught, agent("piper"):
        run_pipeline()
    assert (type(caught.value), str(caught.value)) == expected[0][1:]
    assert snapshot(rig.conn) == expected[1]
    assert rig.telemetry.processor.ledger.stats().traces == 0
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
    (pipeline,) = [s for s in redis_spans(rig.telemetry) if s.name == "PIPELINE"]
    assert pipeline.status.status_code == StatusCode.ERROR
    assert conn.get("before") == b"1"  # the client reconnects
    conn.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"username": "nobody", "password": "nope"}, id="wrongpass"),
        pytest.param(
            {"db": 99},  # out of range: refused at connect, nothing is created
            id="bad-db",
        ),
        pytest.param({"port": "closed"}, id="closed-port"),
    ],
)
def test_client_errors_at_connect_are_redis_py_s_own(rig: Rig, options: dict[str, Any]) -> None:
    options = {**options, "port": _closed_port()} if options.get("port") == "closed" else options
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 6379, "db": DB, "retry": NO_RETRY}

    def body() -> Any:
        conn = redis.Redis(**{**kwargs, **options})
        try:
            return [
                outcome(lambda: conn.get("k")),
                outcome(lambda: conn.pipeline().set("k", 1).get("k").execute()),
                outcome(lambda: conn.pipeline(transaction=False).set("k", 1).execute()),
            ]
        finally:
            conn.close()

    expected = rig.plain([], body)
    assert all(r[0] == "raised" and r[1].__module__.startswith("redis") for r in expected[0])
    assert rig.traced([], body) == expected
    spans = redis_spans(rig.telemetry)
    assert [s.name for s in spans] == ["GET", "MULTI", "PIPELINE"]
    for span in spans:
        assert span.status.status_code == StatusCode.ERROR
        assert attrs(span).get(A.TXN_OUTCOME) in (None, "rollback"), span.name
        assert A.WRITE_FACTS not in attrs(span) and A.READ_FACTS not in attrs(span), span.name
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


@st.composite
def raw_transaction_commands(
    draw: st.DrawFn, known: frozenset[bytes]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Commands with MULTI / EXEC / DISCARD / WATCH / UNWATCH sent as plain commands."""
    setup, commands = draw(scenario(known, max_commands=6))
    pool = [c[1] for c in commands if len(c) > 1] or ["k"]
    controls = st.one_of(
        st.just(("MULTI",)),
        st.just(("EXEC",)),
        st.just(("DISCARD",)),
        st.just(("UNWATCH",)),
        st.builds(lambda k: ("WATCH", k), st.sampled_from(pool) | KEYS),
    )
    for _ in range(draw(st.integers(1, 4))):
        commands.insert(draw(st.integers(0, len(commands))), draw(controls))
    if draw(st.booleans()):
        commands.insert(0, ("MULTI",))
    return setup, commands


@settings(HYPOTHESIS, max_examples=100)
@given(data=st.data(), raise_mode=st.booleans())
def test_raw_transaction_commands_match_the_uninstrumented_client(
    rig: Rig,
    redis_url: str,
    server_commands: frozenset[bytes],
    data: st.DataObject,
    raise_mode: bool,
) -> None:
    if raise_mode:
        configure(rules=RULES, on_anomaly="raise")
    setup, commands = data.draw(raw_transaction_commands(server_commands))

    def body() -> Any:
        conn = redis.Redis.from_url(f"{redis_url}/{DB}", single_connection_client=True)
        try:
            return _run_commands(conn, commands)
        finally:
            conn.close()  # a MULTI left open is dropped with the connection

    expected = rig.plain(setup, body)
    assert rig.traced(setup, body) == expected
    assert len(redis_spans(rig.telemetry)) >= len(commands)
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


@settings(HYPOTHESIS, max_examples=50)
@given(data=st.data())
def test_raw_transaction_commands_on_the_asyncio_client_match(
    rig: Rig, redis_url: str, server_commands: frozenset[bytes], data: st.DataObject
) -> None:
    setup, commands = data.draw(raw_transaction_commands(server_commands))

    async def main() -> list[Any]:
        conn = redis.asyncio.Redis.from_url(f"{redis_url}/{DB}", single_connection_client=True)
        out: list[Any] = []
        try:
            for c in commands:
                try:
                    out.append(("ok", norm(await conn.execute_command(*c))))
                except Exception as exc:
                    out.append(("raised", type(exc), str(exc)))
        finally:
            await conn.aclose()
        return out

    expected = rig.plain(setup, lambda: asyncio.run(main()))
    assert rig.traced(setup, lambda: asyncio.run(main())) == expected
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


def test_huge_argument_lists_and_pipelines_stay_bounded(rig: Rig) -> None:
    keys = [f"bulk:{i}".encode() + b"\xff" for i in range(5000)]

    def body() -> Any:
        out = [
            outcome(lambda: rig.conn.mset({k: i for i, k in enumerate(keys)})),
            outcome(lambda: len(rig.conn.mget(keys))),
            outcome(lambda: rig.conn.hset("bulk:h", mapping={k: 1 for k in keys})),
            outcome(lambda: len(rig.conn.hgetall("bulk:h"))),
        ]
        with rig.conn.pipeline(transaction=True) as pipe:
            for k in keys[:3000]:
                pipe.incr(k)
            out.append(outcome(lambda: sum(pipe.execute())))
        out.append(outcome(lambda: rig.conn.delete(*keys)))
        return out

    expected = rig.plain([], body)
    assert rig.traced([], body) == expected
    for span in redis_spans(rig.telemetry):
        for name in (A.READ_FACTS, A.WRITE_FACTS):
            assert len(attrs(span).get(name, ())) <= 1000, (span.name, name)
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []


@settings(HYPOTHESIS, max_examples=60)
@given(data=st.data(), interfere=st.booleans())
def test_watched_transactions_with_random_commands_match(
    rig: Rig, server_commands: frozenset[bytes], data: st.DataObject, interfere: bool
) -> None:
    """WATCH, random commands run at once, another client maybe changing a watched key, then
    MULTI with random commands: the same results, WatchError or command errors."""
    setup, before = data.draw(scenario(server_commands, max_commands=3))
    _, queued = data.draw(scenario(server_commands, max_commands=4))
    watched = [c[1] for c in before + queued if len(c) > 1][:3] or ["k"]

    def body() -> Any:
        out: list[Any] = []
        with rig.conn.pipeline() as pipe:
            out.append(outcome(lambda: pipe.watch(*watched)))
            out.extend(outcome(lambda c=c: pipe.execute_command(*c)) for c in before)  # type: ignore[misc]
            if interfere:
                with suppress_instrumentation():
                    out.append(outcome(lambda: rig.admin.set(watched[0], "changed")))
            out.append(outcome(pipe.multi))
            out.extend(outcome(lambda c=c: pipe.execute_command(*c) and None) for c in queued)  # type: ignore[misc]
            out.append(outcome(pipe.execute))
        return out

    expected = rig.plain(setup, body)
    assert rig.traced(setup, body) == expected
    assert [attrs(a) for a in rig.telemetry.anomalies()] == []
