"""State-aware instrumentation of psycopg 3 (sync and async), SPEC §3.

`PsycopgInstrumentor().instrument(tracer_provider=...)` wraps the methods of psycopg's own
cursor, server-side cursor, connection and transaction classes (sync and async), so every
connection is traced, including those opened before, and whatever cursor factory the
application or contrib's `opentelemetry-instrumentation-psycopg` installs: contrib's cursor
classes subclass psycopg's, so its span is always outside ours and we annotate it (SPEC §2,
either load order). See docs/postgresql.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import runtime
from . import _postgres as pg
from ._postgres import Flow, Rows, observe_rows, run_async, run_sync
from ._wrapping import unwrap_ours
from .sqlite3 import _Slot

_log = logging.getLogger(__name__)

MODULE = "psycopg"
_tracer: trace.Tracer | None = None


class _Driver:
    module = MODULE

    def status(self, conn: Any) -> int:
        return int(conn.pgconn.transaction_status)

    def autocommit(self, conn: Any) -> bool:
        return bool(conn.autocommit)

    def busy(self, conn: Any) -> bool:
        return getattr(conn, "_pipeline", None) is not None or self.status(conn) == pg.ACTIVE

    def dbname(self, conn: Any) -> str:
        return str(conn.info.dbname)


DRIVER = _Driver()


@contextmanager
def _unprepared(conn: Any) -> Iterator[None]:
    """Around a query of ours: never prepared (`prepare=False`), and not counted in the
    connection's prepared-statement cache either (with `prepare=False` psycopg still counts
    the query, which can evict the application's entries from its `prepared_max` slots, and
    our `ROLLBACK TO SAVEPOINT` would make it drop all of the application's prepared
    statements): the cache is off (`prepare_threshold = None`) while ours runs."""
    threshold = conn.prepare_threshold
    conn.prepare_threshold = None
    try:
        yield
    finally:
        conn.prepare_threshold = threshold


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Rows]:
    import psycopg
    from psycopg.rows import tuple_row

    def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        with _unprepared(conn):
            cursor = psycopg.Cursor(conn, row_factory=tuple_row)
            try:
                cursor.execute(sql, params or None, prepare=False)
                names = [c.name for c in cursor.description or ()]
                return names, (cursor.fetchall() if cursor.description else [])
            finally:
                cursor.close()

    return execute


def _async_executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Any]:
    import psycopg
    from psycopg.rows import tuple_row

    async def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        with _unprepared(conn):
            cursor = psycopg.AsyncCursor(conn, row_factory=tuple_row)
            try:
                await cursor.execute(sql, params or None, prepare=False)
                names = [c.name for c in cursor.description or ()]
                return names, (await cursor.fetchall() if cursor.description else [])
            finally:
                await cursor.close()

    return execute


# --------------------------------------------------------------------------- statements

_hooks = pg.Hooks(DRIVER, _executor, lambda: _tracer)
_reads = _hooks.reads


def _async_execute(method: str) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        args, flow = _hooks.begin(method, instance, args, kwargs)
        if flow is None:
            return await wrapped(*args, **kwargs)
        with flow.running():
            result = await wrapped(*args, **kwargs)
        try:
            execute = _async_executor(flow.conn)
            _hooks.keep(
                instance, await run_async(flow.after(instance, instance.description), execute)
            )
        except Exception:
            _log.debug("recording the statement failed", exc_info=True)
            flow.obs.end()
        return result

    return wrapper


# --------------------------------------------------------------------------- fetching


async def _afetchone(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    row = await wrapped(*args, **kwargs)
    _hooks.seen(instance, [] if row is None else [row], lambda r: row is None or r.point)
    return row


async def _afetchmany(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    rows = await wrapped(*args, **kwargs)
    _hooks.seen(instance, list(rows), lambda r: pg.short(instance, args, kwargs, rows))
    return rows


async def _afetchall(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    rows = await wrapped(*args, **kwargs)
    _hooks.seen(instance, list(rows), lambda r: True)
    return rows


async def _anext(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        row = await wrapped(*args, **kwargs)
    except StopAsyncIteration:
        _hooks.seen(instance, [], lambda r: True)
        raise
    _hooks.seen(instance, [row], lambda r: r.point)
    return row


async def _aclose(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _reads.finish(instance)
    return await wrapped(*args, **kwargs)


# --------------------------------------------------------------------------- streaming


def _stream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    args, flow = _hooks.begin("execute", instance, args, kwargs)
    if flow is None:
        return wrapped(*args, **kwargs)
    try:
        run_sync(flow.before(), _executor(flow.conn))
    except Exception:
        _log.debug("catalog lookup failed", exc_info=True)
    return _streaming(flow, instance, wrapped(*args, **kwargs))


def _astream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    args, flow = _hooks.begin("execute", instance, args, kwargs)
    if flow is None:
        return wrapped(*args, **kwargs)
    return _astreaming(flow, instance, wrapped(*args, **kwargs))


class _Stream:
    """A streamed result as the application takes its rows: one read from the first row to
    the end of the stream. The connection is busy streaming: no queries of ours meanwhile."""

    def __init__(self, flow: Flow, cursor: Any) -> None:
        self.flow = flow
        self.cursor = cursor
        self.slot = _Slot()
        self.started = False

    def _read(self) -> None:
        self.slot.read = run_sync(
            self.flow.after(self.cursor, self.cursor.description), _no_queries
        )

    def row(self, row: Any) -> None:
        if not self.started:
            self.started = True
            try:
                self._read()
            except Exception:
                _log.debug("recording the statement failed", exc_info=True)
        if self.slot.read is not None:
            observe_rows(self.slot, self.slot.read, [row], False)

    def done(self) -> None:
        if not self.started:
            self._read()
        if self.slot.read is not None:
            observe_rows(self.slot, self.slot.read, [], True)


def _streaming(flow: Flow, cursor: Any, rows: Iterator[Any]) -> Iterator[Any]:
    """Rows as the application takes them; the span ends when the stream does. Closing
    ours (`close()`, a `break` out of the loop, collection) closes psycopg's generator
    at once, as closing psycopg's own would: it ends the stream on the connection."""
    stream = _Stream(flow, cursor)
    try:
        while True:
            try:
                with flow.calling():
                    row = next(rows)
            except StopIteration:
                stream.done()
                return
            except BaseException as exc:
                flow.failed(exc)
                raise
            stream.row(row)
            yield row
    finally:
        try:
            close = getattr(rows, "close", None)
            if close is not None:
                with flow.calling():
                    close()
        finally:
            flow.obs.end()


async def _astreaming(flow: Flow, cursor: Any, rows: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`_streaming` for `AsyncCursor.stream()`: `aclose()` on ours awaits psycopg's."""
    stream = _Stream(flow, cursor)
    try:
        while True:
            try:
                with flow.calling():
                    row = await rows.__anext__()
            except StopAsyncIteration:
                stream.done()
                return
            except BaseException as exc:
                flow.failed(exc)
                raise
            stream.row(row)
            yield row
    finally:
        try:
            aclose = getattr(rows, "aclose", None)
            if aclose is not None:
                with flow.calling():
                    await aclose()
        finally:
            flow.obs.end()


def _no_queries(sql: str, params: tuple[Any, ...]) -> Rows:
    raise RuntimeError("the connection is busy")


# --------------------------------------------------------------------------- transactions


def _conn_state(conn: Any) -> pg.PgState | None:
    return _hooks.conn_state(conn)


def _still_open(conn: Any) -> bool:
    return _hooks.still_open(conn)


def _aending(outcome: str) -> Callable[..., Any]:
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = _conn_state(instance)
        if state is None:
            return await wrapped(*args, **kwargs)
        with pg.txn_ending(state, outcome, lambda: _still_open(instance)):
            return await wrapped(*args, **kwargs)

    return wrapper


def _entered(txn: Any) -> None:
    try:
        state = _conn_state(txn.connection)
        if state is None:
            return
        with state.lock:
            if getattr(txn, "_outer_transaction", False):
                state.scopes.end()
                state.scopes.begin()
                if txn.savepoint_name:
                    state.scopes.savepoint(txn.savepoint_name)
            elif txn.savepoint_name:
                state.scopes.savepoint(txn.savepoint_name)
    except Exception:
        _log.debug("recording the transaction start failed", exc_info=True)


def _txn_enter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _entered(instance)
    return result


async def _atxn_enter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = await wrapped(*args, **kwargs)
    _entered(instance)
    return result


def _exiting(instance: Any, args: Any) -> AbstractContextManager[None] | None:
    """What the exit of a transaction block ends: the transaction, or a savepoint (nested)."""
    try:
        state = _conn_state(instance.connection)
        if state is None:
            return None
        exc_type = args[0] if args else None
        rolled = exc_type is not None or bool(getattr(instance, "force_rollback", False))
        if not getattr(instance, "_outer_transaction", False):
            return pg.savepoint_ending(state, str(instance.savepoint_name or ""), rolled)
        outcome = "rollback" if rolled else "commit"
        return pg.txn_ending(state, outcome, lambda: _still_open(instance.connection))
    except Exception:
        return None


def _txn_exit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    ending = _exiting(instance, args)
    if ending is None:
        return wrapped(*args, **kwargs)
    with ending:
        return wrapped(*args, **kwargs)


async def _atxn_exit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    ending = _exiting(instance, args)
    if ending is None:
        return await wrapped(*args, **kwargs)
    with ending:
        return await wrapped(*args, **kwargs)


# --------------------------------------------------------------------------- instrumentor

_SYNC_EXECUTE = _hooks.execute("execute")
_SYNC_EXECUTEMANY = _hooks.execute("executemany")
_ASYNC_EXECUTE = _async_execute("execute")
_ASYNC_EXECUTEMANY = _async_execute("executemany")
_COMMIT, _ROLLBACK = _hooks.ending("commit"), _hooks.ending("rollback")
_CLOSE = _hooks.ending("rollback")
_ACOMMIT, _AROLLBACK, _ACLOSE = _aending("commit"), _aending("rollback"), _aending("rollback")


def _targets() -> list[tuple[type, str, Callable[..., Any]]]:
    import psycopg

    sync_cursor = {
        "execute": _SYNC_EXECUTE,
        "executemany": _SYNC_EXECUTEMANY,
        "fetchone": _hooks.fetchone,
        "fetchmany": _hooks.fetchmany,
        "fetchall": _hooks.fetchall,
        "__next__": _hooks.next,
        "close": _hooks.close,
    }
    async_cursor = {
        "execute": _ASYNC_EXECUTE,
        "executemany": _ASYNC_EXECUTEMANY,
        "fetchone": _afetchone,
        "fetchmany": _afetchmany,
        "fetchall": _afetchall,
        "__anext__": _anext,
        "close": _aclose,
    }
    out: list[tuple[type, str, Callable[..., Any]]] = []
    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        out += [(cls, name, fn) for name, fn in sync_cursor.items()]
    for acls in (psycopg.AsyncCursor, psycopg.AsyncServerCursor):
        out += [(acls, name, fn) for name, fn in async_cursor.items()]
    out += [
        (psycopg.Cursor, "stream", _stream),
        (psycopg.AsyncCursor, "stream", _astream),
        (psycopg.Connection, "commit", _COMMIT),
        (psycopg.Connection, "rollback", _ROLLBACK),
        (psycopg.Connection, "close", _CLOSE),
        (psycopg.AsyncConnection, "commit", _ACOMMIT),
        (psycopg.AsyncConnection, "rollback", _AROLLBACK),
        (psycopg.AsyncConnection, "close", _ACLOSE),
        (psycopg.Transaction, "__enter__", _txn_enter),
        (psycopg.Transaction, "__exit__", _txn_exit),
        (psycopg.AsyncTransaction, "__aenter__", _atxn_enter),
        (psycopg.AsyncTransaction, "__aexit__", _atxn_exit),
    ]
    return out


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Trace `connection` with its own tier (`replica` for a read replica) or tracer provider.

    psycopg connections are traced through psycopg's classes, so the instrumentor must be
    on; this only sets per-connection options. Returns the connection itself."""
    return pg.connection_options(connection, DRIVER, __name__, _tracer, tier, tracer_provider)


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection (the others stay traced)."""
    pg.disable_connection(connection)
    return connection


class PsycopgInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps psycopg 3's cursor, connection and transaction classes (sync and async)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("psycopg >= 3.1",)

    def _instrument(self, **kwargs: Any) -> None:
        global _tracer
        import psycopg

        _tracer = trace.get_tracer(
            __name__, pg.VERSION, tracer_provider=kwargs.get("tracer_provider")
        )
        for cls, name, fn in _targets():
            current = cls.__dict__.get(name)
            if current is None or getattr(current, "_self_wrapper", None) is fn:
                continue
            setattr(cls, name, wrapt.FunctionWrapper(current, fn))
        for conn_cls in (psycopg.Connection, psycopg.AsyncConnection):
            setattr(conn_cls, "_agentstate_traced", True)  # noqa: B010
        runtime.mark_driver(MODULE, True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _tracer
        import psycopg

        runtime.mark_driver(MODULE, False)
        for cls, name, fn in _targets():
            unwrap_ours(cls, name, fn)
        for conn_cls in (psycopg.Connection, psycopg.AsyncConnection):
            if "_agentstate_traced" in conn_cls.__dict__:
                delattr(conn_cls, "_agentstate_traced")
        _tracer = None
