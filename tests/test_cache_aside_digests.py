"""The seed's own scenario as a plain app writes it (issue 13): psycopg + redis-py, no version
column, one fact rule linking the row and its cache key, content digests only.

The app reads through the cache (miss -> SELECT -> SET), the scorer updates the row and, in
the correct app, deletes the cache key; the risk agent reads through the cache again. The
faulty app (no invalidation) must give exactly one stale read, the correct one none: the
cache value "750" and the row hash differently, so only the copy rule (SPEC §5) relates them.
Run live through the processor and offline through `check` on the exported spans.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import redis

from otel_agent_state import agent, configure, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor
from otel_agent_state.instrumentation.redis import RedisInstrumentor
from otel_agent_state.offline import check_trace, spans_from_otlp_json

from .conftest import Telemetry
from .otlp_json import otlp_request

DB = 11  # a Redis db of this module's own


@contextmanager
def _app(
    telemetry: Telemetry, postgres_dsn: str, redis_url: str, *, rule: bool
) -> Iterator[tuple[str, redis.Redis, str]]:
    """A schema with the scores table, a Redis key prefix of its own, our psycopg and Redis
    instrumentors on; `rule`: one fact rule linking the row and its cache key."""
    schema = f"agentstate_ca_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.scores (id int PRIMARY KEY, score int)")
        conn.execute(f"INSERT INTO {schema}.scores VALUES (42, 680)")
    client = redis.Redis.from_url(f"{redis_url}/{DB}")
    prefix = f"ca{uuid.uuid4().hex[:8]}"
    if rule:
        keys = [f"postgresql:*/{schema}.scores/{{id}}", f"redis:*/{prefix}:score:{{id}}"]
        configure(rules=[{"name": "score", "keys": keys}])
    pg, rd = PsycopgInstrumentor(), RedisInstrumentor()
    pg.instrument(tracer_provider=telemetry.provider)
    rd.instrument(tracer_provider=telemetry.provider)
    try:
        yield f"{postgres_dsn}?options=-csearch_path%3D{schema}", client, prefix
    finally:
        rd.uninstrument()
        pg.uninstrument()
        client.delete(f"{prefix}:score:42", f"{prefix}:latest-score")
        client.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def app(
    telemetry: Telemetry, postgres_dsn: str, redis_url: str
) -> Iterator[tuple[str, redis.Redis, str]]:
    with _app(telemetry, postgres_dsn, redis_url, rule=True) as found:
        yield found


@pytest.fixture
def bare_app(
    telemetry: Telemetry, postgres_dsn: str, redis_url: str
) -> Iterator[tuple[str, redis.Redis, str]]:
    """The same app with no configuration at all: no fact rule, no version column."""
    with _app(telemetry, postgres_dsn, redis_url, rule=False) as found:
        yield found


def _score(dsn: str, client: redis.Redis, prefix: str) -> int:
    """Cache-aside, as the app writes it: the cache, else the row (then fill the cache)."""
    cached = client.get(f"{prefix}:score:42")
    if cached is not None:
        return int(cached)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT score FROM scores WHERE id = %s", (42,)).fetchone()
    assert row is not None
    client.set(f"{prefix}:score:42", str(row[0]))
    return int(row[0])


def _workflow(dsn: str, client: redis.Redis, prefix: str, *, invalidate: bool) -> int:
    with workflow("credit"):
        with agent("risk-assessor"):
            assert _score(dsn, client, prefix) == 680  # miss, row, fill
        with agent("credit-scorer"):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE scores SET score = 750 WHERE id = 42")
            if invalidate:
                client.delete(f"{prefix}:score:42")
        with agent("risk-assessor"):
            score = _score(dsn, client, prefix)
            with decision("approve the loan") as chosen:
                chosen.outcome("approve" if score < 700 else "flag")
    return score


@pytest.mark.parametrize("invalidate", [False, True], ids=["faulty", "correct"])
def test_cache_aside_on_digests(
    telemetry: Telemetry, app: tuple[str, redis.Redis, str], invalidate: bool
) -> None:
    dsn, client, prefix = app
    score = _workflow(dsn, client, prefix, invalidate=invalidate)
    assert score == (750 if invalidate else 680)
    live = [
        (dict(s.attributes or {})[A.ANOMALY_KIND], dict(s.attributes or {})[A.ANOMALY_SEVERITY])
        for s in telemetry.anomalies()
    ]
    records = [
        r
        for r in spans_from_otlp_json(otlp_request(telemetry.spans()))
        if not r.name.startswith(A.ANOMALY_SPAN_PREFIX)
    ]
    offline = [(f.kind.value, f.severity.value) for f in check_trace(records)]
    expected = [] if invalidate else [("stale_read", "error")]
    assert live == expected
    assert offline == expected
    # The fill carries no version column: its digest is the cache's own representation.
    fills = [
        dict(s.attributes or {})
        for s in telemetry.spans()
        if dict(s.attributes or {}).get(A.OP) == "write"
        and dict(s.attributes or {}).get(A.STORE) == "redis"
    ]
    assert fills and all(str(f[A.WRITE_VERSIONS][0]).startswith("h:") for f in fills)  # type: ignore[index]


def test_the_fill_says_what_it_copied(
    telemetry: Telemetry, app: tuple[str, redis.Redis, str]
) -> None:
    """SPEC §3: the cache fill records `agentstate.write.copy_of`, the row version it copied."""
    dsn, client, prefix = app
    _workflow(dsn, client, prefix, invalidate=True)
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    rows = [
        a[A.READ_VERSIONS][0]
        for a in spans
        if a.get(A.STORE) == "postgresql" and A.READ_VERSIONS in a
    ]  # type: ignore[index]
    fills = [a for a in spans if a.get(A.STORE) == "redis" and a.get(A.OP) == "write"]
    assert [tuple(f[A.WRITE_COPY_OF]) for f in fills] == [(rows[0],), (rows[1],)]  # type: ignore[arg-type]
    deletes = [a for a in spans if a.get(A.STORE) == "redis" and a.get(A.OP) == "delete"]
    assert deletes and all(A.WRITE_COPY_OF not in d for d in deletes)


# ------------------------------------------------------------------ zero config (issue 14)


@pytest.mark.parametrize("invalidate", [False, True], ids=["faulty", "correct"])
def test_zero_config_cache_lineage(
    telemetry: Telemetry, bare_app: tuple[str, redis.Redis, str], invalidate: bool
) -> None:
    """SPEC §5: the fill's value equals the column the agent just read and its key holds the
    row's key, so the cache key is the row's fact; the seed's stale cache is found with no
    config file, and its correct twin is silent."""
    dsn, client, prefix = bare_app
    _workflow(dsn, client, prefix, invalidate=invalidate)
    found = [dict(s.attributes or {})[A.ANOMALY_KIND] for s in telemetry.anomalies()]
    assert found == ([] if invalidate else ["stale_read"])
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    [row_fact] = {
        a[A.READ_FACTS][0] for a in spans if a.get(A.STORE) == "postgresql" and A.READ_FACTS in a
    }  # type: ignore[index]
    fills = [a for a in spans if a.get(A.STORE) == "redis" and a.get(A.OP) == "write"]
    assert fills and all(tuple(f[A.WRITE_FACTS]) == (row_fact,) for f in fills)  # type: ignore[arg-type]
    assert all(tuple(f[A.LINK]) == (f"{row_fact} by column score",) for f in fills[:1])  # type: ignore[arg-type]
    hits = [a for a in spans if a.get(A.STORE) == "redis" and a.get(A.OP) == "read"]
    assert all(
        tuple(h[A.READ_FACTS]) in ((row_fact,), (f"redis:{DB}/{prefix}:score:42",)) for h in hits
    )  # type: ignore[arg-type]


def test_no_link_without_the_key_match(
    telemetry: Telemetry, bare_app: tuple[str, redis.Redis, str]
) -> None:
    """The value alone is not enough: a key that does not hold the row's key stays its own fact."""
    dsn, client, prefix = bare_app
    with workflow("credit"), agent("risk-assessor"):
        with psycopg.connect(dsn, autocommit=True) as conn:
            (score,) = conn.execute("SELECT score FROM scores WHERE id = 42").fetchone()  # type: ignore[misc]
        client.set(f"{prefix}:latest-score", str(score))
    writes = [
        dict(s.attributes or {})
        for s in telemetry.spans()
        if dict(s.attributes or {}).get(A.STORE) == "redis"
        and dict(s.attributes or {}).get(A.OP) == "write"
    ]
    assert [tuple(w[A.WRITE_FACTS]) for w in writes] == [(f"redis:{DB}/{prefix}:latest-score",)]  # type: ignore[arg-type]
    assert A.LINK not in writes[0]
