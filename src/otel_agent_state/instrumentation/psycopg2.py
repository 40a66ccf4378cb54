"""State-aware instrumentation of psycopg2, SPEC §3 (same records as the psycopg module).

psycopg2's connection and cursor are C types whose methods cannot be wrapped in place, so
`Psycopg2Instrumentor` wraps `psycopg2._connect` (the C function `psycopg2.connect` calls
once it has built the DSN: what `connect` itself passes on stays the application's) and
passes a `connection_factory` subclass
(of the application's factory, if any) whose cursors are subclasses of the cursor class in
use. Our methods sit *under* the application's classes in the MRO, right above the C class
(`_wrapping.subclass_under`): `DictConnection.cursor()` still picks `DictCursor`,
`LoggingCursor.execute()` still logs, and contrib's traced cursor class (whatever it
derives from) stays outermost, so contrib's span is the one database span and we annotate
it (either load order). contrib wraps `psycopg2.connect`, above ours whatever the order, and
its `unwrap()` never meets our wrapper. See docs/postgresql.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import runtime
from . import _postgres as pg
from ._postgres import Rows
from ._wrapping import stand_in, subclass_under, unwrap_ours, wrap_under

_log = logging.getLogger(__name__)

MODULE = "psycopg2"
_tracer: trace.Tracer | None = None
# `psycopg2.connect` calls `_connect(dsn, connection_factory=..., async_=...)`: wrapping that
# keeps `connect`'s own behaviour (and what it passes on) exactly the application's.
_CONNECT = "_connect"


class _Driver:
    module = MODULE

    def status(self, conn: Any) -> int:
        return int(conn.info.transaction_status)

    def autocommit(self, conn: Any) -> bool:
        return bool(conn.autocommit)

    def busy(self, conn: Any) -> bool:
        return bool(getattr(conn, "async_", 0)) and bool(conn.isexecuting())

    def dbname(self, conn: Any) -> str:
        return str(conn.info.dbname)


DRIVER = _Driver()


def _executor(conn: Any) -> Callable[[str, tuple[Any, ...]], Rows]:
    from psycopg2 import extensions  # type: ignore[import-untyped, unused-ignore]

    def execute(sql: str, params: tuple[Any, ...]) -> Rows:
        # The base class's cursor(): neither our subclass nor contrib's factory.
        cursor = extensions.connection.cursor(conn, cursor_factory=extensions.cursor)
        try:
            cursor.execute(sql, params or None)
            names = [str(d[0]) for d in cursor.description or ()]
            rows = cursor.fetchall() if cursor.description else []
            return names, [tuple(r) for r in rows]
        finally:
            cursor.close()

    return execute


_hooks = pg.Hooks(DRIVER, _executor, lambda: _tracer)
_EXECUTE = _hooks.execute("execute")
_EXECUTEMANY = _hooks.execute("executemany")
_COMMIT, _ROLLBACK = _hooks.ending("commit"), _hooks.ending("rollback")
_CLOSE = _hooks.ending("rollback")


class TracedCursorMixin:
    """Put right above psycopg2's C cursor class: records what its statements read and write."""

    _agentstate_traced = True

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return _EXECUTE(super().execute, self, args, kwargs)  # type: ignore[misc]

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return _EXECUTEMANY(super().executemany, self, args, kwargs)  # type: ignore[misc]

    def fetchone(self) -> Any:
        return _hooks.fetchone(super().fetchone, self, (), {})  # type: ignore[misc]

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return _hooks.fetchmany(super().fetchmany, self, args, kwargs)  # type: ignore[misc]

    def fetchall(self) -> Any:
        return _hooks.fetchall(super().fetchall, self, (), {})  # type: ignore[misc]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return _hooks.next(super().__next__, self, (), {})  # type: ignore[misc]

    def close(self) -> Any:
        return _hooks.close(super().close, self, (), {})  # type: ignore[misc]


class TracedConnectionMixin:
    """Put right above psycopg2's C connection class: traced cursors, transaction ends as
    scopes. Under the application's class, so its `cursor()` has chosen the cursor class
    (as the C code would: the argument, else the connection's `cursor_factory`)."""

    _agentstate_traced = True

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if len(args) > 1:
                factory = args[1] or getattr(self, "cursor_factory", None)
                args = (args[0], traced_cursor_class(factory), *args[2:])
            else:
                factory = kwargs.get("cursor_factory") or getattr(self, "cursor_factory", None)
                kwargs = {**kwargs, "cursor_factory": traced_cursor_class(factory)}
        except Exception:
            _log.debug("cannot trace the cursor", exc_info=True)
        return super().cursor(*args, **kwargs)  # type: ignore[misc]

    def commit(self) -> Any:
        return _COMMIT(super().commit, self, (), {})  # type: ignore[misc]

    def rollback(self) -> Any:
        return _ROLLBACK(super().rollback, self, (), {})  # type: ignore[misc]

    def close(self) -> Any:
        return _CLOSE(super().close, self, (), {})  # type: ignore[misc]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        # `with conn:` ends the transaction (commit, or rollback on error); it does not close.
        wrapper = _COMMIT if exc_type is None else _ROLLBACK
        return wrapper(super().__exit__, self, (exc_type, exc, tb), {})  # type: ignore[misc]


_classes: dict[type, type] = {}
_roots: dict[type, type] = {}
_classes_lock = threading.RLock()


def _derived(base: Any, root: type, mixin: type) -> Any:
    """Our class for the application's `base` (a subclass of the C class `root`): its own
    methods first, ours right above `root`. `base` itself when it is ours already or not a
    subclass of `root` (a factory function: left alone), or when the classes do not merge."""
    if not isinstance(base, type) or not issubclass(base, root) or issubclass(base, mixin):
        return base
    with _classes_lock:
        found = _classes.get(base)
        if found is None:
            traced_root = _roots.get(root)
            if traced_root is None:
                traced_root = _roots[root] = stand_in(root, (mixin, root))
            try:
                found = subclass_under(base, root, traced_root)
            except TypeError:
                _log.debug("cannot derive from %s", base, exc_info=True)
                return base
            if len(_classes) < 256:  # application factories are few; never grow unbounded
                _classes[base] = found
        return found


def traced_cursor_class(factory: type | None) -> Any:
    """Our cursor class for `factory` (psycopg2's cursor when None)."""
    from psycopg2 import extensions  # type: ignore[import-untyped, unused-ignore]

    return _derived(factory or extensions.cursor, extensions.cursor, TracedCursorMixin)


def traced_connection_class(factory: type | None) -> Any:
    """Our connection class for `factory` (psycopg2's connection when None)."""
    from psycopg2 import extensions  # type: ignore[import-untyped, unused-ignore]

    return _derived(factory or extensions.connection, extensions.connection, TracedConnectionMixin)


def instrument_connection(
    connection: Any, tier: str | None = None, tracer_provider: Any = None
) -> Any:
    """Per-connection options (tier `replica`, tracer provider) for a connection opened while
    the instrumentor is on. A connection opened before gets traced cursors from here on
    (its `cursor_factory` is replaced), but its commit()/rollback() are not seen: psycopg2
    does not let us change an open connection's class."""
    tracer = _tracer
    if tracer is None or tracer_provider is not None:
        tracer = trace.get_tracer(__name__, pg.VERSION, tracer_provider=tracer_provider)
    pg.configure_connection(connection, DRIVER, tracer, tier)
    if not getattr(type(connection), "_agentstate_traced", False):
        connection.cursor_factory = traced_cursor_class(connection.cursor_factory)
    return connection


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing one connection."""
    pg.disable_connection(connection)
    return connection


class Psycopg2Instrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps `psycopg2._connect` so new connections and their cursors are traced."""

    _connect_wrapper: Callable[..., Any] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        # psycopg2 and psycopg2-binary both install the module `psycopg2`: ask for the one
        # that is there, so a missing driver is a dependency conflict, not an ImportError.
        from importlib.metadata import PackageNotFoundError, distribution

        for name in ("psycopg2", "psycopg2-binary"):
            try:
                distribution(name)
                return (f"{name} >= 2.8",)
            except PackageNotFoundError:
                continue
        return ("psycopg2 >= 2.8",)

    def _instrument(self, **kwargs: Any) -> None:
        global _tracer
        import psycopg2  # type: ignore[import-untyped, unused-ignore]

        _tracer = trace.get_tracer(
            __name__, pg.VERSION, tracer_provider=kwargs.get("tracer_provider")
        )

        def connect(wrapped: Any, instance: Any, args: Any, kw: Any) -> Any:
            try:
                if len(args) > 1:
                    args = (args[0], traced_connection_class(args[1]), *args[2:])
                else:
                    kw["connection_factory"] = traced_connection_class(kw.get("connection_factory"))
            except Exception:
                _log.debug("cannot trace the connection", exc_info=True)
            return wrapped(*args, **kw)

        self._connect_wrapper = connect
        wrap_under(psycopg2, _CONNECT, connect)
        runtime.mark_driver(MODULE, True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _tracer
        import psycopg2  # type: ignore[import-untyped, unused-ignore]

        runtime.mark_driver(MODULE, False)
        ours = self._connect_wrapper
        self._connect_wrapper = None
        if ours is not None:
            unwrap_ours(psycopg2, _CONNECT, ours)
        _tracer = None
