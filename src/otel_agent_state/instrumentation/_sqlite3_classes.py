"""The sqlite3 connection and cursor classes our `connect` hands out (see `sqlite3.py`).

Subclasses of the real `sqlite3.Connection` / `sqlite3.Cursor`, not proxies: the C code
checks types (`src.backup(dst)`, `sqlite3.Cursor(conn)`, `conn(sql)`, a cursor factory's
result) and a proxy fails those checks. An application's own `factory=` class keeps its
overrides in front: ours sit right above the C class in the method resolution order (so
`super()` in its methods reaches ours), and the class keeps the application's name and
module. A class of ours without state (a connection not opened by our `connect`) behaves
exactly as the C class.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from typing import Any

from opentelemetry import trace

from ._dbapi import observe_rows
from ._wrapping import stand_in, subclass_under
from .sqlite3 import (
    _connection_collected,
    _ConnState,
    _end_transaction,
    _remember_hook,
    _Slot,
    _statement,
)

_log = logging.getLogger(__name__)

_SLOT = "_agentstate_slot"
_derived: dict[tuple[type, type], type] = {}
_derived_lock = threading.Lock()


def _slot(cursor: Any) -> _Slot:
    """The cursor's open-read slot, made (and its collection watched) on first use."""
    found: _Slot | None = cursor.__dict__.get(_SLOT)
    if found is None:
        found = cursor.__dict__[_SLOT] = _Slot()
        try:
            found.watch(cursor)
        except Exception:
            _log.debug("cannot watch the cursor's collection", exc_info=True)
    return found


def _open_read(cursor: Any) -> tuple[_Slot, Any] | None:
    slot: _Slot | None = cursor.__dict__.get(_SLOT)
    if slot is None or slot.read is None:
        return None
    return slot, slot.read


class CursorHooks(sqlite3.Cursor):
    """Our methods, right above `sqlite3.Cursor`: statements observed, fetched rows recorded."""

    __slots__ = ()
    _agentstate_traced = True

    def _agentstate_conn_state(self) -> _ConnState | None:
        state: _ConnState | None = getattr(self.connection, "_agentstate_state", None)
        return state

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        call = super().execute
        return _statement(
            _slot(self), self._agentstate_conn_state(), call, "execute", args, kwargs, self
        )

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        call = super().executemany
        state = self._agentstate_conn_state()
        return _statement(_slot(self), state, call, "executemany", args, kwargs, self)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        call = super().executescript
        state = self._agentstate_conn_state()
        return _statement(_slot(self), state, call, "executescript", args, kwargs, self)

    def fetchone(self) -> Any:
        row = super().fetchone()
        found = _open_read(self)
        if found is not None:
            slot, read = found
            observe_rows(slot, read, [] if row is None else [row], row is None or read.point)
        return row

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        rows = super().fetchmany(*args, **kwargs)
        found = _open_read(self)
        if found is not None:
            size = args[0] if args else kwargs.get("size", self.arraysize)
            observe_rows(found[0], found[1], rows, not isinstance(size, int) or len(rows) < size)
        return rows

    def fetchall(self) -> Any:
        rows = super().fetchall()
        found = _open_read(self)
        if found is not None:
            observe_rows(found[0], found[1], rows, True)
        return rows

    def __next__(self) -> Any:
        try:
            row = super().__next__()
        except StopIteration:
            found = _open_read(self)
            if found is not None:
                observe_rows(found[0], found[1], [], True)
            raise
        found = _open_read(self)
        if found is not None:
            observe_rows(found[0], found[1], [row], found[1].point)
        return row

    def close(self) -> Any:
        slot: _Slot | None = self.__dict__.get(_SLOT)
        if slot is not None:
            slot.finish()
        return super().close()


class ConnectionHooks(sqlite3.Connection):
    """Our methods, right above `sqlite3.Connection`: traced cursors, transaction ends."""

    __slots__ = ()
    _agentstate_state: _ConnState | None = None

    @property
    def _agentstate_traced(self) -> bool:  # tells framework instrumentations it is ours
        return self._agentstate_state is not None

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if self._agentstate_state is not None and len(args) + len(kwargs) <= 1:
            factory = args[0] if args else kwargs.get("factory", sqlite3.Cursor)
            if not kwargs or "factory" in kwargs:
                traced = cursor_class(factory)
                if traced is not None:
                    return super().cursor(traced)
        return super().cursor(*args, **kwargs)

    # The C execute* shortcuts make a cursor without calling cursor(): do it ourselves (our
    # own cursor(), as the C code calls its own, not an override of the application's).
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self._agentstate_state is None:
            return super().execute(*args, **kwargs)
        return ConnectionHooks.cursor(self).execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        if self._agentstate_state is None:
            return super().executemany(*args, **kwargs)
        return ConnectionHooks.cursor(self).executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        if self._agentstate_state is None:
            return super().executescript(*args, **kwargs)
        return ConnectionHooks.cursor(self).executescript(*args, **kwargs)

    def commit(self) -> Any:
        state = self._agentstate_state
        if state is None:
            return super().commit()
        return _end_transaction(state, "commit", super().commit)

    def rollback(self) -> Any:
        state = self._agentstate_state
        if state is None:
            return super().rollback()
        return _end_transaction(state, "rollback", super().rollback)

    def close(self) -> Any:
        state = self._agentstate_state
        if state is None:
            return super().close()
        # Closing with an open transaction discards it: that is a rollback.
        result = _end_transaction(state, "rollback", super().close, closing=True)
        state.closed = True
        return result

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        state = self._agentstate_state
        if state is None:
            return super().__exit__(exc_type, exc, tb)
        outcome = "commit" if exc_type is None else "rollback"
        return _end_transaction(
            state, outcome, lambda: super(ConnectionHooks, self).__exit__(exc_type, exc, tb)
        )

    def set_trace_callback(self, *args: Any, **kwargs: Any) -> Any:
        result = super().set_trace_callback(*args, **kwargs)
        _remember_hook(self._agentstate_state, "trace_callback", args, kwargs)
        return result

    def set_progress_handler(self, *args: Any, **kwargs: Any) -> Any:
        result = super().set_progress_handler(*args, **kwargs)
        _remember_hook(self._agentstate_state, "progress_handler", args, kwargs)
        return result


# Stand-ins for the C classes: named as they are, equal to them (`type(conn) == Connection`).
Connection = stand_in(sqlite3.Connection, (ConnectionHooks,))
Cursor = stand_in(sqlite3.Cursor, (CursorHooks,))


def _under(base: Any, root: type, hooks: type, plain: type) -> type | None:
    """Our class for the application's class `base` (a subclass of `root`), or None."""
    if base is root:
        return plain
    if not isinstance(base, type) or not issubclass(base, root):
        return None  # a factory function, or not a sqlite3 class: left alone
    if issubclass(base, hooks):
        return base
    key = (base, root)
    with _derived_lock:
        found = _derived.get(key)
        if found is None:
            try:
                found = subclass_under(base, root, hooks)
            except TypeError:  # e.g. its __slots__ do not merge: untraced
                _log.debug("cannot derive from %s", base, exc_info=True)
                return None
            if len(_derived) < 256:  # application classes are few; never grow unbounded
                _derived[key] = found
        return found


def cursor_class(factory: Any) -> type | None:
    return _under(factory, sqlite3.Cursor, CursorHooks, Cursor)


def connection_class(factory: Any) -> type | None:
    return _under(factory, sqlite3.Connection, ConnectionHooks, Connection)


def attach(connection: Any, tracer: trace.Tracer) -> bool:
    """Give a connection of our class its state (traced from now on); False if not ours."""
    if not isinstance(connection, ConnectionHooks) or type(connection) is ConnectionHooks:
        return False
    if connection._agentstate_state is not None:
        connection._agentstate_state.tracer = tracer
        return True
    state = _ConnState(tracer=tracer, ref=weakref.ref(connection))
    connection._agentstate_state = state
    try:
        weakref.finalize(connection, _connection_collected, state)
    except Exception:
        _log.debug("cannot watch connection collection", exc_info=True)
    return True


def detach(connection: Any) -> bool:
    """Stop tracing a connection of our class; False if not ours."""
    if not isinstance(connection, ConnectionHooks):
        return False
    if connection._agentstate_state is not None:
        del connection._agentstate_state
    return True
