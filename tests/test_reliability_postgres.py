"""Reliability of the PostgreSQL instrumentations (psycopg 3, psycopg2) on the real server
(schemas `agentstate_rel_*` only, dropped by the fixture): SQL the analyser cannot read and
random parameters give the instrumented connection exactly the plain driver's result or its
exception type and message; a backend terminated mid-transaction, a statement timeout reach
the application as the driver's own errors, and an uncommitted write is never reported as
committed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import psycopg.errors
import psycopg2
import psycopg2.errors
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import asyncpg as asyncpg_inst
from otel_agent_state.instrumentation import psycopg as pg3_inst
from otel_agent_state.instrumentation import psycopg2 as pg2_inst

from .conftest import Telemetry

pytestmark = pytest.mark.postgres

HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
TABLES = ["credit_scores", "accounts", "docs"]
ROWS = (
    "INSERT INTO credit_scores VALUES (42, 680, 1), (7, 500, 3);"
    "INSERT INTO accounts VALUES ('A', 1000), ('B', 0);"
    """INSERT INTO docs VALUES (1, '{"version": 2, "t": "x"}', '{a,b}');"""
)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def failure(exc: BaseException) -> tuple[Any, ...]:
    return ("raised", type(exc), str(exc))


def label(result: Any) -> None:
    """--hypothesis-show-statistics: how the statement went."""
    event("ok" if result[0] == "ok" else result[1].__name__)


@dataclass
class Pg:
    driver: str
    dsn: str
    schema: str
    telemetry: Telemetry

    def connect(self, autocommit: bool = False) -> Any:
        options = f"-c search_path={self.schema}"
        if self.driver == "psycopg":
            return psycopg.connect(self.dsn, autocommit=autocommit, options=options)
        conn = psycopg2.connect(self.dsn, options=options)
        conn.autocommit = autocommit
        return conn

    def admin(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with suppress_instrumentation(), psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description else []

    def reset(self) -> None:
        with suppress_instrumentation(), psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"SET search_path = {self.schema}")
            conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            conn.execute(ROWS)
        self.telemetry.exporter.clear()

    def snapshot(self) -> list[Any]:
        with suppress_instrumentation(), psycopg.connect(self.dsn, autocommit=True) as conn:
            return [
                conn.execute(f"SELECT * FROM {self.schema}.{t} ORDER BY 1").fetchall()
                for t in TABLES
            ]

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


def _rules(schema: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "credit_score",
            "keys": [f"postgresql:*/{schema}.credit_scores/{{id}}"],
            "version": {"column": "version"},
        }
    ]


@pytest.fixture(scope="module")
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"agentstate_rel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"SET search_path = {name}")
        conn.execute("CREATE TABLE credit_scores (id int PRIMARY KEY, score int, version int)")
        conn.execute("CREATE TABLE accounts (id text PRIMARY KEY, balance int)")
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body jsonb, tags text[])")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(params=["psycopg", "psycopg2"])
def pg(
    request: pytest.FixtureRequest, telemetry: Telemetry, postgres_dsn: str, schema: str
) -> Iterator[Pg]:
    configure(rules=_rules(schema))
    instrumentor: Any = (
        pg3_inst.PsycopgInstrumentor()
        if request.param == "psycopg"
        else pg2_inst.Psycopg2Instrumentor()
    )
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield Pg(str(request.param), postgres_dsn, schema, telemetry)
    instrumentor.uninstrument()


# --------------------------------------------------------------------------- strategies

TOKENS = [
    "SELECT", "INSERT", "INTO", "VALUES", "UPDATE", "SET", "DELETE", "FROM", "WHERE", "AND",
    "OR", "NOT", "=", "<", "+", "-", "%s", "%(a)s", "%%", "(", ")", ",", "*", ";", "1", "42",
    "'x'", "'it''s'", "E'\\\\x'", "$$a;'b$$", "$q$ $$ ; $q$", '"id"', '"Odd ""name"""',
    "/* c */", "/* /* nested */ */", "-- line\n", "--", "WITH", "AS", "RECURSIVE", "RETURNING",
    "ON", "CONFLICT", "DO", "NOTHING", "EXCLUDED", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s",
    "RELEASE s", "ROLLBACK TO s", "::int", "::jsonb", "->>", "'version'", "LIMIT", "FOR UPDATE",
    "UNION", "ALL", "JOIN", "USING", "ORDER BY", "GROUP BY", "COUNT(*)", "ARRAY[1,2]",
    "credit_scores", "accounts", "docs", "id", "score", "version", "balance", "body", "tags",
    "pg_catalog.pg_class", "LATERAL", "NULL", "TRUE", "CASE", "WHEN", "THEN", "END",
]  # fmt: skip
# Statements with the kinds of their parameters: i row id, n number, s account id, j JSON.
TYPED = [
    ("SELECT score, version FROM credit_scores WHERE id = %s", "i"),
    ("SELECT * FROM credit_scores WHERE id IN (%s, %s) ORDER BY id", "ii"),
    (
        "UPDATE credit_scores SET score = %s, version = version + 1 WHERE id = %s"
        " RETURNING version",
        "ni",
    ),
    ("UPDATE credit_scores SET version = %s WHERE id = 42", "n"),
    ("UPDATE credit_scores SET score = score + 1 WHERE score > %s", "n"),
    ("INSERT INTO credit_scores VALUES (%s, %s, %s)", "inn"),
    ("DELETE FROM credit_scores WHERE id = %s RETURNING *", "i"),
    (
        "INSERT INTO accounts VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET balance ="
        " EXCLUDED.balance RETURNING *",
        "sn",
    ),
    (
        "WITH moved AS (UPDATE accounts SET balance = balance - %s WHERE id = %s RETURNING *)"
        " SELECT * FROM moved",
        "ns",
    ),
    ("UPDATE accounts SET balance = balance + %s WHERE id = %s", "ns"),
    ("DELETE FROM accounts WHERE id = %s", "s"),
    ("SELECT $$;'--$$, %s /* ; */ -- %s\n", "ss"),  # a placeholder in a comment
    ("SELECT body->>'version', tags FROM docs WHERE id = %s", "i"),
    ("UPDATE docs SET body = %s::jsonb WHERE id = 1", "j"),
    ('SELECT "id" FROM "credit_scores" WHERE "version" > %(a)s', "n"),
    ("SELECT 1; UPDATE credit_scores SET score = 1 WHERE id = 42", ""),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3)"
        " SELECT * FROM r",
        "",
    ),
    ("SAVEPOINT s; UPDATE accounts SET balance = 1 WHERE id = 'A'; ROLLBACK TO s", ""),
    ("SELECT * FROM credit_scores c JOIN accounts a ON c.score = a.balance FOR UPDATE", ""),
]
TEMPLATES = [sql for sql, _ in TYPED]
KINDS = {
    "i": st.sampled_from([42, 7, 1, 99]),
    "n": st.integers(-1000, 1000),
    "s": st.sampled_from(["A", "B", "C"]) | st.text(st.characters(codec="utf-8"), max_size=5),
    "j": st.builds(lambda v: json.dumps({"version": v}), st.integers(-5, 5) | st.text(max_size=3)),
}
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),  # NULs included: the driver refuses them
    st.binary(max_size=8),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["A", "B", 42, 7, '{"version": 9}', "nan", "1e400"]),
)
SQL = st.one_of(
    st.builds(" ".join, st.lists(st.sampled_from(TOKENS), min_size=1, max_size=16)),
    st.builds(lambda a, b: a + " " + b, st.sampled_from(TEMPLATES), st.sampled_from(TOKENS)),
    st.text(min_size=1, max_size=40).map(lambda s: s if s.strip() else s + "SELECT 1"),
)
PARAMS = st.one_of(
    st.none(),
    st.lists(VALUES, max_size=4),
    st.fixed_dictionaries({"a": VALUES}),
    st.dictionaries(st.text(max_size=3), VALUES, max_size=2),
)


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, Any]:
    """Half well-typed statements the analyser should read, half SQL it cannot (random
    tokens, a statement with trailing junk, any text), with placeholder-count parameters
    mostly and anything sometimes."""
    if draw(st.booleans()):
        sql, kinds = draw(st.sampled_from(TYPED))
        if draw(st.integers(0, 4)) == 0:
            return sql, draw(PARAMS)
        values = [draw(KINDS[k]) for k in kinds]
        if "%(a)s" in sql:
            return sql, {"a": values[0]}
        return sql, values or None
    sql = draw(SQL)
    if draw(st.integers(0, 3)) == 0:
        return sql, draw(PARAMS)
    if "%(a)s" in sql:
        return sql, {"a": draw(VALUES)}
    count = sql.count("%s")
    return sql, (draw(st.lists(VALUES, min_size=count, max_size=count)) if count else None)


PRIOR_WRITE = "UPDATE credit_scores SET score = score + 1, version = version + 1 WHERE id = 42"


def _run(pg: Pg, sql: str, params: Any, commit: bool, prior_write: bool = False) -> list[Any]:
    """`sql` in a transaction (after a write of the app's own when `prior_write`: our
    follow-up queries then run inside the app's transaction), committed or rolled back."""
    out: list[Any] = []
    conn = pg.connect()
    try:
        cur = conn.cursor()
        if prior_write:
            cur.execute(PRIOR_WRITE)
        try:
            cur.execute(sql, params)
            out.append(("ok", norm(cur.fetchall()) if cur.description else cur.rowcount))
        except Exception as exc:
            out.append(failure(exc))
        try:
            conn.commit() if commit else conn.rollback()
            out.append("ended")
        except Exception as exc:
            out.append(failure(exc))
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM credit_scores")  # the connection still works
        out.append(cur.fetchall())
        conn.rollback()
    finally:
        conn.close()
    return out


# --------------------------------------------------------------------------- weird SQL


@settings(HYPOTHESIS, max_examples=80)
@given(statement=statements(), commit=st.booleans(), prior=st.booleans())
def test_unreadable_sql_and_random_params_match_the_plain_driver(
    pg: Pg, statement: tuple[str, Any], commit: bool, prior: bool
) -> None:
    sql, params = statement
    expected = pg.plain(lambda: _run(pg, sql, params, commit, prior))
    assert pg.traced(lambda: _run(pg, sql, params, commit, prior)) == expected
    label(expected[0][0])
    # One agent alone on one server: nothing to find (no stale read of its own writes...).
    assert pg.telemetry.anomalies() == []


# --------------------------------------------------------------------------- faults


def _terminated_mid_transaction(pg: Pg) -> list[Any]:
    out: list[Any] = []
    conn = pg.connect()
    try:
        cur = conn.cursor()
        cur.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
        pid = conn.info.backend_pid if pg.driver == "psycopg" else conn.get_backend_pid()
        assert pg.admin("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        for step in (
            lambda: cur.execute("UPDATE accounts SET balance = 0 WHERE id = 'A'"),
            conn.commit,
        ):
            try:
                step()
                out.append("ok")
            except Exception as exc:
                out.append(failure(exc))
    finally:
        conn.close()
    return out


def _assert_driver_error(result: tuple[Any, ...], driver: str) -> None:
    assert result[0] == "raised"
    assert result[1].__module__.split(".")[0] == driver, result  # the driver's own class


def test_backend_terminated_mid_transaction(pg: Pg) -> None:
    """The driver's own errors (their exact class: the test below), later connections work,
    the write is not reported as committed, no finding."""
    result, snapshot = pg.traced(lambda: _terminated_mid_transaction(pg))
    _assert_driver_error(result[0], pg.driver)
    _assert_driver_error(result[1], pg.driver)
    assert snapshot[0] == [(7, 500, 3), (42, 680, 1)]  # the write never committed
    assert pg.telemetry.anomalies() == []
    for span in pg.telemetry.spans():
        assert attrs(span).get(A.COMMITTED) is not True, span.name
    assert pg.traced(lambda: _run(pg, "SELECT count(*) FROM accounts", None, True))[0] == [
        ("ok", [[2]]),
        "ended",
        [(2,)],
    ]


def test_failed_statement_on_a_terminated_backend_commits_nothing(pg: Pg) -> None:
    pg.traced(lambda: _terminated_mid_transaction(pg))
    outcomes = [attrs(s).get(A.TXN_OUTCOME) for s in pg.telemetry.spans()]
    assert "commit" not in outcomes, outcomes


@pytest.mark.parametrize("pg", ["psycopg", "psycopg2"], indirect=True)
def test_backend_terminated_mid_transaction_raises_what_the_plain_driver_raises(
    pg: Pg,
) -> None:
    expected = pg.plain(lambda: _terminated_mid_transaction(pg))
    for result in expected[0]:
        _assert_driver_error(result, pg.driver)
    assert pg.traced(lambda: _terminated_mid_transaction(pg)) == expected


@pytest.mark.parametrize("failing_step", ["commit", "execute"])
def test_uncommitted_write_of_a_terminated_backend_makes_no_stale_read(
    pg: Pg, failing_step: str
) -> None:
    """raise mode: a reader that sees the old version after the writer's backend died has
    read the latest committed state; the lost write must not count as committed."""
    configure(rules=_rules(pg.schema), on_anomaly="raise")
    pg.reset()
    with workflow("rescore"):
        with agent("scorer"), pytest.raises(Exception) as caught:
            _failing_writer(pg, failing_step)
        _assert_driver_error(failure(caught.value), pg.driver)
        with agent("assessor"):
            conn = pg.connect(autocommit=True)
            cur = conn.cursor()
            cur.execute("SELECT score, version FROM credit_scores WHERE id = 42")
            assert cur.fetchall() == [(680, 1)]
            conn.close()
    assert pg.telemetry.anomalies() == []


def _failing_writer(pg: Pg, failing_step: str) -> None:
    conn = pg.connect()
    try:
        cur = conn.cursor()
        cur.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
        pid = conn.info.backend_pid if pg.driver == "psycopg" else conn.get_backend_pid()
        pg.admin("SELECT pg_terminate_backend(%s)", (pid,))
        if failing_step == "execute":
            cur.execute("UPDATE accounts SET balance = 0 WHERE id = 'A'")
        conn.commit()
    finally:
        conn.close()


def _statement_timeout(pg: Pg) -> list[Any]:
    out: list[Any] = []
    conn = pg.connect()
    try:
        cur = conn.cursor()
        cur.execute("UPDATE accounts SET balance = 5 WHERE id = 'B'")
        cur.execute("SET statement_timeout = 50")
        try:
            cur.execute("SELECT pg_sleep(1)")
            out.append("ok")
        except Exception as exc:
            out.append(failure(exc))
        conn.rollback()
        cur = conn.cursor()
        cur.execute("SELECT balance FROM accounts ORDER BY id")  # usable afterwards
        out.append(cur.fetchall())
        conn.commit()
    finally:
        conn.close()
    return out


def test_statement_timeout_is_query_canceled_unchanged(pg: Pg) -> None:
    expected = pg.plain(lambda: _statement_timeout(pg))
    canceled = (
        psycopg.errors.QueryCanceled if pg.driver == "psycopg" else psycopg2.errors.QueryCanceled
    )
    assert expected[0][0][1] is canceled
    assert expected[0][1] == [(1000,), (0,)]
    assert pg.traced(lambda: _statement_timeout(pg)) == expected
    assert pg.telemetry.anomalies() == []
    assert not any(attrs(s).get(A.COMMITTED) is True for s in pg.telemetry.spans())


# --------------------------------------------------------------------------- asyncio drivers


@pytest.fixture(params=["psycopg-async", "asyncpg"])
def apg(
    request: pytest.FixtureRequest, telemetry: Telemetry, postgres_dsn: str, schema: str
) -> Iterator[Pg]:
    configure(rules=_rules(schema))
    instrumentor: Any = (
        pg3_inst.PsycopgInstrumentor()
        if request.param == "psycopg-async"
        else asyncpg_inst.AsyncpgInstrumentor()
    )
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield Pg(str(request.param), postgres_dsn, schema, telemetry)
    instrumentor.uninstrument()


def _dollars(sql: str, params: Any) -> tuple[str, list[Any]]:
    """asyncpg's placeholders: %s -> $1, $2 ..., %(a)s -> $1 with the value of a."""
    if isinstance(params, dict):
        return sql.replace("%(a)s", "$1"), [params.get("a")] if "%(a)s" in sql else []
    parts = sql.split("%s")
    out = parts[0]
    for n, part in enumerate(parts[1:], 1):
        out += f"${n}{part}"
    return out, list(params or [])


async def _async_session(pg: Pg, steps: Callable[[Any], Any]) -> list[Any]:
    if pg.driver == "asyncpg":
        conn: Any = await asyncpg.connect(pg.dsn, server_settings={"search_path": pg.schema})
    else:
        conn = await psycopg.AsyncConnection.connect(pg.dsn, options=f"-c search_path={pg.schema}")
    try:
        return list(await steps(conn))
    finally:
        await conn.close()


def _run_async(pg: Pg, sql: str, params: Any, commit: bool, prior_write: bool) -> list[Any]:
    async def steps(conn: Any) -> list[Any]:
        out: list[Any] = []
        if pg.driver == "asyncpg":
            query, args = _dollars(sql, params)
            tr = conn.transaction()
            await tr.start()
            if prior_write:
                await conn.execute(PRIOR_WRITE)
            try:
                out.append(("ok", [list(r) for r in await conn.fetch(query, *args)]))
            except Exception as exc:
                out.append(failure(exc))
            try:
                await (tr.commit() if commit else tr.rollback())
                out.append("ended")
            except Exception as exc:
                out.append(failure(exc))
            out.append(await conn.fetchval("SELECT count(*) FROM credit_scores"))
            return out
        cur = conn.cursor()
        if prior_write:
            await cur.execute(PRIOR_WRITE)
        try:
            await cur.execute(sql, params)
            out.append(("ok", norm(await cur.fetchall()) if cur.description else cur.rowcount))
        except Exception as exc:
            out.append(failure(exc))
        try:
            await (conn.commit() if commit else conn.rollback())
            out.append("ended")
        except Exception as exc:
            out.append(failure(exc))
        cur = conn.cursor()
        await cur.execute("SELECT count(*) FROM credit_scores")
        out.append(await cur.fetchall())
        await conn.rollback()
        return out

    return asyncio.run(_async_session(pg, steps))  # the task copies the caller's context


@settings(HYPOTHESIS, max_examples=60)
@given(statement=statements(), commit=st.booleans(), prior=st.booleans())
def test_unreadable_sql_on_asyncio_drivers_matches_the_plain_driver(
    apg: Pg, statement: tuple[str, Any], commit: bool, prior: bool
) -> None:
    sql, params = statement
    expected = apg.plain(lambda: _run_async(apg, sql, params, commit, prior))
    assert apg.traced(lambda: _run_async(apg, sql, params, commit, prior)) == expected
    label(expected[0][0])
    assert apg.telemetry.anomalies() == []


def _terminated_async(pg: Pg) -> list[Any]:
    async def steps(conn: Any) -> list[Any]:
        out: list[Any] = []
        if pg.driver == "asyncpg":
            tr = conn.transaction()
            await tr.start()
            await conn.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
            pid = conn.get_server_pid()
            write: Callable[[], Any] = lambda: conn.execute(  # noqa: E731
                "UPDATE accounts SET balance = 0 WHERE id = 'A'"
            )
            end: Callable[[], Any] = tr.commit
        else:
            cur = conn.cursor()
            await cur.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
            pid = conn.info.backend_pid
            write = lambda: cur.execute(  # noqa: E731
                "UPDATE accounts SET balance = 0 WHERE id = 'A'"
            )
            end = conn.commit
        assert pg.admin("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        for step in (write, end):
            try:
                await step()
                out.append("ok")
            except Exception as exc:
                out.append(failure(exc))
        return out

    return asyncio.run(_async_session(pg, steps))


def test_backend_terminated_mid_transaction_on_asyncio_drivers(apg: Pg) -> None:
    expected = apg.plain(lambda: _terminated_async(apg))
    module = "psycopg" if apg.driver == "psycopg-async" else "asyncpg"
    for result in expected[0]:
        _assert_driver_error(result, module)
    assert expected[1][0] == [(7, 500, 3), (42, 680, 1)]  # the write never committed
    assert apg.traced(lambda: _terminated_async(apg)) == expected
    assert apg.telemetry.anomalies() == []
    for span in apg.telemetry.spans():
        assert attrs(span).get(A.COMMITTED) is not True, span.name
        assert attrs(span).get(A.TXN_OUTCOME) != "commit", span.name


# --------------------------------------------------------------------------- psycopg 3 blocks


def _pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


def _block_terminated(pg: Pg, conn: Any) -> None:
    with conn.transaction():
        conn.execute("UPDATE credit_scores SET version = 9 WHERE id = 42")
        pg.admin("SELECT pg_terminate_backend(%s)", (_pid(conn),))
        conn.execute("UPDATE accounts SET balance = 0 WHERE id = 'A'")


def _named_cursor_terminated(pg: Pg, conn: Any) -> Any:
    with conn.transaction(), conn.cursor(name="agentstate_rel_cur") as cur:
        cur.itersize = 1
        cur.execute("SELECT * FROM credit_scores ORDER BY id")
        first = cur.fetchone()
        pg.admin("SELECT pg_terminate_backend(%s)", (_pid(conn),))
        return first, cur.fetchall()


def _pipeline_errors(pg: Pg, conn: Any) -> Any:
    out = []
    with conn.pipeline():
        cur = conn.cursor()
        cur.execute("UPDATE credit_scores SET score = 1, version = 5 WHERE id = 42")
        cur.execute("SELECT 1 / 0")
        cur.execute("UPDATE accounts SET balance = 1 WHERE id = 'A'")
        out.append("queued")
    return out


def _nested_savepoint_error(pg: Pg, conn: Any) -> Any:
    with conn.transaction():
        conn.execute("UPDATE credit_scores SET score = 1, version = 5 WHERE id = 42")
        try:
            with conn.transaction():
                conn.execute("UPDATE accounts SET balance = 1 WHERE id = 'A'")
                conn.execute("SELECT nope FROM nowhere")
        except psycopg.Error as exc:
            caught = failure(exc)
        conn.execute("UPDATE accounts SET balance = 2 WHERE id = 'B'")
    return caught, conn.execute("SELECT * FROM accounts ORDER BY id").fetchall()


def _timeout_in_pipeline(pg: Pg, conn: Any) -> Any:
    conn.execute("SET statement_timeout = 50")
    with conn.pipeline():
        conn.execute("UPDATE accounts SET balance = 3 WHERE id = 'A'")
        conn.execute("SELECT pg_sleep(1)")
    return "unreachable"


SCENARIOS = {
    "transaction-block-terminated": _block_terminated,
    "named-cursor-terminated": _named_cursor_terminated,
    "pipeline-errors": _pipeline_errors,
    "nested-savepoint-error": _nested_savepoint_error,
    "statement-timeout-in-pipeline": _timeout_in_pipeline,
}


@pytest.mark.parametrize("pg", ["psycopg"], indirect=True)
@pytest.mark.parametrize(
    "name",
    list(SCENARIOS),
)
def test_psycopg_blocks_cursors_and_pipelines_under_faults(pg: Pg, name: str) -> None:
    def body() -> Any:
        conn = pg.connect()
        try:
            result = ("ok", norm(SCENARIOS[name](pg, conn)))
        except Exception as exc:
            result = failure(exc)
        try:  # what the connection says afterwards
            conn.rollback()
            after = ("ok", conn.execute("SELECT count(*) FROM accounts").fetchall())
        except Exception as exc:
            after = failure(exc)
        conn.close()
        return result, after

    expected = pg.plain(body)
    assert pg.traced(body) == expected
    assert pg.telemetry.anomalies() == []
    if expected[0][0][0] == "raised":
        assert expected[0][0][1].__module__.split(".")[0] == "psycopg"
    if expected[1][:2] == [[(7, 500, 3), (42, 680, 1)], [("A", 1000), ("B", 0)]]:  # no change
        committed = [s.name for s in pg.telemetry.spans() if attrs(s).get(A.COMMITTED) is True]
        assert committed == []
        assert not any(attrs(s).get(A.TXN_OUTCOME) == "commit" for s in pg.telemetry.spans())


@pytest.mark.parametrize("pg", ["psycopg"], indirect=True)
@pytest.mark.parametrize("ending", ["rollback", "error"])
def test_rolled_back_pipeline_write_is_not_committed(pg: Pg, ending: str) -> None:
    pg.reset()
    conn = pg.connect()
    with workflow("rescore"), pytest.raises(RuntimeError), agent("scorer"):
        try:
            with conn.pipeline():
                conn.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
                if ending == "error":
                    conn.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            pass
        conn.rollback()
        raise RuntimeError("the agent fails after its transaction rolled back")
    conn.close()
    assert pg.snapshot()[0] == [(7, 500, 3), (42, 680, 1)]
    assert pg.telemetry.anomalies("orphaned_mutation") == []  # nothing was committed
    assert pg.telemetry.anomalies() == []
    assert not any(attrs(s).get(A.COMMITTED) is True for s in pg.telemetry.spans())


@pytest.mark.parametrize("apg", ["psycopg-async"], indirect=True)
@pytest.mark.parametrize("ending", ["rollback", "error"])
def test_rolled_back_async_pipeline_write_is_not_committed(apg: Pg, ending: str) -> None:
    async def steps(conn: Any) -> list[Any]:
        try:
            async with conn.pipeline():
                await conn.execute(
                    "UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42"
                )
                if ending == "error":
                    await conn.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            pass
        await conn.rollback()
        return []

    apg.reset()
    with workflow("rescore"), pytest.raises(RuntimeError), agent("scorer"):
        asyncio.run(_async_session(apg, steps))
        raise RuntimeError("the agent fails after its transaction rolled back")
    assert apg.snapshot()[0] == [(7, 500, 3), (42, 680, 1)]
    assert apg.telemetry.anomalies("orphaned_mutation") == []  # nothing was committed
    assert not any(attrs(s).get(A.COMMITTED) is True for s in apg.telemetry.spans())


def _pg2_with_block_terminated(pg: Pg, conn: Any) -> Any:
    with conn, conn.cursor() as cur:  # psycopg2: commit on success, rollback on error
        cur.execute("UPDATE credit_scores SET version = 9 WHERE id = 42")
        pg.admin("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
        cur.execute("UPDATE accounts SET balance = 0 WHERE id = 'A'")


def _pg2_named_cursor_terminated(pg: Pg, conn: Any) -> Any:
    cur = conn.cursor(name="agentstate_rel_cur")
    cur.itersize = 1
    cur.execute("SELECT * FROM credit_scores ORDER BY id")
    first = cur.fetchone()
    pg.admin("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
    return first, cur.fetchall()


def _pg2_error_then_savepoint(pg: Pg, conn: Any) -> Any:
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE credit_scores SET score = 1, version = 5 WHERE id = 42")
        cur.execute("SAVEPOINT s")
        try:
            cur.execute("UPDATE accounts SET balance = 'x' WHERE id = 'A'")
        except psycopg2.Error as exc:
            caught = failure(exc)
            cur.execute("ROLLBACK TO SAVEPOINT s")
        cur.execute("UPDATE accounts SET balance = 2 WHERE id = 'B'")
        return caught


PG2_SCENARIOS = {
    "with-block-terminated": _pg2_with_block_terminated,
    "named-cursor-terminated": _pg2_named_cursor_terminated,
    "error-then-savepoint": _pg2_error_then_savepoint,
}


@pytest.mark.parametrize("pg", ["psycopg2"], indirect=True)
@pytest.mark.parametrize("name", list(PG2_SCENARIOS))
def test_psycopg2_blocks_and_cursors_under_faults(pg: Pg, name: str) -> None:
    def body() -> Any:
        conn = pg.connect()
        try:
            result = ("ok", norm(PG2_SCENARIOS[name](pg, conn)))
        except Exception as exc:
            result = failure(exc)
        try:
            conn.rollback()
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM accounts")
            after = ("ok", cur.fetchall())
        except Exception as exc:
            after = failure(exc)
        conn.close()
        return result, after

    expected = pg.plain(body)
    assert pg.traced(body) == expected
    assert pg.telemetry.anomalies() == []
    if expected[0][0][0] == "raised":
        assert expected[0][0][1].__module__.split(".")[0] == "psycopg2"
    if expected[1][:2] == [[(7, 500, 3), (42, 680, 1)], [("A", 1000), ("B", 0)]]:  # no change
        committed = [s.name for s in pg.telemetry.spans() if attrs(s).get(A.COMMITTED) is True]
        assert committed == []
        assert not any(attrs(s).get(A.TXN_OUTCOME) == "commit" for s in pg.telemetry.spans())
