"""Issue 19: OTel's suppress-instrumentation context key switches every instrumentor of ours
off (no span, no follow-up query of ours), as it does contrib's; the calls still work."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest
import redis
import sqlalchemy as sa
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state.instrumentation.asyncpg import AsyncpgInstrumentor
from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor
from otel_agent_state.instrumentation.psycopg2 import Psycopg2Instrumentor
from otel_agent_state.instrumentation.redis import RedisInstrumentor
from otel_agent_state.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry


@pytest.fixture
def all_ours(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentors = [
        SQLite3Instrumentor(),
        Psycopg2Instrumentor(),
        PsycopgInstrumentor(),
        AsyncpgInstrumentor(),
        RedisInstrumentor(),
        SQLAlchemyInstrumentor(),
    ]
    for one in instrumentors:
        one.instrument(tracer_provider=telemetry.provider)
    try:
        yield telemetry
    finally:
        for one in instrumentors:
            one.uninstrument()


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[str]:
    name = f"t19s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 1)")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _work(tmp_path: Path, postgres_dsn: str, redis_url: str, table: str) -> list[Any]:
    """One read and one write through each instrumented client; what they returned."""
    got: list[Any] = []
    lite = sqlite3.connect(str(tmp_path / "s.db"))
    lite.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    lite.execute("INSERT OR REPLACE INTO t VALUES (1, 2)")
    lite.commit()
    got.append(lite.execute("SELECT v FROM t WHERE id = 1").fetchone())
    lite.close()
    conn2 = psycopg2.connect(postgres_dsn)
    cur = conn2.cursor()
    cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
    cur.execute(f"SELECT v FROM {table} WHERE id = 1")
    got.append(cur.fetchone())
    conn2.commit()
    conn2.close()
    with psycopg.connect(postgres_dsn) as conn3:
        conn3.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        got.append(conn3.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone())

    async def pg_async() -> Any:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
            return await conn.fetchval(f"SELECT v FROM {table} WHERE id = 1")
        finally:
            await conn.close()

    got.append(asyncio.run(pg_async()))
    client = redis.Redis.from_url(f"{redis_url}/13")
    key = f"t19s:{table}"
    client.set(key, "1")
    got.append(client.get(key))
    client.delete(key)
    client.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS e (id INTEGER PRIMARY KEY, v INTEGER)"))
        conn.execute(sa.text("INSERT OR REPLACE INTO e VALUES (1, 5)"))
        got.append(conn.execute(sa.text("SELECT v FROM e WHERE id = 1")).one())
    engine.dispose()
    return got


def test_suppressed_context_makes_no_spans(
    all_ours: Telemetry, tmp_path: Path, postgres_dsn: str, redis_url: str, table: str
) -> None:
    all_ours.exporter.clear()  # the table fixture's own statements
    with suppress_instrumentation():
        got = _work(tmp_path, postgres_dsn, redis_url, table)
    assert got == [(2,), (2,), (3,), 4, b"1", (5,)]
    assert all_ours.spans() == [], [s.name for s in all_ours.spans()]
    # and the same work unsuppressed is traced (the test can fail)
    _work(tmp_path, postgres_dsn, redis_url, table)
    scopes = {s.instrumentation_scope.name for s in all_ours.spans() if s.instrumentation_scope}
    assert {
        "otel_agent_state.instrumentation.sqlite3",
        "otel_agent_state.instrumentation.psycopg2",
        "otel_agent_state.instrumentation.psycopg",
        "otel_agent_state.instrumentation.asyncpg",
        "otel_agent_state.instrumentation.redis",
    } <= scopes, scopes
