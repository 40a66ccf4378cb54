"""What the MySQL/MariaDB instrumentations (PyMySQL, mysqlclient, aiomysql) share.

The per-statement logic is the sqlite3 module's (`_Observation`, `_Read`, the version and key
helpers), as for PostgreSQL; this module adds what differs for MySQL: primary keys from
`information_schema` (cached per connection), the current database as the fact key's
namespace, the transaction followed from the server status flags (or, where the driver does
not expose them, from the statements and calls that begin and end one), and our own follow-up
queries: catalog lookups before the application's statement (an unbuffered result would make
them impossible after it), row read-backs after a write as locking reads, so they never
establish the application's REPEATABLE READ snapshot early.

Our queries are generators of `Batch`es run by `_postgres.run_sync` / `run_async`, so the
sync and async drivers share one implementation.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__
from .. import attributes as A
from ..core.config import get_settings
from ._dbapi import (
    MAX_ROWS_PER_SPAN,
    Scopes,
    based_on_own_read,
    read_back_versions,
    scope_end_spans,
    txn_attrs,
)
from ._dbapi import suppressed as _suppressed
from ._postgres import Batch, Rows, Step
from ._sql import analyse
from .sqlite3 import _Observation, _pinned_writes, _Prepared, _Read

_log = logging.getLogger(__name__)

STORE = "mysql"
VERSION = __version__
TIERS = ("primary", "replica")
_MAX_TABLES = 512
_TABLE_OPS = ("SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE")
# Server errors after which the transaction is gone: deadlock (the server rolled it back),
# lost connection (the server rolls back an open transaction of a dead session).
_TXN_LOST = {1213, 2006, 2013, 2055}

_USE = re.compile(r"\s*(?:/\*.*?\*/\s*)*use\s", re.IGNORECASE | re.DOTALL)

_CATALOG = (
    "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.EXTRA, k.ORDINAL_POSITION"
    " FROM information_schema.COLUMNS c"
    " LEFT JOIN information_schema.KEY_COLUMN_USAGE k ON k.TABLE_SCHEMA = c.TABLE_SCHEMA"
    "  AND k.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME"
    "  AND k.CONSTRAINT_NAME = 'PRIMARY'"
    " WHERE c.TABLE_SCHEMA = %s AND c.TABLE_NAME = %s"
    " ORDER BY c.ORDINAL_POSITION"
)
_OTHER_UNIQUE = (
    "SELECT COUNT(*) FROM information_schema.STATISTICS"
    " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY'"
)


class Driver(Protocol):
    """What the shared code needs to know about a connection, whatever the driver."""

    module: str

    def in_trans(self, conn: Any) -> bool | None: ...  # None: the driver cannot tell
    def autocommit(self, conn: Any) -> bool: ...
    def busy(self, conn: Any) -> bool: ...  # an unbuffered result is still being read
    def server(self, conn: Any) -> str: ...


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# --------------------------------------------------------------------------- parameters


def bind_params(raw: Any) -> object:
    """Parameters as the analyser's values resolve them: PyMySQL and mysqlclient take a single
    scalar for one `%s`."""
    if raw is None:
        return ()
    if isinstance(raw, (tuple, list, dict)) or hasattr(raw, "keys"):
        return raw
    return (raw,)


# --------------------------------------------------------------------------- connection state


@dataclass(frozen=True, slots=True)
class MyTable:
    name: str  # as the catalog spells it
    columns: tuple[str, ...]  # lower case, table order
    pk: tuple[str, ...]  # lower case, key order; empty: no primary key
    integer_pk: bool  # a single AUTO_INCREMENT key (the driver's lastrowid names the row)
    sql_name: str  # quoted, database-qualified
    other_unique: bool = True  # a unique key besides the primary key (REPLACE may hit it)


class MyState:
    """Per-connection state; duck-types the sqlite3 connection state `_Observation` uses."""

    store = STORE

    def __init__(self, tracer: trace.Tracer, tier: str = "primary") -> None:
        self.tracer = tracer
        self.tier = tier
        self.dbname: str | None = None  # DATABASE(), asked once (again after USE)
        self.system = STORE  # db.system.name: `mariadb` on a MariaDB server
        self.lock = threading.RLock()
        self.tables: OrderedDict[tuple[str, str], MyTable | None] = OrderedDict()
        self.scopes = Scopes()
        self.in_txn = False  # followed here for drivers that cannot tell
        self.unbuffered: weakref.ref[Any] | None = None  # cursor with a result being read
        # What the connection said of the application's last statement before our queries
        # replaced it (a driver whose connection keeps it in C: mysqlclient).
        self.masked: tuple[Any, ...] | None = None
        self.enabled = True

    def namespace(self, schema: str | None = None) -> str:
        return schema or self.dbname or ""

    def _key(self, schema: str | None, name: str) -> tuple[str, str]:
        return (schema or self.dbname or "", name)

    def table(self, schema: str | None, name: str) -> MyTable | None:
        """The cached catalog entry (never queries: see `resolve_table`)."""
        with self.lock:
            return self.tables.get(self._key(schema, name))

    def known(self, schema: str | None, name: str) -> bool:
        with self.lock:
            return self._key(schema, name) in self.tables

    def remember(self, schema: str | None, name: str, table: MyTable | None) -> None:
        with self.lock:
            self.tables[self._key(schema, name)] = table
            while len(self.tables) > _MAX_TABLES:
                self.tables.popitem(last=False)

    def forget_tables(self) -> None:
        with self.lock:
            self.tables.clear()


_states: weakref.WeakKeyDictionary[Any, MyState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_for(conn: Any, tracer: trace.Tracer | None) -> MyState | None:
    """The connection's state, created on first use; None when it is not to be traced."""
    try:
        with _states_lock:
            state = _states.get(conn)
            if state is None:
                if tracer is None:
                    return None
                state = _states[conn] = MyState(tracer)
        return state if state.enabled else None
    except Exception:
        _log.debug("no state for the connection", exc_info=True)
        return None


def configure_connection(
    conn: Any, module: str, tracer: trace.Tracer | None, tier: str | None, tracer_provider: Any
) -> Any:
    """`instrument_connection` of a driver module: a tier (`replica` for a read replica) and
    a tracer provider of its own; returns the connection itself."""
    if tier is not None and tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if tracer is None or tracer_provider is not None:
        tracer = trace.get_tracer(module, VERSION, tracer_provider=tracer_provider)
    with _states_lock:
        state = _states.get(conn)
        if state is None:
            state = _states[conn] = MyState(tracer)
        else:
            state.tracer = tracer
        if tier is not None:
            state.tier = tier
        state.enabled = True
    return conn


def disable_connection(conn: Any) -> Any:
    with _states_lock:
        state = _states.get(conn)
        if state is not None:
            state.enabled = False
    return conn


def busy(state: MyState, driver: Driver, conn: Any) -> bool:
    """Whether a query of ours would break a result the application is still reading."""
    try:
        if driver.busy(conn):
            return True
        pending = state.unbuffered() if state.unbuffered is not None else None
        return pending is not None
    except Exception:
        return True


# --------------------------------------------------------------------------- catalog


def resolve_table(state: MyState, schema: str | None, name: str) -> Step[None]:
    """Look a table's columns and primary key up in information_schema (cached)."""
    if state.known(schema, name):
        return
    database = schema or state.dbname
    if not database:
        return
    results = yield Batch([(_CATALOG, (database, name)), (_OTHER_UNIQUE, (database, name))], False)
    if results is None:
        return  # try again next time
    rows = results[0][1]
    table: MyTable | None = None
    if rows:
        ordered = sorted((int(r[4]), str(r[2]).lower()) for r in rows if r[4] is not None)
        pk = tuple(column for _, column in ordered)
        auto = {str(r[2]).lower() for r in rows if "auto_increment" in str(r[3] or "").lower()}
        table = MyTable(
            str(rows[0][1]),
            tuple(str(r[2]).lower() for r in rows),
            pk,
            len(pk) == 1 and pk[0] in auto,
            quote(str(rows[0][0])) + "." + quote(str(rows[0][1])),
            bool(results[1][1] and int(results[1][1][0][0])),
        )
    state.remember(schema, name, table)


def connection_facts(state: MyState, driver: Driver, conn: Any) -> Step[None]:
    """The current database (the fact keys' namespace) and the server kind, once."""
    if state.dbname is not None:
        return
    results = yield Batch([("SELECT DATABASE()", ())], False)
    if results is None or not results[0][1]:
        return
    value = results[0][1][0][0]
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    state.dbname = str(value) if value is not None else ""
    try:
        if "mariadb" in str(driver.server(conn)).lower():
            state.system = "mariadb"
    except Exception:
        _log.debug("server version unknown", exc_info=True)


# --------------------------------------------------------------------------- statements


class Flow:
    """One statement from before it runs until its span ends (read spans: after fetching)."""

    def __init__(
        self, state: MyState, driver: Driver, conn: Any, method: str, sql: str, params: list[object]
    ) -> None:
        self.state = state
        self.driver = driver
        self.conn = conn
        self.method = method
        self.sql = sql
        self.params = params
        self.stmt = analyse(sql, "mysql")
        self.was_in = self.in_trans()
        self.autocommit_before = self._autocommit()
        self._obs: _Observation | None = None

    @property
    def obs(self) -> _Observation:
        assert self._obs is not None
        return self._obs

    def in_trans(self) -> bool:
        try:
            known = self.driver.in_trans(self.conn)
        except Exception:
            known = None
        return self.state.in_txn if known is None else known

    def _autocommit(self) -> bool:
        try:
            return bool(self.driver.autocommit(self.conn))
        except Exception:
            return True

    def prepare(self) -> Step[None]:
        """Our lookups, before the statement runs (its result may be unbuffered)."""
        state, stmt = self.state, self.stmt
        if busy(state, self.driver, self.conn):
            return
        yield from connection_facts(state, self.driver, self.conn)
        if stmt.table and stmt.operation in _TABLE_OPS:
            yield from resolve_table(state, stmt.schema, stmt.table)

    def start(self) -> None:
        """The statement's span (or the contrib span it annotates), right before it runs."""
        stmt = self.stmt
        written = f"{stmt.schema}.{stmt.table}" if stmt.schema and stmt.table else stmt.table
        summary = stmt.summary
        if written and stmt.operation in _TABLE_OPS:
            summary = f"{stmt.operation} {written}"
        obs = _Observation(cast(Any, self.state), stmt, name=summary)
        if obs.own:
            obs.span.set_attribute(A.DB_SYSTEM_NAME, self.state.system)
            if written:
                obs.span.set_attribute(A.DB_COLLECTION_NAME, written)
        self._obs = obs
        self.prepared = _Prepared(self.method, obs, (), self.params, self.was_in)

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Around the driver call: our span current (if ours), other instrumentation off."""
        with _suppressed(self.obs.span if self.obs.own else None):
            yield

    @contextmanager
    def running(self) -> Iterator[None]:
        try:
            with self.calling():
                yield
        except BaseException as exc:
            self.failed(exc)
            raise

    def failed(self, exc: BaseException) -> None:
        try:
            self.track_txn(wrote=False, exc=exc)
        except Exception:
            _log.debug("transaction bookkeeping failed", exc_info=True)
        self.obs.fail(exc)

    def after(self, cursor: Any) -> Step[_Read | None]:
        """After a successful execute: writes get their versions, reads a `_Read`."""
        obs, stmt, state = self.obs, self.stmt, self.state
        if stmt.operation == "DDL":
            state.forget_tables()
        elif stmt.operation == "OTHER" and _USE.match(self.sql):
            state.dbname = None  # asked again before the next statement
        if obs.table is None and stmt.table and not busy(state, self.driver, self.conn):
            yield from resolve_table(state, stmt.schema, stmt.table)
            obs.table = cast(Any, state.table(stmt.schema, stmt.table))
        if stmt.is_write:
            wrote = getattr(cursor, "rowcount", -1) != 0
            now_in = self.now_in()
            if wrote:
                yield from self.record_writes(cursor, now_in)
            self.track_txn(wrote=wrote)
            obs.end()
            return None
        self.track_txn(wrote=False)
        if stmt.operation == "SELECT" and self.method == "execute":
            params = self.params[0] if self.params else ()
            names = [(str(d[0]),) for d in getattr(cursor, "description", None) or ()]
            result = _Read(obs, params, names)
            if not obs.own and result.trackable:
                if result.where_pk is not None:
                    obs.fact(get_settings(), obs.physical(result.where_pk))
                obs.open_read_span()
            return result
        obs.end()
        return None

    def record_writes(self, cursor: Any, in_txn: bool) -> Step[None]:
        obs = self.obs
        settings = get_settings()
        keys, reason = _pinned_writes(self.prepared, cursor)
        results: list[Rows] | None = None
        table = cast("MyTable | None", obs.table)
        if reason is None and table is not None:
            reason = self._unnamed(table, keys, cursor)
        if reason is not None or not keys or table is None:
            facts = obs.table_write(settings, reason or "no rows")
        else:
            facts = {}
            keys = keys[:MAX_ROWS_PER_SPAN]
            where = " AND ".join(f"{quote(c)} = %s" for c in table.pk)
            # Inside a transaction a locking read: it sees the row as written (we hold its
            # lock already) and, unlike a plain SELECT, does not fix the snapshot of the
            # application's next consistent read.
            lock = " LOCK IN SHARE MODE" if in_txn else ""
            query = f"SELECT * FROM {table.sql_name} WHERE {where}{lock}"
            if not busy(self.state, self.driver, self.conn):
                results = yield Batch([(query, tuple(key)) for key in keys], False)
            read_back_versions(obs, settings, keys, results, facts)
        obs.set_writes(facts)
        if self.stmt.set_from_row and results is not None:
            based_on_own_read(obs, settings, facts)

    def _unnamed(self, table: MyTable, keys: list[list[object]], cursor: Any) -> str | None:
        """Why the keys the statement gives may not be the rows it changed (MySQL's own
        ways for an INSERT to touch other rows, or none)."""
        stmt = self.stmt
        if getattr(stmt, "conflict", None) == () and table.other_unique:
            # REPLACE / ON DUPLICATE KEY fire on any unique key: another row may be the one
            # that was replaced or updated.
            return "upsert on a table with another unique key"
        if getattr(stmt, "ignore", False) and getattr(cursor, "rowcount", -1) != len(keys):
            return "INSERT IGNORE skipped rows"
        return None

    def now_in(self, exc: BaseException | None = None) -> bool:
        """Whether a transaction is open after the statement."""
        if exc is not None:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            return False if code in _TXN_LOST else self.was_in
        try:
            known = self.driver.in_trans(self.conn)
        except Exception:
            known = None
        if known is not None:
            return known
        op, autocommit = self.stmt.operation, self._autocommit()
        if op == "BEGIN":
            return True
        if op in ("COMMIT", "DDL") or (op == "ROLLBACK" and self.stmt.savepoint is None):
            return False
        if autocommit:  # SET autocommit = 1 commits an open transaction
            return self.was_in and self.autocommit_before
        return self.was_in or op in _TABLE_OPS

    def track_txn(self, wrote: bool, exc: BaseException | None = None) -> None:
        """Follow the transaction across one statement (implicit BEGIN, SQL COMMIT, ...)."""
        obs, stmt, state = self.obs, self.stmt, self.state
        now_in = self.now_in(exc)
        with state.lock:
            state.in_txn = now_in
            scopes = state.scopes
            if now_in:
                emit_scope_ends(state, obs.span, scopes.follow(stmt), "rollback")
            if self.was_in and not now_in:
                # A failed statement that ends the transaction (deadlock, lost connection)
                # rolled it back; so does ROLLBACK; anything else committed it (COMMIT, DDL).
                committed = exc is None and stmt.operation != "ROLLBACK"
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


def emit_scope_ends(state: MyState, parent: Span, scopes: list[str], outcome: str) -> None:
    scope_end_spans(state.tracer, STORE, parent, scopes, outcome)


# --------------------------------------------------------------------------- transaction ends


def txn_begun(state: MyState) -> None:
    """begin() on the connection: an explicit transaction."""
    with state.lock:
        state.scopes.end()
        state.scopes.begin()
        state.in_txn = True


def txn_end_start(state: MyState, outcome: str) -> Span | None:
    """commit()/rollback()/close(): a span if the transaction wrote anything."""
    try:
        with state.lock:
            if state.scopes.txn_id is None or not state.scopes.written:
                return None
        operation = "COMMIT" if outcome == "commit" else "ROLLBACK"
        attrs = txn_attrs(STORE, state.namespace(), operation)
        attrs[A.DB_SYSTEM_NAME] = state.system
        return state.tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attrs)
    except Exception:
        _log.debug("starting the transaction span failed", exc_info=True)
        return None


def txn_end_done(
    state: MyState, span: Span | None, outcome: str, exc: BaseException | None = None
) -> None:
    """After the call: the transaction ended with `outcome` (a failed call: rolled back,
    the server discards the transaction of a session it lost)."""
    try:
        with state.lock:
            txn, subs = state.scopes.end()
            state.in_txn = False
        if exc is not None:
            outcome = "rollback"
        if span is None:
            if txn is None:
                return
            span = state.tracer.start_span(
                "COMMIT" if outcome == "commit" else "ROLLBACK", kind=SpanKind.CLIENT
            )
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
def txn_ending(state: MyState, outcome: str) -> Iterator[None]:
    """Around a driver call that ends the transaction with `outcome`."""
    span = txn_end_start(state, outcome)
    try:
        with _suppressed(span):
            yield
    except BaseException as exc:
        txn_end_done(state, span, outcome, exc)
        raise
    txn_end_done(state, span, outcome)
