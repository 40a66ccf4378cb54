"""What the PostgreSQL instrumentations (psycopg, psycopg2) share.

The per-statement logic is the sqlite3 module's (`_Observation`, `_Read`, the version and key
helpers); this module adds what differs for a server database: the catalog lookup of primary
keys, transaction status read from the driver, savepoints as nested mutation scopes, and
our own follow-up queries run *inside* the user's transaction under a SAVEPOINT so that a
failure of ours can never abort it.

Our own queries are written as generators that yield `Batch`es; `run_sync` and `run_async`
execute them, so the sync and async drivers share one implementation.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__
from .. import attributes as A
from ..core.config import get_settings
from ._dbapi import MAX_ROWS_PER_SPAN as _MAX_ROWS_PER_SPAN
from ._dbapi import (
    Scopes,
    based_on_own_read,
    observe_rows,
    read_back_versions,
    scope_end_spans,
    txn_attrs,
)
from ._dbapi import quote as _quote
from ._dbapi import suppressed as _suppressed
from ._sql import analyse
from .sqlite3 import _Observation, _pinned_writes, _Prepared, _Read, _Slot

__all__ = ["Scopes", "observe_rows"]

_log = logging.getLogger(__name__)

STORE = "postgresql"
VERSION = __version__
TIERS = ("primary", "replica")
_MAX_TABLES = 512
_SAVEPOINT = "_agentstate_sp"

# Transaction status, as every driver reports it (libpq's PQtransactionStatus).
IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN = 0, 1, 2, 3, 4

_CATALOG = (
    "SELECT n.nspname::text, c.relname::text,"
    " ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a"
    "  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    "  ORDER BY a.attnum),"
    " ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i"
    "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
    "  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.oid = COALESCE(pg_catalog.to_regclass(%s), pg_catalog.to_regclass(%s))"
)

Rows = tuple[list[str], list[tuple[Any, ...]]]
T = TypeVar("T")


@dataclass
class Batch:
    """Our own statements, run in order; under a savepoint when inside the user's transaction."""

    queries: list[tuple[str, tuple[Any, ...]]]
    savepoint: bool


Step = Generator[Batch, "list[Rows] | None", T]


class Driver(Protocol):
    """What the shared code needs to know about a connection, whatever the driver."""

    module: str

    def status(self, conn: Any) -> int: ...
    def autocommit(self, conn: Any) -> bool: ...
    def busy(self, conn: Any) -> bool: ...
    def dbname(self, conn: Any) -> str: ...


# --------------------------------------------------------------------------- connection state


@dataclass(frozen=True, slots=True)
class _PgTable:
    name: str  # fact-key form: `table`, or `schema.table` outside `public`
    columns: tuple[str, ...]
    pk: tuple[str, ...]
    integer_pk: bool
    sql_name: str  # quoted, schema-qualified


class PgState:
    """Per-connection state; duck-types the sqlite3 connection state `_Observation` uses."""

    store = STORE

    def __init__(self, tracer: trace.Tracer, dbname: str, tier: str = "primary") -> None:
        self.tracer = tracer
        self.dbname = dbname or "postgres"
        self.tier = tier
        self.lock = threading.RLock()
        self.tables: OrderedDict[tuple[str, str], _PgTable | None] = OrderedDict()
        self.scopes = Scopes()
        self.closed = False
        self.enabled = True

    def namespace(self, schema: str | None = None) -> str:
        return self.dbname

    @staticmethod
    def _key(schema: str | None, name: str) -> tuple[str, str]:
        return ((schema or "").lower(), name.lower())

    def table(self, schema: str | None, name: str) -> _PgTable | None:
        """The cached catalog entry (never queries: see `resolve_table`)."""
        with self.lock:
            return self.tables.get(self._key(schema, name))

    def known(self, schema: str | None, name: str) -> bool:
        with self.lock:
            return self._key(schema, name) in self.tables

    def remember(self, schema: str | None, name: str, table: _PgTable | None) -> None:
        with self.lock:
            self.tables[self._key(schema, name)] = table
            while len(self.tables) > _MAX_TABLES:
                self.tables.popitem(last=False)

    def forget_tables(self) -> None:
        with self.lock:
            self.tables.clear()


_states: weakref.WeakKeyDictionary[Any, PgState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_for(conn: Any, driver: Driver, tracer: trace.Tracer | None) -> PgState | None:
    """The connection's state, created on first use; None when it is not to be traced."""
    try:
        with _states_lock:
            state = _states.get(conn)
            if state is None:
                if tracer is None:
                    return None
                state = PgState(tracer, driver.dbname(conn))
                _states[conn] = state
        return state if state.enabled else None
    except Exception:
        _log.debug("no state for the connection", exc_info=True)
        return None


def connection_options(
    conn: Any,
    driver: Driver,
    module: str,
    tracer: trace.Tracer | None,
    tier: str | None,
    tracer_provider: Any,
) -> Any:
    """`instrument_connection` of a driver module: the instrumentor's tracer unless the
    connection has a tracer provider of its own (or the instrumentor is off)."""
    if tracer is None or tracer_provider is not None:
        tracer = trace.get_tracer(module, VERSION, tracer_provider=tracer_provider)
    configure_connection(conn, driver, tracer, tier)
    return conn


def configure_connection(
    conn: Any, driver: Driver, tracer: trace.Tracer, tier: str | None, enabled: bool = True
) -> None:
    """`instrument_connection`: a tracer, a tier (e.g. `replica`), on or off."""
    if tier is not None and tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    with _states_lock:
        state = _states.get(conn)
        if state is None:
            state = _states[conn] = PgState(tracer, driver.dbname(conn))
        else:
            state.tracer = tracer
        if tier is not None:
            state.tier = tier
        state.enabled = enabled


def disable_connection(conn: Any) -> None:
    with _states_lock:
        state = _states.get(conn)
        if state is not None:
            state.enabled = False


def safe_mode(driver: Driver, conn: Any) -> bool | None:
    """Whether our own queries may run now: True under a savepoint, False plain, None never.

    Never when it would open a transaction the application did not (idle, not autocommit),
    in a failed transaction, or while the connection is busy (pipeline, streaming)."""
    try:
        if driver.busy(conn):
            return None
        status = driver.status(conn)
        if status == INTRANS:
            return True
        if status == IDLE and driver.autocommit(conn):
            return False
    except Exception:
        _log.debug("connection status unknown", exc_info=True)
    return None


# --------------------------------------------------------------------------- runners


def run_sync(step: Step[T], execute: Callable[[str, tuple[Any, ...]], Rows]) -> T:
    """Drive a step, running its batches with `execute` (our untraced cursor)."""
    try:
        batch = next(step)
        while True:
            batch = step.send(_batch_sync(batch, execute))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _batch_sync(batch: Batch, execute: Callable[[str, tuple[Any, ...]], Rows]) -> list[Rows] | None:
    with _suppressed():
        try:
            if batch.savepoint:
                execute(f"SAVEPOINT {_SAVEPOINT}", ())
        except Exception:
            _log.debug("savepoint failed", exc_info=True)
            return None
        try:
            out = [execute(sql, params) for sql, params in batch.queries]
        except Exception:
            _log.debug("own query failed", exc_info=True)
            if batch.savepoint:
                try:
                    execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", ())
                    execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", ())
                except Exception:
                    _log.debug("rollback to our savepoint failed", exc_info=True)
            return None
        if batch.savepoint:
            try:
                execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", ())
            except Exception:
                _log.debug("release failed", exc_info=True)
        return out


async def run_async(step: Step[T], execute: Callable[[str, tuple[Any, ...]], Awaitable[Rows]]) -> T:
    """`run_sync` for async drivers."""
    try:
        batch = next(step)
        while True:
            batch = step.send(await _batch_async(batch, execute))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _batch_async(
    batch: Batch, execute: Callable[[str, tuple[Any, ...]], Awaitable[Rows]]
) -> list[Rows] | None:
    with _suppressed():
        try:
            if batch.savepoint:
                await execute(f"SAVEPOINT {_SAVEPOINT}", ())
        except Exception:
            _log.debug("savepoint failed", exc_info=True)
            return None
        try:
            out = [await execute(sql, params) for sql, params in batch.queries]
        except Exception:
            _log.debug("own query failed", exc_info=True)
            if batch.savepoint:
                try:
                    await execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", ())
                    await execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", ())
                except Exception:
                    _log.debug("rollback to our savepoint failed", exc_info=True)
            return None
        if batch.savepoint:
            try:
                await execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", ())
            except Exception:
                _log.debug("release failed", exc_info=True)
        return out


# --------------------------------------------------------------------------- statements


def resolve_table(
    state: PgState, driver: Driver, conn: Any, schema: str | None, name: str
) -> Step[None]:
    """Look a table's columns and primary key up in the catalog, when it is safe to."""
    if state.known(schema, name):
        return
    mode = safe_mode(driver, conn)
    if mode is None:
        return
    prefix = _quote(schema) + "." if schema else ""
    exact = prefix + _quote(name)
    folded = (_quote(schema.lower()) + "." if schema else "") + _quote(name.lower())
    results = yield Batch([(_CATALOG, (exact, folded))], mode)
    if results is None:
        return  # try again next time
    rows = results[0][1]
    table: _PgTable | None = None
    if rows:
        nsp, rel, columns, pk = rows[0]
        key_name = rel if nsp == "public" else f"{nsp}.{rel}"
        table = _PgTable(
            key_name,
            tuple(str(c).lower() for c in columns or ()),
            tuple(str(c).lower() for c in pk or ()),
            False,
            _quote(nsp) + "." + _quote(rel),
        )
    state.remember(schema, name, table)


class Flow:
    """One statement from before it runs until its span ends (read spans: after fetching)."""

    def __init__(
        self,
        state: PgState,
        driver: Driver,
        conn: Any,
        method: str,
        sql: str,
        params: list[object],
    ) -> None:
        self.state = state
        self.driver = driver
        self.conn = conn
        stmt = analyse(sql, "postgresql")
        self.stmt = stmt
        self.was_in = driver.status(conn) in (INTRANS, INERROR)
        # db.collection.name / db.query.summary name the table as the query does (semconv).
        written = f"{stmt.schema}.{stmt.table}" if stmt.schema and stmt.table else stmt.table
        summary = stmt.summary
        if written and stmt.operation in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            summary = f"{stmt.operation} {written}"
        self.obs = _Observation(cast(Any, state), stmt, name=summary)
        if written and self.obs.own:
            self.obs.span.set_attribute(A.DB_COLLECTION_NAME, written)
        self.prepared = _Prepared(method, self.obs, (), params, self.was_in)

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Around the driver call: our span current (if ours), other instrumentation off."""
        with _suppressed(self.obs.span if self.obs.own else None):
            yield

    @contextmanager
    def running(self) -> Iterator[None]:
        """`calling`, and a failure of the statement recorded (then re-raised)."""
        try:
            with self.calling():
                yield
        except BaseException as exc:
            self.failed(exc)
            raise

    def before(self) -> Step[None]:
        stmt = self.stmt
        if stmt.table and stmt.operation in ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"):
            yield from resolve_table(self.state, self.driver, self.conn, stmt.schema, stmt.table)
            self.obs.table = cast(Any, self.state.table(stmt.schema, stmt.table))

    def failed(self, exc: BaseException) -> None:
        try:
            self.track_txn(wrote=False, failed=True)
        except Exception:
            _log.debug("transaction bookkeeping failed", exc_info=True)
        self.obs.fail(exc)

    def after(self, cursor: Any, description: Any, read: bool = True) -> Step[_Read | None]:
        """After a successful execute: writes get their versions, reads a `_Read`."""
        obs, stmt, state = self.obs, self.stmt, self.state
        if stmt.operation in ("DDL", "OTHER"):
            state.forget_tables()
        if obs.table is None and stmt.table:
            yield from self.before()
        if stmt.is_write:
            wrote = getattr(cursor, "rowcount", -1) != 0
            if wrote:
                yield from self.record_writes(cursor)
            self.track_txn(wrote=wrote)
            obs.end()
            return None
        self.track_txn(wrote=False)
        if stmt.operation == "SELECT" and read and self.prepared.method == "execute":
            params = self.prepared.params[0] if self.prepared.params else ()
            names = [(str(getattr(d, "name", None) or d[0]),) for d in description or ()]
            if description is None:  # a server-side cursor describes its rows on first fetch
                names = [(n,) for n in self.expected_columns()]
            result = _Read(obs, params, names)
            if not obs.own and result.trackable:
                if result.where_pk is not None:
                    obs.fact(get_settings(), obs.physical(result.where_pk))
                obs.open_read_span()
            return result
        obs.end()
        return None

    def expected_columns(self) -> list[str]:
        """Result column names as the statement and the catalog tell them, or []."""
        stmt, table = self.stmt, self.obs.table
        if stmt.star and len(stmt.projection) == 1 and table is not None:
            return list(table.columns)
        if stmt.projection and not stmt.star and all(stmt.projection):
            return [str(c) for c in stmt.projection]
        return []

    def record_writes(self, cursor: Any) -> Step[None]:
        obs = self.obs
        settings = get_settings()
        keys, reason = _pinned_writes(self.prepared, cursor)
        results: list[Rows] | None = None
        table = cast("_PgTable | None", obs.table)
        if reason is not None or not keys or table is None:
            facts = obs.table_write(settings, reason or "no rows")
        else:
            facts = {}
            keys = keys[:_MAX_ROWS_PER_SPAN]
            where = " AND ".join(f"{_quote(c)} = %s" for c in table.pk)
            query = f"SELECT * FROM {table.sql_name} WHERE {where}"
            mode = safe_mode(self.driver, self.conn)
            if mode is not None:
                results = yield Batch([(query, tuple(key)) for key in keys], mode)
            read_back_versions(obs, settings, keys, results, facts)
        obs.set_writes(facts)
        if self.stmt.set_from_row and results is not None:
            based_on_own_read(obs, settings, facts)

    def track_txn(self, wrote: bool, failed: bool = False) -> None:
        """Follow the transaction across one statement (implicit BEGIN, SQL COMMIT, ...)."""
        obs, stmt, state = self.obs, self.stmt, self.state
        try:
            status = self.driver.status(self.conn)
        except Exception:  # e.g. a closed connection
            status = UNKNOWN
        if status == ACTIVE:
            # Still streaming, or a pipeline with results pending: the statement has not
            # ended a transaction, and without autocommit the server has begun one (a
            # pipelined write is not committed until the application commits).
            try:
                autocommit = self.driver.autocommit(self.conn)
            except Exception:
                autocommit = True
            now_in = self.was_in or not autocommit
        else:
            now_in = status in (INTRANS, INERROR)
        with state.lock:
            scopes = state.scopes
            if now_in:
                emit_scope_ends(state, obs.span, scopes.follow(stmt), "rollback")
            if self.was_in and not now_in:
                # Only a successful statement on a live connection can have committed: a
                # failed one (even COMMIT) or a lost connection discards the transaction.
                committed = not failed and status == IDLE and stmt.operation != "ROLLBACK"
                outcome = "commit" if committed else "rollback"
                txn, subs = scopes.end()
                if txn is not None:
                    obs.span.set_attribute(A.TXN_ID, txn)
                    obs.span.set_attribute(A.TXN_OUTCOME, outcome)
                    emit_scope_ends(state, obs.span, subs, outcome)
            if now_in:
                scopes.begin()
            if wrote:
                if now_in:
                    obs.span.set_attribute(A.COMMITTED, False)
                    obs.span.set_attribute(A.TXN_ID, scopes.wrote())
                else:
                    scopes.end()
                    obs.span.set_attribute(A.COMMITTED, True)


def emit_scope_ends(state: PgState, parent: Span, scopes: list[str], outcome: str) -> None:
    """Savepoint scopes ending with their transaction (or rolled back)."""
    scope_end_spans(state.tracer, STORE, parent, scopes, outcome)


# --------------------------------------------------------------------------- transaction ends


def txn_end_start(state: PgState, outcome: str) -> Span | None:
    """commit()/rollback()/close()/a transaction block's end: a span if the transaction wrote."""
    try:
        with state.lock:
            if state.scopes.txn_id is None or not state.scopes.written:
                return None
        operation = "COMMIT" if outcome == "commit" else "ROLLBACK"
        return state.tracer.start_span(
            operation, kind=SpanKind.CLIENT, attributes=txn_attrs(STORE, state.dbname, operation)
        )
    except Exception:
        _log.debug("starting the transaction span failed", exc_info=True)
        return None


def txn_end_done(
    state: PgState,
    span: Span | None,
    outcome: str,
    still_open: bool,
    exc: BaseException | None = None,
) -> None:
    """After the call: the transaction ended (unless `still_open`) with `outcome`."""
    try:
        with state.lock:
            txn, subs = (None, []) if still_open else state.scopes.end()
        if exc is not None:
            outcome = "rollback"
        if span is None:
            if txn is not None:  # wrote between start and now (another thread): report anyway
                span = state.tracer.start_span(
                    "COMMIT" if outcome == "commit" else "ROLLBACK", kind=SpanKind.CLIENT
                )
            else:
                return
        if txn is not None:
            span.set_attribute(A.TXN_ID, txn)
            span.set_attribute(A.TXN_OUTCOME, outcome)
            emit_scope_ends(state, span, subs, outcome)
        if exc is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.record_exception(exc)
        span.end()
    except Exception:
        _log.debug("recording the transaction end failed", exc_info=True)


@contextmanager
def txn_ending(state: PgState, outcome: str, still_open: Callable[[], bool]) -> Iterator[None]:
    """Around a driver call that ends the transaction with `outcome` (commit(), rollback(),
    close(), a transaction block's exit); `still_open` tells, after a failure, whether it
    did not end after all."""
    span = txn_end_start(state, outcome)
    try:
        with _suppressed(span):
            yield
    except BaseException as exc:
        txn_end_done(state, span, outcome, still_open(), exc)
        raise
    txn_end_done(state, span, outcome, False)


@contextmanager
def savepoint_ending(state: PgState, name: str, rolled_back: bool) -> Iterator[None]:
    """Around the exit of a nested transaction block: a failed exit rolls it back."""
    try:
        yield
    except BaseException:
        savepoint_end(state, name, True)
        raise
    savepoint_end(state, name, rolled_back)


def savepoint_end(state: PgState, name: str, rolled_back: bool) -> None:
    """A nested transaction block (savepoint) ended."""
    try:
        with state.lock:
            if rolled_back:
                gone = state.scopes.rollback_to(name)
                state.scopes.release(name)
            else:
                gone = []
                state.scopes.release(name)
        if gone:
            emit_scope_ends(state, trace.get_current_span(), gone, "rollback")
    except Exception:
        _log.debug("recording the savepoint end failed", exc_info=True)


# --------------------------------------------------------------------------- cursor reads


class Reads:
    """The open read of each cursor, ended by its finalizer if the cursor is collected."""

    def __init__(self) -> None:
        self._slots: weakref.WeakKeyDictionary[Any, _Slot] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def slot(self, cursor: Any) -> _Slot | None:
        try:
            with self._lock:
                slot = self._slots.get(cursor)
                if slot is None:
                    slot = self._slots[cursor] = _Slot()
                    slot.watch(cursor)
                return slot
        except Exception:
            _log.debug("cannot watch the cursor", exc_info=True)
            return None

    def get(self, cursor: Any) -> tuple[_Slot, _Read] | None:
        try:
            slot = self._slots.get(cursor)
        except Exception:
            return None
        if slot is None or slot.read is None:
            return None
        return slot, slot.read

    def finish(self, cursor: Any) -> None:
        try:
            slot = self._slots.get(cursor)
        except Exception:
            return
        if slot is not None:
            slot.finish()


@dataclass
class Call:
    """A statement call's text and parameter rows, as the driver got them."""

    method: str
    sql: str
    params: list[object] = field(default_factory=list)


def statement_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
    """(sql, params) of execute/executemany; None for what we cannot read (e.g. sql.Composed)."""
    query = args[0] if args else kwargs.get("query", kwargs.get("sql"))
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    if not isinstance(query, str):  # e.g. psycopg's sql.Composed: left to other tracers
        return None
    raw: Any = args[1] if len(args) > 1 else None
    for name in ("params", "params_seq", "vars", "vars_list"):
        if raw is None:
            raw = kwargs.get(name)
    if method == "execute":
        return Call(method, query, [raw if raw is not None else ()])
    if isinstance(raw, (list, tuple)):
        return Call(method, query, list(raw))
    return Call(method, query, [])


# --------------------------------------------------------------------------- driver hooks


Wrapper = Callable[[Any, Any, Any, Any], Any]


class Hooks:
    """The sync statement, fetch and transaction-end wrappers of one DB-API driver.

    Each wrapper has wrapt's signature `(wrapped, instance, args, kwargs)`; psycopg puts them
    on its classes, psycopg2 calls them from its cursor and connection subclasses."""

    def __init__(
        self,
        driver: Driver,
        executor: Callable[[Any], Callable[[str, tuple[Any, ...]], Rows]],
        tracer: Callable[[], trace.Tracer | None],
    ) -> None:
        self.driver = driver
        self.executor = executor
        self.tracer = tracer
        self.reads = Reads()

    def flow(
        self,
        cursor: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rows: list[object] | None = None,
    ) -> Flow | None:
        try:
            if self.tracer() is None:  # the instrumentor is off
                return None
            conn = cursor.connection
            state = state_for(conn, self.driver, self.tracer())
            if state is None:
                return None
            call = statement_call(method, args, kwargs)
            if call is None:
                return None
            return Flow(
                state, self.driver, conn, method, call.sql, call.params if rows is None else rows
            )
        except Exception:
            _log.debug("preparing the observation failed", exc_info=True)
            return None

    def begin(
        self, method: str, cursor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], Flow | None]:
        """Before an execute call: the cursor's last read ends; the (possibly materialised)
        arguments to call with, and the statement's flow if it is traced."""
        self.reads.finish(cursor)
        if not is_instrumentation_enabled():
            return args, None
        args, rows = materialise(method, args, kwargs)
        return args, self.flow(cursor, method, args, kwargs, rows)

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
            args, flow = self.begin(method, instance, args, kwargs)
            if flow is None:
                return wrapped(*args, **kwargs)
            # Our own queries run only after the application's statement succeeded: run
            # first, they could take an error (a dead backend) the application should see.
            with flow.running():
                result = wrapped(*args, **kwargs)
            try:
                execute = self.executor(flow.conn)
                self.keep(instance, run_sync(flow.after(instance, instance.description), execute))
            except Exception:
                _log.debug("recording the statement failed", exc_info=True)
                flow.obs.end()
            return result

        return wrapper

    def seen(self, cursor: Any, rows: list[Any], done: Callable[[_Read], bool]) -> None:
        got = self.reads.get(cursor)
        if got is not None:
            slot, read = got
            observe_rows(slot, read, rows, done(read))

    def fetchone(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        row = wrapped(*args, **kwargs)
        self.seen(instance, [] if row is None else [row], lambda r: row is None or r.point)
        return row

    def fetchmany(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        rows = wrapped(*args, **kwargs)
        self.seen(instance, list(rows), lambda r: short(instance, args, kwargs, rows))
        return rows

    def fetchall(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        rows = wrapped(*args, **kwargs)
        self.seen(instance, list(rows), lambda r: True)
        return rows

    def next(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            row = wrapped(*args, **kwargs)
        except StopIteration:
            self.seen(instance, [], lambda r: True)
            raise
        self.seen(instance, [row], lambda r: r.point)
        return row

    def close(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        self.reads.finish(instance)
        return wrapped(*args, **kwargs)

    def conn_state(self, conn: Any) -> PgState | None:
        if not is_instrumentation_enabled() or self.tracer() is None:
            return None
        return state_for(conn, self.driver, self.tracer())

    def still_open(self, conn: Any) -> bool:
        try:
            return self.driver.status(conn) in (INTRANS, INERROR)
        except Exception:
            return False

    def ending(self, outcome: str) -> Wrapper:
        """commit()/rollback()/close() of a connection (`instance`)."""

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            state = self.conn_state(instance)
            if state is None:
                return wrapped(*args, **kwargs)
            with txn_ending(state, outcome, lambda: self.still_open(instance)):
                return wrapped(*args, **kwargs)

        return wrapper


def short(instance: Any, args: Any, kwargs: Any, rows: Any) -> bool:
    """Whether fetchmany returned fewer rows than asked for (the result is used up)."""
    size = args[0] if args else kwargs.get("size", 0)
    if not isinstance(size, int):
        return True
    return len(rows) < (size or getattr(instance, "arraysize", 1))


def recording(rows: Any, sink: list[object]) -> Any:
    """`rows` (executemany's parameter rows, any iterable) passed through as the driver takes
    them, each kept in `sink` too: a generator is streamed, never drained first (the driver
    may send rows as they come, and the caller's generator runs when it would have run).
    `rows` itself when it is a list or tuple (read again afterwards) or not iterable (the
    driver raises its own error for it)."""
    if isinstance(rows, (list, tuple)):
        sink.extend(rows)
        return rows
    try:
        iterator = iter(rows)
    except TypeError:
        return rows
    return _passing(iterator, sink)


def _passing(iterator: Iterator[Any], sink: list[object]) -> Iterator[Any]:
    for row in iterator:
        sink.append(row)
        yield row


def materialise(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], list[object] | None]:
    """executemany's parameter rows streamed through `recording` (`kwargs` updated in
    place), and the list they are kept in, filled as the driver takes them and read after
    the call; None for other methods."""
    if method != "executemany":
        return args, None
    sink: list[object] = []
    if len(args) > 1:
        return (args[0], recording(args[1], sink), *args[2:]), sink
    for name in ("params_seq", "vars_list"):
        if name in kwargs:
            kwargs[name] = recording(kwargs[name], sink)
    return args, sink
