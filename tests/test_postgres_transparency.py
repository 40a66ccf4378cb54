"""Issue 19: what the PostgreSQL drivers' own test suites check, and our instrumentation broke.

psycopg2's connection/cursor classes of `psycopg2.extras` and what `connect` passes on,
psycopg 3's prepared statements and streams, asyncpg's `fetchval(column=...)`, call-time
errors and `executemany` over a generator. Real PostgreSQL, one table per test.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.extras
import pytest

from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import _postgres as pg
from otel_agent_state.instrumentation import asyncpg as asyncpg_inst
from otel_agent_state.instrumentation import psycopg as psycopg_inst
from otel_agent_state.instrumentation import psycopg2 as psycopg2_inst

from .conftest import Telemetry


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[str]:
    name = f"t19_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT, version INTEGER)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 'a', 1), (2, 'b', 1)")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentors = [
        psycopg2_inst.Psycopg2Instrumentor(),
        psycopg_inst.PsycopgInstrumentor(),
        asyncpg_inst.AsyncpgInstrumentor(),
    ]
    for one in instrumentors:
        one.instrument(tracer_provider=telemetry.provider)
    try:
        yield telemetry
    finally:
        for one in instrumentors:
            one.uninstrument()


def writes(telemetry: Telemetry, prefix: str) -> list[dict[str, Any]]:
    return [
        dict(s.attributes or {})
        for s in telemetry.spans()
        if s.name.startswith(prefix) and (s.attributes or {}).get(A.WRITE_FACTS)
    ]


# --------------------------------------------------------------------------- psycopg2


@pytest.mark.parametrize(
    ("factory", "cursor_class", "row"),
    [
        (psycopg2.extras.DictConnection, psycopg2.extras.DictCursor, psycopg2.extras.DictRow),
        (
            psycopg2.extras.RealDictConnection,
            psycopg2.extras.RealDictCursor,
            psycopg2.extras.RealDictRow,
        ),
        (psycopg2.extras.NamedTupleConnection, psycopg2.extras.NamedTupleCursor, tuple),
    ],
)
def test_psycopg2_extras_connections_keep_their_cursors(
    instrumented: Telemetry,
    postgres_dsn: str,
    table: str,
    factory: Any,
    cursor_class: Any,
    row: Any,
) -> None:
    conn = psycopg2.connect(postgres_dsn, connection_factory=factory)
    try:
        assert type(conn) == factory  # noqa: E721  (as uninstrumented)
        assert isinstance(conn, factory)
        cur = conn.cursor()
        assert isinstance(cur, cursor_class)
        cur.execute(f"SELECT id, name FROM {table} WHERE id = %s", (1,))
        got = cur.fetchone()
        assert (
            isinstance(got, row) and got[0 if row is not psycopg2.extras.RealDictRow else "id"] == 1
        )
        cur.execute(f"UPDATE {table} SET version = 2 WHERE id = %s", (1,))
        conn.commit()
    finally:
        conn.close()
    assert writes(instrumented, "UPDATE"), [s.name for s in instrumented.spans()]


def test_psycopg2_logging_connection_still_logs(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    out = io.StringIO()
    logger = logging.getLogger(f"t19.{table}")
    logger.addHandler(logging.StreamHandler(out))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    conn = psycopg2.connect(postgres_dsn, connection_factory=psycopg2.extras.LoggingConnection)
    try:
        conn.initialize(logger)
        cur = conn.cursor()
        cur.execute(f"UPDATE {table} SET version = 3 WHERE id = 2")
        conn.commit()
    finally:
        conn.close()
    logged = out.getvalue().splitlines()
    # the application's statement, and none of ours (catalog, savepoint, read-back)
    assert len(logged) == 1 and f"UPDATE {table} SET version = 3 WHERE id = 2" in logged[0], logged
    assert writes(instrumented, "UPDATE")


def test_psycopg2_connect_passes_on_what_the_application_gave(instrumented: Telemetry) -> None:
    """psycopg2's test_module stubs `_connect` and checks what `connect` passed it."""
    seen: list[tuple[Any, ...]] = []
    original = psycopg2._connect

    def stub(dsn: str, connection_factory: Any = None, async_: bool = False) -> None:
        seen.append((dsn, connection_factory, async_))

    psycopg2._connect = stub
    try:
        psycopg2.connect("")
        psycopg2.connect("dbname=x", connection_factory=psycopg2.extras.DictConnection)
    finally:
        psycopg2._connect = original
    assert seen == [("", None, False), ("dbname=x", psycopg2.extras.DictConnection, False)]


# --------------------------------------------------------------------------- psycopg 3


def _prepared(conn: Any) -> list[str]:
    with psycopg.Cursor(conn) as cur:
        cur.execute(
            "SELECT statement FROM pg_prepared_statements ORDER BY prepare_time", prepare=False
        )
        return [str(r[0]) for r in cur.fetchall()]


def test_psycopg_own_queries_are_never_prepared(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.prepare_threshold = 0  # prepare every statement at once
        conn.prepared_max = 2
        read = f"SELECT name FROM {table} WHERE id = %s"
        write = f"UPDATE {table} SET version = version + 1 WHERE id = %s"
        conn.execute(read, (1,)).fetchall()
        conn.execute(write, (1,))  # our catalog look-up and read-back run under a savepoint
        conn.execute(write, (2,))
        conn.execute(read, (2,)).fetchall()
        statements = _prepared(conn)
        conn.commit()
    assert writes(instrumented, "UPDATE")
    # only the application's two statements, both still in its two slots
    assert sorted(statements) == sorted(
        [
            f"SELECT name FROM {table} WHERE id = $1",
            f"UPDATE {table} SET version = version + 1 WHERE id = $1",
        ]
    ), statements


def test_psycopg_stream_close_ends_the_stream(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        stream = conn.cursor().stream(f"SELECT * FROM {table}, generate_series(1, 1000) g")
        next(stream)
        stream.close()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_async_stream_aclose_ends_the_stream(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    async def run() -> tuple[Any, Any]:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            stream = conn.cursor().stream(f"SELECT * FROM {table}, generate_series(1, 1000) g")
            await stream.__anext__()
            await stream.aclose()  # type: ignore[attr-defined]
            status = conn.info.transaction_status
            cur = await conn.execute("SELECT 1")
            return status, await cur.fetchone()

    status, row = asyncio.run(run())
    assert status == psycopg.pq.TransactionStatus.IDLE  # not ACTIVE: the stream is over
    assert row == (1,)


def test_materialise_streams_the_rows() -> None:
    taken: list[int] = []

    def rows() -> Iterator[tuple[int]]:
        for i in range(3):
            taken.append(i)
            yield (i,)

    args, sink = pg.materialise("executemany", ("INSERT ...", rows()), {})
    assert taken == [] and sink == []  # nothing read before the driver reads it
    assert list(args[1]) == [(0,), (1,), (2,)]
    assert sink == [(0,), (1,), (2,)]
    kwargs: dict[str, Any] = {"params_seq": iter([(5,)])}
    _, sink = pg.materialise("executemany", ("INSERT ...",), kwargs)
    assert list(kwargs["params_seq"]) == [(5,)] and sink == [(5,)]
    listed = [(1,)]
    args, sink = pg.materialise("executemany", ("INSERT ...", listed), {})
    assert args[1] is listed and sink == [(1,)]  # a list is passed on as it is


def test_psycopg2_executemany_over_a_generator_records_every_row(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    conn = psycopg2.connect(postgres_dsn)
    try:
        cur = conn.cursor()
        cur.executemany(f"UPDATE {table} SET version = %s WHERE id = %s", ((7, i) for i in (1, 2)))
        conn.commit()
    finally:
        conn.close()
    [span] = writes(instrumented, "UPDATE")
    assert len(span[A.WRITE_FACTS]) == 2


# --------------------------------------------------------------------------- asyncpg


def test_asyncpg_fetchval_by_column_name(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    async def run() -> Any:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return await conn.fetchval(
                f"SELECT id, name FROM {table} WHERE id = $1", 1, column="name"
            )
        finally:
            await conn.close()

    assert asyncio.run(run()) == "a"
    [span] = [s for s in instrumented.spans() if s.name.startswith("SELECT")]
    assert span.status.is_ok  # ended, no error of ours


def test_asyncpg_executemany_streams_the_callers_generator(
    instrumented: Telemetry, postgres_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []
    taken_when_sent: list[int] = []
    real = asyncpg.connection.Connection._executemany

    async def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        taken_when_sent.append(len(taken))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "_executemany", spy)

    def rows() -> Iterator[tuple[int, int]]:
        for i in (1, 2):
            taken.append(i)
            yield (9, i)

    async def run() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.executemany(f"UPDATE {table} SET version = $1 WHERE id = $2", rows())
        finally:
            await conn.close()

    asyncio.run(run())
    assert taken_when_sent == [0]  # the driver got the generator itself, not a drained list
    assert taken == [1, 2]
    [span] = writes(instrumented, "UPDATE")
    assert len(span[A.WRITE_FACTS]) == 2


def test_asyncpg_call_time_errors_stay_at_call_time(
    instrumented: Telemetry, postgres_dsn: str, table: str
) -> None:
    async def run() -> str:
        conn = await asyncpg.connect(postgres_dsn)
        txn = conn.transaction()
        await txn.start()
        cursor = await conn.cursor(f"SELECT * FROM {table}")
        await conn.close()
        try:
            pending = cursor.fetch(1)  # asyncpg checks the connection here, before any await
        except asyncpg.InterfaceError as exc:
            return f"at call: {exc}"
        pending.close()
        return "at await"

    assert asyncio.run(run()).startswith("at call: cannot call Cursor.fetch()")
