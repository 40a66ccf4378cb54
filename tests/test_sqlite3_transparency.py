"""Issue 19: the application sees the same sqlite3 with our instrumentation on.

Each test is a behaviour CPython's own `test.test_sqlite3` checks and the old proxy broke:
the C code's type checks (`backup`, `sqlite3.Cursor(conn)`, a cursor factory's result),
`conn(sql)`, `type(conn)`, the application's connection and cursor classes, and our own
schema and read-back queries seen by the application's trace callback or progress handler.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import sqlite3 as inst

from .test_sqlite3_instrumentation import Env, attrs, writes

SCHEMA = """
CREATE TABLE t19_items (id INTEGER PRIMARY KEY, name TEXT, version INTEGER);
INSERT INTO t19_items VALUES (1, 'a', 1), (2, 'b', 1);
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    inst.row_states.clear()
    e = Env(tmp_path)
    setup = sqlite3.connect(str(e.path), isolation_level=None)
    setup.executescript(SCHEMA)
    setup.close()
    e.instrumentor.instrument(tracer_provider=e.provider)
    try:
        yield e
    finally:
        e.instrumentor.uninstrument()
        e.provider.shutdown()


def test_connection_is_a_real_sqlite3_connection(env: Env) -> None:
    conn = env.connect()
    try:
        assert inst.is_traced(conn)
        assert type(conn) == sqlite3.Connection  # noqa: E721  (CPython's test_database_keyword)
        assert isinstance(conn, sqlite3.Connection)
        assert repr(type(conn)) == repr(sqlite3.Connection)
        assert conn("SELECT 1") is not None  # Connection.__call__ makes a statement
        cursor = sqlite3.Cursor(conn)  # the C constructor checks the connection's type
        assert cursor.execute("SELECT name FROM t19_items WHERE id = 1").fetchone() == ("a",)
    finally:
        conn.close()


def test_backup_between_traced_connections(env: Env, tmp_path: Path) -> None:
    src = env.connect()
    dst = sqlite3.connect(str(tmp_path / "copy.db"))
    try:
        src.backup(dst)  # the C code rejects anything but a real connection as the target
        assert dst.execute("SELECT count(*) FROM t19_items").fetchone() == (2,)
    finally:
        src.close()
        dst.close()


def test_application_connection_and_cursor_classes_keep_their_overrides(env: Env) -> None:
    calls: list[str] = []

    class AppCursor(sqlite3.Cursor):
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("cursor.execute")
            return super().execute(*args, **kwargs)

    class AppConnection(sqlite3.Connection):
        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("connection.cursor")
            return super().cursor(AppCursor)

    conn = env.connect(factory=AppConnection)
    try:
        assert isinstance(conn, AppConnection) and type(conn).__name__ == "AppConnection"
        cursor = conn.cursor()
        assert isinstance(cursor, AppCursor)
        cursor.execute("UPDATE t19_items SET name = 'z', version = 2 WHERE id = 1")
        conn.commit()
        assert calls == ["connection.cursor", "cursor.execute"]
        (span,) = env.spans("UPDATE t19_items")
        assert writes(span), attrs(span)  # and ours still ran under the application's
        own = conn.cursor().execute("SELECT 1")
        assert isinstance(own, AppCursor)
    finally:
        conn.close()


def test_our_queries_never_reach_the_trace_callback_or_progress_handler(env: Env) -> None:
    conn = env.connect()
    traced: list[str] = []
    progress: list[int] = []
    conn.set_trace_callback(traced.append)
    conn.set_progress_handler(lambda: progress.append(1), 1)
    try:
        # an UPDATE pinned by key: a schema lookup (PRAGMA) and a read-back of the row
        conn.execute("UPDATE t19_items SET version = 3 WHERE id = 2")
        conn.commit()
        (span,) = env.spans("UPDATE t19_items")
        assert span.attributes and span.attributes.get(A.WRITE_VERSIONS)
        assert traced == ["UPDATE t19_items SET version = 3 WHERE id = 2", "COMMIT"] or traced == [
            "BEGIN ",
            "UPDATE t19_items SET version = 3 WHERE id = 2",
            "COMMIT",
        ], traced
        statements = len(progress)
        # the application's handlers stay in place for its own statements
        conn.execute("SELECT * FROM t19_items").fetchall()
        assert traced[-1] == "SELECT * FROM t19_items"
        assert len(progress) > statements
        conn.set_trace_callback(None)
        conn.set_progress_handler(None, 1)
        before = len(progress)
        conn.execute("UPDATE t19_items SET version = 4 WHERE id = 2")
        conn.commit()
        assert traced[-1] == "SELECT * FROM t19_items" and len(progress) == before
    finally:
        conn.close()


def test_progress_handler_counts_match_an_uninstrumented_connection(env: Env) -> None:
    """The application's handler is called as often as without us (ours never runs it)."""

    def count(conn: Any) -> int:
        calls = [0]

        def handler() -> int:
            calls[0] += 1
            return 0

        # Loading the schema costs steps too: do it before counting, on both connections.
        conn.execute("SELECT 1 FROM t19_items LIMIT 0").fetchall()
        conn.set_progress_handler(handler, 1)
        conn.execute("UPDATE t19_items SET version = version + 1 WHERE id = 1")
        conn.commit()
        conn.close()
        return calls[0]

    traced = count(env.connect())
    env.instrumentor.uninstrument()
    try:
        plain = count(sqlite3.connect(str(env.path)))
    finally:
        env.instrumentor.instrument(tracer_provider=env.provider)
    assert traced == plain
