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
from contextvars import ContextVar
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
        # libmysqlclient keeps the last statement's affected rows, info and warning count
        # on the connection, and ours would replace them: the application's are kept and
        # returned until its next statement.
        state = my._states.get(conn)
        if state is not None and state.masked is None:
            state.masked = tuple(getattr(conn, name)() for name in _MASKED)
        token = _ours.set(True)
        cursor = MySQLdb.cursors.Cursor(conn)
        try:
            cursor.execute(sql, params or None)
            names = [str(d[0]) for d in cursor.description or ()]
            return names, list(cursor.fetchall() or ()) if cursor.description else []
        finally:
            cursor.close()
            _ours.reset(token)

    return execute


_MASKED = ("affected_rows", "info", "warning_count")
_ours: ContextVar[bool] = ContextVar("agentstate_mysqlclient_ours", default=False)


def _unmask(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A statement of the application's: the connection tells about it again."""
    if not _ours.get():
        state = my._states.get(instance)
        if state is not None:
            state.masked = None
    return wrapped(*args, **kwargs)


def _masked(index: int) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = None if _ours.get() else my._states.get(instance)
        if state is not None and state.masked is not None:
            return state.masked[index]
        return wrapped(*args, **kwargs)

    return wrapper


_MASK_WRAPPERS = [(name, _masked(index)) for index, name in enumerate(_MASKED)]
# What runs a statement of the application's on the connection (cursors go through query()).
_UNMASKING = ("query", "commit", "rollback", "autocommit", "select_db", "next_result", "ping")


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
    import MySQLdb.connections
    import MySQLdb.cursors

    cursor = {
        "execute": _EXECUTE,
        "executemany": _EXECUTEMANY,
        "fetchone": _FETCHONE,
        "fetchmany": _FETCHMANY,
        "fetchall": _FETCHALL,
        "close": _CURSOR_CLOSE,
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
        (conn, "begin", _BEGIN),
        (conn, "autocommit", _AUTOCOMMIT),
        (conn, "select_db", _SELECT_DB),
    ]
    out += [(conn, name, fn) for name, fn in _MASK_WRAPPERS]
    out += [(conn, name, _unmask) for name in _UNMASKING]
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
