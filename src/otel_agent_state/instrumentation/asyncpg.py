"""State-aware instrumentation of asyncpg, SPEC §3 (same records as the psycopg module).

`AsyncpgInstrumentor` wraps `Connection.execute/executemany/fetch/fetchrow/fetchval` and the
cursor reads (`Cursor.fetch/fetchrow`, `async for` over `conn.cursor(...)`). contrib's
`opentelemetry-instrumentation-asyncpg` wraps the same class attributes; ours always goes
*under* any wrapper already there (and contrib's, installed later, goes on top), so contrib's
span is the database span and we annotate it, and contrib's `unwrap()` (which removes the
outermost wrapper) only ever removes its own. asyncpg runs transaction control (BEGIN,
SAVEPOINT, RELEASE, ROLLBACK TO, COMMIT) through `Connection.execute`, so `conn.transaction()`
blocks are followed from those statements. See docs/postgresql.md.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from .. import runtime
from . import _postgres as pg
from ._postgres import Flow, Rows, observe_rows, run_async
from ._wrapping import unwrap_ours, wrap_under
from .sqlite3 import _Read, _Slot

_log = logging.getLogger(__name__)

MODULE = "asyncpg"
_tracer: trace.Tracer | None = None
_MAX_OPEN_ITERATORS = 256


class _Driver:
    module = MODULE

    def status(self, conn: Any) -> int:
        if conn.is_closed():
            return pg.UNKNOWN
        return pg.INTRANS if conn.is_in_transaction() else pg.IDLE

    def autocommit(self, conn: Any) -> bool:
        return True  # asyncpg commits each statement outside an explicit transaction

    def busy(self, conn: Any) -> bool:
        return bool(conn.is_closed())

    def dbname(self, conn: Any) -> str:
        params = conn.get_settings()
        name = getattr(params, "database", None) if params is not None else None
        if not name:
            name = getattr(conn._params, "database", None)  # the DSN's database
        return str(name or "postgres")


DRIVER = _Driver()


def _dollar(sql: str) -> str:
    """Our own queries are written with `%s`; asyncpg wants `$n`."""
    parts = sql.split("%s")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Any]:
    async def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        records = await conn.fetch(_dollar(sql), *params)
        names = list(records[0].keys()) if records else []
        return names, [tuple(r.values()) for r in records]

    return execute


class _Outcome:
    """What `Flow.after` reads off a DB-API cursor, from an asyncpg result."""

    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount
        self.lastrowid = None


def _rowcount(kind: str, result: Any) -> int:
    if kind == "execute" and isinstance(result, str):
        last = result.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else -1
    if kind == "fetch" and isinstance(result, list):
        return len(result)
    if kind == "fetchrow":
        return 0 if result is None else 1
    return -1


def _rows(kind: str, result: Any, flow: Flow, column: object) -> tuple[list[str], list[Any]] | None:
    """(column names, rows as tuples) of a read result; None when it says nothing of rows."""
    if kind == "fetch" and isinstance(result, list):
        names = list(result[0].keys()) if result else []
        return names, [tuple(r.values()) for r in result]
    if kind == "fetchrow":
        return (list(result.keys()), [tuple(result.values())]) if result is not None else ([], [])
    if kind == "fetchval" and result is not None:  # None: no row, or a NULL value
        if isinstance(column, str):  # fetchval(..., column="name"): a record key
            return [column], [(result,)]
        projection = flow.stmt.projection
        index = column if isinstance(column, int) and not isinstance(column, bool) else -1
        name = projection[index] if 0 <= index < len(projection) else None
        return [name or "?column?"], [(result,)]
    return None


def _flow(conn: Any, method: str, sql: Any, params: list[object]) -> Flow | None:
    try:
        if _tracer is None or not isinstance(sql, str):
            return None
        state = pg.state_for(conn, DRIVER, _tracer)
        if state is None:
            return None
        return Flow(state, DRIVER, conn, method, sql, params)
    except Exception:
        _log.debug("preparing the observation failed", exc_info=True)
        return None


async def _observe(
    flow: Flow, kind: str, result: Any, column: object = 0, slot: _Slot | None = None
) -> _Read | None:
    """After a successful call: versions of writes, facts of the rows read (guard included)."""
    read: _Read | None = None
    rows: tuple[list[str], list[Any]] | None = None
    try:
        rows = _rows(kind, result, flow, column)
        names = [(n,) for n in (rows[0] if rows else [])]
        step = flow.after(_Outcome(_rowcount(kind, result)), names)
        read = await run_async(step, _executor(flow.conn))
    except Exception:
        _log.debug("recording the statement failed", exc_info=True)
        flow.obs.end()
        return None
    if read is None:
        return None
    if slot is None:
        slot = _Slot()
        slot.read = read
        if rows is None:
            read.obs.end()
            return None
        observe_rows(slot, read, rows[1], True)  # StaleReadError goes to the application
        return None
    slot.read = read
    return read


def _calling(flow: Flow, wrapped: Any, args: Any, kwargs: Any) -> Any:
    """Call the driver now, as the application did: what it raises at call time (a
    connection-validity check) it raises here, not at await time."""
    try:
        with flow.calling():
            return wrapped(*args, **kwargs)
    except BaseException as exc:
        flow.failed(exc)
        raise


def _statement(kind: str) -> Callable[..., Any]:
    method = "executemany" if kind == "executemany" else "execute"

    # Not `async def`: the driver is called (and raises) at call time, as without us; what
    # we return is awaited where the application awaits it.
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        try:
            sql = args[0] if args else kwargs.get("query", kwargs.get("command"))
            if kind == "executemany":
                params: list[object] = []
                if len(args) > 1:
                    args = (args[0], pg.recording(args[1], params), *args[2:])
                elif "args" in kwargs:
                    kwargs["args"] = pg.recording(kwargs["args"], params)
            else:
                params = [tuple(args[1:])]
            flow = _flow(instance, method, sql, params)
        except Exception:
            _log.debug("preparing the observation failed", exc_info=True)
            flow = None
        if flow is None:
            return wrapped(*args, **kwargs)
        return _finishing(flow, kind, _calling(flow, wrapped, args, kwargs), kwargs)

    return wrapper


async def _finishing(flow: Flow, kind: str, pending: Any, kwargs: Any) -> Any:
    with flow.running():
        result = await pending
    await _observe(flow, kind, result, column=kwargs.get("column", 0))
    return result


def _cursor_flow(cursor: Any) -> Flow | None:
    """The flow of a read through an asyncpg cursor (or cursor iterator), if it is traced."""
    if not is_instrumentation_enabled():
        return None
    conn = getattr(cursor, "_connection", None)
    return _flow(conn, "execute", getattr(cursor, "_query", None), [cursor._args or ()])


def _cursor_fetch(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """Cursor.fetch(n) / fetchrow(): one observation per call, of the rows it returned.
    asyncpg checks the cursor's connection when called (`guarded`): so do we."""
    flow = _cursor_flow(instance)
    if flow is None:
        return wrapped(*args, **kwargs)
    return _cursor_fetched(flow, _calling(flow, wrapped, args, kwargs))


async def _cursor_fetched(flow: Flow, pending: Any) -> Any:
    with flow.running():
        result = await pending
    kind = "fetch" if isinstance(result, list) else "fetchrow"
    if kind == "fetchrow" and result is None:
        flow.obs.end()  # past the end of a multi-row cursor: says nothing of a row
        return result
    await _observe(flow, kind, result)
    return result


# `async for` over conn.cursor(...): one observation from the first row to the end. The
# iterators have no __weakref__, so open ones are held (bounded); an evicted one ends its span.
_open: OrderedDict[int, tuple[Any, _Slot]] = OrderedDict()
_open_lock = threading.Lock()


def _take(iterator: Any) -> _Slot | None:
    with _open_lock:
        entry = _open.get(id(iterator))
        return entry[1] if entry is not None and entry[0] is iterator else None


def _hold(iterator: Any, slot: _Slot) -> None:
    evicted: list[_Slot] = []
    with _open_lock:
        _open[id(iterator)] = (iterator, slot)
        while len(_open) > _MAX_OPEN_ITERATORS:
            evicted.append(_open.popitem(last=False)[1][1])
    for old in evicted:
        if old.read is not None:
            old.read.obs.end()


def _drop(iterator: Any) -> None:
    with _open_lock:
        entry = _open.get(id(iterator))
        if entry is not None and entry[0] is iterator:
            del _open[id(iterator)]


def _iter_next(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """`async for` over a cursor: asyncpg's `__anext__` checks the connection when called
    (`guarded`), so the driver is called now and its coroutine awaited by ours."""
    slot = _take(instance)
    if slot is None:
        flow = _cursor_flow(instance)
        if flow is None:
            return wrapped(*args, **kwargs)
        return _first_row(flow, instance, _calling(flow, wrapped, args, kwargs))
    try:
        pending = wrapped(*args, **kwargs)
    except BaseException as exc:
        _drop(instance)
        if slot.read is not None:
            slot.read.obs.fail(exc)
        raise
    return _next_row(slot, instance, pending)


async def _first_row(flow: Flow, instance: Any, pending: Any) -> Any:
    try:
        with flow.calling():
            row = await pending
    except StopAsyncIteration:
        slot = _Slot()
        if await _observe(flow, "fetch", [], slot=slot) is not None and slot.read:
            observe_rows(slot, slot.read, [], True)
        flow.obs.end()
        raise
    except BaseException as exc:
        flow.failed(exc)
        raise
    slot = _Slot()
    read = await _observe(flow, "fetchrow", row, slot=slot)
    if read is None:
        return row
    _hold(instance, slot)
    observe_rows(slot, read, [tuple(row.values())], False)
    return row


async def _next_row(slot: _Slot, instance: Any, pending: Any) -> Any:
    read = slot.read
    try:
        row = await pending
    except StopAsyncIteration:
        _drop(instance)
        if read is not None:
            observe_rows(slot, read, [], True)
        raise
    except BaseException as exc:
        _drop(instance)
        if read is not None:
            read.obs.fail(exc)
        raise
    if read is not None:
        try:
            observe_rows(slot, read, [tuple(row.values())], False)
        except BaseException:
            _drop(instance)
            raise
    return row


# --------------------------------------------------------------------------- wrapping


_KINDS = ("execute", "executemany", "fetch", "fetchrow", "fetchval")
_WRAPPERS = {kind: _statement(kind) for kind in _KINDS}


def _targets() -> list[tuple[type, str, Callable[..., Any]]]:
    import asyncpg.connection  # type: ignore[import-untyped, unused-ignore]
    import asyncpg.cursor  # type: ignore[import-untyped, unused-ignore]

    out: list[tuple[type, str, Callable[..., Any]]] = [
        (asyncpg.connection.Connection, kind, fn) for kind, fn in _WRAPPERS.items()
    ]
    out += [
        (asyncpg.cursor.Cursor, "fetch", _cursor_fetch),
        (asyncpg.cursor.Cursor, "fetchrow", _cursor_fetch),
        (asyncpg.cursor.CursorIterator, "__anext__", _iter_next),
    ]
    return out


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Per-connection options (tier `replica` for a read replica, tracer provider); the
    instrumentor must be on. Returns the connection itself."""
    return pg.connection_options(connection, DRIVER, __name__, _tracer, tier, tracer_provider)


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection."""
    pg.disable_connection(connection)
    return connection


class AsyncpgInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps asyncpg's connection statement methods and cursor reads."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("asyncpg >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        global _tracer
        import asyncpg.connection  # type: ignore[import-untyped, unused-ignore]

        _tracer = trace.get_tracer(
            __name__, pg.VERSION, tracer_provider=kwargs.get("tracer_provider")
        )
        for owner, name, fn in _targets():
            try:
                wrap_under(owner, name, fn)
            except Exception:
                _log.debug("cannot wrap %s.%s", owner.__name__, name, exc_info=True)
        setattr(asyncpg.connection.Connection, "_agentstate_traced", True)  # noqa: B010
        runtime.mark_driver(MODULE, True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _tracer
        import asyncpg.connection  # type: ignore[import-untyped, unused-ignore]

        runtime.mark_driver(MODULE, False)
        for owner, name, fn in _targets():
            try:
                unwrap_ours(owner, name, fn)
            except Exception:
                _log.debug("cannot unwrap %s.%s", owner.__name__, name, exc_info=True)
        if "_agentstate_traced" in asyncpg.connection.Connection.__dict__:
            delattr(asyncpg.connection.Connection, "_agentstate_traced")
        _tracer = None
