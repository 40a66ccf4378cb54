"""The wrappers the MySQL instrumentations put on their driver's classes.

Each wrapper has wrapt's signature `(wrapped, instance, args, kwargs)`. The drivers'
`executemany` (and `callproc`) call their own `execute` per row or batch: those inner calls
pass through untraced, so a statement call is one span, as contrib's is. `fetchall` of an
unbuffered cursor and `__next__` call `fetchone`: rows are recorded once, by the outer call.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from . import _mysql as my
from ._postgres import Reads, Rows, observe_rows, run_sync, short
from .sqlite3 import _Read

_log = logging.getLogger(__name__)

# Set while a traced driver call runs: the driver's own nested calls are part of it.
_inner: ContextVar[bool] = ContextVar("agentstate_mysql_inner", default=False)
_fetching: ContextVar[bool] = ContextVar("agentstate_mysql_fetching", default=False)

Wrapper = Callable[[Any, Any, Any, Any], Any]


class SyncDriver(my.Driver, Protocol):
    def unbuffered(self, cursor: Any) -> bool: ...  # a result the server streams row by row


def recording(source: Iterable[Any], sink: list[object]) -> Iterator[Any]:
    """executemany's parameter rows, passed through as the driver takes them (never read
    ahead), kept for the row facts."""
    for item in source:
        sink.append(my.bind_params(item))
        yield item


def statement_call(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], str, list[object]] | None:
    """(args, kwargs, sql, parameter rows) of execute/executemany; an iterator of rows is
    replaced by one that records them as the driver consumes it."""
    query = args[0] if args else kwargs.get("query")
    if isinstance(query, (bytes, bytearray)):
        query = bytes(query).decode("utf-8", "replace")
    if not isinstance(query, str):
        return None
    raw: Any = args[1] if len(args) > 1 else kwargs.get("args")
    if method == "execute":
        return args, kwargs, query, [None if raw is None else my.bind_params(raw)]
    if raw is None:
        return args, kwargs, query, []
    if isinstance(raw, (list, tuple)):
        return args, kwargs, query, [my.bind_params(r) for r in raw]
    rows: list[object] = []
    stream = recording(raw, rows)
    if len(args) > 1:
        args = (args[0], stream, *args[2:])
    else:
        kwargs = {**kwargs, "args": stream}
    return args, kwargs, query, rows


def pending_done(cursor: Any) -> None:
    """An unbuffered result was read to its end (or dropped): our queries may run again."""
    try:
        state = my._states.get(cursor.connection)
    except Exception:
        return
    if state is not None and state.unbuffered is not None and state.unbuffered() is cursor:
        state.unbuffered = None


class SyncHooks:
    """The statement, fetch and transaction wrappers of one sync DB-API driver."""

    def __init__(
        self,
        driver: SyncDriver,
        executor: Callable[[Any], Callable[[str, tuple[Any, ...]], Rows]],
        tracer: Callable[[], trace.Tracer | None],
    ) -> None:
        self.driver = driver
        self.executor = executor
        self.tracer = tracer
        self.reads = Reads()

    def flow(self, cursor: Any, method: str, sql: str, params: list[object]) -> my.Flow | None:
        try:
            conn = cursor.connection
            state = my.state_for(conn, self.tracer())
            if state is None:
                return None
            flow = my.Flow(state, self.driver, conn, method, sql, params)
            run_sync(flow.prepare(), self.executor(conn))
            flow.start()
            return flow
        except Exception:
            _log.debug("preparing the observation failed", exc_info=True)
            return None

    def keep(self, cursor: Any, read: _Read | None) -> None:
        if read is None:
            return
        slot = self.reads.slot(cursor)
        if slot is None:
            read.obs.end()
        else:
            slot.read = read

    def execute(self, method: str) -> Wrapper:
        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _inner.get():
                return wrapped(*args, **kwargs)
            self.reads.finish(instance)
            pending_done(instance)  # a new statement drops the cursor's unbuffered rest
            flow = None
            if is_instrumentation_enabled() and self.tracer() is not None:
                call = statement_call(method, args, kwargs)
                if call is not None:
                    args, kwargs, sql, params = call
                    flow = self.flow(instance, method, sql, params)
            token = _inner.set(True)
            try:
                if flow is None:
                    return wrapped(*args, **kwargs)
                with flow.running():
                    result = wrapped(*args, **kwargs)
            finally:
                _inner.reset(token)
            try:
                self.after(flow, instance)
            except Exception:
                _log.debug("recording the statement failed", exc_info=True)
                flow.obs.end()
            return result

        return wrapper

    def after(self, flow: my.Flow, cursor: Any) -> None:
        if self.driver.unbuffered(cursor) and getattr(cursor, "description", None):
            flow.state.unbuffered = weakref.ref(cursor)
        self.keep(cursor, run_sync(flow.after(cursor), self.executor(flow.conn)))

    def seen(self, cursor: Any, rows: list[Any], done: Callable[[_Read], bool]) -> None:
        got = self.reads.get(cursor)
        if got is not None:
            slot, read = got
            observe_rows(slot, read, rows, done(read))

    def _fetch(self, wrapped: Any, args: Any, kwargs: Any) -> Any:
        token = _fetching.set(True)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _fetching.reset(token)

    def fetchone(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _fetching.get():
            return wrapped(*args, **kwargs)
        row = self._fetch(wrapped, args, kwargs)
        if row is None:
            pending_done(instance)
        self.seen(instance, [] if row is None else [row], lambda r: row is None or r.point)
        return row

    def fetchmany(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _fetching.get():
            return wrapped(*args, **kwargs)
        rows = self._fetch(wrapped, args, kwargs)
        ended = short(instance, args, kwargs, rows)
        if ended:
            pending_done(instance)
        self.seen(instance, list(rows), lambda r: ended)
        return rows

    def fetchall(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _fetching.get():
            return wrapped(*args, **kwargs)
        rows = self._fetch(wrapped, args, kwargs)
        pending_done(instance)
        self.seen(instance, list(rows), lambda r: True)
        return rows

    def close(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        self.reads.finish(instance)
        try:
            return wrapped(*args, **kwargs)
        finally:
            pending_done(instance)

    # ----------------------------------------------------------------------- connections

    def conn_state(self, conn: Any) -> my.MyState | None:
        if not is_instrumentation_enabled() or self.tracer() is None:
            return None
        return my.state_for(conn, self.tracer())

    def ending(self, outcome: str) -> Wrapper:
        """commit()/rollback()/close() of a connection (`instance`)."""

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            state = self.conn_state(instance)
            if state is None:
                return wrapped(*args, **kwargs)
            with my.txn_ending(state, outcome):
                return wrapped(*args, **kwargs)

        return wrapper

    def autocommit(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """autocommit(True) commits the open transaction (the server does on SET)."""
        value = args[0] if args else kwargs.get("value", kwargs.get("on"))
        state = self.conn_state(instance) if value else None
        if state is None or not state.in_txn:
            return wrapped(*args, **kwargs)
        with my.txn_ending(state, "commit"):
            return wrapped(*args, **kwargs)

    def begin(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = self.conn_state(instance)
        if state is not None and state.in_txn:
            # BEGIN commits an open transaction first (MySQL's implicit commit).
            with my.txn_ending(state, "commit"):
                result = wrapped(*args, **kwargs)
        else:
            result = wrapped(*args, **kwargs)
        if state is not None:
            my.txn_begun(state)
        return result

    def select_db(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        state = self.conn_state(instance)
        if state is not None:
            state.dbname = None  # the fact keys' namespace: asked again
        return result
