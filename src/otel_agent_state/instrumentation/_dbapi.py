"""What the SQL instrumentations (sqlite3, the PostgreSQL drivers, SQLAlchemy) share.

The canonical encoding of row values, row versions and their per-column digest cache, fact
key parts, primary-key pins of a WHERE clause, mutation scopes with savepoints, the spans
that report those scopes' ends, the reaper thread that ends the spans of collected proxies,
and the parts of a statement observation that do not depend on the library. One copy, so the
same row read through SQLAlchemy or through a traced driver gets the same version.
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import secrets
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import Span, SpanKind

from .. import attributes as A
from .. import runtime
from ..core.config import FactRule, Settings, get_settings
from ..core.model import VersionError, parse_version
from ..errors import StaleReadError
from . import _links
from ._sql import Statement, Value
from ._state_cache import StateCache
from ._wrapping import for_contrib_span

_log = logging.getLogger(__name__)

ROWID_ALIASES = ("rowid", "oid", "_rowid_")
MAX_ROWS_PER_SPAN = 1_000  # facts recorded on one span; later rows are not tracked
_MAX_FACTS = 10_000
_STATES_PER_FACT = 8

# SQL operation -> agentstate.op
OPS = {
    "SELECT": "read",
    "INSERT": "write",
    "REPLACE": "write",
    "UPDATE": "write",
    "DELETE": "delete",
    "MERGE": "write",  # a table-level write (the rows it touches depend on the data)
}


# --------------------------------------------------------------------------- encoding


def encode(value: object) -> bytes:
    """Canonical, type-tagged, length-prefixed encoding of one SQL value (never exported)."""
    if value is None:
        tag, body = b"N", b""
    elif isinstance(value, bool):
        tag, body = b"i", str(int(value)).encode()
    elif isinstance(value, int):
        tag, body = b"i", str(value).encode()
    elif isinstance(value, float):
        tag, body = b"f", value.hex().encode()
    elif isinstance(value, str):
        tag, body = b"s", value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        tag, body = b"b", bytes(value)
    else:
        tag, body = b"o", f"{type(value).__qualname__}:{value!r}".encode("utf-8", "replace")
    return tag + str(len(body)).encode() + b":" + body


def row_bytes(kind: bytes, values: Mapping[str, object]) -> bytes:
    parts = [kind]
    for name in sorted(values):
        encoded = name.encode("utf-8", "surrogatepass")
        parts.append(str(len(encoded)).encode() + b":" + encoded + encode(values[name]))
    return b"".join(parts)


def column_digests(settings: Settings, values: Mapping[str, object]) -> dict[str, str]:
    return {name: settings.digest(row_bytes(b"c", {name: value})) for name, value in values.items()}


def _time_version(text: str, moment: _dt.datetime) -> str:
    """`t:<the column's text>` when it is RFC 3339, else the same instant in epoch ns
    (forms Python accepts but RFC 3339 does not: `+0000`, no seconds, ...)."""
    try:
        return parse_version(text).text
    except VersionError:
        whole = int(moment.replace(microsecond=0).timestamp())
        return f"t:{whole * 1_000_000_000 + moment.microsecond * 1000}"


def version_value(settings: Settings, value: object) -> str:
    """A configured version column's value as a version string (SPEC §3 kinds)."""
    if isinstance(value, bool):
        return f"n:{int(value)}"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):  # epoch seconds
        return f"t:{round(value * 1e9)}"
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return f"n:{int(text)}"
        try:  # RFC 3339 as we parse it everywhere (any Python), else what Python accepts
            return parse_version(f"t:{text}").text
        except VersionError:
            pass
        try:
            parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return _time_version(f"t:{text}", parsed)
    if isinstance(value, _dt.datetime) and value.tzinfo is not None:
        return _time_version(f"t:{value.isoformat()}", value)
    return settings.digest(row_bytes(b"v", {"": value}))


def key_part(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).hex()
    elif value is None:
        text = "null"
    else:
        text = str(value)
    # `/` separates key segments and `,` composite key parts.
    return text.replace("%", "%25").replace("/", "%2F").replace(",", "%2C")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- row versions


def row_state_cache() -> StateCache[str]:
    """Per-column digests of recent row states, so a projection read maps to a full version."""
    return StateCache(max_keys=_MAX_FACTS, depth=_STATES_PER_FACT)


row_states = row_state_cache()  # the driver instrumentations' (SQLAlchemy keeps its own)


def row_version(
    settings: Settings,
    rule: FactRule | None,
    physical: str,
    values: Mapping[str, object],
    full: bool = True,
    states: StateCache[str] = row_states,
) -> str:
    """Version of a row state as read. A complete row (`full`): its version column's value,
    else a digest of the row; its column digests are remembered for projection reads. A
    projection: the version column's value, else the newest complete state its columns
    match, else a digest of the projection."""
    if _links.enabled():  # a cache may copy this row or a column of it (SPEC §5)
        _links.remember_row(settings, settings.resolve(physical).key, physical, values)
    column = rule.version.column.lower() if rule and rule.version.column else None
    version = None
    if column is not None and column in values:
        version = version_value(settings, values[column])
    if full:
        if version is None:
            version = settings.digest(row_bytes(b"r", values))
        states.add(settings.digest_key, physical, version, column_digests(settings, values))
        return version
    if version is not None:
        return version
    known = states.match(settings.digest_key, physical, column_digests(settings, values))
    return known if known is not None else settings.digest(row_bytes(b"p", values))


def read_back_versions(
    obs: Any,
    settings: Settings,
    keys: Sequence[Sequence[object]],
    results: Sequence[tuple[Sequence[str], Sequence[Sequence[object]]]] | None,
    facts: dict[str, str],
) -> None:
    """Put in `facts` the version each pinned row has after a write, from the rows read back
    (`results`, one per key, in order). Without them the write says so and gets a fresh
    digest: a version nothing else can equal."""
    if results is None:
        obs.unresolved("version not read back")
    for index, key in enumerate(keys):
        physical = obs.physical(key)
        fact, rule = obs.fact(settings, physical)
        facts.pop(fact, None)
        if results is None:
            version = settings.digest(secrets.token_bytes(16))
        else:
            names, rows = results[index]
            if not rows:
                version = "none"
            else:
                lowered = [n.lower() for n in names]
                values = dict(zip(lowered, rows[0], strict=False))
                version = row_version(settings, rule, physical, values)
        facts[fact] = version


def based_on_own_read(obs: Any, settings: Settings, facts: Mapping[str, str]) -> None:
    """`SET balance = balance - 1`: the server read the row and wrote it atomically, so the
    write is based on its own read (as INCR is), not on an earlier SELECT."""
    obs.span.set_attribute(A.OP, "read_write")
    obs.span.set_attribute(A.READ_FACTS, list(facts))
    obs.span.set_attribute(A.READ_VERSIONS, list(facts.values()))
    obs.span.set_attribute(A.CONSISTENCY, settings.consistency_label(facts))


def insert_key(
    by_column: Mapping[str, Value], names: Sequence[str], params: object
) -> list[object] | None:
    """The key values an INSERT row gives for the columns `names`; None if one is missing
    or NULL (the database then makes it)."""
    key: list[object] = []
    for name in names:
        value = by_column.get(name)
        found, resolved = value.resolve(params) if value else (False, None)
        if not found or resolved is None:
            return None
        key.append(resolved)
    return key


def where_keys(
    stmt: Statement, pk: tuple[str, ...], params_list: Sequence[object]
) -> tuple[list[list[object]], str | None]:
    """The keys an UPDATE / DELETE pins in its WHERE, one per parameter row, or why not."""
    if not stmt.has_where:
        return [], "no where clause"
    keys: list[list[object]] = []
    for params in params_list:
        values = where_pk(stmt, pk, params)
        if values is None:
            return [], stmt.where_reason or "rows not pinned by primary key"
        keys.append(values)
    return keys, None


def where_pk(stmt: Statement, pk: tuple[str, ...], params: object) -> list[object] | None:
    """The primary-key values the WHERE equalities pin (`rowid` by any alias), or None."""
    if not pk:
        return None
    pins: dict[str, Value] = {}
    for column, value in stmt.where:
        pins.setdefault(column.lower(), value)
    values: list[object] = []
    for column in pk:
        names = ROWID_ALIASES if column == "rowid" else (column,)
        pin = next((pins[n] for n in names if n in pins), None)
        if pin is None:
            return None
        found, resolved = pin.resolve(params)
        if not found:
            return None
        values.append(resolved)
    return values


# --------------------------------------------------------------------------- spans


@contextmanager
def suppressed(span: Span | None = None) -> Iterator[None]:
    """Driver calls with instrumentation suppressed (no duplicate inner spans), `span` current."""
    ctx = otel_context.get_current()
    if span is not None:
        ctx = trace.set_span_in_context(span, ctx)
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, ctx))
    try:
        yield
    finally:
        otel_context.detach(token)


def statement_attrs(
    store: str, namespace: str, stmt: Statement, summary: str, collection: str | None, tier: str
) -> dict[str, Any]:
    """The attributes of a statement's span (database semconv and ours)."""
    attrs: dict[str, Any] = {
        A.STORE: store,
        A.DB_SYSTEM_NAME: store,
        A.DB_NAMESPACE: namespace,
        A.DB_OPERATION_NAME: stmt.operation,
        A.DB_QUERY_SUMMARY: summary,
    }
    if collection:
        attrs[A.DB_COLLECTION_NAME] = collection
    op = OPS.get(stmt.operation)
    if op is not None:
        attrs[A.OP] = op
        attrs[A.TIER] = tier
    return attrs


def annotate(span: Span, attrs: Mapping[str, Any]) -> None:
    """Put our attributes on a contrib span, as its semantic-convention mode allows
    (`for_contrib_span`); contrib's own db.* values (e.g. its db.namespace) stay."""
    span.set_attributes(for_contrib_span(span, attrs))
    runtime.attribute_agent(span)


def txn_attrs(store: str, namespace: str, operation: str) -> dict[str, Any]:
    """The attributes of a COMMIT / ROLLBACK span."""
    return {
        A.STORE: store,
        A.DB_SYSTEM_NAME: store,
        A.DB_NAMESPACE: namespace,
        A.DB_OPERATION_NAME: operation,
        A.DB_QUERY_SUMMARY: operation,
    }


def scope_end_spans(
    tracer: trace.Tracer, store: str, parent: Span, scopes: list[str], outcome: str
) -> None:
    """Savepoint scopes ending (with their transaction, or rolled back): short child spans
    without `db.*` attributes, so they are not taken for database operations."""
    for scope in scopes:
        try:
            span = tracer.start_span(
                "agentstate.savepoint",
                context=trace.set_span_in_context(parent),
                kind=SpanKind.INTERNAL,
                attributes={A.STORE: store, A.TXN_ID: scope, A.TXN_OUTCOME: outcome},
            )
            span.end()
        except Exception:
            _log.debug("reporting a savepoint scope failed", exc_info=True)


class ObservationBase:
    """What a statement observation does the same way in every SQL instrumentation: its
    attributes, tier and fact resolution, and the read facts on the span that carries them."""

    span: Span
    read_span: Span | None
    tier: str
    tier_set: bool
    default_tier: str
    read_facts: dict[str, str]

    def _set(self, key: str, value: Any) -> None:
        """Set on our span(s) that are still open (never on an ended contrib span)."""
        for span in (self.span, self.read_span):
            if span is not None and span.is_recording():
                span.set_attribute(key, value)

    @property
    def reads_span(self) -> Span:
        """The span that carries the fetched rows' facts and is checked by the read guard."""
        return self.read_span if self.read_span is not None else self.span

    def fact(self, settings: Settings, physical: str) -> tuple[str, FactRule | None]:
        resolved = settings.resolve(physical)
        if not self.tier_set and resolved.rule is not None:
            self.tier_set = True
            self.tier = resolved.tier or self.default_tier
            self._set(A.TIER, self.tier)
        return resolved.key, resolved.rule

    def table_key(self) -> str:
        raise NotImplementedError

    def unresolved(self, reason: str) -> None:
        self._set(A.UNRESOLVED, reason)

    def table_write(self, settings: Settings, reason: str) -> dict[str, str]:
        """A write whose rows we cannot name: the table is the fact, with a fresh version."""
        fact, _ = self.fact(settings, self.table_key())
        self.unresolved(reason)
        return {fact: settings.digest(secrets.token_bytes(16))}

    def set_writes(self, facts: Mapping[str, str]) -> None:
        self.span.set_attribute(A.WRITE_FACTS, list(facts))
        self.span.set_attribute(A.WRITE_VERSIONS, list(facts.values()))

    def record_reads(self) -> None:
        span = self.reads_span
        if not span.is_recording():  # an annotated contrib span may have ended already
            return
        span.set_attribute(A.READ_FACTS, list(self.read_facts))
        span.set_attribute(A.READ_VERSIONS, list(self.read_facts.values()))
        span.set_attribute(A.CONSISTENCY, get_settings().consistency_label(self.read_facts))


# --------------------------------------------------------------------------- reaper


class _Ending(Protocol):
    def end(self) -> None: ...


class Reaper:
    """Ends the spans of garbage-collected proxies. weakref callbacks may run inside any
    code (even a span processor holding its lock), so they only enqueue (SimpleQueue.put is
    reentrant) and a daemon thread ends the span."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Ending] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, item: _Ending) -> None:
        self._queue.put(item)

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                item.end()
            except Exception:
                _log.debug("ending a collected proxy's span failed", exc_info=True)


# --------------------------------------------------------------------------- mutation scopes


class Scopes:
    """The transaction of a connection and its savepoints, each a mutation scope of its own.

    A write inside a savepoint belongs to the savepoint's scope id; ROLLBACK TO discards
    that scope (reported as rolled back at once), RELEASE merges it into the enclosing one,
    whose outcome it then shares when the transaction ends.
    """

    def __init__(self) -> None:
        self.txn_id: str | None = None
        self.stack: list[tuple[str, str]] = []  # (savepoint name lower case, scope id)
        self.written: list[str] = []  # scope ids with writes, in order

    def begin(self) -> None:
        if self.txn_id is None:
            self.txn_id, self.stack, self.written = uuid.uuid4().hex, [], []

    def wrote(self) -> str:
        """The scope a write now belongs to (a transaction is begun if none is open)."""
        self.begin()
        scope = self.stack[-1][1] if self.stack else self.txn_id
        assert scope is not None
        if scope not in self.written:
            self.written.append(scope)
        return scope

    def savepoint(self, name: str) -> None:
        self.begin()
        self.stack.append((name.lower(), uuid.uuid4().hex))

    def _index(self, name: str) -> int | None:
        name = name.lower()
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == name:
                return index
        return None

    def release(self, name: str) -> None:
        index = self._index(name)
        if index is not None:
            del self.stack[index:]

    def rollback_to(self, name: str) -> list[str]:
        """Scope ids discarded by ROLLBACK TO `name` (the savepoint itself stays, renewed)."""
        index = self._index(name)
        if index is None:
            return []
        dropped = {scope for _, scope in self.stack[index:]}
        del self.stack[index + 1 :]
        self.stack[index] = (self.stack[index][0], uuid.uuid4().hex)
        gone = [s for s in self.written if s in dropped]
        self.written = [s for s in self.written if s not in dropped]
        return gone

    def follow(self, stmt: Statement) -> list[str]:
        """Follow a SAVEPOINT / RELEASE / ROLLBACK TO run inside the transaction; the scope
        ids a ROLLBACK TO discarded."""
        if stmt.savepoint is not None:
            if stmt.operation == "SAVEPOINT":
                self.savepoint(stmt.savepoint)
            elif stmt.operation == "RELEASE":
                self.release(stmt.savepoint)
            elif stmt.operation == "ROLLBACK":
                return self.rollback_to(stmt.savepoint)
        return []

    def end(self) -> tuple[str | None, list[str]]:
        """(transaction id if it wrote anything, savepoint scopes with writes); then reset."""
        txn, written = self.txn_id, list(self.written)
        self.txn_id, self.stack, self.written = None, [], []
        if not written:
            return None, []
        return txn, [s for s in written if s != txn]


# --------------------------------------------------------------------------- open reads


class _Observing(Protocol):
    read_facts: dict[str, str]
    ended: bool

    @property
    def reads_span(self) -> Span: ...
    def fail(self, exc: BaseException) -> None: ...
    def end(self) -> None: ...


class _Reading(Protocol):
    @property
    def obs(self) -> _Observing: ...
    def rows(self, rows: Sequence[Any]) -> None: ...
    def missing(self) -> None: ...


R = TypeVar("R", bound=_Reading)


class Slot(Generic[R]):
    """The open read of one cursor or result, reachable from its finalizer without it."""

    __slots__ = ("_reaper", "read")

    def __init__(self, reaper: Reaper, read: R | None = None) -> None:
        self._reaper = reaper
        self.read: R | None = read

    def watch(self, owner: Any) -> None:
        """End the open read when `owner` (a cursor or result proxy) is collected."""
        self._reaper.start()
        weakref.finalize(owner, self.collected)

    def collected(self) -> None:
        read = self.read
        if read is not None and not read.obs.ended:
            self._reaper.put(read.obs)

    def finish(self) -> None:
        """End the open read, if any (a new statement, close())."""
        read = self.read
        if read is not None:
            self.read = None
            try:
                read.obs.end()
            except Exception:
                _log.debug("ending the read span failed", exc_info=True)


def observe_rows(slot: Slot[R], read: R, rows: Sequence[Any], done: bool) -> None:
    """Record fetched rows, run the read guard, end the span when the result is used up."""
    try:
        if rows:
            read.rows(rows)
        elif done:
            read.missing()
    except Exception:
        _log.debug("recording fetched rows failed", exc_info=True)
    try:
        if rows or (done and read.obs.read_facts):
            runtime.guard_read(read.obs.reads_span)
    except StaleReadError as exc:
        read.obs.fail(exc)
        slot.read = None
        raise
    except Exception:
        _log.debug("read guard failed", exc_info=True)
    if done:
        slot.read = None
        read.obs.end()


class ObservedCursor(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A DB-API cursor proxy whose fetches feed the open read in its slot: rows are recorded
    as they are fetched, the read guard runs before they go up, the span ends when the
    result is used up, closed, or the proxy collected."""

    def __init__(self, cursor: Any, slot: Slot[Any]) -> None:
        super().__init__(cursor)
        self._self_slot = slot
        try:
            slot.watch(self)
        except Exception:
            _log.debug("cannot watch the cursor's collection", exc_info=True)

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        rows = self.__wrapped__.fetchmany(*args, **kwargs)
        read = self._self_slot.read
        if read is None:
            return rows
        size = args[0] if args else kwargs.get("size", getattr(self.__wrapped__, "arraysize", 1))
        short = not isinstance(size, int) or len(rows) < size
        self._observe(read, rows, done=short)
        return rows

    def fetchall(self) -> Any:
        rows = self.__wrapped__.fetchall()
        read = self._self_slot.read
        if read is None:
            return rows
        self._observe(read, rows, done=True)
        return rows

    def close(self) -> Any:
        self._finish_read()
        return self.__wrapped__.close()

    def _observe(self, read: Any, rows: Sequence[Any], done: bool) -> None:
        observe_rows(self._self_slot, read, rows, done)

    def _finish_read(self) -> None:
        self._self_slot.finish()
