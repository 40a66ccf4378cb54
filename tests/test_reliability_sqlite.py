"""Reliability of the sqlite3 instrumentation on real database files: execute / executemany /
executescript with SQL the analyser cannot read, inside the app's transactions, and faults
(a locked database, an interrupted query, a closed connection) give the instrumented
connection exactly what a plain connection gives, and an uncommitted write is never reported
as committed. (Single statements on :memory: are covered by test_sqlite3_instrumentation.)"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_agent_state import agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import sqlite3 as inst

from .conftest import Telemetry

PLAIN_CONNECT = sqlite3.connect  # taken before any instrumentation
HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
SCHEMA = """
CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER);
CREATE TABLE log (msg);
INSERT INTO credit_scores VALUES (42, 680, 1), (7, 500, 3);
INSERT INTO accounts VALUES ('A', 1000), ('B', 0);
"""
TABLES = ["credit_scores", "accounts", "log"]
RULES = [
    {
        "name": "credit_score",
        "keys": ["sqlite:*/credit_scores/{id}"],
        "version": {"column": "version"},
    }
]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def failure(exc: BaseException) -> tuple[Any, ...]:
    return ("raised", type(exc), str(exc))


def attempt(call: Callable[[], Any]) -> Any:
    try:
        return ("ok", call())
    except Exception as exc:  # the application's view: exact type and message
        return failure(exc)


@dataclass
class Db:
    path: Path
    telemetry: Telemetry

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        setup = PLAIN_CONNECT(self.path)
        setup.executescript(SCHEMA)
        setup.close()
        self.telemetry.exporter.clear()

    def snapshot(self) -> list[Any]:
        conn = PLAIN_CONNECT(self.path)
        try:
            return [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES]
        finally:
            conn.close()

    def plain(self, body: Callable[[Callable[..., Any]], Any]) -> Any:
        self.reset()
        return body(PLAIN_CONNECT), self.snapshot()

    def traced(self, body: Callable[[Callable[..., Any]], Any]) -> Any:
        self.reset()
        with workflow("reliability"), agent("fuzzer"):
            result = body(sqlite3.connect)
        assert self.telemetry.processor.ledger.stats().traces == 0  # the trace closed
        assert any(attrs(s).get(A.DB_SYSTEM_NAME) == "sqlite" for s in self.telemetry.spans())
        assert self.ours_failed() == []
        return result, self.snapshot()

    def ours_failed(self) -> list[ReadableSpan]:
        """Spans that failed without an exception event: an error of ours, not the app's."""
        return [
            s
            for s in self.telemetry.spans()
            if s.status.status_code == StatusCode.ERROR
            and not any(e.name == "exception" for e in s.events)
        ]


@pytest.fixture
def db(telemetry: Telemetry, tmp_path: Path) -> Iterator[Db]:
    configure(rules=RULES)
    inst.row_states.clear()
    instrumentor = inst.SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield Db(tmp_path / "rel.db", telemetry)
    instrumentor.uninstrument()


# --------------------------------------------------------------------------- strategies

TOKENS = [
    "SELECT", "INSERT", "OR", "REPLACE", "INTO", "VALUES", "UPDATE", "SET", "DELETE", "FROM",
    "WHERE", "=", "?", "?1", ":a", "(", ")", ",", "*", ";", "1", "'x'", "'it''s'", "x'00ff'",
    '"id"', "[id]", "`id`", "/* c */", "-- c\n", "WITH", "AS", "RETURNING", "ON", "CONFLICT",
    "DO", "NOTHING", "UPSERT", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "RELEASE s",
    "credit_scores", "accounts", "log", "id", "score", "version", "balance", "msg", "rowid",
    "LIMIT", "UNION", "ALL", "JOIN", "USING", "NULL", "CASE", "WHEN", "THEN", "END",
]  # fmt: skip
TYPED = [
    ("SELECT score, version FROM credit_scores WHERE id = ?", "i"),
    ("UPDATE credit_scores SET score = ?, version = version + 1 WHERE id = ?", "ni"),
    ("UPDATE credit_scores SET score = :a WHERE id = 42", "n"),
    ("INSERT INTO credit_scores VALUES (?, ?, ?)", "inn"),
    ("INSERT OR REPLACE INTO accounts VALUES (?, ?)", "sn"),
    ("INSERT INTO accounts VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET balance = ?", "snn"),
    ("DELETE FROM accounts WHERE id = ? RETURNING *", "s"),
    ("UPDATE accounts SET balance = balance - ? WHERE id = ? RETURNING balance", "ns"),
    ("INSERT INTO log VALUES (?)", "s"),
    ("WITH c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) SELECT * FROM c", ""),
    ("UPDATE credit_scores SET score = score + 1", ""),
]  # fmt: skip
KINDS = {
    "i": st.sampled_from([42, 7, 1, 99]),
    "n": st.integers(-1000, 1000),
    "s": st.sampled_from(["A", "B", "C"]) | st.text(max_size=5),
}
VALUES = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=8),  # surrogates
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)
RANDOM_SQL = st.one_of(
    st.builds(" ".join, st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14)),
    st.builds(
        lambda a, b: a + " " + b, st.sampled_from([t for t, _ in TYPED]), st.sampled_from(TOKENS)
    ),
    st.text(max_size=40),
)


def _params(draw: st.DrawFn, sql: str, kinds: str | None) -> Any:
    if kinds is not None and draw(st.integers(0, 4)) > 0:
        values = [draw(KINDS[k]) for k in kinds]
        return {"a": values[0]} if ":a" in sql else tuple(values)
    if draw(st.integers(0, 3)) == 0:
        return draw(
            st.one_of(st.lists(VALUES, max_size=3), st.dictionaries(st.text(max_size=2), VALUES))
        )
    count = sql.count("?")
    return {"a": draw(VALUES)} if ":a" in sql else tuple(draw(VALUES) for _ in range(count))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(method, sql, params) for execute, executemany or executescript."""
    if draw(st.booleans()):
        sql, kinds = draw(st.sampled_from(TYPED))
    else:
        sql, kinds = draw(RANDOM_SQL), None
    method = draw(st.sampled_from(["execute", "execute", "executemany", "executescript"]))
    if method == "executescript":
        return method, sql, None
    if method == "executemany":
        return method, sql, [_params(draw, sql, kinds) for _ in range(draw(st.integers(0, 3)))]
    return method, sql, _params(draw, sql, kinds)


PRIOR_WRITE = "UPDATE credit_scores SET score = score + 1, version = version + 1 WHERE id = 42"


def _session(
    connect: Callable[..., Any],
    path: Path,
    steps: list[tuple[str, str, Any]],
    prior: bool,
    commit: bool,
) -> list[Any]:
    out: list[Any] = []
    conn = connect(path)
    try:
        if prior:
            conn.execute(PRIOR_WRITE)  # an open transaction (implicit BEGIN)
        for method, sql, params in steps:

            def call(method: str = method, sql: str = sql, params: Any = params) -> Any:
                cursor = (
                    getattr(conn, method)(sql)
                    if params is None
                    else getattr(conn, method)(sql, params)
                )
                return cursor.fetchall()

            out.append(attempt(call))
        out.append(attempt(conn.commit if commit else conn.rollback))
        out.append(attempt(lambda: conn.execute("SELECT count(*) FROM credit_scores").fetchall()))
    finally:
        conn.close()
    return out


# --------------------------------------------------------------------------- weird SQL


@settings(HYPOTHESIS, max_examples=100)
@given(steps=st.lists(calls(), min_size=1, max_size=4), prior=st.booleans(), commit=st.booleans())
def test_execute_executemany_executescript_match_a_plain_connection(
    db: Db, steps: list[tuple[str, str, Any]], prior: bool, commit: bool
) -> None:
    expected = db.plain(lambda connect: _session(connect, db.path, steps, prior, commit))
    assert db.traced(lambda connect: _session(connect, db.path, steps, prior, commit)) == expected
    assert db.telemetry.anomalies() == []  # one agent, one database: nothing to find
    for (method, _, _), result in zip(steps, expected[0], strict=False):
        event(f"{method}: {'ok' if result[0] == 'ok' else result[1].__name__}")


# --------------------------------------------------------------------------- faults


def _locked_write(db: Db, connect: Callable[..., Any]) -> list[Any]:
    blocker = PLAIN_CONNECT(db.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
    conn = connect(db.path, timeout=0.05)
    try:
        out = [attempt(lambda: conn.execute(PRIOR_WRITE).rowcount)]
        out.append(attempt(conn.commit))
        blocker.rollback()
        out.append(attempt(lambda: conn.execute(PRIOR_WRITE).rowcount))  # works again
        out.append(attempt(conn.commit))
        return out
    finally:
        conn.close()
        blocker.close()


def test_locked_database_raises_sqlite_operational_error_unchanged(db: Db) -> None:
    expected = db.plain(lambda connect: _locked_write(db, connect))
    assert expected[0][0] == ("raised", sqlite3.OperationalError, "database is locked")
    assert expected[1][0] == [(7, 500, 3), (42, 681, 2)]  # only the retry committed
    assert db.traced(lambda connect: _locked_write(db, connect)) == expected
    assert db.telemetry.anomalies() == []
    failed = [s for s in db.telemetry.spans() if s.status.status_code == StatusCode.ERROR]
    assert [s.name for s in failed] == ["UPDATE credit_scores"]
    assert A.WRITE_FACTS not in attrs(failed[0])


def test_failed_locked_write_is_not_a_committed_write_in_raise_mode(db: Db) -> None:
    configure(rules=RULES, on_anomaly="raise")
    db.reset()
    blocker = PLAIN_CONNECT(db.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with workflow("rescore"):
        with agent("scorer"), pytest.raises(sqlite3.OperationalError, match="locked"):
            conn = sqlite3.connect(db.path, timeout=0.05)
            try:
                conn.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
            finally:
                conn.close()
        blocker.rollback()
        with agent("assessor"):
            reader = sqlite3.connect(db.path)
            assert reader.execute(
                "SELECT score, version FROM credit_scores WHERE id = 42"
            ).fetchall() == [(680, 1)]
            reader.close()
    blocker.close()
    assert db.telemetry.anomalies() == []


def _interrupted(db: Db, connect: Callable[..., Any]) -> list[Any]:
    conn = connect(db.path)
    try:
        conn.execute(PRIOR_WRITE)
        timer = threading.Timer(0.2, conn.interrupt)
        timer.start()
        endless = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
        out = [attempt(lambda: conn.execute(endless).fetchall())]
        timer.join()
        out.append(attempt(conn.commit))
        out.append(
            attempt(
                lambda: conn.execute("SELECT version FROM credit_scores WHERE id = 42").fetchall()
            )
        )
        return out
    finally:
        conn.close()


def test_interrupted_query_raises_sqlite_operational_error_unchanged(db: Db) -> None:
    expected = db.plain(lambda connect: _interrupted(db, connect))
    assert expected[0][0] == ("raised", sqlite3.OperationalError, "interrupted")
    assert db.traced(lambda connect: _interrupted(db, connect)) == expected
    assert db.telemetry.anomalies() == []


def _closed(db: Db, connect: Callable[..., Any]) -> list[Any]:
    conn = connect(db.path)
    cursor = conn.execute("SELECT * FROM credit_scores ORDER BY id")
    conn.execute(PRIOR_WRITE)
    conn.close()  # with an open transaction: rolled back
    return [
        attempt(cursor.fetchall),
        attempt(lambda: conn.execute("SELECT 1")),
        attempt(conn.commit),
        attempt(lambda: conn.executemany("INSERT INTO log VALUES (?)", [(1,)])),
        attempt(lambda: conn.executescript("SELECT 1")),
        attempt(conn.cursor),
    ]


def test_a_closed_connection_raises_what_sqlite3_raises(db: Db) -> None:
    expected = db.plain(lambda connect: _closed(db, connect))
    assert all(r[0] == "raised" and r[1] is sqlite3.ProgrammingError for r in expected[0])
    assert db.traced(lambda connect: _closed(db, connect)) == expected
    assert db.telemetry.anomalies() == []
    assert not any(attrs(s).get(A.COMMITTED) is True for s in db.telemetry.spans())
