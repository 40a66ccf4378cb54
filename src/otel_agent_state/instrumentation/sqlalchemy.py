"""State-aware instrumentation of SQLAlchemy 2.x engines (Core and ORM, sync and async).

`SQLAlchemyInstrumentor().instrument(tracer_provider=...)` listens on the `Engine` class, so
every engine (created before or after, and the `sync_engine` of every `AsyncEngine`) is
covered; `instrument_engine(engine)` does the same for one engine. Per statement:

- `before_cursor_execute` notes the start time and analyses the SQL text (`_sql.analyse`
  after the driver's parameter style is brought to SQLite's);
- `after_cursor_execute` (listener inserted first) puts one CLIENT span on it: contrib's
  `context._otel_span` is annotated when present, else a span of ours starts at the noted
  time. Writes pinned by primary key are followed by an untraced `SELECT *` of each row on
  the same DBAPI connection (the version the row now has, `none` once deleted). For a SELECT
  the execution context's DBAPI cursor is replaced by a proxy: SQLAlchemy (Core results, the
  ORM loading objects) fetches through it, so facts are the rows handed up from the driver
  and the read guard runs before they reach SQLAlchemy and the application;
- `handle_error` (listener inserted first) records a failed statement.

Connection `begin`/`commit`/`rollback` events make transactions mutation scopes: writes
carry `agentstate.txn.id` / `agentstate.committed`, and a COMMIT or ROLLBACK span carries
the outcome. That span ends after the DBAPI call returned (the dialect's `do_commit` /
`do_rollback` are wrapped on the dialect instance), so a commit is never dated early.

When one of our driver instrumentations already traces the DBAPI connection (the sqlite3
proxy sets `_agentstate_traced`; others call `runtime.mark_driver`), this layer records
nothing: the driver span carries the facts.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
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
from ._dbapi import OPS as _OPS
from ._dbapi import (
    ObservationBase,
    ObservedCursor,
    Reaper,
    Scopes,
    Slot,
    annotate,
    insert_key,
    row_state_cache,
    row_version,
    scope_end_spans,
    statement_attrs,
    txn_attrs,
    where_keys,
    where_pk,
)
from ._dbapi import key_part as _key_part
from ._dbapi import quote as _quote
from ._dbapi import suppressed as _suppressed
from ._sql import Statement, analyse

_log = logging.getLogger(__name__)

_VERSION = __version__
_INFO_KEY = "_agentstate_sqlalchemy"  # our state in the pool connection's `info` dict
_CTX_ATTR = "_agentstate_pending"  # our per-statement note on the execution context
# dialect.driver -> the module our driver instrumentations register with runtime.mark_driver.
_DRIVER_MODULES = {
    "pysqlite": "sqlite3",
    "psycopg": "psycopg",
    "psycopg_async": "psycopg",
    "psycopg2": "psycopg2",
    "psycopg2cffi": "psycopg2",
    "asyncpg": "asyncpg",
}
# Drivers whose traced connections always carry `_agentstate_traced`: for them the flag alone
# decides, so a connection opened before the driver was instrumented is still recorded here.
_FLAGGING_DRIVERS = frozenset({"pysqlite", "aiosqlite", "pysqlcipher"})


# Rows are encoded and versioned by the drivers' code (`_dbapi`): the same row read through
# SQLAlchemy or through a traced driver gets the same digest version. The projection cache is
# this layer's own, as it always was.
_row_states = row_state_cache()


# --------------------------------------------------------------------------- SQL text

# A PostgreSQL cast SQLAlchemy renders after a bound parameter (`%(id_1)s::INTEGER`).
_CAST = re.compile(
    r"\s*::\s*(?:double\s+precision|character\s+varying|[A-Za-z_][\w.]*)"
    r"(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\s+with(?:out)?\s+time\s+zone)?(?:\s*\[\])*",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%|\$(\d+)|(?<![:\w]):(\d+)\b")


@functools.lru_cache(maxsize=4096)  # per statement text, as the analysis: ~7 µs saved each time
def normalise(sql: str, paramstyle: str) -> str:
    """`sql` with the driver's placeholders in the forms `_sql.analyse` binds (`:name`,
    `?`, `?N`) and the casts after them dropped; quoted text is left alone."""
    if paramstyle in ("qmark", "named"):
        return sql
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            quoted = sql[i : j + 1]
            if paramstyle in ("format", "pyformat"):  # `%%` is `%` inside literals too
                quoted = quoted.replace("%%", "%")
            out.append(quoted)
            i = j + 1
            continue
        found = _PLACEHOLDER.match(sql, i) if c in "%$:" else None
        if found is None:
            out.append(c)
            i += 1
            continue
        text, name, dollar, number = found.group(0), found.group(1), found.group(2), found.group(3)
        if text == "%%":
            out.append("%")
        elif name and paramstyle == "pyformat":
            out.append(":" + name)
        elif text == "%s" and paramstyle in ("format", "pyformat"):
            out.append("?")
        elif dollar and paramstyle == "numeric_dollar":
            out.append("?" + dollar)
        elif number and paramstyle == "numeric":
            out.append("?" + number)
        else:
            out.append(text)
        i = found.end()
        cast = _CAST.match(sql, i)
        if cast is not None and text != "%%":
            i = cast.end()
    return "".join(out)


def _placeholders(paramstyle: str, count: int) -> list[str]:
    if paramstyle == "numeric_dollar":
        return [f"${i + 1}" for i in range(count)]
    if paramstyle == "numeric":
        return [f":{i + 1}" for i in range(count)]
    if paramstyle in ("format", "pyformat"):
        return ["%s"] * count
    return ["?"] * count  # qmark; `named` drivers (none common) also take a sequence here


# --------------------------------------------------------------------------- engine facts


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]  # lower case, table order
    pk: tuple[str, ...]  # lower case, key order; empty: none known
    integer_pk: bool
    key_name: str  # fact-key form, as the driver instrumentations have it
    sql_name: str  # quoted, schema-qualified where the schema is known


def _query(
    dbapi_conn: Any, sql: str, params: Sequence[object] = (), guarded: bool = False
) -> list[Sequence[Any]]:
    """Our own untraced query on the application's DBAPI connection (sync or async adapter).

    `guarded`: inside a PostgreSQL transaction a failing query of ours would abort the
    application's transaction, so it runs under a savepoint there."""
    with _suppressed():
        cursor = dbapi_conn.cursor()
        try:
            if guarded:
                cursor.execute("SAVEPOINT agentstate_probe")
            try:
                if params:
                    cursor.execute(sql, tuple(params))
                else:
                    cursor.execute(sql)
                names = [str(d[0]).lower() for d in cursor.description or ()]
                rows = list(cursor.fetchall())
            except Exception:
                if guarded:
                    cursor.execute("ROLLBACK TO SAVEPOINT agentstate_probe")
                    cursor.execute("RELEASE SAVEPOINT agentstate_probe")
                raise
            if guarded:
                cursor.execute("RELEASE SAVEPOINT agentstate_probe")
        finally:
            with suppress(Exception):
                cursor.close()
    return [_Named(names, row) for row in rows]


class _Named(tuple):  # type: ignore[type-arg]
    """A fetched row as a tuple that also remembers its column names."""

    names: list[str]

    def __new__(cls, names: list[str], row: Any) -> _Named:
        self = super().__new__(cls, tuple(row))
        self.names = names
        return self


class _EngineInfo:
    """What we learn once per engine (pool): namespaces and table shapes."""

    def __init__(self, dialect: Any, url: Any) -> None:
        self.dialect_name = str(getattr(dialect, "name", "") or "sql")
        self.store = self.dialect_name
        self.paramstyle = str(getattr(dialect, "paramstyle", "qmark") or "qmark")
        self.database = getattr(url, "database", None)
        self.lock = threading.RLock()
        self.namespaces: dict[str, str] | None = None
        self.tables: dict[tuple[str, str], _Table | None] = {}

    def namespace(self, dbapi_conn: Any, schema: str | None, guarded: bool = False) -> str:
        """`db.namespace` and the fact key's namespace, as the driver instrumentation has it."""
        with self.lock:
            if self.namespaces is None:
                self.namespaces = {}
                try:
                    self._load_namespaces(dbapi_conn, guarded)
                except Exception:
                    _log.debug("namespace lookup failed", exc_info=True)
            if self.dialect_name == "sqlite":
                found = self.namespaces.get((schema or "main").lower())
                return found or (schema.lower() if schema else "main")
            return self.namespaces.get("", str(self.database or "default"))

    def _load_namespaces(self, dbapi_conn: Any, guarded: bool) -> None:
        assert self.namespaces is not None
        if self.dialect_name == "sqlite":
            for row in _query(dbapi_conn, "PRAGMA database_list"):
                name, path = str(row[1]), str(row[2] or "")
                self.namespaces[name.lower()] = PurePath(path).stem if path else "memory"
        elif self.dialect_name == "postgresql" and not self.database:
            found = _query(dbapi_conn, "SELECT current_database()", guarded=guarded)
            self.namespaces[""] = str(found[0][0])

    def table(
        self, dbapi_conn: Any, schema: str | None, name: str, guarded: bool = False
    ) -> _Table | None:
        key = ((schema or "").lower(), name.lower())
        with self.lock:
            if key in self.tables:
                return self.tables[key]
            try:
                info = self._load_table(dbapi_conn, schema, name, guarded)
            except Exception:  # try again next time
                _log.debug("table lookup failed for %s", name, exc_info=True)
                return None
            if len(self.tables) > 1_000:
                self.tables.clear()
            self.tables[key] = info
            return info

    def _load_table(
        self, dbapi_conn: Any, schema: str | None, name: str, guarded: bool
    ) -> _Table | None:
        if self.dialect_name == "sqlite":
            return self._sqlite_table(dbapi_conn, schema, name)
        if self.dialect_name == "postgresql":
            return self._postgres_table(dbapi_conn, schema, name, guarded)
        return None

    def _sqlite_table(self, dbapi_conn: Any, schema: str | None, name: str) -> _Table | None:
        prefix = _quote(schema) + "." if schema else ""
        master = "sqlite_temp_master" if (schema or "").lower() == "temp" else "sqlite_master"
        found = _query(
            dbapi_conn,
            f"SELECT name FROM {prefix}{master} WHERE type IN ('table', 'view') "
            f"AND name = {_placeholders(self.paramstyle, 1)[0]} COLLATE NOCASE",
            (name,),
        )
        if not found:
            return None
        rows = _query(dbapi_conn, f"PRAGMA {prefix}table_info({_quote(name)})")
        columns = tuple(str(row[1]).lower() for row in rows)
        keyed = sorted((int(row[5]), str(row[1]).lower(), str(row[2])) for row in rows if row[5])
        pk = tuple(col for _, col, _ in keyed)
        integer_pk = len(keyed) == 1 and keyed[0][2].strip().upper() == "INTEGER"
        name = str(found[0][0])
        return _Table(name, columns, pk, integer_pk, name, prefix + _quote(name))

    def _postgres_table(
        self, dbapi_conn: Any, schema: str | None, name: str, guarded: bool
    ) -> _Table | None:
        mark = _placeholders(self.paramstyle, 1)[0]
        qualified = (_quote(schema) + "." if schema else "") + _quote(name)
        sql = (
            "SELECT c.relname, a.attname, "
            "array_position(i.indkey::int2[], a.attnum) AS pkpos, "
            "format_type(a.atttypid, a.atttypmod), n.nspname "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
            "LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary "
            f"WHERE c.oid = to_regclass({mark}) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        )
        rows = _query(dbapi_conn, sql, (qualified,), guarded)
        if not rows and name != name.lower():  # unquoted identifiers fold to lower case
            lowered = (_quote(schema.lower()) + "." if schema else "") + _quote(name.lower())
            rows = _query(dbapi_conn, sql, (lowered,), guarded)
        if not rows:
            return None
        columns = tuple(str(row[1]).lower() for row in rows)
        keyed = sorted(
            (int(row[2]), str(row[1]).lower(), str(row[3])) for row in rows if row[2] is not None
        )
        pk = tuple(col for _, col, _ in keyed)
        integer_pk = len(keyed) == 1 and keyed[0][2] in ("integer", "bigint", "smallint")
        rel, nsp = str(rows[0][0]), str(rows[0][4])
        key_name = rel if nsp == "public" else f"{nsp}.{rel}"
        return _Table(rel, columns, pk, integer_pk, key_name, f"{_quote(nsp)}.{_quote(rel)}")

    def forget(self) -> None:
        with self.lock:
            self.tables.clear()
            self.namespaces = None


_engines: weakref.WeakKeyDictionary[Any, _EngineInfo] = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def _engine_info(conn: Any) -> _EngineInfo:
    engine = conn.engine
    pool = engine.pool
    with _engines_lock:
        info = _engines.get(pool)
        if info is None:
            info = _engines[pool] = _EngineInfo(engine.dialect, engine.url)
        return info


# --------------------------------------------------------------------------- connection state


@dataclass
class _ConnState:
    """Transaction bookkeeping of one DBAPI connection (kept in the pool record's info)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    scopes: Scopes = field(default_factory=Scopes)
    pending: Span | None = None  # COMMIT/ROLLBACK span waiting for the DBAPI call
    pending_outcome: str | None = None
    tracer: trace.Tracer | None = None  # of the last write, for a discarded transaction's span
    attrs: dict[str, Any] = field(default_factory=dict)
    store: str = ""

    def reset(self) -> tuple[str | None, list[str]]:
        self.pending, self.pending_outcome = None, None
        return self.scopes.end()


def _state_of(info: Any) -> _ConnState:
    state = info.get(_INFO_KEY)
    if state is None:
        state = info.setdefault(_INFO_KEY, _ConnState())
    return state  # type: ignore[no-any-return]


def _dbapi_connection(conn: Any) -> Any:
    return conn.connection.dbapi_connection


def _attr(obj: Any, name: str) -> Any:
    try:  # properties of adapters may raise anything (e.g. "no active connection")
        return getattr(obj, name, None)
    except Exception:
        return None


def _flagged(dbapi_conn: Any) -> bool:
    """Whether a driver instrumentation of ours traces this connection (adapters unwrapped)."""
    obj = dbapi_conn
    for _ in range(6):
        if obj is None:
            return False
        if _attr(obj, "_agentstate_traced") is True:
            return True
        obj = next(
            (
                inner
                for name in ("driver_connection", "_conn", "_connection", "__wrapped__")
                if (inner := _attr(obj, name)) is not None and inner is not obj
            ),
            None,
        )
    return False


def _driver_traced(conn: Any) -> bool:
    """The statement is recorded by a driver instrumentation of ours: record nothing here."""
    dialect = conn.dialect
    # Not cached: psycopg's flag is on the connection class and comes and goes with it.
    if _flagged(_dbapi_connection(conn)):
        return True
    driver = str(getattr(dialect, "driver", "") or "")
    if driver in _FLAGGING_DRIVERS:
        return False
    module = _DRIVER_MODULES.get(driver)
    if module is None:
        dbapi = getattr(dialect, "loaded_dbapi", None)
        module = str(getattr(dbapi, "__name__", "") or driver).split(".")[0]
    return runtime.driver_instrumented(module)


def _autocommit(conn: Any) -> bool:
    try:
        check = getattr(conn, "_is_autocommit_isolation", None)
        if check is not None:
            return bool(check())
        return conn.get_isolation_level() == "AUTOCOMMIT"  # type: ignore[no-any-return]
    except Exception:
        return False


def _in_transaction(conn: Any) -> bool:
    """Whether a write now sits in an open database transaction."""
    if _autocommit(conn):
        return False
    raw = _dbapi_connection(conn)
    flag = getattr(raw, "in_transaction", None)  # sqlite3 knows exactly
    if isinstance(flag, bool):
        return flag
    return bool(conn.in_transaction())


# --------------------------------------------------------------------------- observations


def _contrib_span(context: Any) -> Span | None:
    span = getattr(context, "_otel_span", None)
    return span if isinstance(span, Span) else None


def _option(context: Any, name: str) -> str | None:
    try:
        value = (getattr(context, "execution_options", None) or {}).get(name)
    except Exception:
        return None
    return str(value) if value else None


@dataclass
class _Pending:
    stmt: Statement
    start_ns: int
    parameters: Any
    executemany: bool
    listeners: _Listeners


class _Observation(ObservationBase):
    """One statement's span: ours, or contrib's annotated (plus a short read span of ours
    for the rows fetched after contrib's span ended)."""

    def __init__(self, conn: Any, context: Any, pending: _Pending) -> None:
        self.engine = _engine_info(conn)
        self.dbapi_conn = _dbapi_connection(conn)
        self.stmt = pending.stmt
        self.tracer = pending.listeners.tracer
        self.lock = threading.Lock()
        self.ended = False
        # An engine or connection can declare its tier: execution_options(agentstate_tier=...).
        option = _option(context, "agentstate_tier")
        self.tier_set = option is not None
        self.default_tier = "primary"
        self.tier = option or self.default_tier
        self.read_span: Span | None = None
        self.read_facts: dict[str, str] = {}
        self.rows_seen = 0
        stmt = self.stmt
        store = self.engine.store
        self.guarded = self.engine.dialect_name == "postgresql" and not _autocommit(conn)
        self.namespace = self.engine.namespace(self.dbapi_conn, stmt.schema, self.guarded)
        self.table = (
            self.engine.table(self.dbapi_conn, stmt.schema, stmt.table, self.guarded)
            if stmt.table and stmt.operation in _OPS
            else None
        )
        collection = (self.table.name if self.table else stmt.table) if stmt.table else None
        attrs = statement_attrs(store, self.namespace, stmt, stmt.summary, collection, self.tier)
        op = _OPS.get(stmt.operation)
        contrib = _contrib_span(context)
        if contrib is not None and contrib.is_recording():
            self.span = contrib
            self.own = False
            annotate(contrib, attrs)
        else:
            name = stmt.summary
            if contrib is not None:  # contrib's span already ended: ours must not be a db span
                attrs = {k: v for k, v in attrs.items() if not k.startswith("db.")}
                name = f"agentstate.{op or 'statement'} {stmt.table or ''}".strip()
            self.span = self.tracer.start_span(
                name, kind=SpanKind.CLIENT, attributes=attrs, start_time=pending.start_ns
            )
            self.own = True

    def open_read_span(self) -> None:
        if self.own or self.read_span is not None:
            return
        table = self.table.name if self.table else (self.stmt.table or "")
        self.read_span = self.tracer.start_span(
            f"agentstate.read {table}".strip(),
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={A.STORE: self.engine.store, A.TIER: self.tier, A.OP: "read"},
        )

    def _table_part(self) -> str:
        # As the driver instrumentations key rows (PostgreSQL: `schema.table` outside public).
        return self.table.key_name if self.table else (self.stmt.table or "")

    def physical(self, pk_values: Sequence[object]) -> str:
        key = ",".join(_key_part(v) for v in pk_values)
        return f"{self.engine.store}:{self.namespace}/{self._table_part()}/{key}"

    def table_key(self) -> str:
        return f"{self.engine.store}:{self.namespace}/{self._table_part()}"

    def fail(self, exc: BaseException) -> None:
        try:
            status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            targets = [s for s in (self.span, self.read_span) if s is not None]
            for span in targets:
                if span.is_recording():
                    span.set_status(status)
                    span.record_exception(exc)
        except Exception:
            _log.debug("recording the error failed", exc_info=True)
        self.end()

    def end(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended = True
        try:
            if self.read_span is not None:
                self.read_span.end()
            if self.own:
                self.span.end()
        except Exception:
            _log.debug("ending the span failed", exc_info=True)


# --------------------------------------------------------------------------- reads


class _Read:
    """An open SELECT: facts are added as rows come up through the cursor proxy."""

    def __init__(self, obs: _Observation, params: object, description: Any) -> None:
        self.obs = obs
        stmt = obs.stmt
        table = obs.table
        self.names = [str(d[0]) for d in description] if description else []
        self.columns: list[str | None] = []
        self.pk: tuple[str, ...] = ()
        self.where_pk: list[object] | None = None
        self.point = False
        self.trackable = False
        self.full = False
        self.fetched_any = False
        reason: str | None = None
        if stmt.unresolved:
            reason = stmt.unresolved
        elif table is None:
            reason = "unknown table"
        elif not table.pk:
            reason = "no primary key"
        else:
            if stmt.star and len(stmt.projection) == 1:
                mapped: list[str | None] = [n.lower() for n in self.names]
            elif len(stmt.projection) == len(self.names) and not stmt.star:
                mapped = [c.lower() if c else None for c in stmt.projection]
            else:
                mapped = [n.lower() if n.lower() in table.columns else None for n in self.names]
            self.columns = [c if c is not None and c in table.columns else None for c in mapped]
            self.pk = table.pk
            self.where_pk = where_pk(stmt, self.pk, params)
            self.point = self.where_pk is not None and stmt.where_reason is None
            projected = set(self.columns)
            self.trackable = self.where_pk is not None or set(self.pk) <= projected
            self.full = bool(table.columns) and set(table.columns) <= projected
            if not self.trackable:
                reason = "rows not identified by primary key"
        if reason:
            obs.unresolved(reason)

    def rows(self, rows: Sequence[Any]) -> None:
        settings = get_settings()
        obs = self.obs
        for row in rows:
            if obs.rows_seen >= _MAX_ROWS_PER_SPAN:
                break
            obs.rows_seen += 1
            self.fetched_any = True
            values = self._values(row)
            if values is None:
                continue
            pk_values = [values[c] for c in self.pk if c in values]
            if len(pk_values) != len(self.pk):
                if self.where_pk is None:
                    continue
                pk_values = list(self.where_pk)
            physical = obs.physical(pk_values)
            fact, rule = obs.fact(settings, physical)
            version = row_version(settings, rule, physical, values, self.full, _row_states)
            obs.read_facts.pop(fact, None)
            obs.read_facts[fact] = version
        obs.record_reads()

    def _values(self, row: Any) -> dict[str, object] | None:
        try:
            if isinstance(row, Mapping):
                items = [row.get(n) for n in self.names]
            elif len(row) == len(self.names):
                items = [row[i] for i in range(len(self.names))]
            else:
                raise TypeError(f"row of type {type(row).__name__}")
        except Exception:
            self.obs.unresolved("row shape")
            return None
        return {c: v for c, v in zip(self.columns, items, strict=False) if c is not None}

    def missing(self) -> None:
        """The result ended with no row: a point lookup saw the fact absent."""
        if self.point and not self.fetched_any and self.where_pk is not None:
            fact, _ = self.obs.fact(get_settings(), self.obs.physical(self.where_pk))
            self.obs.read_facts[fact] = "none"
            self.obs.record_reads()


# Proxies that are garbage-collected end their open read span (on this thread).
_reaper = Reaper("agentstate-sqlalchemy")


class _FetchingCursor(ObservedCursor):
    """The DBAPI cursor as SQLAlchemy's result sees it: rows are recorded as they are
    fetched, the read guard runs before they go up, the span ends when the result is done."""

    _self_slot: Slot[_Read]

    def __init__(self, cursor: Any, read: _Read) -> None:
        super().__init__(cursor, Slot(_reaper, read))

    def fetchone(self) -> Any:
        row = self.__wrapped__.fetchone()
        read = self._self_slot.read
        if read is not None:
            self._observe(read, [] if row is None else [row], done=row is None)
        return row

    def __iter__(self) -> Iterator[Any]:
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row


# --------------------------------------------------------------------------- writes


def _pinned_writes(
    obs: _Observation, params_list: Sequence[object], cursor: Any
) -> tuple[list[list[object]], str | None]:
    """Primary-key values of the rows a write touched, or why they are unknown."""
    stmt, table = obs.stmt, obs.table
    if stmt.unresolved:
        return [], stmt.unresolved
    if table is None:
        return [], "unknown table"
    pk = table.pk
    if not pk:
        return [], "no primary key"
    keys: list[list[object]] = []
    if stmt.operation in ("INSERT", "REPLACE"):
        columns = [c.lower() for c in stmt.insert_columns] or list(table.columns)
        for params in params_list:
            for row in stmt.insert_rows:
                by_column = dict(zip(columns, row, strict=False))
                key = insert_key(by_column, pk, params)
                if key is not None:
                    keys.append(key)
                    continue
                last = getattr(cursor, "lastrowid", None)
                if (
                    table.integer_pk
                    and obs.engine.dialect_name == "sqlite"
                    and not stmt.upsert
                    and len(params_list) == 1
                    and len(stmt.insert_rows) == 1
                    and isinstance(last, int)
                    and last > 0
                ):
                    keys.append([last])
                    continue
                return [], "primary key not given"
        return keys, None
    if stmt.operation == "UPDATE" and {c.lower() for c in stmt.set_columns} & set(pk):
        return [], "primary key updated"
    return where_keys(stmt, pk, params_list)


def _table_level_write(obs: _Observation, reason: str) -> None:
    """A write whose rows we cannot name: the table as the fact, a fresh version."""
    obs.set_writes(obs.table_write(get_settings(), reason))


def _record_writes(
    obs: _Observation, conn: Any, params_list: Sequence[object], cursor: Any
) -> None:
    settings = get_settings()
    keys, reason = _pinned_writes(obs, params_list, cursor)
    if reason is not None or not keys:
        facts = obs.table_write(settings, reason or "no rows")
    else:
        facts = {}
        table = obs.table
        assert table is not None
        marks = _placeholders(obs.engine.paramstyle, len(table.pk))
        where = " AND ".join(f"{_quote(c)} = {m}" for c, m in zip(table.pk, marks, strict=True))
        query = f"SELECT * FROM {table.sql_name} WHERE {where}"
        for key in keys[:_MAX_ROWS_PER_SPAN]:
            physical = obs.physical(key)
            fact, rule = obs.fact(settings, physical)
            facts.pop(fact, None)
            facts[fact] = _current_version(obs, settings, rule, physical, query, key)
    obs.set_writes(facts)


def _current_version(
    obs: _Observation,
    settings: Settings,
    rule: FactRule | None,
    physical: str,
    query: str,
    key: list[object],
) -> str:
    """The version the row has now, read on the same connection (inside its transaction)."""
    rows = _query(obs.dbapi_conn, query, key, obs.guarded)
    if not rows:
        return "none"
    row = rows[0]
    names = getattr(row, "names", [])
    values = dict(zip(names, row, strict=False))
    return row_version(settings, rule, physical, values, True, _row_states)


# --------------------------------------------------------------------------- transactions


def _txn_after(obs: _Observation, conn: Any, wrote: bool) -> None:
    state = _state_of(conn.info)
    stmt = obs.stmt
    with state.lock:
        in_txn = _in_transaction(conn)
        scopes = state.scopes
        if in_txn:
            gone = scopes.follow(stmt)
            _scope_ends(obs.tracer, obs.engine.store, obs.span, gone, "rollback")
        if wrote and in_txn:
            state.tracer, state.store = obs.tracer, obs.engine.store
            state.attrs = _txn_attrs(obs.engine, "ROLLBACK")
            obs.span.set_attribute(A.COMMITTED, False)
            obs.span.set_attribute(A.TXN_ID, scopes.wrote())
        elif wrote:
            obs.span.set_attribute(A.COMMITTED, True)


def _scope_ends(
    tracer: trace.Tracer | None, store: str, parent: Span, scopes: list[str], outcome: str
) -> None:
    """Savepoint scopes ending (with their transaction, or rolled back)."""
    if scopes:
        tracer = tracer or trace.get_tracer(__name__, _VERSION)
        scope_end_spans(tracer, store, parent, scopes, outcome)


def _txn_attrs(engine: _EngineInfo, operation: str) -> dict[str, Any]:
    namespace = "main"
    if engine.namespaces is not None:
        namespace = engine.namespaces.get("main" if engine.dialect_name == "sqlite" else "", "")
        namespace = namespace or str(engine.database or "main")
    return txn_attrs(engine.store, namespace, operation)


def _start_txn_end(conn: Any, outcome: str, tracer: trace.Tracer) -> None:
    """commit/rollback event: a span for the end of a transaction that wrote something."""
    state = _state_of(conn.info)
    with state.lock:
        txn_id = state.scopes.txn_id
        if not state.scopes.written or txn_id is None or state.pending is not None:
            return
        operation = "COMMIT" if outcome == "commit" else "ROLLBACK"
        span = tracer.start_span(
            operation, kind=SpanKind.CLIENT, attributes=_txn_attrs(_engine_info(conn), operation)
        )
        span.set_attribute(A.TXN_ID, txn_id)
        state.pending, state.pending_outcome = span, outcome


def _finish_txn_end(fairy: Any, outcome: str, exc: BaseException | None) -> None:
    """After the DBAPI commit/rollback returned (or failed): end the pending span."""
    info = getattr(fairy, "info", None)
    if info is None or _INFO_KEY not in info:
        return
    state = _state_of(info)
    with state.lock:
        span, planned = state.pending, state.pending_outcome
        if span is None:
            txn, subs = state.reset()
            if outcome == "rollback" and txn is not None and exc is None:
                _report_discarded(state.tracer, dict(state.attrs), state.store, txn, subs)
            return
        if exc is None:
            final = planned or outcome
            span.set_attribute(A.TXN_OUTCOME, final)
            _, subs = state.reset()
            _scope_ends(state.tracer, state.store, span, subs, final)
            span.end()
            return
        still_open = False
        raw = getattr(fairy, "dbapi_connection", None)
        flag = getattr(raw, "in_transaction", None)
        if isinstance(flag, bool):
            still_open = flag
        if not still_open:
            span.set_attribute(A.TXN_OUTCOME, "rollback")
            _, subs = state.reset()
            _scope_ends(state.tracer, state.store, span, subs, "rollback")
        else:
            state.pending, state.pending_outcome = None, None
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.record_exception(exc)
        span.end()


def _report_discarded(
    tracer: trace.Tracer | None, attrs: dict[str, Any], store: str, txn: str, subs: list[str]
) -> None:
    """A pool reset (connection returned or garbage-collected) discarded a transaction with
    writes: a ROLLBACK span. The reset may run in a GC callback, possibly while a span
    processor holds its lock, so the span is made on another thread."""

    def emit() -> None:
        try:
            span = (tracer or trace.get_tracer(__name__, _VERSION)).start_span(
                "ROLLBACK", kind=SpanKind.CLIENT, attributes=attrs
            )
            span.set_attribute(A.TXN_ID, txn)
            span.set_attribute(A.TXN_OUTCOME, "rollback")
            _scope_ends(tracer, store, span, subs, "rollback")
            span.end()
        except Exception:
            _log.debug("reporting a discarded transaction failed", exc_info=True)

    try:
        threading.Thread(target=emit, name="agentstate-sqlalchemy-txn", daemon=True).start()
    except Exception:  # at interpreter exit no thread starts
        emit()


_WRAPPED_ATTR = "_agentstate_wrapped"
_dialects: weakref.WeakSet[Any] = weakref.WeakSet()
_dialects_lock = threading.Lock()


def _wrap_dialect(dialect: Any) -> None:
    """Wrap do_commit/do_rollback on this dialect instance (not the class) so the
    transaction-end span ends after the DBAPI call."""
    with _dialects_lock:
        if dialect in _dialects:
            return
        for name, outcome in (("do_commit", "commit"), ("do_rollback", "rollback")):
            original = getattr(dialect, name)

            def wrapper(
                dbapi_connection: Any, _original: Any = original, _outcome: str = outcome
            ) -> Any:
                try:
                    result = _original(dbapi_connection)
                except BaseException as exc:
                    try:
                        _finish_txn_end(dbapi_connection, _outcome, exc)
                    except Exception:
                        _log.debug("recording the failed transaction end failed", exc_info=True)
                    raise
                try:
                    _finish_txn_end(dbapi_connection, _outcome, None)
                except Exception:
                    _log.debug("recording the transaction end failed", exc_info=True)
                return result

            setattr(wrapper, _WRAPPED_ATTR, True)
            setattr(dialect, name, wrapper)
        _dialects.add(dialect)


def _unwrap_dialects(keep: Collection[Any] = ()) -> None:
    with _dialects_lock:
        for dialect in list(_dialects):
            if dialect in keep:
                continue
            for name in ("do_commit", "do_rollback"):
                current = dialect.__dict__.get(name)
                if current is not None and getattr(current, _WRAPPED_ATTR, False):
                    delattr(dialect, name)
            _dialects.discard(dialect)


# --------------------------------------------------------------------------- listeners


def _params_list(pending: _Pending) -> list[object]:
    params = pending.parameters
    if pending.executemany and isinstance(params, (list, tuple)):
        return list(params)
    return [params]


class _Listeners:
    """One set of event handlers: the global set (on the Engine class) or one engine's."""

    def __init__(self, tracer: trace.Tracer, engine: Any = None) -> None:
        self.tracer = tracer
        self.engine = engine  # None: the global set

    def events(self) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
        return [
            ("before_cursor_execute", self.before_cursor_execute, {}),
            ("after_cursor_execute", self.after_cursor_execute, {"insert": True}),
            ("handle_error", self.handle_error, {"insert": True}),
            ("begin", self.begin, {}),
            ("commit", self.commit, {"insert": True}),
            ("rollback", self.rollback, {"insert": True}),
        ]

    def _mine(self, conn: Any) -> bool:
        """The global set leaves engines instrumented one by one to their own listeners."""
        if self.engine is not None:
            return True
        try:
            return conn.engine.pool not in _engine_pools
        except Exception:
            return True

    def before_cursor_execute(
        self, conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, many: bool
    ) -> None:
        try:
            if context is None or not self._mine(conn) or not is_instrumentation_enabled():
                return
            if _driver_traced(conn):
                return
            _wrap_dialect(conn.dialect)
            paramstyle = str(getattr(conn.dialect, "paramstyle", "qmark"))
            text = statement if isinstance(statement, str) else str(statement)
            stmt = analyse(normalise(text, paramstyle))
            setattr(context, _CTX_ATTR, _Pending(stmt, time.time_ns(), parameters, many, self))
        except Exception:
            _log.debug("preparing the observation failed", exc_info=True)

    def after_cursor_execute(
        self, conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, many: bool
    ) -> None:
        pending = _take(context, self)
        if pending is None:
            return
        obs: _Observation | None = None
        try:
            obs = _Observation(conn, context, pending)
            self._after(obs, conn, cursor, context, pending)
        except Exception:
            _log.debug("recording the statement failed", exc_info=True)
            if obs is not None:
                obs.end()

    def _after(
        self, obs: _Observation, conn: Any, cursor: Any, context: Any, pending: _Pending
    ) -> None:
        stmt = obs.stmt
        if stmt.operation in ("DDL", "OTHER"):
            obs.engine.forget()
        if stmt.savepoint is not None:
            _txn_after(obs, conn, wrote=False)
        if stmt.is_write:
            rowcount = getattr(cursor, "rowcount", -1)
            wrote = rowcount != 0
            if wrote:
                try:
                    _record_writes(obs, conn, _params_list(pending), cursor)
                except Exception:
                    _log.debug("recording writes failed", exc_info=True)
                    _table_level_write(obs, "version lookup failed")
            _txn_after(obs, conn, wrote)
            obs.end()
            return
        if stmt.operation == "SELECT" and not pending.executemany:
            read = _Read(obs, pending.parameters, getattr(cursor, "description", None))
            if read.trackable and getattr(context, "cursor", None) is cursor:
                if read.where_pk is not None:
                    obs.fact(get_settings(), obs.physical(read.where_pk))
                obs.open_read_span()
                context.cursor = _FetchingCursor(cursor, read)
                return
        obs.end()

    def handle_error(self, exception_context: Any) -> None:
        try:
            context = exception_context.execution_context
            pending = _take(context, self) if context is not None else None
            if pending is None:
                return
            conn = exception_context.connection
            exc = exception_context.original_exception
            obs = _Observation(conn, context, pending)
            try:
                if obs.stmt.is_write:
                    _txn_after(obs, conn, wrote=False)
            except Exception:
                _log.debug("transaction bookkeeping failed", exc_info=True)
            obs.fail(exc)
        except Exception:
            _log.debug("recording the failed statement failed", exc_info=True)

    def begin(self, conn: Any) -> None:
        try:
            if not self._mine(conn) or _driver_traced(conn):
                return
            _wrap_dialect(conn.dialect)
            state = _state_of(conn.info)
            with state.lock:
                if state.pending is None:
                    state.scopes.end()
        except Exception:
            _log.debug("begin bookkeeping failed", exc_info=True)

    def commit(self, conn: Any) -> None:
        self._txn_end(conn, "commit")

    def rollback(self, conn: Any) -> None:
        self._txn_end(conn, "rollback")

    def _txn_end(self, conn: Any, outcome: str) -> None:
        try:
            if not self._mine(conn) or not is_instrumentation_enabled():
                return
            if _INFO_KEY not in conn.info:
                return
            _start_txn_end(conn, outcome, self.tracer)
        except Exception:
            _log.debug("transaction end bookkeeping failed", exc_info=True)


def _take(context: Any, listeners: _Listeners) -> _Pending | None:
    pending = getattr(context, _CTX_ATTR, None)
    if not isinstance(pending, _Pending) or pending.listeners is not listeners:
        return None
    setattr(context, _CTX_ATTR, None)
    return pending


def _listen(target: Any, listeners: _Listeners) -> None:
    from sqlalchemy import event

    for name, fn, kw in listeners.events():
        event.listen(target, name, fn, **kw)


def _unlisten(target: Any, listeners: _Listeners) -> None:
    from sqlalchemy import event

    for name, fn, _ in listeners.events():
        try:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        except Exception:
            _log.debug("removing the %s listener failed", name, exc_info=True)


# Engines instrumented one by one: engine -> its listeners; their pools, for the global set.
_engine_listeners: weakref.WeakKeyDictionary[Any, _Listeners] = weakref.WeakKeyDictionary()
_engine_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def _sync_engine(engine: Any) -> Any:
    return getattr(engine, "sync_engine", engine)


def instrument_engine(engine: Any, tracer_provider: Any = None) -> Any:
    """Record the statements of one `Engine` or `AsyncEngine`; returns the engine."""
    target = _sync_engine(engine)
    if target in _engine_listeners:
        return engine
    tracer = trace.get_tracer(__name__, _VERSION, tracer_provider=tracer_provider)
    listeners = _Listeners(tracer, engine=target)
    _listen(target, listeners)
    _engine_listeners[target] = listeners
    _engine_pools.add(target.pool)
    return engine


def uninstrument_engine(engine: Any) -> Any:
    """Undo `instrument_engine`; returns the engine."""
    target = _sync_engine(engine)
    listeners = _engine_listeners.pop(target, None)
    if listeners is not None:
        _unlisten(target, listeners)
        _engine_pools.discard(target.pool)
        if _global is None:
            _unwrap_dialects(keep=[e.dialect for e in list(_engine_listeners)])
    return engine


_global: _Listeners | None = None


class SQLAlchemyInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Listens on SQLAlchemy's `Engine` class: every engine, sync or async, is covered.

    Coexistence with contrib's SQLAlchemy instrumentation, whatever the load order: our
    `before_cursor_execute` only notes the start; our `after_cursor_execute` and
    `handle_error` run before contrib's (class-level listeners, inserted first), so when
    contrib's span is on `context._otel_span` we annotate it instead of making another.
    """

    _engines: weakref.WeakSet[Any]

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("sqlalchemy >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        global _global
        from sqlalchemy.engine import Engine

        tracer = trace.get_tracer(__name__, _VERSION, tracer_provider=kwargs.get("tracer_provider"))
        if _global is not None:
            _unlisten(Engine, _global)
        _global = _Listeners(tracer)
        _listen(Engine, _global)
        # contrib's `engine=` / `engines=` arguments: those engines are instrumented one by one
        # (and uninstrumented with the rest).
        engines = list(kwargs.get("engines") or ())
        if kwargs.get("engine") is not None:
            engines.append(kwargs["engine"])
        self._engines = weakref.WeakSet(_sync_engine(e) for e in engines)
        for engine in engines:
            instrument_engine(engine, kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        global _global
        from sqlalchemy.engine import Engine

        listeners, _global = _global, None
        if listeners is not None:
            _unlisten(Engine, listeners)
        for engine in list(getattr(self, "_engines", ())):
            uninstrument_engine(engine)
        _unwrap_dialects(keep=[e.dialect for e in list(_engine_listeners)])
