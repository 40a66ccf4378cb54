"""The sqlite3 proxies `instrument_connection` hands out for a connection our `connect` did
not open (see `sqlite3.py`; connections it opens are real subclasses: `_sqlite3_classes`).

A wrapt proxy, with a proxy's limits: the C code rejects it where it checks types
(`backup()`, `sqlite3.Cursor(proxy)`, ...). docs/sqlite3.md.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import wrapt
from opentelemetry import trace

from ._dbapi import ObservedCursor
from .sqlite3 import (
    _connection_collected,
    _ConnState,
    _end_transaction,
    _innermost,
    _remember_hook,
    _Slot,
    _statement,
)

_log = logging.getLogger(__name__)


class TracedCursor(ObservedCursor):
    """A sqlite3 cursor that records the facts its statements read and write."""

    _self_slot: _Slot

    def __init__(self, cursor: Any, connection: TracedConnection) -> None:
        super().__init__(cursor, _Slot())
        self._self_connection = connection

    @property
    def connection(self) -> TracedConnection:
        return self._self_connection

    # -- statements

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("execute", args, kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("executemany", args, kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("executescript", args, kwargs)

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = getattr(self.__wrapped__, method)
        state = self._self_connection._self_state
        return self._same(
            _statement(self._self_slot, state, call, method, args, kwargs, self.__wrapped__)
        )

    def _same(self, result: Any) -> Any:
        # execute() returns the cursor itself; hand back the proxy instead.
        return self if result is self.__wrapped__ or result is _innermost(self) else result

    # -- fetching

    def fetchone(self) -> Any:
        row = self.__wrapped__.fetchone()
        read = self._self_slot.read
        if read is None:
            return row
        self._observe(read, [] if row is None else [row], done=row is None or read.point)
        return row

    def __iter__(self) -> TracedCursor:
        return self

    def __next__(self) -> Any:
        try:
            row = self.__wrapped__.__next__()
        except StopIteration:
            read = self._self_slot.read
            if read is not None:
                self._observe(read, [], done=True)
            raise
        read = self._self_slot.read
        if read is not None:
            self._observe(read, [row], done=read.point)
        return row


class TracedConnection(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A sqlite3 connection whose cursors are traced and whose transactions are scopes."""

    _agentstate_traced = True  # tells framework instrumentations this connection is ours

    def __init__(self, connection: Any, tracer: trace.Tracer) -> None:
        super().__init__(connection)
        raw = _innermost(connection)
        self._self_state = _ConnState(tracer=tracer, ref=lambda: raw)
        try:
            weakref.finalize(self, _connection_collected, self._self_state)
        except Exception:
            _log.debug("cannot watch connection collection", exc_info=True)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__.cursor(*args, **kwargs)
        try:
            return TracedCursor(cursor, self)
        except Exception:
            _log.debug("cannot wrap the cursor", exc_info=True)
            return cursor

    # Connection.execute* are shortcuts: a new cursor, then the same call on it.
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executescript(*args, **kwargs)

    def commit(self) -> Any:
        return _end_transaction(self._self_state, "commit", self.__wrapped__.commit)

    def rollback(self) -> Any:
        return _end_transaction(self._self_state, "rollback", self.__wrapped__.rollback)

    def close(self) -> Any:
        # Closing with an open transaction discards it: that is a rollback.
        state = self._self_state
        result = _end_transaction(state, "rollback", self.__wrapped__.close, closing=True)
        state.closed = True
        return result

    def __enter__(self) -> TracedConnection:
        self.__wrapped__.__enter__()
        return self

    def set_trace_callback(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__.set_trace_callback(*args, **kwargs)
        _remember_hook(self._self_state, "trace_callback", args, kwargs)
        return result

    def set_progress_handler(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__.set_progress_handler(*args, **kwargs)
        _remember_hook(self._self_state, "progress_handler", args, kwargs)
        return result

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        outcome = "commit" if exc_type is None else "rollback"
        return _end_transaction(
            self._self_state, outcome, lambda: self.__wrapped__.__exit__(exc_type, exc, tb)
        )
