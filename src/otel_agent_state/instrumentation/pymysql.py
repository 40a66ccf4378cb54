"""State-aware instrumentation of PyMySQL, SPEC §3. See docs/mysql.md.

`PyMySQLInstrumentor().instrument(tracer_provider=...)` wraps the methods of PyMySQL's
cursor classes (buffered and unbuffered, tuple and dict rows) and of its connection, so every
connection is traced, including those opened before. Contrib's
`opentelemetry-instrumentation-pymysql` wraps `pymysql.connect` to hand out proxies whose
`execute` opens its span and then calls the real cursor's: its span is always outside ours
and we annotate it (SPEC §2, either load order).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import runtime
from . import _mysql as my
from ._mysql_hooks import SyncHooks
from ._postgres import Rows
from ._wrapping import unwrap_ours

MODULE = "pymysql"
_SERVER_STATUS_IN_TRANS = 1
_tracer: trace.Tracer | None = None


class _Driver:
    module = MODULE

    def in_trans(self, conn: Any) -> bool | None:
        status = getattr(conn, "server_status", None)
        return None if status is None else bool(status & _SERVER_STATUS_IN_TRANS)

    def autocommit(self, conn: Any) -> bool:
        return bool(conn.get_autocommit())

    def busy(self, conn: Any) -> bool:
        # A query would make PyMySQL drain (and drop) the unbuffered result being read.
        result = getattr(conn, "_result", None)
        return bool(result is not None and getattr(result, "unbuffered_active", False))

    def server(self, conn: Any) -> str:
        return str(conn.get_server_info())

    def unbuffered(self, cursor: Any) -> bool:
        return False  # busy() sees it on the connection


DRIVER = _Driver()


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Rows]:
    import pymysql.cursors

    def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        # Our query replaces the connection's last result: put the application's back, so
        # conn.insert_id() and conn.affected_rows() still tell about its statement.
        saved = conn._result, conn._affected_rows
        cursor = pymysql.cursors.Cursor(conn)
        try:
            cursor.execute(sql, params or None)
            names = [str(d[0]) for d in cursor.description or ()]
            return names, list(cursor.fetchall() or ()) if cursor.description else []
        finally:
            cursor.close()
            conn._result, conn._affected_rows = saved

    return execute


_hooks = SyncHooks(DRIVER, _executor, lambda: _tracer)
_EXECUTE = _hooks.execute("execute")
_EXECUTEMANY = _hooks.execute("executemany")
_COMMIT, _ROLLBACK = _hooks.ending("commit"), _hooks.ending("rollback")
_CLOSE = _hooks.ending("rollback")  # the server rolls back what a closed session left open
# Bound once: a bound method is a new object at each access, and our wrappers are found
# (and taken out) by identity.
_FETCHONE, _FETCHMANY, _FETCHALL = _hooks.fetchone, _hooks.fetchmany, _hooks.fetchall
_CURSOR_CLOSE, _BEGIN = _hooks.close, _hooks.begin
_AUTOCOMMIT, _SELECT_DB = _hooks.autocommit, _hooks.select_db


def _targets() -> list[tuple[type, str, Callable[..., Any]]]:
    import pymysql.connections
    import pymysql.cursors

    cursor = {
        "execute": _EXECUTE,
        "executemany": _EXECUTEMANY,
        "fetchone": _FETCHONE,
        "fetchmany": _FETCHMANY,
        "fetchall": _FETCHALL,
        "close": _CURSOR_CLOSE,
    }
    out: list[tuple[type, str, Callable[..., Any]]] = []
    for cls in (pymysql.cursors.Cursor, pymysql.cursors.SSCursor):
        out += [(cls, name, fn) for name, fn in cursor.items() if name in cls.__dict__]
    conn = pymysql.connections.Connection
    out += [
        (conn, "commit", _COMMIT),
        (conn, "rollback", _ROLLBACK),
        (conn, "close", _CLOSE),
        (conn, "begin", _BEGIN),
        (conn, "autocommit", _AUTOCOMMIT),
        (conn, "select_db", _SELECT_DB),
    ]
    return out


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Trace `connection` with its own tier (`replica` for a read replica) or tracer provider.

    Connections are traced through PyMySQL's classes, so the instrumentor must be on; this
    only sets per-connection options. Returns the connection itself."""
    return my.configure_connection(
        getattr(connection, "__wrapped__", connection), __name__, _tracer, tier, tracer_provider
    )


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection (the others stay traced)."""
    my.disable_connection(getattr(connection, "__wrapped__", connection))
    return connection


class PyMySQLInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps PyMySQL's cursor and connection classes."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("pymysql >= 1.0",)

    def _instrument(self, **kwargs: Any) -> None:
        global _tracer
        _tracer = trace.get_tracer(
            __name__, my.VERSION, tracer_provider=kwargs.get("tracer_provider")
        )
        for cls, name, fn in _targets():
            current = cls.__dict__.get(name)
            if current is None or getattr(current, "_self_wrapper", None) is fn:
                continue
            setattr(cls, name, wrapt.FunctionWrapper(current, fn))
        runtime.mark_driver(MODULE, True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _tracer
        runtime.mark_driver(MODULE, False)
        for cls, name, fn in _targets():
            unwrap_ours(cls, name, fn)
        _tracer = None
