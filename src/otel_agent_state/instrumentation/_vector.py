"""What the vector-store instrumentations (Qdrant, Chroma, LanceDB) share.

One `VectorCall` is one client call: a CLIENT span with the database conventions, the facts
it read or wrote and their versions, the read guard before results go back, and error
recording. Versions come from a configured field of the record (a payload/metadata field or
column), else from a keyed digest of the record's content as the store returns it by
default. Vectors are left out of digests: stores transform them (Qdrant normalises cosine
vectors, all round to float32) and default reads do not return them, so a digest that
included them could not be recomputed from a read of the same state.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import attributes as A
from .. import runtime
from ..adapter import encode_fields
from ..core.config import FactRule, Settings
from ..core.model import VersionError, parse_version
from ..errors import StaleReadError
from ._steps import CALL, Body, adrive, drive

_log = logging.getLogger(__name__)

DEFAULT_TIER = "index"
MAX_FACTS_PER_SPAN = 1_000  # facts recorded on one span; later records are not tracked


# --------------------------------------------------------------------------- versions


def _plain(value: Any) -> Any:
    """JSON-able form of a record value, the same whether it came from the caller or a read."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b:" + bytes(value).hex()
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _plain(item())
        except Exception:
            pass
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        try:
            return _plain(tolist())
        except Exception:
            pass
    return f"{type(value).__qualname__}:{value!r}"


def canonical(value: Any) -> bytes:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":")).encode()


def digest_version(settings: Settings, store: str, content: Any) -> str:
    return settings.digest(store.encode() + b"\0" + canonical(content))


def field_value(record: Mapping[str, Any] | None, path: str) -> tuple[bool, Any]:
    """(found, value) of a top-level key, else of a dotted path into nested mappings."""
    if not isinstance(record, Mapping):
        return False, None
    if path in record:
        return True, record[path]
    current: Any = record
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


def field_version(settings: Settings, value: Any) -> str:
    """A configured version field's value as a version (the kinds of SPEC §3)."""
    if isinstance(value, bool):
        return f"n:{int(value)}"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        if math.isfinite(value):
            return f"t:{round(value * 1e9)}"  # epoch seconds
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return f"n:{int(text)}"
        try:
            return parse_version(f"t:{text}").text
        except VersionError:
            pass
    elif isinstance(value, _dt.datetime) and value.tzinfo is not None:
        return f"t:{round(value.timestamp() * 1e9)}"
    else:
        item = getattr(value, "item", None)  # numpy scalars from LanceDB/pandas
        if callable(item):
            try:
                inner = item()
            except Exception:
                inner = None
            if inner is not None and inner is not value:
                return field_version(settings, inner)
    return settings.digest(b"field\0" + canonical(value))


def version_field(rule: FactRule | None, *names: str) -> str | None:
    """The first of the rule's version sources `names` that is configured."""
    if rule is None:
        return None
    for name in names:
        value = getattr(rule.version, name, None)
        if value:
            return str(value)
    return None


def merged_keys(names: Any) -> frozenset[str] | None:
    """The top-level record keys a merge write sets, None (a whole-record write, for the
    detectors) unless they are plain strings: a dotted or indexed path may overlap another
    key in ways plain names do not show."""
    if isinstance(names, Mapping):
        names = list(names)
    if not isinstance(names, (list, tuple, set, frozenset)) or not names:
        return None
    if not all(isinstance(n, str) and n and not any(c in n for c in ".[]") for n in names):
        return None
    return frozenset(names)


def key_part(value: Any) -> str:
    """One fact-key segment: `/` separates segments, so it is escaped."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = bytes(value).hex() if isinstance(value, (bytes, bytearray)) else str(value)
    return text.replace("%", "%25").replace("/", "%2F")


# --------------------------------------------------------------------------- context


@contextmanager
def suppressed() -> Iterator[None]:
    """Our own follow-up store calls: untraced (by us and by contrib HTTP/gRPC spans)."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)


# --------------------------------------------------------------------------- observation


class VectorCall:
    """The span of one vector-store call and the facts recorded on it."""

    def __init__(
        self,
        tracer: trace.Tracer,
        settings: Settings,
        *,
        store: str,
        collection: str,
        operation: str,
        op: str,
        namespace: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.collection = collection
        summary = f"{operation} {collection}" if collection else operation
        attrs: dict[str, Any] = {
            A.STORE: store,
            A.DB_SYSTEM_NAME: store,
            A.DB_OPERATION_NAME: operation,
            A.DB_QUERY_SUMMARY: summary,
            A.OP: op,
            A.TIER: DEFAULT_TIER,
        }
        if collection:
            attrs[A.DB_COLLECTION_NAME] = collection
        if namespace:
            attrs[A.DB_NAMESPACE] = namespace
        self.span: Span = tracer.start_span(summary, kind=SpanKind.CLIENT, attributes=attrs)
        self.tier_set = False
        self.reads: dict[str, str] = {}
        self.writes: dict[str, str] = {}
        # Per written fact, the keys a merge write set in the stored record (None: whole).
        self.fields: dict[str, frozenset[str] | None] = {}
        self.ended = False

    def attach(self) -> object:
        return otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def detach(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def resolve(self, physical: str) -> tuple[str, FactRule | None]:
        resolved = self.settings.resolve(physical)
        if not self.tier_set:
            self.tier_set = True
            tier = resolved.tier or DEFAULT_TIER
            if tier != DEFAULT_TIER:
                self.span.set_attribute(A.TIER, tier)
        return resolved.key, resolved.rule

    def full(self) -> bool:
        return len(self.reads) + len(self.writes) >= MAX_FACTS_PER_SPAN

    def read(self, fact: str, version: str) -> None:
        if fact in self.reads or len(self.reads) < MAX_FACTS_PER_SPAN:
            self.reads.pop(fact, None)
            self.reads[fact] = version

    def write(self, fact: str, version: str, fields: frozenset[str] | None = None) -> None:
        """`fields`: the record's keys (payload keys, metadata keys) the write merged into the
        stored record, keeping its other keys; None: it replaced the whole record."""
        if fact in self.writes or len(self.writes) < MAX_FACTS_PER_SPAN:
            if fact in self.writes:  # written twice in one call: the union, whole if either
                before = self.fields.get(fact)
                fields = None if before is None or fields is None else before | fields
            self.writes.pop(fact, None)
            self.writes[fact] = version
            self.fields[fact] = fields

    def unresolved(self, reason: str) -> None:
        self.span.set_attribute(A.UNRESOLVED, reason)

    def set(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def record_writes(self, store_order: int | None = None) -> None:
        if self.writes:
            self.span.set_attribute(A.WRITE_FACTS, list(self.writes))
            self.span.set_attribute(A.WRITE_VERSIONS, list(self.writes.values()))
            if any(self.fields.get(fact) is not None for fact in self.writes):
                self.span.set_attribute(
                    A.WRITE_FIELDS, [encode_fields(self.fields.get(f)) for f in self.writes]
                )
        self.span.set_attribute(A.COMMITTED, True)
        if store_order is not None:
            self.span.set_attribute(A.WRITE_STORE_ORDER, store_order)
        if self.writes:
            runtime.record_copies(self.span)  # an index sync says what it copied

    def record_reads(self) -> None:
        """Put the reads on the span and run the read guard (StaleReadError passes)."""
        if not self.reads:
            return
        self.span.set_attribute(A.READ_FACTS, list(self.reads))
        self.span.set_attribute(A.READ_VERSIONS, list(self.reads.values()))
        self.span.set_attribute(A.CONSISTENCY, self.settings.consistency_label(self.reads))
        runtime.guard_read(self.span)

    def fail(self, exc: BaseException) -> None:
        try:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self.span.record_exception(exc)
        except Exception:
            _log.debug("recording the error failed", exc_info=True)
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self.span.end()
        except Exception:
            _log.debug("ending the span failed", exc_info=True)


# --------------------------------------------------------------------------- call flow


@dataclass
class Fetch:
    """A follow-up store call of ours (untraced): `function()` if given, else
    `getattr(instance, method)(*args, **kwargs)`."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    function: Callable[[], Any] | None = None

    def run(self, instance: Any) -> Any:
        if self.function is not None:
            return self.function()
        return getattr(instance, self.method)(*self.args, **self.kwargs)


@dataclass
class Plan:
    call: VectorCall
    method: str
    args: dict[str, Any]  # the call's arguments by name, defaults applied
    collection: str
    data: dict[str, Any] = field(default_factory=dict)  # the handler's own notes


class Handler(Protocol):
    """What one instrumented library says about its calls; run by `sync_wrapper`/`async_wrapper`."""

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None: ...
    def before(self, plan: Plan) -> Fetch | None: ...
    def after(self, plan: Plan, result: Any) -> Fetch | None: ...
    def fetched(self, plan: Plan, stage: str, data: Any) -> None: ...
    def finish(self, plan: Plan, result: Any) -> None: ...


_signatures: dict[Any, inspect.Signature] = {}


def bind(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied (`self` included)."""
    function = getattr(wrapped, "__func__", wrapped)
    signature = _signatures.get(function)
    if signature is None:
        signature = _signatures[function] = inspect.signature(function)
    bound = signature.bind(instance, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _start(
    handler: Handler, method: str, wrapped: Any, instance: Any, args: Any, kwargs: Any
) -> Plan | None:
    try:
        return handler.start(method, instance, bind(wrapped, instance, args, kwargs))
    except Exception:
        _log.debug("cannot observe %s", method, exc_info=True)
        return None


def _step(plan: Plan, what: Callable[[], Fetch | None]) -> Fetch | None:
    try:
        return what()
    except Exception:
        _log.debug("recording %s failed", plan.method, exc_info=True)
        return None


@dataclass(frozen=True)
class _FollowUp:
    handler: Handler
    plan: Plan
    instance: Any  # the client the call was made on; follow-ups go through it
    stage: str
    request: Fetch


def _traced(handler: Handler, plan: Plan, instance: Any) -> Body:
    """The call's span around the application's call, with the handler's follow-ups (one
    body for blocking and coroutine clients: see _steps)."""
    call = plan.call
    before = _step(plan, lambda: handler.before(plan))
    if before is not None:
        try:
            yield _FollowUp(handler, plan, instance, "before", before)
        except BaseException as exc:  # cancelled while we read: the call will not run
            call.fail(exc)
            raise
    token = call.attach()
    try:
        result = yield CALL
    except BaseException as exc:
        call.detach(token)
        call.fail(exc)
        raise
    call.detach(token)
    after = _step(plan, lambda: handler.after(plan, result))
    if after is not None:
        try:
            yield _FollowUp(handler, plan, instance, "after", after)
        except BaseException:  # cancelled while we read: the call ran, its span ends
            call.end()
            raise
    try:
        handler.finish(plan, result)
    except StaleReadError as exc:
        call.fail(exc)
        raise
    except Exception:
        _log.debug("recording %s failed", plan.method, exc_info=True)
    call.end()
    return result


def _follow(up: _FollowUp) -> None:
    try:
        with suppressed():
            data = up.request.run(up.instance)
        up.handler.fetched(up.plan, up.stage, data)
    except Exception:
        _log.debug("follow-up %s failed", up.request.method, exc_info=True)


async def _afollow(up: _FollowUp) -> None:
    try:
        with suppressed():
            data = up.request.run(up.instance)
            if inspect.isawaitable(data):
                data = await data
        up.handler.fetched(up.plan, up.stage, data)
    except Exception:
        _log.debug("follow-up %s failed", up.request.method, exc_info=True)


def sync_wrapper(handler: Handler, method: str) -> Callable[..., Any]:
    """A wrapt wrapper for a blocking client method."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        plan = _start(handler, method, wrapped, instance, args, kwargs)
        if plan is None:
            return wrapped(*args, **kwargs)
        return drive(_traced(handler, plan, instance), lambda: wrapped(*args, **kwargs), _follow)

    return wrapper


def async_wrapper(handler: Handler, method: str) -> Callable[..., Any]:
    """A wrapt wrapper for a coroutine client method."""

    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        plan = _start(handler, method, wrapped, instance, args, kwargs)
        if plan is None:
            return await wrapped(*args, **kwargs)
        body = _traced(handler, plan, instance)
        return await adrive(body, lambda: wrapped(*args, **kwargs), _afollow)

    return wrapper
