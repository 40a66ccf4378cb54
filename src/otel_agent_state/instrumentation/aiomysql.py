"""State-aware instrumentation of aiomysql, SPEC §3. See docs/mysql.md.

`AioMySQLInstrumentor().instrument(tracer_provider=...)` wraps the methods of aiomysql's
cursor classes (buffered and unbuffered) and of its connection, so every connection is
traced, pooled ones included. aiomysql is PyMySQL's protocol code on asyncio: the server's
transaction flag is read the same way. Contrib has no aiomysql instrumentation (its
`opentelemetry-instrumentation-aiomysql`'s span, if installed, would be outside ours, as the
sync drivers' are).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from .. import runtime
from . import _mysql as my
from ._mysql_hooks import _fetching, _inner, statement_call
from ._postgres import Reads, Rows, observe_rows, run_async
from ._wrapping import unwrap_ours
from .pymysql import _Driver as _PyMySQLDriver
from .sqlite3 import _Read

_log = logging.getLogger(__name__)

MODULE = "aiomysql"
_tracer: trace.Tracer | None = None


class _Driver(_PyMySQLDriver):
    module = MODULE


DRIVER = _Driver()
_reads = Reads()


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Awaitable[Rows]]:
    import aiomysql.cursors

    async def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        # Our query replaces the connection's last result: put the application's back, so
        # conn.insert_id() and conn.affected_rows() still tell about its statement.
        saved = conn._result, conn._affected_rows
        cursor = aiomysql.cursors.Cursor(conn)
        try:
            await cursor.execute(sql, params or None)
            names = [str(d[0]) for d in cursor.description or ()]
            return names, list(await cursor.fetchall() or ()) if cursor.description else []
        finally:
            await cursor.close()
            conn._result, conn._affected_rows = saved

    return execute


# --------------------------------------------------------------------------- statements


async def _flow(cursor: Any, method: str, sql: str, params: list[object]) -> my.Flow | None:
    try:
        conn = cursor.connection
        state = my.state_for(conn, _tracer)
        if state is None:
            return None
        flow = my.Flow(state, DRIVER, conn, method, sql, params)
        await run_async(flow.prepare(), _executor(conn))
        flow.start()
        return flow
    except Exception:
        _log.debug("preparing the observation failed", exc_info=True)
        return None


def _execute(method: str) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _inner.get():
            return await wrapped(*args, **kwargs)
        _reads.finish(instance)
        flow = None
        if is_instrumentation_enabled() and _tracer is not None:
            call = statement_call(method, args, kwargs)
            if call is not None:
                args, kwargs, sql, params = call
                flow = await _flow(instance, method, sql, params)
        token = _inner.set(True)
        try:
            if flow is None:
                return await wrapped(*args, **kwargs)
            with flow.running():
                result = await wrapped(*args, **kwargs)
        finally:
            _inner.reset(token)
        try:
            read = await run_async(flow.after(instance), _executor(flow.conn))
            if read is not None:
                slot = _reads.slot(instance)
                if slot is None:
                    read.obs.end()
                else:
                    slot.read = read
        except Exception:
            _log.debug("recording the statement failed", exc_info=True)
            flow.obs.end()
        return result

    return wrapper


# --------------------------------------------------------------------------- fetching


def _seen(cursor: Any, rows: list[Any], done: Callable[[_Read], bool]) -> None:
    got = _reads.get(cursor)
    if got is not None:
        slot, read = got
        observe_rows(slot, read, rows, done(read))


def _record(kind: str, cursor: Any, args: Any, kwargs: Any, result: Any) -> None:
    if kind == "fetchone":
        _seen(cursor, [] if result is None else [result], lambda r: result is None or r.point)
    elif kind == "fetchmany":
        size = args[0] if args else kwargs.get("size")
        want = size or getattr(cursor, "arraysize", 1)
        ended = not isinstance(want, int) or len(result) < want
        _seen(cursor, list(result), lambda r: ended)
    else:
        _seen(cursor, list(result), lambda r: True)


def _fetch(kind: str) -> Callable[..., Any]:
    """aiomysql's buffered cursor returns a finished future, the unbuffered one a
    coroutine: the rows are recorded when they are there, and the same object goes up."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _fetching.get():
            return wrapped(*args, **kwargs)
        result = wrapped(*args, **kwargs)
        if isinstance(result, asyncio.Future):
            if result.done() and not result.cancelled() and result.exception() is None:
                _record(kind, instance, args, kwargs, result.result())
            return result
        if inspect.isawaitable(result):
            return _awaiting(kind, instance, args, kwargs, result)
        return result

    return wrapper


async def _awaiting(kind: str, cursor: Any, args: Any, kwargs: Any, pending: Any) -> Any:
    token = _fetching.set(True)
    try:
        result = await pending
    finally:
        _fetching.reset(token)
    _record(kind, cursor, args, kwargs, result)
    return result


async def _close(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _reads.finish(instance)
    return await wrapped(*args, **kwargs)


# --------------------------------------------------------------------------- transactions


def _conn_state(conn: Any) -> my.MyState | None:
    if not is_instrumentation_enabled() or _tracer is None:
        return None
    return my.state_for(conn, _tracer)


def _ending(outcome: str) -> Callable[..., Any]:
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = _conn_state(instance)
        if state is None:
            return await wrapped(*args, **kwargs)
        with my.txn_ending(state, outcome):
            return await wrapped(*args, **kwargs)

    return wrapper


def _sync_close(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """close() drops the socket: the server rolls back what the session left open."""
    state = None if _inner.get() else _conn_state(instance)
    if state is None or not state.in_txn:
        return wrapped(*args, **kwargs)
    with my.txn_ending(state, "rollback"):
        return wrapped(*args, **kwargs)


async def _begin(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    state = _conn_state(instance)
    if state is not None and state.in_txn:
        with my.txn_ending(state, "commit"):  # BEGIN commits an open transaction first
            result = await wrapped(*args, **kwargs)
    else:
        result = await wrapped(*args, **kwargs)
    if state is not None:
        my.txn_begun(state)
    return result


async def _autocommit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    value = args[0] if args else kwargs.get("value")
    state = _conn_state(instance) if value else None
    if state is None or not state.in_txn:
        return await wrapped(*args, **kwargs)
    with my.txn_ending(state, "commit"):
        return await wrapped(*args, **kwargs)


async def _select_db(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = await wrapped(*args, **kwargs)
    state = _conn_state(instance)
    if state is not None:
        state.dbname = None
    return result


# --------------------------------------------------------------------------- instrumentor

_EXECUTE, _EXECUTEMANY = _execute("execute"), _execute("executemany")
_FETCHONE, _FETCHMANY, _FETCHALL = _fetch("fetchone"), _fetch("fetchmany"), _fetch("fetchall")
_COMMIT, _ROLLBACK = _ending("commit"), _ending("rollback")


async def _ensure_closed(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Quit, then close(): one end of the transaction, reported here."""
    token = _inner.set(True)
    try:
        return await _ROLLBACK(wrapped, instance, args, kwargs)
    finally:
        _inner.reset(token)


def _targets() -> list[tuple[type, str, Callable[..., Any]]]:
    import aiomysql.connection
    import aiomysql.cursors

    cursor = {
        "execute": _EXECUTE,
        "executemany": _EXECUTEMANY,
        "fetchone": _FETCHONE,
        "fetchmany": _FETCHMANY,
        "fetchall": _FETCHALL,
        "close": _close,
    }
    out: list[tuple[type, str, Callable[..., Any]]] = []
    for cls in (aiomysql.cursors.Cursor, aiomysql.cursors.SSCursor):
        out += [(cls, name, fn) for name, fn in cursor.items() if name in cls.__dict__]
    conn = aiomysql.connection.Connection
    out += [
        (conn, "commit", _COMMIT),
        (conn, "rollback", _ROLLBACK),
        (conn, "ensure_closed", _ensure_closed),
        (conn, "close", _sync_close),
        (conn, "begin", _begin),
        (conn, "autocommit", _autocommit),
        (conn, "select_db", _select_db),
    ]
    return out


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Trace `connection` with its own tier (`replica` for a read replica) or tracer provider.

    Connections are traced through aiomysql's classes, so the instrumentor must be on; this
    only sets per-connection options. Returns the connection itself."""
    return my.configure_connection(connection, __name__, _tracer, tier, tracer_provider)


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection (the others stay traced)."""
    return my.disable_connection(connection)


class AioMySQLInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps aiomysql's cursor and connection classes."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("aiomysql >= 0.2",)

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
