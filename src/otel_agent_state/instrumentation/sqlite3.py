"""State-aware instrumentation of the standard library's `sqlite3` (SPEC §3).

`SQLite3Instrumentor().instrument(tracer_provider=...)` wraps `sqlite3.connect` so every
connection is a proxy whose cursors are proxies too. Each statement gets one CLIENT span with
the database semantic conventions plus the facts it read or wrote and their versions:

- reads record only the rows the application fetched, and the SELECT span stays open until
  the result is consumed (exhausted, fetchall, a short fetchmany, close, next execute, GC);
- writes pinned by primary key are followed by an untraced `SELECT *` of the row on the same
  connection, giving the version each row now has (`none` once deleted);
- transactions (implicit or explicit) are mutation scopes: writes carry `agentstate.txn.id`
  and `agentstate.committed`, and the span that ends the transaction its outcome.

Nothing of ours ever raises into the application except `StaleReadError` from the read
guard; the application's own sqlite3 errors propagate unchanged.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__, runtime
from .. import attributes as A
from ..core.config import FactRule, Settings, get_settings
from ._dbapi import MAX_ROWS_PER_SPAN as _MAX_ROWS_PER_SPAN
from ._dbapi import ROWID_ALIASES as _ROWID_ALIASES
from ._dbapi import (
    ObservationBase,
    Reaper,
    Scopes,
    Slot,
    annotate,
    insert_key,
    row_version,
    scope_end_spans,
    statement_attrs,
    where_keys,
    where_pk,
)
from ._dbapi import key_part as _key_part
from ._dbapi import quote as _quote
from ._dbapi import row_states as row_states  # tests clear it
from ._dbapi import suppressed as _suppressed
from ._sql import Statement, analyse, split_statements
from ._wrapping import unwrap_ours, wrap_under

_log = logging.getLogger(__name__)

STORE = "sqlite"
_VERSION = __version__
_CONTRIB_PREFIX = "opentelemetry.instrumentation."


# --------------------------------------------------------------------------- connection state


@dataclass(frozen=True, slots=True)
class _Table:
    name: str  # as declared
    columns: tuple[str, ...]  # lower case, table order
    pk: tuple[str, ...]  # lower case, key order; empty: rowid table
    integer_pk: bool  # single INTEGER PRIMARY KEY (a rowid alias)


@dataclass
class _ConnState:
    tracer: trace.Tracer
    # The innermost sqlite3.Connection, for our own untraced queries: a weak reference when
    # the state lives on that very connection (our subclass), so it never keeps it alive.
    ref: Callable[[], Any]
    lock: threading.RLock = field(default_factory=threading.RLock)
    # The application's trace callback and progress handler (the arguments it set them
    # with): switched off around our own queries, so it never sees or counts them.
    trace_callback: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    progress_handler: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    databases: dict[str, str] | None = None  # schema -> namespace
    tables: dict[tuple[str, str], _Table | None] = field(default_factory=dict)
    # The open transaction and its savepoints; a write's txn id is its innermost scope's.
    scopes: Scopes = field(default_factory=Scopes)
    closed: bool = False

    @property
    def raw(self) -> Any:
        return self.ref()

    def namespace(self, schema: str | None = None) -> str:
        with self.lock:
            if self.databases is None:
                self.databases = {}
                try:
                    rows = _meta(self, "PRAGMA database_list")
                    for row in rows:
                        name, path = _text(row[1]), _text(row[2] or "")
                        self.databases[name.lower()] = PurePath(path).stem if path else "memory"
                except Exception:
                    _log.debug("database_list failed", exc_info=True)
            found = self.databases.get((schema or "main").lower())
            return found or (schema.lower() if schema else "main")

    def table(self, schema: str | None, name: str) -> _Table | None:
        key = ((schema or "main").lower(), name.lower())
        with self.lock:
            if key in self.tables:
                return self.tables[key]
            try:
                info = self._load_table(schema, name)
            except Exception:  # e.g. database locked: try again next time, cache nothing
                _log.debug("table_info failed for %s", name, exc_info=True)
                return None
            if len(self.tables) > 1_000:
                self.tables.clear()
            self.tables[key] = info
            return info

    def _load_table(self, schema: str | None, name: str) -> _Table | None:
        prefix = _quote(schema) + "." if schema else ""
        master = "sqlite_temp_master" if (schema or "").lower() == "temp" else "sqlite_master"
        found = _meta(
            self,
            f"SELECT name FROM {prefix}{master} "
            "WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",
            (name,),
        )
        if not found:
            return None
        rows = _meta(self, f"PRAGMA {prefix}table_info({_quote(name)})")
        columns = tuple(_text(row[1]).lower() for row in rows)
        keyed = sorted(
            (int(row[5]), _text(row[1]).lower(), _text(row[2])) for row in rows if row[5]
        )
        pk = tuple(col for _, col, _ in keyed)
        integer_pk = len(keyed) == 1 and keyed[0][2].strip().upper() == "INTEGER"
        return _Table(_text(found[0][0]), columns, pk, integer_pk)

    def forget_tables(self) -> None:
        with self.lock:
            self.tables.clear()
            self.databases = None


def _text(value: object) -> str:
    """Schema text as str whatever the connection's text_factory made of it."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _meta(state: _ConnState, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Our own schema query: untraced, and as plain tuples whatever the row_factory."""
    with _own_query(state) as cursor:
        return list(cursor.execute(query, params).fetchall())


@contextmanager
def _own_query(state: _ConnState) -> Iterator[Any]:
    """A plain cursor for a query of ours: no span (ours or contrib's), the row factory off,
    and the application's trace callback and progress handler off while it runs (restored
    with the arguments it set them with). sqlite3 has no way to hide a query from an
    authorizer without re-preparing the application's statements: see docs/sqlite3.md."""
    raw = state.raw
    if raw is None:
        raise sqlite3.ProgrammingError("connection gone")
    hidden = state.trace_callback is not None, state.progress_handler is not None
    with _suppressed():
        # The C classes' own methods: neither our subclass's nor the application's.
        cursor = sqlite3.Connection.cursor(raw)
        try:
            if hidden[0]:
                sqlite3.Connection.set_trace_callback(raw, None)
            if hidden[1]:
                sqlite3.Connection.set_progress_handler(raw, None, 0)
            cursor.row_factory = None
            yield cursor
        finally:
            try:
                cursor.close()
            finally:
                _restore_hooks(state, raw, hidden)


def _restore_hooks(state: _ConnState, raw: Any, hidden: tuple[bool, bool]) -> None:
    try:
        if hidden[0] and state.trace_callback is not None:
            args, kwargs = state.trace_callback
            sqlite3.Connection.set_trace_callback(raw, *args, **kwargs)
        if hidden[1] and state.progress_handler is not None:
            args, kwargs = state.progress_handler
            sqlite3.Connection.set_progress_handler(raw, *args, **kwargs)
    except Exception:
        _log.debug("cannot restore the application's callbacks", exc_info=True)


_HOOK_ARGUMENTS = {"trace_callback": "trace_callback", "progress_handler": "progress_handler"}


def _remember_hook(state: _ConnState | None, name: str, args: Any, kwargs: Any) -> None:
    """The application set its trace callback or progress handler (None: switched it off)."""
    if state is None:
        return
    callback = args[0] if args else kwargs.get(_HOOK_ARGUMENTS[name])
    setattr(state, name, None if callback is None else (tuple(args), dict(kwargs)))


def _innermost(obj: Any) -> Any:
    """Follow proxy `__wrapped__` chains (ours, contrib's) down to the sqlite3 object.

    `type()`, not `isinstance()`: wrapt proxies forward `__class__`, so a proxy passes
    `isinstance(proxy, sqlite3.Connection)` and would be taken for the real object.
    """
    seen = 0
    while not issubclass(type(obj), (sqlite3.Connection, sqlite3.Cursor)) and seen < 16:
        inner = getattr(obj, "__wrapped__", None)
        if inner is None:
            break
        obj = inner
        seen += 1
    return obj


# contrib instrumentations whose database spans are not a driver statement's: SQLAlchemy's
# statement spans are annotated by our SQLAlchemy layer (never current during the driver
# call), and its `connect` span is current while the dialect's own first queries run.
_NOT_STATEMENT_SCOPES = frozenset({_CONTRIB_PREFIX + "sqlalchemy"})


def _contrib_span(span: Span) -> bool:
    """A recording statement span made by an opentelemetry-python-contrib driver
    instrumentation (the one wrapping this very call)."""
    try:
        if not span.is_recording():
            return False
        scope = getattr(span, "instrumentation_scope", None)
        name = getattr(scope, "name", "") or ""
        if name in _NOT_STATEMENT_SCOPES or getattr(span, "name", None) == "connect":
            return False
        attrs = getattr(span, "attributes", None) or {}
        return bool(
            name.startswith(_CONTRIB_PREFIX) and ("db.system" in attrs or "db.system.name" in attrs)
        )
    except Exception:
        return False


# --------------------------------------------------------------------------- observations


class _Observation(ObservationBase):
    """One statement's span: ours (we end it) or a contrib span we annotate.

    A contrib span ends when execute() returns, before the application fetches. For a
    SELECT under it we then keep a short `agentstate.read <table>` span of our own, a child
    of the contrib span without `db.*` attributes (so not a second database span), that
    carries the fetched rows' facts and ends when our own SELECT span would have ended.
    """

    def __init__(self, state: _ConnState, stmt: Statement, name: str | None = None) -> None:
        self.state = state
        self.stmt = stmt
        self.lock = threading.Lock()
        self.ended = False
        self.tier_set = False
        # Other SQL stores reuse this class with their own connection state (store, tier).
        self.store: str = getattr(state, "store", STORE)
        self.default_tier: str = getattr(state, "tier", "primary")
        self.tier = self.default_tier
        self.read_span: Span | None = None
        namespace = state.namespace(stmt.schema)
        self.namespace = namespace
        table = state.table(stmt.schema, stmt.table) if stmt.table else None
        self.table = table
        summary = name or stmt.summary
        collection = (table.name if table else stmt.table) if stmt.table else None
        attrs = statement_attrs(self.store, namespace, stmt, summary, collection, self.tier)
        current = trace.get_current_span()
        if _contrib_span(current):
            self.span = current
            self.own = False
            annotate(current, attrs)  # both sets of attributes
        else:
            self.span = state.tracer.start_span(summary, kind=SpanKind.CLIENT, attributes=attrs)
            self.own = True
        self.read_facts: dict[str, str] = {}
        self.rows_seen = 0

    def open_read_span(self) -> None:
        """Contrib span outermost: our read span for the rows the application will fetch.

        Opened while the contrib span is still current and open, so span processors give it
        the contrib span's agent, decision and mutation scopes.
        """
        if self.own or self.read_span is not None:
            return
        table = self.table.name if self.table else (self.stmt.table or "")
        self.read_span = self.state.tracer.start_span(
            f"agentstate.read {table}" if table else "agentstate.read",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={A.STORE: self.store, A.TIER: self.tier, A.OP: "read"},
        )

    def physical(self, pk_values: Sequence[object]) -> str:
        table = self.table.name if self.table else (self.stmt.table or "")
        key = ",".join(_key_part(v) for v in pk_values)
        return f"{self.store}:{self.namespace}/{table}/{key}"

    def table_key(self) -> str:
        table = self.table.name if self.table else (self.stmt.table or "")
        return f"{self.store}:{self.namespace}/{table}"

    def fail(self, exc: BaseException) -> None:
        try:
            status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            targets = [self.span] if self.own or self.span.is_recording() else []
            if self.read_span is not None:
                targets.append(self.read_span)
            for span in targets:
                span.set_status(status)
                span.record_exception(exc)
            self.end()
        except Exception:
            _log.debug("recording the error failed", exc_info=True)

    def end(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended = True
        if self.read_span is not None:
            self.read_span.end()
        if self.own:
            self.span.end()


# --------------------------------------------------------------------------- reads


class _Read:
    """An open SELECT observation: facts are added as the application fetches rows."""

    def __init__(self, obs: _Observation, params: object, description: Any) -> None:
        self.obs = obs
        stmt = obs.stmt
        table = obs.table
        self.columns: list[str | None] = []
        self.names: list[str] = []
        self.pk: tuple[str, ...] = ()
        self.where_pk: list[object] | None = None
        self.point = False
        self.trackable = False
        self.fetched_any = False
        self.full = False
        self.reason: str | None = None
        names = [str(d[0]) for d in description] if description else []
        self.names = names
        if stmt.unresolved:
            self.reason = stmt.unresolved
        elif table is None:
            self.reason = "unknown table"
        else:
            if stmt.star and len(stmt.projection) == 1:
                mapped: list[str | None] = [n.lower() for n in names]
            elif len(stmt.projection) == len(names) and not stmt.star:
                mapped = [c.lower() if c else None for c in stmt.projection]
            else:
                mapped = [n.lower() if n.lower() in table.columns else None for n in names]
            self.columns = [
                c if c is not None and (c in table.columns or c in _ROWID_ALIASES) else None
                for c in mapped
            ]
            self.pk = table.pk or ("rowid",)
            self.where_pk = where_pk(stmt, self.pk, params)
            self.point = self.where_pk is not None and stmt.where_reason is None
            projected = set(self.columns)
            has_pk_columns = all(
                (c in projected) or (c == "rowid" and projected & set(_ROWID_ALIASES))
                for c in self.pk
            )
            self.trackable = self.where_pk is not None or has_pk_columns
            self.full = bool(table.columns) and set(table.columns) <= projected
            if not self.trackable:
                self.reason = "rows not identified by primary key"
        if self.reason:
            obs.unresolved(self.reason)

    def rows(self, rows: Iterable[Any]) -> None:
        if not self.trackable:
            return
        settings = get_settings()
        for row in rows:
            if self.obs.rows_seen >= _MAX_ROWS_PER_SPAN:
                break
            self.obs.rows_seen += 1
            self.fetched_any = True
            values = self._values(row)
            if values is None:
                continue
            pk_values: list[object] = []
            for column in self.pk:
                names = _ROWID_ALIASES if column == "rowid" else (column,)
                name = next((n for n in names if n in values), None)
                if name is None:
                    break
                pk_values.append(values[name])
            if len(pk_values) != len(self.pk):
                if self.where_pk is None:
                    continue
                pk_values = list(self.where_pk)
            physical = self.obs.physical(pk_values)
            fact, rule = self.obs.fact(settings, physical)
            data = {k: v for k, v in values.items() if k not in _ROWID_ALIASES or k in self.pk}
            version = row_version(settings, rule, physical, data, self.full)
            self.obs.read_facts.pop(fact, None)
            self.obs.read_facts[fact] = version
        self.obs.record_reads()

    def _values(self, row: Any) -> dict[str, object] | None:
        try:
            if isinstance(row, Mapping):
                items = [row.get(n) for n in self.names]
            elif isinstance(row, (tuple, list, sqlite3.Row)) and len(row) == len(self.names):
                items = [row[i] for i in range(len(self.names))]
            else:
                raise TypeError(f"row of type {type(row).__name__}")
        except Exception:
            self.obs.unresolved("row factory")  # we do not guess at custom row shapes
            return None
        return {c: v for c, v in zip(self.columns, items, strict=False) if c is not None}

    def missing(self) -> None:
        """The result ended with no row: a point lookup saw the fact absent."""
        if self.point and not self.fetched_any and self.where_pk is not None:
            settings = get_settings()
            fact, _ = self.obs.fact(settings, self.obs.physical(self.where_pk))
            self.obs.read_facts[fact] = "none"
            self.obs.record_reads()


# --------------------------------------------------------------------------- span reaper


# Cursor proxies that are garbage-collected end their open SELECT span (on this thread).
_reaper = Reaper("agentstate-sqlite3")


class _Slot(Slot["_Read"]):
    """The open read of one cursor proxy, reachable from its finalizer without the proxy."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_reaper)


# --------------------------------------------------------------------------- statements


def _statement(
    slot: _Slot,
    state: _ConnState | None,
    call: Callable[..., Any],
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cursor: Any,
) -> Any:
    """One execute/executemany/executescript of `cursor` (the sqlite3 object) by `call`."""
    slot.finish()
    if state is None or not is_instrumentation_enabled():
        return call(*args, **kwargs)
    prepared: _Prepared | None = None
    try:
        prepared = _prepare(state, method, args, kwargs)
    except Exception:
        _log.debug("preparing the observation failed", exc_info=True)
    if prepared is None:
        return call(*args, **kwargs)
    obs = prepared.obs
    try:
        with _suppressed(obs.span if obs.own else None):
            result = call(*prepared.args, **kwargs)
    except BaseException as exc:
        _after_failure(prepared, exc)
        raise
    try:
        read = _after_success(prepared, cursor)
        if read is not None:
            slot.read = read
    except Exception:
        _log.debug("recording the statement failed", exc_info=True)
        obs.end()
    return result


def _connection_collected(state: _ConnState) -> None:
    """A connection proxy was collected with writes still in its transaction: discarded."""
    if state.closed:
        return
    txn_id, savepoints = state.scopes.end()
    if txn_id is None:
        return

    def emit() -> None:
        try:
            span = state.tracer.start_span(
                "ROLLBACK", kind=SpanKind.CLIENT, attributes=_txn_attrs(state, "ROLLBACK")
            )
            span.set_attribute(A.TXN_ID, txn_id)
            span.set_attribute(A.TXN_OUTCOME, "rollback")
            scope_end_spans(state.tracer, STORE, span, savepoints, "rollback")
            span.end()
        except Exception:
            _log.debug("reporting a discarded transaction failed", exc_info=True)

    # Same reason as cursors: never emit from inside a weakref callback (it may run while a
    # span processor holds its lock); at interpreter exit no thread starts, so emit here.
    try:
        threading.Thread(target=emit, name="agentstate-sqlite3-txn", daemon=True).start()
    except Exception:
        emit()


def _txn_attrs(state: _ConnState, operation: str) -> dict[str, Any]:
    namespace = state.databases.get("main", "main") if state.databases else "main"
    return {
        A.STORE: STORE,
        A.DB_SYSTEM_NAME: STORE,
        A.DB_NAMESPACE: namespace,
        A.DB_OPERATION_NAME: operation,
        A.DB_QUERY_SUMMARY: operation,
    }


def _end_transaction(
    state: _ConnState, outcome: str, call: Callable[[], Any], closing: bool = False
) -> Any:
    """commit()/rollback()/`with conn:`/close(): a span when it ends a transaction with writes."""
    if not is_instrumentation_enabled():
        return call()
    span: Span | None = None
    txn_id: str | None = None
    try:
        with state.lock:
            if state.scopes.written and not state.closed:
                txn_id = state.scopes.txn_id
        if txn_id is not None and closing and not state.raw.in_transaction:
            txn_id = None
        if txn_id is not None:
            state.namespace()
            operation = "COMMIT" if outcome == "commit" else "ROLLBACK"
            span = state.tracer.start_span(
                operation, kind=SpanKind.CLIENT, attributes=_txn_attrs(state, operation)
            )
            span.set_attribute(A.TXN_ID, txn_id)
    except Exception:
        _log.debug("starting the transaction span failed", exc_info=True)
    try:
        with _suppressed(span):
            result = call()
    except BaseException as exc:
        try:
            # A failed COMMIT leaves the transaction open; anything else ended it.
            still_open = not closing and bool(state.raw.in_transaction)
            savepoints = [] if still_open else _txn_reset(state)
            if span is not None:
                if not still_open:
                    span.set_attribute(A.TXN_OUTCOME, "rollback")
                    scope_end_spans(state.tracer, STORE, span, savepoints, "rollback")
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                span.record_exception(exc)
                span.end()
        except Exception:
            _log.debug("recording the failed transaction end failed", exc_info=True)
        raise
    try:
        savepoints = _txn_reset(state)
        if span is not None:
            span.set_attribute(A.TXN_OUTCOME, outcome)
            scope_end_spans(state.tracer, STORE, span, savepoints, outcome)
            span.end()
    except Exception:
        _log.debug("recording the transaction end failed", exc_info=True)
    return result


def _txn_reset(state: _ConnState) -> list[str]:
    """The transaction ended: forget it; its savepoint scopes that wrote, to end with it."""
    with state.lock:
        _, savepoints = state.scopes.end()
        try:
            # Python >= 3.12 with autocommit=False opens the next transaction at once.
            if not state.closed and state.raw.in_transaction:
                state.scopes.begin()
        except Exception:
            pass
    return savepoints


# --------------------------------------------------------------------------- statement flow


@dataclass
class _Prepared:
    method: str
    obs: _Observation
    args: tuple[Any, ...]
    params: list[object]  # one entry per row for executemany (filled as sqlite3 consumes)
    was_in: bool
    scripts: tuple[Statement, ...] = ()


def _prepare(
    state: _ConnState, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Prepared | None:
    if state.closed:
        return None
    sql = args[0] if args else kwargs.get("sql", kwargs.get("sql_script"))
    if not isinstance(sql, str):
        return None
    params: list[object] = []
    new_args = args
    scripts: tuple[Statement, ...] = ()
    was_in = bool(state.raw.in_transaction)
    if method == "executescript":
        scripts = tuple(analyse(part) for part in split_statements(sql))
        stmt = _script_statement(scripts)
        if was_in and _legacy_txn(state):
            # sqlite3 commits a pending transaction before it runs a script.
            _end_transaction(state, "commit", lambda: None)
            with state.lock:
                state.scopes.end()
            was_in = False
    else:
        stmt = analyse(sql)
        raw_params: Any = args[1] if len(args) > 1 else kwargs.get("parameters", ())
        if method == "execute":
            params = [raw_params]
        elif isinstance(raw_params, (list, tuple)):
            params = list(raw_params)
        elif raw_params is not None and not isinstance(raw_params, (str, bytes)):
            new_args = (args[0], _recording(raw_params, params), *args[2:])
    obs = _Observation(state, stmt, name=stmt.summary)
    return _Prepared(method, obs, new_args, params, was_in, scripts)


def _recording(source: Any, sink: list[object]) -> Iterator[object]:
    """Pass executemany's parameter rows through, keeping them for the row facts."""
    for item in source:
        sink.append(item)
        yield item


def _legacy_txn(state: _ConnState) -> bool:
    autocommit = getattr(state.raw, "autocommit", None)
    legacy = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", None)
    return autocommit is None or autocommit == legacy


def _script_statement(parts: tuple[Statement, ...]) -> Statement:
    if len(parts) == 1:
        return parts[0]
    operations = {p.operation for p in parts}
    operation = operations.pop() if len(operations) == 1 else "OTHER"
    tables = {p.table for p in parts if p.table}
    table = tables.pop() if len(tables) == 1 and operation != "OTHER" else None
    return Statement(operation=operation, table=table, unresolved="script", multiple=True)


def _txn_after(prepared: _Prepared, wrote: bool) -> None:
    """Follow the connection's transaction across one statement (implicit BEGIN included)."""
    obs = prepared.obs
    state = obs.state
    now_in = bool(state.raw.in_transaction)
    scopes = state.scopes
    with state.lock:
        if prepared.was_in and not now_in:
            txn_id, savepoints = scopes.end()
            if txn_id is not None:
                outcome = "rollback" if obs.stmt.operation == "ROLLBACK" else "commit"
                obs.span.set_attribute(A.TXN_ID, txn_id)
                obs.span.set_attribute(A.TXN_OUTCOME, outcome)
                scope_end_spans(state.tracer, STORE, obs.span, savepoints, outcome)
        if now_in:
            scopes.begin()
            # ROLLBACK TO undoes the writes made since the savepoint: they never commit.
            undone = scopes.follow(obs.stmt)
            scope_end_spans(state.tracer, STORE, obs.span, undone, "rollback")
        else:
            scopes.end()
        if wrote:
            if now_in:
                obs.span.set_attribute(A.COMMITTED, False)
                obs.span.set_attribute(A.TXN_ID, scopes.wrote())
            else:
                obs.span.set_attribute(A.COMMITTED, True)


def _after_failure(prepared: _Prepared, exc: BaseException) -> None:
    try:
        _txn_after(prepared, wrote=False)
    except Exception:
        _log.debug("transaction bookkeeping failed", exc_info=True)
    prepared.obs.fail(exc)


def _after_success(prepared: _Prepared, cursor: Any) -> _Read | None:
    obs = prepared.obs
    stmt = obs.stmt
    state = obs.state
    if stmt.operation in ("DDL", "OTHER") or prepared.method == "executescript":
        state.forget_tables()
    if prepared.method == "executescript":
        written = [p for p in prepared.scripts if p.is_write]
        if written:
            settings = get_settings()
            facts: dict[str, str] = {}
            for part in written:
                table = state.table(part.schema, part.table) if part.table else None
                name = table.name if table else (part.table or "")
                ns = state.namespace(part.schema)
                fact = settings.resolve(f"{STORE}:{ns}/{name}").key
                facts[fact] = settings.digest(secrets.token_bytes(16))
            obs.span.set_attribute(A.OP, "write")
            obs.span.set_attribute(A.WRITE_FACTS, list(facts))
            obs.span.set_attribute(A.WRITE_VERSIONS, list(facts.values()))
            obs.unresolved("script")
        _txn_after(prepared, wrote=bool(written))
        obs.end()
        return None
    if stmt.is_write:
        wrote = getattr(cursor, "rowcount", -1) != 0
        try:
            if wrote:
                _record_writes(prepared, cursor)
        except Exception:
            _log.debug("recording writes failed", exc_info=True)
        # RETURNING rows are not tracked as reads: the write is what counts.
        _txn_after(prepared, wrote=wrote)
        obs.end()
        return None
    _txn_after(prepared, wrote=False)
    if stmt.operation == "SELECT" and prepared.method == "execute":
        description = getattr(cursor, "description", None)
        read = _Read(obs, prepared.params[0] if prepared.params else (), description)
        if not obs.own and read.trackable:
            if read.where_pk is not None:  # a point lookup: its rule's tier from the start
                obs.fact(get_settings(), obs.physical(read.where_pk))
            obs.open_read_span()
        return read
    obs.end()
    return None


def _pinned_writes(prepared: _Prepared, cursor: Any) -> tuple[list[list[object]], str | None]:
    """Primary-key values of the rows a write touched, or the reason they are unknown."""
    obs = prepared.obs
    stmt = obs.stmt
    table = obs.table
    if stmt.unresolved:
        return [], stmt.unresolved
    if table is None:
        return [], "unknown table"
    pk = table.pk
    rows = prepared.params
    if stmt.operation in ("INSERT", "REPLACE"):
        columns = [c.lower() for c in stmt.insert_columns] or list(table.columns)
        if not pk:
            pk = ("rowid",)
        keys: list[list[object]] = []
        for params in rows:
            for row in stmt.insert_rows:
                by_column = dict(zip(columns, row, strict=False))
                names = list(pk)
                if pk == ("rowid",):
                    names = [next((n for n in _ROWID_ALIASES if n in by_column), "rowid")]
                key = insert_key(by_column, names, params)
                if key is not None:
                    keys.append(key)
                    continue
                last = getattr(cursor, "lastrowid", None)
                if (
                    table.integer_pk
                    and not stmt.upsert
                    and prepared.method == "execute"
                    and len(stmt.insert_rows) == 1
                    and isinstance(last, int)
                    and last > 0
                    and getattr(cursor, "rowcount", -1) == 1
                ):
                    keys.append([last])
                    continue
                return [], "primary key not given"
        return keys, None
    if stmt.operation == "UPDATE" and pk and {c.lower() for c in stmt.set_columns} & set(pk):
        return [], "primary key updated"
    return where_keys(stmt, pk or ("rowid",), rows)


def _record_writes(prepared: _Prepared, cursor: Any) -> None:
    obs = prepared.obs
    stmt = obs.stmt
    settings = get_settings()
    keys, reason = _pinned_writes(prepared, cursor)
    if reason is not None or not keys:
        facts = obs.table_write(settings, reason or "no rows")
    else:
        facts = {}
        table = obs.table
        assert table is not None
        pk = table.pk or ("rowid",)
        where = " AND ".join(f"{_quote(c)} = ?" for c in pk)
        prefix = _quote(stmt.schema) + "." if stmt.schema else ""
        query = f"SELECT * FROM {prefix}{_quote(table.name)} WHERE {where}"
        for key in keys[:_MAX_ROWS_PER_SPAN]:
            physical = obs.physical(key)
            fact, rule = obs.fact(settings, physical)
            facts.pop(fact, None)
            facts[fact] = _current_version(obs.state, settings, rule, physical, query, key)
    obs.set_writes(facts)


def _current_version(
    state: _ConnState,
    settings: Settings,
    rule: FactRule | None,
    physical: str,
    query: str,
    key: list[object],
) -> str:
    """The version a row has right now, read through a separate untraced raw cursor."""
    with _own_query(state) as cursor:
        cursor.execute(query, key)
        names = [str(d[0]).lower() for d in cursor.description or ()]
        row = cursor.fetchone()
    if row is None:
        return "none"
    return row_version(settings, rule, physical, dict(zip(names, row, strict=False)))


# --------------------------------------------------------------------------- instrumentor


def instrument_connection(connection: Any, tracer_provider: Any = None) -> Any:
    """Trace an already-open sqlite3 connection: one our `connect` opened is traced in place
    (and returned); any other gets a proxy to use instead, with a proxy's limits (the C
    code rejects it in `backup()`, `sqlite3.Cursor(conn)`, ...: docs/sqlite3.md)."""
    from . import _sqlite3_classes as classes

    if isinstance(connection, TracedConnection):
        return connection
    tracer = trace.get_tracer(__name__, _VERSION, tracer_provider=tracer_provider)
    if classes.attach(connection, tracer):
        return connection
    return TracedConnection(connection, tracer)


def uninstrument_connection(connection: Any) -> Any:
    """Stop tracing a connection: the plain connection behind a proxy from
    `instrument_connection`, or the connection itself, untraced from now on."""
    from . import _sqlite3_classes as classes

    if isinstance(connection, TracedConnection):
        return connection.__wrapped__
    classes.detach(connection)
    return connection


def is_traced(connection: Any) -> bool:
    """Whether statements on `connection` are observed by us (a connection or a proxy)."""
    return bool(getattr(connection, "_agentstate_traced", False))


_FACTORY_ARG = 5  # sqlite3.connect(database, timeout, detect_types, isolation_level,
# check_same_thread, factory, ...)


class SQLite3Instrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps `sqlite3.connect` (and `sqlite3.dbapi2.connect`) so connections are traced.

    Coexistence with contrib's sqlite3 instrumentation (SPEC §2), whatever the load order:
    our wrapper goes under wrappers already there (innermost, next to the real function), so
    contrib's span is the database span and we annotate it. `unwrap()` (what contrib's
    uninstrument calls) removes the outermost wrapper whoever owns it; with ours innermost it
    only ever removes contrib's, and our uninstrument takes out our own wrapper wherever it is.
    """

    _connect_wrapper: Callable[..., Any] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(__name__, _VERSION, tracer_provider=kwargs.get("tracer_provider"))

        from . import _sqlite3_classes as classes

        def connect(wrapped: Any, instance: Any, args: Any, kw: Any) -> Any:
            # Our subclass of the connection class asked for (the C code accepts it where it
            # rejects a proxy); a factory that is not a sqlite3.Connection class gets a proxy.
            try:
                if len(args) > _FACTORY_ARG:
                    traced = classes.connection_class(args[_FACTORY_ARG])
                    if traced is not None:
                        args = (*args[:_FACTORY_ARG], traced, *args[_FACTORY_ARG + 1 :])
                else:
                    traced = classes.connection_class(kw.get("factory", sqlite3.Connection))
                    if traced is not None:
                        kw = {**kw, "factory": traced}
            except Exception:
                _log.debug("cannot derive the connection class", exc_info=True)
            connection = wrapped(*args, **kw)
            try:
                if not classes.attach(connection, tracer):
                    return TracedConnection(connection, tracer)
            except Exception:
                _log.debug("cannot trace the connection", exc_info=True)
            return connection

        import sqlite3.dbapi2 as dbapi2

        self._connect_wrapper = connect
        for module in (sqlite3, dbapi2):
            wrap_under(module, "connect", connect)
        runtime.mark_driver("sqlite3", True)

    def _uninstrument(self, **kwargs: Any) -> None:
        import sqlite3.dbapi2 as dbapi2

        runtime.mark_driver("sqlite3", False)
        ours = self._connect_wrapper
        self._connect_wrapper = None
        for module in (sqlite3, dbapi2):
            if ours is not None:
                unwrap_ours(module, "connect", ours)


# The proxies (instrument_connection of a connection our `connect` did not open): their own
# module; imported last, as they build on everything above.
from ._sqlite3_proxy import TracedConnection, TracedCursor  # noqa: E402

__all__ = [
    "SQLite3Instrumentor",
    "TracedConnection",
    "TracedCursor",
    "instrument_connection",
    "is_traced",
    "uninstrument_connection",
]
