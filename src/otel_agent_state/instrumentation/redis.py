"""State-aware instrumentation of redis-py, sync and `redis.asyncio` (SPEC §3).

`RedisInstrumentor().instrument(tracer_provider=...)` wraps `Redis.execute_command`,
`Pipeline.execute` and `Pipeline.immediate_execute_command` of both clients, and of their
Redis Cluster clients `RedisCluster.execute_command`, `ClusterPipeline.execute` and the
WATCH-phase commands of a cluster transaction pipeline (db always 0). Each command
gets one CLIENT span with the database semantic conventions (never keys or values) plus the
facts it read or wrote (`redis:<db>/<key>`, mapped by fact rules) and their versions
(a configured JSON / hash field, else a keyed digest of the value as Redis stores it).
DEL/UNLINK (and an EXPIRE that deletes at once) write `none`: invalidations. A MULTI/EXEC
pipeline is a transaction (`agentstate.txn.id`, its outcome on the same span); a plain
pipeline records every command's facts on its one span. A raw `MULTI` sent through
`execute_command` is followed to its EXEC: queued commands apply nothing until then, so
their facts go on the EXEC span. Writes applied outside a transaction say
`agentstate.committed=true`, so they count even when the span then fails (a pipeline whose
later command raised). HSET/HDEL carry the fields they merged (`agentstate.write.fields`).
Tier `cache` unless a fact rule's key pattern says otherwise.

Coexistence with contrib's opentelemetry-instrumentation-redis: our wrappers go under any
wrappers already there (next to redis-py's function), so contrib's span, when there is one,
is the database span and we annotate it. Nothing of ours raises into the application except
`StaleReadError` from the read guard; redis-py's own errors propagate unchanged.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__, runtime
from .. import attributes as A
from ..adapter import encode_fields
from ..core.config import FactRule, ResolvedFact, get_settings
from ..errors import StaleReadError
from . import _links
from ._redis_commands import (
    ABSENT,
    COMMANDS,
    STORE,
    UNKNOWN,
    Effect,
    Value,
    Versions,
    command_name,
    effects,
    key_text,
    written_keys,
)
from ._redis_commands import _parse_json as parse_json
from ._steps import CALL, Body, adrive, drive
from ._wrapping import Wrapped, for_contrib_span, unwrap_all, wrap_under

_log = logging.getLogger(__name__)

_CONTRIB_SCOPE = "opentelemetry.instrumentation.redis"
_MAX_FACTS = 1_000  # facts recorded on one span
_MAX_SUMMARY_NAMES = 8
_MAX_QUEUED = 1_000  # commands of one raw MULTI remembered until its EXEC
_PENDING = ""  # a write whose version is read again after the command
BATCH_SIZE = "db.operation.batch.size"


# --------------------------------------------------------------------------- helpers


def _conn_kwargs(instance: Any) -> dict[str, Any]:
    """The connection settings of a client or pipeline. A cluster client or pipeline has no
    single pool: its nodes manager holds the settings every node's connections are made
    with (a cluster pipeline's own encoder keeps redis-py's defaults, whatever the client's)."""
    pool = getattr(instance, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        kwargs = getattr(getattr(instance, "nodes_manager", None), "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _db(instance: Any) -> str:
    """The db index; always "0" on a cluster (redis-py refuses any other there)."""
    db = _conn_kwargs(instance).get("db")
    return str(db) if db is not None else "0"


def _versions(instance: Any) -> Versions:
    kwargs = _conn_kwargs(instance)
    return Versions(
        get_settings(),
        str(kwargs.get("encoding") or "utf-8"),
        str(kwargs.get("encoding_errors") or "strict"),
    )


@contextmanager
def _suppressed() -> Iterator[None]:
    """Our own follow-up reads: no spans from us or contrib."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)


def _contrib_span(span: Span) -> bool:
    """contrib's redis span for this very call (it wraps just outside us), not yet ours."""
    try:
        if not span.is_recording():
            return False
        scope = getattr(span, "instrumentation_scope", None)
        attrs = getattr(span, "attributes", None) or {}
        return getattr(scope, "name", None) == _CONTRIB_SCOPE and A.STORE not in attrs
    except Exception:
        return False


def _summary(names: Sequence[str], prefix: str) -> str:
    distinct = list(dict.fromkeys(n for n in names if n))[:_MAX_SUMMARY_NAMES]
    return " ".join([prefix, *distinct])


# --------------------------------------------------------------------------- observations


_Place = tuple[str, str]  # (tier, logical fact): a key of the cache and one of the primary
# can be the same fact, and one call may touch both (write the value, drop the cached copy)


def _place(resolved: ResolvedFact) -> _Place:
    return resolved.tier or "cache", resolved.key  # Redis keys are a cache unless a rule says


class _Recorder:
    """Facts and versions of one call, from the effects of its commands in order."""

    def __init__(self, instance: Any) -> None:
        self.db = _db(instance)
        self.versions = _versions(instance)
        self.settings = self.versions.settings
        self.reads: dict[_Place, str] = {}
        self.writes: dict[_Place, str] = {}
        self.refetch: list[tuple[_Place, str, FactRule | None, str, Any]] = []
        self.tiers: list[str] = []  # in the order the call first touched them
        self.unresolved: str | None = None
        # Per written fact, the hash fields its writes merged in (None: the whole value).
        self.fields: dict[_Place, frozenset[str] | None] = {}
        # Redis applied the writes as the commands ran (no MULTI): say so explicitly, so they
        # count even when the span ends in error (a later command of a pipeline failed).
        self.applied = True
        self.txn: tuple[str, str] | None = None  # (id, outcome) of a raw MULTI ended here
        self.batch_txn: str | None = None  # the id of the MULTI pipeline they were queued in
        self.links: dict[_Place, str] = {}  # zero-config links made by this call's writes

    def physical(self, key: Any) -> str:
        return f"{STORE}:{self.db}/{key_text(self.versions.raw(key))}"

    def place(self, key: Any) -> _Place:
        return _place(self.settings.resolve(self.physical(key)))

    def add(self, found: Sequence[Effect]) -> None:
        for effect in found:
            if len(self.reads) + len(self.writes) >= _MAX_FACTS:
                self.unresolved = "too many keys"
                return
            physical = self.physical(effect.key)
            resolved = self.settings.resolve(physical)
            place = _place(resolved)
            version = self.versions.version(physical, resolved.rule, effect.value)
            if resolved.rule is None and _links.enabled():
                place = self.linked(physical, effect, version) or place
            if place[0] not in self.tiers:
                self.tiers.append(place[0])
            if effect.op == "r":
                if place in self.reads or place in self.writes:
                    continue  # the span's first read counts; a read of its own write is not one
                if version is None:
                    self.unresolved = "partial read"
                    continue
                self.reads[place] = version
                continue
            names = self.field_names(effect.fields)
            if place in self.writes:  # several writes of one fact in one span: their union
                before = self.fields.get(place)
                names = None if before is None or names is None else before | names
            self.fields[place] = names
            self.writes.pop(place, None)
            if version is None:
                kind = "json" if effect.value.kind == "refetch_json" else "hash"
                self.refetch.append((place, physical, resolved.rule, kind, effect.key))
                version = _PENDING
            self.writes[place] = version

    def linked(self, physical: str, effect: Effect, version: str | None) -> _Place | None:
        """Zero-config lineage (instrumentation/_links.py): a key linked to a row's fact, or
        a fill of this key with a row (or column) the agent scope just read."""
        known = _links.linked(physical)
        if known is None and effect.op != "r" and version is not None and version[:2] == "h:":
            text = physical.split("/", 1)[1] if "/" in physical else physical
            known = _links.match(physical, text, version)
            if known is not None:
                self.links[("cache", known[0])] = f"{known[0]} by {known[1]}"
        return ("cache", known[0]) if known is not None else None

    def field_names(self, fields: tuple[Any, ...] | None) -> frozenset[str] | None:
        if not fields:
            return None
        return frozenset(key_text(self.versions.raw(name)) for name in fields)

    def drop(self, places: set[_Place], reason: str) -> None:
        """Forget writes whose final version is unknown (a later command may have changed it)."""
        for place in places & self.writes.keys():
            del self.writes[place]
            self.unresolved = reason

    def pending(self) -> list[tuple[_Place, str, FactRule | None, str, Any]]:
        return [item for item in self.refetch if self.writes.get(item[0]) == _PENDING]

    def refetched(self, place: _Place, physical: str, rule: FactRule | None, value: Value) -> None:
        version = self.versions.version(physical, rule, value)
        if version is None:
            self.writes.pop(place, None)
            self.unresolved = "version unknown"
        else:
            self.writes[place] = version

    def finish(self) -> None:
        for place in [p for p, v in self.writes.items() if v == _PENDING]:
            del self.writes[place]
            self.unresolved = "version unknown"

    def observed_tiers(self) -> list[str]:
        """The tiers with something to record, the first one the call touched first."""
        self.finish()
        seen = {tier for tier, _ in self.reads} | {tier for tier, _ in self.writes}
        return [tier for tier in self.tiers if tier in seen]

    def apply(self, span: Span, tier: str | None, *, part: bool = False) -> None:
        """Put the reads and writes of `tier` (one of observed_tiers(); None when there are
        none) on `span`. `part`: a child span with a further tier's keys, whose writes end
        with the call's transaction (if any) rather than making one of their own."""
        if not span.is_recording():
            return
        reads = {fact: v for (t, fact), v in self.reads.items() if t == tier}
        writes = {fact: v for (t, fact), v in self.writes.items() if t == tier}
        out: dict[str, Any] = {}  # one set_attributes call: one lock round trip
        if reads or writes:
            if reads and writes:
                op = "read_write"
            elif writes:
                op = "delete" if all(v == "none" for v in writes.values()) else "write"
            else:
                op = "read"
            out[A.OP] = op
            out[A.TIER] = tier
            out[A.STORE] = STORE  # EXEC of a raw MULTI is not one of our commands
        if reads:
            out[A.READ_FACTS] = list(reads)
            out[A.READ_VERSIONS] = list(reads.values())
            out[A.CONSISTENCY] = self.settings.consistency_label(reads)
        if writes:
            out[A.WRITE_FACTS] = list(writes)
            out[A.WRITE_VERSIONS] = list(writes.values())
            fields = [self.fields.get(place) for place in self.writes if place[0] == tier]
            if any(f is not None for f in fields):
                out[A.WRITE_FIELDS] = [encode_fields(f) for f in fields]
            if self.links:
                links = [self.links.get(place, "") for place in self.writes if place[0] == tier]
                if any(links):
                    out[A.LINK] = links
            txn = self.txn[0] if self.txn is not None else self.batch_txn
            if part and txn is not None:
                out[A.TXN_ID], out[A.COMMITTED] = txn, False
            elif self.applied and self.txn is None:
                out[A.COMMITTED] = True
        if self.txn is not None and not part:
            out[A.TXN_ID], out[A.TXN_OUTCOME] = self.txn
            if writes:
                out[A.COMMITTED] = self.txn[1] == "commit"
        if self.unresolved:
            out[A.UNRESOLVED] = self.unresolved
        if out:
            span.set_attributes(out)


def _refetch_value(kind: str, response: Any) -> Value:
    if kind == "hash":
        if isinstance(response, list):
            response = dict(zip(response[::2], response[1::2], strict=False))
        return Value("hash", dict(response)) if response else ABSENT
    if response is None:
        return ABSENT
    if isinstance(response, (bytes, str)):
        return Value("json", parse_json(response))
    return Value("json", response)


def _refetch_args(kind: str, key: Any) -> tuple[Any, ...]:
    return ("HGETALL", key) if kind == "hash" else ("JSON.GET", key, ".")


class _Call:
    """One span: ours (we start and end it) or contrib's for the same call (we annotate)."""

    def __init__(self, tracer: trace.Tracer, name: str, attrs: dict[str, Any]) -> None:
        self.tracer = tracer
        self.parts: list[Span] = []  # a child span per further tier of the call's keys
        current = trace.get_current_span()
        if _contrib_span(current):
            self.span = current
            self.own = False
            current.set_attributes(for_contrib_span(current, attrs))  # as its conventions allow
            runtime.attribute_agent(current)
        else:
            self.span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
            self.own = True
        self.ended = False

    def activate(self) -> object | None:
        if not self.own:
            return None
        return otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def deactivate(token: object | None) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def fail(self, exc: BaseException, status: bool = True) -> None:
        try:
            if self.own:  # contrib's span records the exception as it passes through
                if status:
                    self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                self.span.record_exception(exc)
            self.end()
        except Exception:
            _log.debug("recording the error failed", exc_info=True)

    def record(self, recorder: _Recorder) -> None:
        """Put what the call read and wrote on its span. A span has one tier (SPEC §3): the
        keys of each further tier (a pipeline that writes the value and drops its cached
        copy) go on a child span of their own, dated from the call's start."""
        tiers = recorder.observed_tiers()
        recorder.apply(self.span, tiers[0] if tiers else None)
        if not self.span.is_recording():
            return
        runtime.record_copies(self.span)  # a cache fill says what it copied
        for tier in tiers[1:]:
            part = self.tracer.start_span(
                f"agentstate.keys {tier}",
                context=trace.set_span_in_context(self.span),
                kind=SpanKind.INTERNAL,
                start_time=getattr(self.span, "start_time", None),
            )
            recorder.apply(part, tier, part=True)
            runtime.record_copies(part)
            self.parts.append(part)

    def guard(self, reads: bool) -> None:
        """Raise mode: a stale read raises here, before the value reaches the application."""
        if not reads:
            return
        try:
            for span in (self.span, *self.parts):
                runtime.guard_read(span)
        except StaleReadError as exc:
            self.fail(exc)
            raise

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for part in self.parts:
            part.end()
        if self.own:
            self.span.end()


def _start_command(tracer: trace.Tracer, instance: Any, args: Sequence[Any]) -> _Call | None:
    try:
        name = command_name(args) or "redis"
        attrs: dict[str, Any] = {
            A.DB_SYSTEM_NAME: STORE,
            A.DB_NAMESPACE: _db(instance),
            A.DB_OPERATION_NAME: name,
            A.DB_QUERY_SUMMARY: name,
        }
        if name in COMMANDS:
            attrs[A.STORE] = STORE
        return _Call(tracer, name, attrs)
    except Exception:
        _log.debug("starting the span failed", exc_info=True)
        return None


def _record_command(instance: Any, args: Sequence[Any], result: Any) -> _Recorder:
    recorder = _Recorder(instance)
    recorder.add(effects(command_name(args), args, result))
    return recorder


# --------------------------------------------------------------------------- raw MULTI


class _RawTxn:
    """A transaction opened by `execute_command("MULTI")`: Redis queues the commands that
    follow (reply QUEUED) and applies them only at EXEC; DISCARD, a reconnect or an error at
    EXEC drops them. So a queued command records nothing; EXEC records them all with its
    replies."""

    def __init__(self) -> None:
        self.txn_id = uuid.uuid4().hex
        self.queued: list[tuple[Sequence[Any], dict[str, Any]]] = []
        self.overflow = False
        self.dead = False

    def queue(self, args: Sequence[Any], options: dict[str, Any]) -> None:
        if len(self.queued) < _MAX_QUEUED:
            self.queued.append((tuple(args), dict(options)))
        else:
            self.overflow = True

    def reset(self, connection: Any) -> None:
        """redis-py's connect callback: a new connection is not in MULTI."""
        self.dead = True


class _RawTxns:
    """Open raw MULTIs by connection (a single-connection client's), else by client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakKeyDictionary[Any, _RawTxn] = weakref.WeakKeyDictionary()

    @staticmethod
    def owner(instance: Any) -> Any:
        connection = getattr(instance, "connection", None)
        return connection if connection is not None else instance

    def get(self, owner: Any) -> _RawTxn | None:
        with self._lock:
            try:
                txn: _RawTxn | None = self._open.get(owner)
            except TypeError:  # an owner that cannot be weakly referenced: not tracked
                return None
            if txn is not None and txn.dead:
                del self._open[owner]
                return None
            return txn

    def open(self, owner: Any) -> None:
        txn = _RawTxn()
        with self._lock:
            try:
                self._open[owner] = txn
            except TypeError:
                return
        register = getattr(owner, "register_connect_callback", None)
        if callable(register):
            register(txn.reset)

    def close(self, owner: Any, txn: _RawTxn) -> None:
        with self._lock:
            if self._open.get(owner) is txn:
                del self._open[owner]
        deregister = getattr(owner, "deregister_connect_callback", None)
        if callable(deregister):
            deregister(txn.reset)


_raw_txns = _RawTxns()


def _exec_replies(instance: Any, txn: _RawTxn, replies: Any) -> list[Any] | None:
    """EXEC's replies as redis-py returns them from a MULTI pipeline (callbacks applied)."""
    if not isinstance(replies, list) or len(replies) != len(txn.queued) or txn.overflow:
        return None
    callbacks = getattr(instance, "response_callbacks", None) or {}
    out: list[Any] = []
    for (args, options), reply in zip(txn.queued, replies, strict=True):
        callback = callbacks.get(args[0]) if not isinstance(reply, Exception) else None
        if callback is not None:
            try:
                reply = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
            except Exception:
                reply = UNKNOWN
        out.append(reply)
    return out


def _after_command(
    instance: Any, args: Sequence[Any], options: dict[str, Any], result: Any
) -> _Recorder | None:
    """What a command that returned did, raw MULTI included (None: nothing to record)."""
    name = command_name(args)
    owner = _raw_txns.owner(instance)
    txn = _raw_txns.get(owner)
    if txn is None:
        if name == "MULTI":
            _raw_txns.open(owner)
            return None
        return _record_command(instance, args, result)
    if name not in ("EXEC", "DISCARD", "RESET"):
        txn.queue(args, options)
        return None
    _raw_txns.close(owner, txn)
    recorder = _Recorder(instance)
    recorder.applied = False
    if name != "EXEC" or result is None:  # DISCARD, or EXEC aborted by WATCH
        if txn.queued:
            recorder.txn = (txn.txn_id, "rollback")
        return recorder
    recorder.txn = (txn.txn_id, "commit")
    replies = _exec_replies(instance, txn, result)
    if replies is None:
        recorder.unresolved = "transaction replies"
        return recorder
    for (queued, _), reply in zip(txn.queued, replies, strict=True):
        recorder.add(effects(command_name(queued), queued, reply))
    return recorder


def _command_failed(instance: Any, args: Sequence[Any], exc: BaseException) -> None:
    """EXEC/DISCARD that raised, or a lost connection, ends a raw MULTI: nothing applied."""
    try:
        from redis.exceptions import ConnectionError, TimeoutError

        owner = _raw_txns.owner(instance)
        txn = _raw_txns.get(owner)
        if txn is None:
            return
        lost = isinstance(exc, (ConnectionError, TimeoutError))
        if lost or command_name(args) in ("EXEC", "DISCARD", "RESET"):
            _raw_txns.close(owner, txn)
    except Exception:
        _log.debug("ending the raw MULTI failed", exc_info=True)


# --------------------------------------------------------------------------- pipelines


def _queued(instance: Any) -> Any:
    """A pipeline's queued commands. A cluster pipeline (redis-py >= 6) keeps them in its
    execution strategy (`command_queue` sync, `_command_queue` asyncio) and leaves its own
    `command_stack` empty; older asyncio cluster pipelines have `_command_stack`."""
    strategy = getattr(instance, "_execution_strategy", None)
    if strategy is not None:
        queue = getattr(strategy, "command_queue", None)
        return queue if queue is not None else getattr(strategy, "_command_queue", None)
    stack = getattr(instance, "command_stack", None)
    return stack if stack is not None else getattr(instance, "_command_stack", None)


def _stack(instance: Any) -> list[tuple[Sequence[Any], Any]]:
    stack = _queued(instance)
    out: list[tuple[Sequence[Any], Any]] = []
    for entry in stack or ():
        entry_args = getattr(entry, "args", None)
        if entry_args is None and isinstance(entry, tuple) and entry:
            entry_args = entry[0]
        if isinstance(entry_args, (tuple, list)):
            out.append((entry_args, entry))
    return out


@functools.cache
def _cluster_transactions() -> tuple[type, ...]:
    """The execution strategies of cluster pipelines made with `transaction=True`."""
    found: list[type] = []
    for module in ("redis.cluster", "redis.asyncio.cluster"):
        with suppress(ImportError, AttributeError):  # redis-py < 6: no cluster transactions
            found.append(importlib.import_module(module).TransactionStrategy)
    return tuple(found)


def _transactional(instance: Any) -> bool:
    strategy = getattr(instance, "_execution_strategy", None)
    if strategy is not None:  # a cluster pipeline: its whole queue goes in one MULTI/EXEC
        return isinstance(strategy, _cluster_transactions())
    flag = getattr(instance, "is_transaction", None)  # redis.asyncio
    if not isinstance(flag, bool):
        flag = getattr(instance, "transaction", False)  # sync: an attribute over the method
    return (isinstance(flag, bool) and flag) or bool(getattr(instance, "explicit_transaction", 0))


class _Batch:
    def __init__(self, tracer: trace.Tracer, instance: Any) -> None:
        self.stack = _stack(instance)
        self.txn = _transactional(instance)
        names = [command_name(args) for args, _ in self.stack]
        operation = "MULTI" if self.txn else "PIPELINE"
        attrs: dict[str, Any] = {
            A.DB_SYSTEM_NAME: STORE,
            A.DB_NAMESPACE: _db(instance),
            A.DB_OPERATION_NAME: operation,
            A.DB_QUERY_SUMMARY: _summary(names, operation),
            BATCH_SIZE: len(self.stack),
        }
        if any(n in COMMANDS for n in names):
            attrs[A.STORE] = STORE
        self.call = _Call(tracer, operation, attrs)
        self.txn_id = uuid.uuid4().hex if self.txn else None

    def record(self, instance: Any, responses: Any) -> _Recorder:
        recorder = _Recorder(instance)
        recorder.applied = not self.txn  # a MULTI's writes count with its outcome
        recorder.batch_txn = self.txn_id
        known = isinstance(responses, list) and len(responses) == len(self.stack)
        for index, (args, _) in enumerate(self.stack):
            response = responses[index] if known else UNKNOWN
            recorder.add(effects(command_name(args), args, response))
        return recorder

    def record_failed(self, instance: Any, applied: int) -> _Recorder:
        """The commands before the first failed one ran without error (their replies are
        unknown); the failed one changed nothing; whether later ones ran or failed is not
        known, so what they may have written is left out."""
        recorder = _Recorder(instance)
        recorder.applied = not self.txn
        recorder.batch_txn = self.txn_id
        for args, _ in self.stack[:applied]:
            recorder.add(effects(command_name(args), args, UNKNOWN))
        recorder.reads.clear()  # their values were never returned
        later: set[_Place] = set()
        for args, _ in self.stack[applied + 1 :]:
            for key in written_keys(command_name(args), args):
                later.add(recorder.place(key))
        if later:
            recorder.drop(later, "outcome unknown")
            recorder.unresolved = "outcome unknown"
        return recorder

    def outcome(self, span: Span, outcome: str, wrote: bool) -> None:
        if self.txn_id is None or not span.is_recording():
            return
        span.set_attribute(A.TXN_ID, self.txn_id)
        span.set_attribute(A.TXN_OUTCOME, outcome)
        if wrote:
            span.set_attribute(A.COMMITTED, outcome == "commit")


# redis-py names the first failed command of a pipeline in the error it raises.
_FIRST_ERROR = re.compile(r"Command # (\d+) \(")


def _first_failed(exc: BaseException) -> int | None:
    """The 1-based position of the command whose error execute() raised, if it says."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    found = _FIRST_ERROR.match(text)
    return int(found.group(1)) if found else None


def _failed_batch(exc: BaseException) -> tuple[str | None, int | None]:
    """(transaction outcome, None if unknown; how many leading commands are known to have
    been applied, None: none known) for an exception from execute()."""
    from redis.exceptions import ExecAbortError, ResponseError, WatchError

    if isinstance(exc, (WatchError, ExecAbortError)):
        return "rollback", None  # nothing was applied
    if isinstance(exc, ResponseError):
        # redis-py raises a queued command's error in place of EXECABORT (from it): nothing
        # ran. Otherwise the commands ran and the first one's error was raised afterwards:
        # those before it were applied.
        if isinstance(exc.__cause__ or exc.__context__, ExecAbortError):
            return "rollback", None
        first = _first_failed(exc)
        if first is None or first < 1:
            return None, None  # e.g. refused at connect: nothing shows EXEC ran, or did not
        return "commit", first - 1
    return "rollback", None  # connection lost or similar: nothing shows it was applied


def _watch_error(exc: BaseException) -> bool:
    from redis.exceptions import WatchError

    return isinstance(exc, WatchError)


def _batch_failed(batch: _Batch, instance: Any, exc: BaseException) -> _Recorder | None:
    """Record what a failed execute() did; returns a recorder that may need follow-ups."""
    try:
        outcome, applied = _failed_batch(exc)
        recorder = batch.record_failed(instance, applied) if applied is not None else None
        if outcome is not None:
            batch.outcome(batch.call.span, outcome, bool(recorder and recorder.writes))
        return recorder
    except Exception:
        _log.debug("recording the failed pipeline failed", exc_info=True)
        return None


# --------------------------------------------------------------------------- wrappers
# One body per wrapped method serves the blocking and the asyncio client (see _steps); only
# the follow-up reads of keys whose version the reply did not give differ between them.


# While a cluster pipeline's execute() runs: the pipeline and its client. After a
# redirection (MOVED, ASK) or a lost connection redis-py sends a command again through their
# execute_command; the pipeline's span records that command already, so it gets no span of ours.
_resending: ContextVar[tuple[Any, ...]] = ContextVar("agentstate_redis_resending", default=())


def _resent(instance: Any) -> bool:
    return any(instance is sender for sender in _resending.get())


def _senders(instance: Any) -> tuple[Any, ...]:
    """What a cluster pipeline sends commands again through: itself (sync, as its client)
    or its client (asyncio); nothing for a plain pipeline."""
    try:
        if getattr(instance, "nodes_manager", None) is None:
            return ()
        return (instance, getattr(instance, "cluster_client", instance))
    except Exception:  # a property of the client's that failed: nothing to leave out
        return ()


@contextmanager
def _resends_recorded_by(pipeline: Any) -> Iterator[None]:
    """While `pipeline` executes, commands it sends again get no span of their own."""
    token = _resending.set(_senders(pipeline))
    try:
        yield
    finally:
        _resending.reset(token)


@dataclass(frozen=True)
class _Refetch:
    """A body's request: read again the keys `recorder` could not version from the reply."""

    instance: Any  # the client or pipeline the call was made on
    recorder: _Recorder


def _command_body(tracer: trace.Tracer, instance: Any, args: Any, kwargs: Any) -> Body:
    call = _start_command(tracer, instance, args)
    if call is None:
        return (yield CALL)
    token = call.activate()
    try:
        result = yield CALL
    except BaseException as exc:
        call.deactivate(token)
        _command_failed(instance, args, exc)
        call.fail(exc)
        raise
    call.deactivate(token)
    reads = False
    try:
        recorder = _after_command(instance, args, kwargs, result)
        if recorder is not None:
            yield _Refetch(instance, recorder)
            call.record(recorder)
            reads = bool(recorder.reads)
    except Exception:
        _log.debug("recording the command failed", exc_info=True)
    except BaseException:  # the task was cancelled while we read a value again
        call.end()  # the command ran: its span ends, with what it recorded so far
        raise
    call.guard(reads)
    call.end()
    return result


def _pipeline_body(tracer: trace.Tracer, instance: Any) -> Body:
    try:
        batch = _Batch(tracer, instance) if _stack(instance) else None
    except Exception:
        _log.debug("starting the pipeline span failed", exc_info=True)
        batch = None
    if batch is None:
        return (yield CALL)
    call = batch.call
    token = call.activate()
    try:
        with _resends_recorded_by(instance):
            result = yield CALL
    except BaseException as exc:
        call.deactivate(token)
        recorder = _batch_failed(batch, instance, exc)
        try:
            if recorder is not None:
                yield _Refetch(instance, recorder)
                call.record(recorder)
        except Exception:
            _log.debug("recording the failed pipeline failed", exc_info=True)
        finally:  # also when the task is cancelled while we read a value again
            call.fail(exc, status=not _watch_error(exc))
        raise
    call.deactivate(token)
    reads = False
    try:
        recorder = batch.record(instance, result)
        yield _Refetch(instance, recorder)
        call.record(recorder)
        batch.outcome(call.span, "commit", bool(recorder.writes))
        reads = bool(recorder.reads)
    except Exception:
        _log.debug("recording the pipeline failed", exc_info=True)
    except BaseException:  # cancelled while we read a value again
        call.end()
        raise
    call.guard(reads)
    call.end()
    return result


def _runner(is_async: bool) -> Callable[[Body, Callable[[], Any]], Any]:
    """How a body runs: blocking, or as the coroutine an asyncio client's caller awaits."""
    if is_async:
        return lambda body, call: adrive(body, call, _refetch_async)
    return lambda body, call: drive(body, call, _refetch_sync)


def _command_wrapper(tracer: trace.Tracer, is_async: bool) -> Callable[..., Any]:
    run = _runner(is_async)

    def traced_command(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not args or not is_instrumentation_enabled() or _resent(instance):
            return wrapped(*args, **kwargs)
        return run(_command_body(tracer, instance, args, kwargs), lambda: wrapped(*args, **kwargs))

    return traced_command


def _watched_wrapper(tracer: trace.Tracer, is_async: bool) -> Callable[..., Any]:
    """A cluster transaction pipeline sends the commands of its WATCH phase at once from its
    execution strategy (a plain pipeline: immediate_execute_command): a span each, recorded
    against the pipeline the strategy belongs to."""
    traced_command = _command_wrapper(tracer, is_async)

    def traced_watched(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return traced_command(wrapped, getattr(instance, "_pipe", instance), args, kwargs)

    return traced_watched


def _pipeline_wrapper(tracer: trace.Tracer, is_async: bool) -> Callable[..., Any]:
    run = _runner(is_async)

    def traced_execute(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        return run(_pipeline_body(tracer, instance), lambda: wrapped(*args, **kwargs))

    return traced_execute


def _raw_command(instance: Any) -> Callable[..., Any]:
    """What runs a follow-up read: never a pipeline's execute_command, which would only
    queue it. A plain pipeline lends its pool to a client; a cluster pipeline runs it as its
    cluster client would (what redis-py does with a command it sends again at once)."""
    import redis
    import redis.cluster

    if isinstance(instance, redis.client.Pipeline):
        return redis.Redis(connection_pool=instance.connection_pool).execute_command
    if isinstance(instance, redis.cluster.ClusterPipeline):
        return functools.partial(redis.cluster.RedisCluster.execute_command, instance)
    return instance.execute_command  # type: ignore[no-any-return]


def _refetch_sync(request: _Refetch) -> None:
    recorder = request.recorder
    pending = recorder.pending()
    if not pending:
        return
    execute_command = _raw_command(request.instance)
    for place, physical, rule, kind, key in pending:
        try:
            with _suppressed():
                response = execute_command(*_refetch_args(kind, key))
            recorder.refetched(place, physical, rule, _refetch_value(kind, response))
        except Exception:
            _log.debug("reading %s again failed", kind, exc_info=True)


def _async_client(instance: Any) -> tuple[Any, bool]:
    """(what an asyncio follow-up read runs on, whether it is ours to close): a plain
    pipeline lends its pool to a client of ours; a cluster pipeline has its cluster client."""
    import redis.asyncio

    if isinstance(instance, redis.asyncio.client.Pipeline):
        return redis.asyncio.Redis(connection_pool=instance.connection_pool), True
    cluster_client = getattr(instance, "cluster_client", None)  # asyncio ClusterPipeline
    return (instance if cluster_client is None else cluster_client), False


async def _refetch_async(request: _Refetch) -> None:
    recorder, instance = request.recorder, request.instance
    pending = recorder.pending()
    if not pending:
        return
    client, own_client = _async_client(instance)
    try:
        for place, physical, rule, kind, key in pending:
            try:
                with _suppressed():
                    response = await client.execute_command(*_refetch_args(kind, key))
                recorder.refetched(place, physical, rule, _refetch_value(kind, response))
            except Exception:
                _log.debug("reading %s again failed", kind, exc_info=True)
    finally:
        if own_client:
            try:
                await client.aclose()
            except Exception:
                _log.debug("closing the follow-up client failed", exc_info=True)


# --------------------------------------------------------------------------- instrumentor


def _targets() -> list[tuple[type, str, str, bool]]:
    """(class, method, kind, async) of everything we wrap."""
    import redis.asyncio.client
    import redis.client

    targets: list[tuple[type, str, str, bool]] = [
        (redis.client.Redis, "execute_command", "command", False),
        (redis.client.Pipeline, "execute", "pipeline", False),
        (redis.client.Pipeline, "immediate_execute_command", "command", False),
        (redis.asyncio.client.Redis, "execute_command", "command", True),
        (redis.asyncio.client.Pipeline, "execute", "pipeline", True),
        (redis.asyncio.client.Pipeline, "immediate_execute_command", "command", True),
    ]
    return targets + _cluster_targets()


def _cluster_targets() -> list[tuple[type, str, str, bool]]:
    """Cluster clients: a command; a pipeline's execute(); and the commands a transaction
    pipeline sends at once while it WATCHes (redis-py >= 6; `wrap_under` skips a method that
    is not there)."""
    out: list[tuple[type, str, str, bool]] = []
    for module, is_async in (("redis.cluster", False), ("redis.asyncio.cluster", True)):
        try:
            found = importlib.import_module(module)
        except ImportError:  # redis.asyncio.cluster came with redis-py 4.3
            continue
        out.append((found.RedisCluster, "execute_command", "command", is_async))
        out.append((found.ClusterPipeline, "execute", "pipeline", is_async))
        strategy = getattr(found, "TransactionStrategy", None)
        if isinstance(strategy, type):
            out.append((strategy, "_immediate_execute_command", "watched", is_async))
    return out


class RedisInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces redis-py commands, pipelines and MULTI/EXEC transactions, sync and asyncio,
    of plain and cluster clients.

    Whatever the load order next to contrib's RedisInstrumentor, ours goes innermost, so
    contrib's span stays the one database span and carries our attributes too. contrib's
    `unwrap()` removes the outermost wrapper, which is then always its own; ours takes out
    only our own wrapper wherever it sits.
    """

    # BaseInstrumentor is a singleton whose __init__ runs on every RedisInstrumentor():
    # the wrappers live on the class so a new handle can still take them out.
    _wrapped: Wrapped = []  # noqa: RUF012

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("redis >= 4.2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        wrapped: Wrapped = []
        factories = {
            "command": _command_wrapper,
            "pipeline": _pipeline_wrapper,
            "watched": _watched_wrapper,
        }
        for cls, name, kind, is_async in _targets():
            wrapper = factories[kind](tracer, is_async)
            if wrap_under(cls, name, wrapper):
                wrapped.append((cls, name, wrapper))
        type(self)._wrapped = wrapped
        _links.enable(True)  # row reads are remembered while a cache can link to them

    def _uninstrument(self, **kwargs: Any) -> None:
        wrapped, type(self)._wrapped = type(self)._wrapped, []
        unwrap_all(wrapped)
        _links.enable(False)
