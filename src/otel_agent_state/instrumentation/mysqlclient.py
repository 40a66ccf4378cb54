"""State-aware instrumentation of mysqlclient (`MySQLdb`), SPEC §3. See docs/mysql.md.

`MySQLClientInstrumentor().instrument(tracer_provider=...)` wraps the methods of MySQLdb's
cursor classes (stored and streamed results, tuple and dict rows) and of its connection, so
every connection is traced, including those opened before. Contrib's
`opentelemetry-instrumentation-mysqlclient` wraps `MySQLdb.connect` to hand out proxies whose
`execute` opens its span and then calls the real cursor's: its span is always outside ours
and we annotate it (SPEC §2, either load order).

mysqlclient does not expose the server's transaction flag: the transaction is followed from
the statements (BEGIN, COMMIT, DDL's implicit commit, the first statement without
autocommit) and from begin()/commit()/rollback()/autocommit().
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

MODULE = "MySQLdb"
_tracer: trace.Tracer | None = None


class _Driver:
    module = MODULE

    def in_trans(self, conn: Any) -> bool | None:
        return None

    def autocommit(self, conn: Any) -> bool:
        return bool(conn.get_autocommit())

    def busy(self, conn: Any) -> bool:
        return False  # an unbuffered result is followed from its cursor (`unbuffered`)

    def server(self, conn: Any) -> str:
        return str(conn.get_server_info())

    def unbuffered(self, cursor: Any) -> bool:
        # A query of ours meanwhile would fail and break the application's result.
        import MySQLdb.cursors

        return isinstance(cursor, MySQLdb.cursors.CursorUseResultMixIn)


DRIVER = _Driver()


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Rows]:
    import MySQLdb.cursors

    def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        cursor = MySQLdb.cursors.Cursor(conn)
        try:
            cursor.execute(sql, params or None)
            names = [str(d[0]) for d in cursor.description or ()]
            return names, list(cursor.fetchall() or ()) if cursor.description else []
        finally:
            cursor.close()

    return execute


_hooks = SyncHooks(DRIVER, _executor, lambda: _tracer)
_EXECUTE = _hooks.execute("execute")
_EXECUTEMANY = _hooks.execute("executemany")
_COMMIT, _ROLLBACK = _hooks.ending("commit"), _hooks.ending("rollback")
_CLOSE = _hooks.ending("rollback")  # the server rolls back what a closed session left open


def _targets() -> list[tuple[type, str, Callable[..., Any]]]:
    import MySQLdb.connections
    import MySQLdb.cursors

    cursor = {
        "execute": _EXECUTE,
        "executemany": _EXECUTEMANY,
        "fetchone": _hooks.fetchone,
        "fetchmany": _hooks.fetchmany,
        "fetchall": _hooks.fetchall,
        "close": _hooks.close,
    }
    out: list[tuple[type, str, Callable[..., Any]]] = []
    classes = (
        MySQLdb.cursors.BaseCursor,
        MySQLdb.cursors.CursorStoreResultMixIn,
        MySQLdb.cursors.CursorUseResultMixIn,
    )
    for cls in classes:
        out += [(cls, name, fn) for name, fn in cursor.items() if name in cls.__dict__]
    conn = MySQLdb.connections.Connection
    out += [
        (conn, "commit", _COMMIT),
        (conn, "rollback", _ROLLBACK),
        (conn, "close", _CLOSE),
        (conn, "begin", _hooks.begin),
        (conn, "autocommit", _hooks.autocommit),
        (conn, "select_db", _hooks.select_db),
    ]
    return out


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Trace `connection` with its own tier (`replica` for a read replica) or tracer provider.

    Connections are traced through MySQLdb's classes, so the instrumentor must be on; this
    only sets per-connection options. Returns the connection itself."""
    return my.configure_connection(
        getattr(connection, "__wrapped__", connection), __name__, _tracer, tier, tracer_provider
    )


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection (the others stay traced)."""
    my.disable_connection(getattr(connection, "__wrapped__", connection))
    return connection


class MySQLClientInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps mysqlclient's (MySQLdb's) cursor and connection classes."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("mysqlclient >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        global _tracer
        _tracer = trace.get_tracer(
            __name__, my.VERSION, tracer_provider=kwargs.get("tracer_provider")
        )
        for cls, name, fn in _targets():
            # The connection's commit/rollback/close/select_db are _mysql.connection's (C):
            # wrapped on MySQLdb's subclass, taken off it again on uninstrument.
            current = cls.__dict__.get(name, getattr(cls, name, None))
            if current is None or getattr(current, "_self_wrapper", None) is fn:
                continue
            setattr(cls, name, wrapt.FunctionWrapper(current, fn))
        runtime.mark_driver(MODULE, True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _tracer
        runtime.mark_driver(MODULE, False)
        for cls, name, fn in _targets():
            unwrap_ours(cls, name, fn)
            inherited = next((vars(b)[name] for b in cls.__mro__[1:] if name in vars(b)), None)
            if inherited is not None and vars(cls).get(name) is inherited:
                delattr(cls, name)
        _tracer = None
