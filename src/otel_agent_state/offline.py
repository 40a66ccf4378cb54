"""The offline span model: spans read from OTLP/JSON or console-exporter JSON, grouped into
traces and judged by the same ledger and detectors as the live span processor.

Used by `otel-agent-state check` and `report`, and by `serve`. Pure apart from JSON: no
OpenTelemetry SDK import, so the checker starts fast and runs anywhere.

How a finished trace is judged (`check_trace`): each span's context (agent, agent scope,
decision, mutation) is derived from its ancestors exactly as the live processor derives it
at `on_start`, where a span whose parent ran in another process starts afresh (as a local
root does live); the spans are then replayed into a fresh Ledger in time order (scope
starts, then observations, transaction ends and scope ends as the spans ended) and the trace
is closed. The history is the whole trace, so a stale read in one process of a write made in
another is found even without the propagator.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol, TextIO

from . import adapter, genai_memory
from . import attributes as A
from .core.config import Settings, get_settings
from .core.ledger import Ledger, LedgerLimits
from .core.model import Anomaly, Observation, Scope, ScopeKind, TxnEnd, _time_ns

# What check_trace returns: the same value the live processor reports.
Finding = Anomaly

# Attributes that make a span matter to the detectors (the rest only link the tree): ours,
# and what can name an agent or open a scope (agent and tool spans of every convention).
_OURS = "agentstate."
_AGENT_KEYS = frozenset(adapter.ATTRIBUTION_KEYS)
# Other instrumentations' GenAI memory spans are judged too: their attributes are kept.
_MEMORY_KEYS = genai_memory.KEYS
_LOWER_HEX = "0123456789abcdef"
_KEPT_KEYS = _AGENT_KEYS | _MEMORY_KEYS | {A.GEN_AI_OPERATION_NAME}


class SpanEvent(NamedTuple):
    name: str
    time_ns: int
    attributes: Mapping[str, Any]


class SpanLink(NamedTuple):
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, decoded to plain Python values (ids in lower-case hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    error: bool = False
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    scope_name: str = ""  # instrumentation scope (OTLP only; the console format has none)

    @property
    def process(self) -> str:
        return process_of(self.resource)


class SpanLike(Protocol):
    """What judging reads of a span: SpanRecord, or the reader's lighter row."""

    @property
    def trace_id(self) -> str: ...
    @property
    def span_id(self) -> str: ...
    @property
    def parent_span_id(self) -> str | None: ...
    @property
    def name(self) -> str: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...
    @property
    def resource(self) -> Mapping[str, Any]: ...
    @property
    def error(self) -> bool: ...
    @property
    def events(self) -> tuple[SpanEvent, ...]: ...
    @property
    def process(self) -> str: ...


class _Row(NamedTuple):
    """The reader's span: a SpanRecord's fields in a tuple (cheaper to make by the million)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    error: bool
    events: tuple[SpanEvent, ...]
    links: tuple[SpanLink, ...]
    scope_name: str
    process: str


_EVENT = SpanEvent


def process_of(resource: Mapping[str, Any]) -> str:
    """Which process made a span (clock skew applies across processes). Like the live
    processor: `service.instance.id` (the SDK sets one per process), else the service name
    with `process.pid` when the resource has it."""
    instance = resource.get("service.instance.id")
    if instance:
        return str(instance)
    service = str(resource.get("service.name") or "unknown_service")
    pid = resource.get("process.pid")
    return f"{service}/{pid}" if pid is not None else service


def is_interesting(attributes: Iterable[str]) -> bool:
    return any(
        key.startswith(_OURS) or key in _AGENT_KEYS or key in _MEMORY_KEYS for key in attributes
    )


def is_own_anomaly(name: str, attributes: Mapping[str, Any], scope_name: str = "") -> bool:
    """An anomaly span this package exported: never fed back into detection."""
    if not name.startswith(A.ANOMALY_SPAN_PREFIX):
        return False
    return scope_name == A.SCOPE_NAME or A.ANOMALY_KIND in attributes


# ---------------------------------------------------------------------- decoding


class FormatError(ValueError):
    """Input that is not OTLP/JSON or console-exporter span JSON; says what is wrong, and
    on which line when known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def any_value(value: Mapping[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as a plain Python value (arrays as lists, kvlists as dicts)."""
    for kind, inner in value.items():
        if kind == "stringValue":
            return inner
        if kind == "intValue":
            return int(inner)
        if kind == "boolValue":
            return bool(inner)
        if kind == "doubleValue":
            return float(inner)
        if kind == "arrayValue":
            return [any_value(v) for v in (inner or {}).get("values", ())]
        if kind == "kvlistValue":
            return {kv["key"]: any_value(kv.get("value") or {}) for kv in inner.get("values", ())}
        if kind == "bytesValue":
            return inner
    return None


def key_values(items: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items or ():
        value = kv.get("value") or {}
        text = value.get("stringValue")
        out[kv["key"]] = text if text is not None else any_value(value)
    return out


def _hex_id(value: Any, size: int) -> str:
    """OTLP/JSON ids are hex; protobuf's own JSON mapping gives base64: accept both."""
    if isinstance(value, str):
        if len(value) == size * 2 and not value.strip(_LOWER_HEX):
            return value
        if len(value) == size * 2:
            lowered = value.lower()
            try:
                int(lowered, 16)
                return lowered
            except ValueError:
                pass
        try:
            raw = binascii.a2b_base64(value)
        except binascii.Error:
            raw = b""
        if len(raw) == size:
            return raw.hex()
    raise FormatError(f"bad {'trace' if size == 16 else 'span'} id {value!r}")


def _status_error(status: Any) -> bool:
    if not status:
        return False
    code = status.get("code")
    return bool(code == 2 or code == "STATUS_CODE_ERROR")


def spans_from_otlp_json(doc: Mapping[str, Any]) -> Iterator[SpanRecord]:
    """Every span of one ExportTraceServiceRequest in OTLP/JSON form."""
    for rs in _list(doc, "resourceSpans"):
        resource = key_values((rs.get("resource") or {}).get("attributes"))
        for ss in _list(rs, "scopeSpans", "instrumentationLibrarySpans"):
            scope_name = str(
                (ss.get("scope") or ss.get("instrumentationLibrary") or {}).get("name", "")
            )
            for span in ss.get("spans") or ():
                yield _otlp_span(span, resource, scope_name)


def _list(doc: Mapping[str, Any], key: str, legacy: str = "") -> list[Any]:
    value = doc.get(key)
    if value is None and legacy:
        value = doc.get(legacy)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError(f"{key} is not a list")
    return value


def _otlp_span(span: Mapping[str, Any], resource: Mapping[str, Any], scope: str) -> SpanRecord:
    try:
        parent = span.get("parentSpanId")
        return SpanRecord(
            trace_id=_hex_id(span["traceId"], 16),
            span_id=_hex_id(span["spanId"], 8),
            parent_span_id=_hex_id(parent, 8) if parent else None,
            name=str(span.get("name", "")),
            start_ns=int(span.get("startTimeUnixNano") or 0),
            end_ns=int(span.get("endTimeUnixNano") or 0),
            attributes=key_values(span.get("attributes")),
            resource=resource,
            error=_status_error(span.get("status")),
            events=tuple(
                SpanEvent(
                    str(e.get("name", "")),
                    int(e.get("timeUnixNano") or 0),
                    key_values(e.get("attributes")),
                )
                for e in span.get("events") or ()
            ),
            links=tuple(
                SpanLink(
                    _hex_id(link["traceId"], 16),
                    _hex_id(link["spanId"], 8),
                    key_values(link.get("attributes")),
                )
                for link in span.get("links") or ()
            ),
            scope_name=scope,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise _decode_error(exc, "span") from None


def _decode_error(exc: Exception, what: str) -> FormatError:
    """What is wrong with a span that could not be decoded: a missing key, or else."""
    if isinstance(exc, KeyError):
        return FormatError(f"{what} without {exc.args[0]}")
    return FormatError(f"malformed {what}: {exc}")


# Attribute key -> (makes a span interesting, is kept for judging, the key). Keys repeat on
# every span, so each is classified once, and the spans held share the one copy kept here
# (the decoder makes a new one per span); bounded, since input can hold any number of keys.
_KEY_CLASS: dict[str, tuple[bool, bool, str]] = {}
_KEY_CLASS_MAX = 4096


def _classify(key: str) -> tuple[bool, bool, str]:
    """A key not in `_KEY_CLASS` yet (callers look there first: the hot path)."""
    ours = key.startswith(_OURS)
    known = (ours or key in _AGENT_KEYS or key in _MEMORY_KEYS, ours or key in _KEPT_KEYS, key)
    if len(_KEY_CLASS) < _KEY_CLASS_MAX:
        _KEY_CLASS[key] = known
    return known


# Text that repeats from span to span (stores, ops, facts, versions, span names): the spans
# held until the input ends share one copy of each instead of the decoder's copy per span.
# Bounded: emptied when full, so any number of distinct values costs no more than this.
_SHARED: dict[str, str] = {}
_SHARED_MAX = 1 << 16


def _shared(value: Any) -> Any:
    if type(value) is not str:
        return value  # malformed input is kept as it came, for the adapter to refuse
    known = _SHARED.get(value)
    if known is not None:
        return known
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    _SHARED[value] = value
    return value


def _judged_attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The attributes judging reads (ours, and the GenAI agent ones); the rest are skipped."""
    out: dict[str, Any] = {}
    classes, share = _KEY_CLASS, _shared
    for kv in items:
        key = kv["key"]
        known = classes.get(key) or _classify(key)
        if known[1]:
            key = known[2]
            value = kv.get("value") or {}
            text = value.get("stringValue")
            if text is not None:
                out[key] = share(text)
                continue
            array = value.get("arrayValue")
            if array is not None:  # fact and version lists: strings, decoded inline
                out[key] = [
                    share(item["stringValue"]) if "stringValue" in item else any_value(item)
                    for item in array.get("values") or ()
                ]
                continue
            out[key] = any_value(value)
    return out


def _otlp_row(
    span: Mapping[str, Any], trace_id: str, resource: Mapping[str, Any], scope: str, process: str
) -> _Row:
    """A span for judging: only the attributes judging reads, event names, no links.
    `trace_id`: the span's, already checked (the grouper's copy, shared by its spans)."""
    try:
        span_id = span["spanId"]
        if len(span_id) != 16 or span_id.strip(_LOWER_HEX):
            span_id = _hex_id(span_id, 8)
        parent = span.get("parentSpanId") or None
        if parent is not None and (len(parent) != 16 or parent.strip(_LOWER_HEX)):
            parent = _hex_id(parent, 8)
        events = span.get("events")
        return _Row(
            trace_id,
            span_id,
            parent,
            _shared(str(span.get("name", ""))),
            int(span.get("startTimeUnixNano") or 0),
            int(span.get("endTimeUnixNano") or 0),
            _judged_attributes(span.get("attributes") or ()),
            resource,
            _status_error(span.get("status")),
            tuple(_EVENT(str(e.get("name", "")), 0, {}) for e in events) if events else (),
            (),
            scope,
            process,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise _decode_error(exc, "span") from None


def span_from_console_json(obj: Mapping[str, Any]) -> SpanRecord:
    """One span as the SDK's ConsoleSpanExporter prints it (`ReadableSpan.to_json()`)."""
    try:
        context = obj["context"]
        parent = obj.get("parent_id")
        status = obj.get("status") or {}
        resource = dict((obj.get("resource") or {}).get("attributes") or {})
        return SpanRecord(
            trace_id=_hex_id(_strip0x(context["trace_id"]), 16),
            span_id=_hex_id(_strip0x(context["span_id"]), 8),
            parent_span_id=_hex_id(_strip0x(parent), 8) if parent else None,
            name=str(obj.get("name", "")),
            start_ns=_console_time(obj.get("start_time")),
            end_ns=_console_time(obj.get("end_time")),
            attributes=dict(obj.get("attributes") or {}),
            resource=resource,
            error=status.get("status_code") == "ERROR",
            events=tuple(
                SpanEvent(
                    str(e.get("name", "")),
                    _console_time(e.get("timestamp")),
                    dict(e.get("attributes") or {}),
                )
                for e in obj.get("events") or ()
            ),
            links=tuple(
                SpanLink(
                    _hex_id(_strip0x(link["context"]["trace_id"]), 16),
                    _hex_id(_strip0x(link["context"]["span_id"]), 8),
                    dict(link.get("attributes") or {}),
                )
                for link in obj.get("links") or ()
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise _decode_error(exc, "console span") from None


def _strip0x(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x"):
        return value[2:]
    return value


def _console_time(value: Any) -> int:
    """Console timestamps are RFC 3339 with microseconds (the nanoseconds are lost)."""
    if value is None:
        return 0
    ns = _time_ns(str(value))
    if ns is None:
        raise FormatError(f"bad timestamp {value!r}")
    return ns


def spans_from_json(obj: Any) -> Iterator[SpanRecord]:
    """Spans from one decoded JSON value: an ExportTraceServiceRequest, a console span, or
    a list of console spans."""
    if isinstance(obj, dict):
        if "resourceSpans" in obj:
            yield from spans_from_otlp_json(obj)
            return
        if "context" in obj and "name" in obj:
            yield span_from_console_json(obj)
            return
        raise FormatError("neither an OTLP ExportTraceServiceRequest nor a console-exporter span")
    if isinstance(obj, list):
        for item in obj:
            if not isinstance(item, dict):
                raise FormatError(f"a JSON array of {_json_kind(item)}s, not of spans")
            yield from spans_from_json(item)
        return
    kind = _json_kind(obj)
    raise FormatError(f"expected a JSON object, got {'an' if kind == 'array' else 'a'} {kind}")


def may_hold_spans(value: Any) -> bool:
    """Whether a decoded JSON value is shaped like span input at all (an OTLP request, a
    console span, or a list of those), rather than some other JSON an application printed."""
    if isinstance(value, dict):
        return "resourceSpans" in value or "context" in value
    if isinstance(value, list):
        return any(may_hold_spans(item) for item in value)
    return False


def _json_kind(value: Any) -> str:
    """A decoded value's kind in JSON's words (`[1, 2]` holds numbers, not ints)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "object"


# ---------------------------------------------------------------------- reading files


def _pick_loads() -> Callable[[str], Any]:
    """`json.loads`, or orjson's (about twice as fast on OTLP lines) when the `speedups`
    extra is installed. Whatever orjson refuses (NaN, out-of-range floats, lone
    surrogates, bad JSON) goes to the stdlib, so results and error messages are the
    stdlib's either way; the one difference, an integer past 64 bits (outside OTLP's
    int64/fixed64) read as a float, does not occur in valid OTLP."""
    try:
        from orjson import JSONDecodeError as FastError
        from orjson import loads as fast
    except ImportError:
        return json.loads
    slow = json.loads

    def loads(text: str) -> Any:
        try:
            return fast(text)
        except FastError:
            return slow(text)

    return loads


load_json = _pick_loads()

_CHUNK = 1 << 20
_MAX_DOCUMENT = 1 << 28  # one JSON value larger than this is refused, not buffered
_WS = " \t\r\n"


@dataclass
class ReadStats:
    """What reading one input passed over without failing."""

    # Lines of text between the JSON values of concatenated input: what an application
    # prints to stdout between the console exporter's spans (`app | check -`).
    skipped_lines: int = 0
    first_skipped: int = 0  # the line number of the first of them
    values: int = 0
    concatenated: bool = False  # the layout: concatenated values, not JSON lines
    # JSON values in concatenated input that hold no span (an application logging JSON to
    # stdout): skipped and counted by the caller, like lines of text.
    other_json: int = 0

    def skip(self, line: int) -> None:
        self.skipped_lines += 1
        self.first_skipped = self.first_skipped or line


def json_reason(exc: json.JSONDecodeError) -> str:
    """`not JSON (...)` for a decoder error: its message and the column."""
    # Some messages end with " at" ("Unterminated string starting at"): no second "at".
    at = "" if exc.msg.endswith(" at") else " at"
    return f"not JSON ({exc.msg}{at} column {exc.colno})"


def json_values(
    stream: TextIO,
    on_bad_line: Callable[[FormatError], None] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every JSON value in `stream`, whatever the layout:

    - JSON lines (the collector file exporter, `--json` exports): one object or array per
      line, decoded line by line (a bad line is reported with its number);
    - one document, or a stream of concatenated documents, pretty-printed or not (OTLP/HTTP
      JSON bodies; the console exporter prints one indented object per span). Lines of text
      between the values (an application's own output on the same stdout) are skipped and
      counted in `stats.skipped_lines`.

    The layout is told by the first non-blank line: a whole JSON object or array means JSON
    lines. Raises FormatError with the line number of the bad input; a bad line (JSON
    lines), or a damaged value (concatenated: reading resumes at the next line that opens an
    object), goes to `on_bad_line` instead when given.
    """
    stats = stats if stats is not None else ReadStats()
    lineno = 0
    first = ""
    for first in stream:
        lineno += 1
        if first.strip():
            break
    else:
        return
    loads = load_json
    try:
        value = loads(first)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, (dict, list)):
        stats.concatenated = True
        yield from _concatenated(first, stream, lineno, on_bad_line, stats)
        return
    stats.values += 1
    yield lineno, value
    for line in stream:
        lineno += 1
        if not line or line.isspace():
            continue
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            error = FormatError(json_reason(exc), lineno)
            if on_bad_line is None:
                raise error from None
            on_bad_line(error)
            continue
        stats.values += 1
        yield lineno, value


def _concatenated(
    first: str,
    stream: TextIO,
    first_line: int,
    on_bad: Callable[[FormatError], None] | None,
    stats: ReadStats,
) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    buf = first
    line, mark = first_line, 0  # buf[mark] is on `line`: newlines are counted once
    pos = 0
    eof = False

    def more() -> bool:
        """Drop what was read, append the next chunk (doubling: linear overall); False at
        the end of the input."""
        nonlocal buf, pos, mark, line, eof
        if eof:
            return False
        line += buf.count("\n", mark, pos)
        chunk = stream.read(max(_CHUNK, len(buf) - pos))
        buf, pos, mark = buf[pos:] + chunk, 0, 0
        eof = not chunk
        return not eof

    while True:
        while pos < len(buf) and buf[pos] in _WS:
            pos += 1
        if pos >= len(buf):
            if more():
                continue
            return
        if buf[pos] not in "{[":
            # Not the start of a JSON value: a line of text (the application's output).
            end = buf.find("\n", pos)
            if end < 0 and more():
                continue
            stats.skip(line + buf.count("\n", mark, pos))
            pos = len(buf) if end < 0 else end + 1
            continue
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            eol = buf.find("\n", pos)
            if buf[pos] == "[" and 0 <= exc.pos <= eol and "Unterminated" not in exc.msg:
                # "[INFO] started": a line of text that opens with a bracket
                stats.skip(line + buf.count("\n", mark, pos))
                pos = eol + 1
                continue
            # A console span (or pretty-printed body) starts with "{" in the first column:
            # one after the error means this value is damaged, not incomplete.
            damaged = buf.find("\n{", pos) >= 0
            if not damaged and len(buf) - pos < _MAX_DOCUMENT and more():
                continue
            at = line + buf.count("\n", mark, exc.pos)
            error = FormatError(json_reason(exc), at)
            if on_bad is None:
                raise error from None
            on_bad(error)
            while True:  # resume at the next object that starts a line
                start = buf.find("\n{", pos)
                if start >= 0:
                    pos = start + 1
                    break
                pos = max(pos, len(buf) - 1)  # keep a last "\n"
                if not more():
                    return
            continue
        line += buf.count("\n", mark, pos)
        mark = pos
        stats.values += 1
        yield line, value
        pos = end
        if pos > _CHUNK:
            line += buf.count("\n", mark, pos)
            buf, pos, mark = buf[pos:], 0, 0


_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"


def open_input(name: str) -> TextIO:
    """A file (or `-`, standard input) as text; gzip is inflated on the fly (the Collector's
    file exporter and log shippers compress). FormatError for other compressed data;
    OSError as `open` raises it."""
    import gzip
    import io
    import sys

    if name == "-":
        raw = getattr(sys.stdin, "buffer", None)
        if raw is None or not hasattr(raw, "peek"):
            return sys.stdin  # already text (an embedding program's stream)
        head = raw.peek(4)[:4]
        binary: Any = raw
    else:
        binary = open(name, "rb")  # noqa: SIM115 - the caller closes the text stream
        head = binary.peek(4)[:4]  # not read + seek: pipes (`<(zcat ...)`) cannot seek
    if head.startswith(_ZSTD):
        if name != "-":
            binary.close()
        raise FormatError(
            "zstd-compressed: decompress it first (zstd -d); check reads JSON, plain or gzip"
        )
    if head.startswith(_GZIP):
        binary = gzip.GzipFile(fileobj=binary, mode="rb")
    return io.TextIOWrapper(binary, encoding="utf-8")


class PendingTrace:
    """The spans of one trace read so far: the interesting ones whole, every span's
    parent link and process."""

    __slots__ = ("count", "parents", "records", "trace_id")

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        self.records: list[SpanLike] = []
        self.parents: dict[str, tuple[str | None, str]] = {}
        self.count = 0


class TraceGrouper:
    """Groups spans by trace across batches, lines and files, in bounded memory.

    No span says a trace is complete (children are exported before their parents, and
    each process exports its own part), so traces are judged when the input ends. At most
    `max_spans` spans are held: beyond that the oldest trace is handed back early by `add`
    (judged on what was read so far) and counted in `evicted`.
    """

    def __init__(self, max_spans: int = 2_000_000) -> None:
        self.max_spans = max_spans
        self.traces: dict[str, PendingTrace] = {}
        self.held = 0
        self.spans = 0
        self.evicted = 0
        self.trace_ids_seen = 0

    def add(self, value: Any) -> list[PendingTrace]:
        """Take one decoded JSON value (FormatError if it holds no spans we know)."""
        if isinstance(value, dict) and "resourceSpans" in value:
            self._add_otlp(value)
        else:
            for record in spans_from_json(value):
                self.add_record(record)
        return self._evict() if self.held > self.max_spans else []

    def _pending(self, trace_id: str) -> PendingTrace:
        pending = self.traces.get(trace_id)
        if pending is None:
            pending = self.traces[trace_id] = PendingTrace(trace_id)
            self.trace_ids_seen += 1
        return pending

    def add_record(self, record: SpanRecord) -> None:
        pending = self._pending(record.trace_id)
        pending.count += 1
        self.spans += 1
        self.held += 1
        pending.parents[record.span_id] = (record.parent_span_id, record.process)
        if is_interesting(record.attributes) and not is_own_anomaly(
            record.name, record.attributes, record.scope_name
        ):
            pending.records.append(record)

    def _add_otlp(self, doc: Mapping[str, Any]) -> None:
        # The hot path: most spans carry no state, so only their ids are decoded.
        traces = self.traces
        classes = _KEY_CLASS
        for rs in _list(doc, "resourceSpans"):
            if not isinstance(rs, dict):
                raise FormatError("a resourceSpans entry is not an object")
            resource = key_values((rs.get("resource") or {}).get("attributes"))
            process = process_of(resource)
            for ss in _list(rs, "scopeSpans", "instrumentationLibrarySpans"):
                scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
                scope_name = str(scope.get("name", ""))
                spans = ss.get("spans") or ()
                try:
                    for span in spans:
                        raw_trace = span["traceId"]
                        raw_span = span["spanId"]
                        raw_parent = span.get("parentSpanId")
                        interesting = False
                        for kv in span.get("attributes") or ():
                            key = kv["key"]
                            if (classes.get(key) or _classify(key))[0]:
                                interesting = True
                                break
                        pending = traces.get(raw_trace)  # a hit is a valid lower-case hex id
                        if pending is None:
                            pending = self._pending(_hex_id(raw_trace, 16))
                        pending.count += 1
                        if interesting:
                            record = _otlp_row(
                                span, pending.trace_id, resource, scope_name, process
                            )
                            pending.parents[record.span_id] = (record.parent_span_id, process)
                            if not is_own_anomaly(record.name, record.attributes, scope_name):
                                pending.records.append(record)
                            continue
                        if raw_parent and (len(raw_parent) != 16 or raw_parent.strip(_LOWER_HEX)):
                            raw_parent = _hex_id(raw_parent, 8)
                        if len(raw_span) != 16 or raw_span.strip(_LOWER_HEX):
                            raw_span = _hex_id(raw_span, 8)
                        pending.parents[raw_span] = (raw_parent or None, process)
                except (KeyError, TypeError, AttributeError) as exc:
                    raise FormatError(f"malformed span: {exc!r}") from None
                self.spans += len(spans)
                self.held += len(spans)

    def _evict(self) -> list[PendingTrace]:
        out = []
        while self.held > self.max_spans and len(self.traces) > 1:
            oldest = next(iter(self.traces))
            pending = self.traces.pop(oldest)
            self.held -= pending.count
            self.evicted += 1
            out.append(pending)
        return out

    def finish(self) -> Iterator[PendingTrace]:
        while self.traces:
            oldest = next(iter(self.traces))
            pending = self.traces.pop(oldest)
            self.held -= pending.count
            yield pending


# ---------------------------------------------------------------------- judging


@dataclass
class TraceView:
    """What one judged trace showed: the stuff of the HTML report."""

    trace_id: str
    spans: int
    observations: list[Observation] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)
    txn_ends: list[TxnEnd] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # span id -> span name (interesting)


class _Ctx(NamedTuple):
    agent: str | None
    agent_scope: str | None
    decision: str | None
    mutation: str | None
    depth: int


_ROOT = _Ctx(None, None, None, None, 0)


def check_trace(spans: Sequence[SpanRecord], settings: Settings | None = None) -> list[Finding]:
    """Run the live processor's detectors over one whole trace; the findings in the order the
    live ledger would have reported them (duplicates removed)."""
    parents = {s.span_id: (s.parent_span_id, s.process) for s in spans}
    records = [s for s in spans if not is_own_anomaly(s.name, s.attributes, s.scope_name)]
    if not records:
        return []
    return judge(records[0].trace_id, records, parents, settings).findings


def _limits(s: Settings) -> LedgerLimits:
    """Offline each trace gets its own ledger: only the per-trace bounds apply."""
    return LedgerLimits(
        max_traces=2,
        max_facts_per_trace=s.max_facts_per_trace,
        max_events_per_fact=s.max_events_per_fact,
        trace_ttl_ms=s.trace_ttl_ms,
        clock_skew_ms=s.clock_skew_ms,
    )


def judge(
    trace_id: str,
    records: Sequence[SpanLike],
    parents: Mapping[str, tuple[str | None, str]],
    settings: Settings | None = None,
    *,
    spans: int | None = None,
) -> TraceView:
    """Judge one trace from its interesting spans and the parent links of all its spans
    (span id -> (parent span id, process))."""
    s = settings if settings is not None else get_settings()
    view = TraceView(trace_id, spans if spans is not None else len(parents))
    kinds = {r.span_id: adapter.scope_kind(r.attributes, r.name) for r in records}
    by_id = {r.span_id: r for r in records}
    memo: dict[str, _Ctx] = {}

    def own(span_id: str, parent_ctx: _Ctx) -> _Ctx:
        record = by_id.get(span_id)
        depth = parent_ctx.depth + 1
        if record is None:
            return parent_ctx._replace(depth=depth)
        # The live processor's rule (adapter.attribute), with no baggage: offline, the
        # observation spans carry the agent the processor took from it.
        found = adapter.attribute(
            adapter.Attribution(*parent_ctx[:4]),
            record.attributes,
            record.name,
            span_id,
            kinds[span_id],
        )
        return _Ctx(*found, depth)

    def ctx_of(span_id: str) -> _Ctx:
        chain: list[str] = []
        current: str | None = span_id
        while current is not None and current not in memo and len(chain) < 10_000:
            chain.append(current)
            parent, process = parents.get(current, (None, ""))
            if parent is None or parent not in parents or parents[parent][1] != process:
                break  # a local root, as the live processor sees it
            current = parent
        base = memo.get(current, _ROOT) if current is not None and current in memo else _ROOT
        for span_id_ in reversed(chain):
            base = own(span_id_, base)
            memo[span_id_] = base
        return memo[span_id]

    ledger = Ledger(s.consistency_for, _limits(s))
    add_observation, add_txn_end, add_scope = (
        ledger.add_observation,
        ledger.add_txn_end,
        ledger.add_scope,
    )

    def begin(item: tuple[str, str, int]) -> list[Anomaly]:
        return ledger.begin(*item)  # the operation is in flight, as the processor sees it

    # (time, start?, depth, seq, n, handler, item): ends before starts at one instant,
    # children's ends before their parents'. (seq, n) is unique, so the comparison never
    # reaches the handler; one span's own events go in the live processor's order:
    # observation, transaction end, scope end.
    events: list[tuple[int, int, int, int, int, Callable[[Any], list[Anomaly]], Any]] = []
    append = events.append
    names = view.names
    for seq, record in enumerate(records):
        span_id = record.span_id
        ctx = ctx_of(span_id)
        attributes = record.attributes
        names[span_id] = record.name
        if A.OP not in attributes and A.GEN_AI_OPERATION_NAME in attributes:  # a memory span?
            attributes = genai_memory.observation_attributes(attributes) or attributes
        if A.OP in attributes:
            agent = ctx.agent or adapter.str_attr(attributes, A.GEN_AI_AGENT_NAME)
            obs = adapter.observation(
                attributes,
                span_id=span_id,
                trace_id=trace_id,
                agent=agent or str(record.resource.get("service.name") or "unknown_service"),
                start_ns=record.start_ns,
                end_ns=record.end_ns,
                failed=record.error,
                process=record.process,
                agent_scope=ctx.agent_scope,
                decision=ctx.decision,
                mutation=ctx.mutation,
            )
            if obs is not None:
                view.observations.append(obs)
                append(
                    (
                        record.start_ns,
                        1,
                        ctx.depth,
                        seq,
                        3,
                        begin,
                        (trace_id, span_id, record.start_ns),
                    )
                )
                append((record.end_ns, 0, -ctx.depth, seq, 0, add_observation, obs))
        ended_txn = adapter.txn_outcome(attributes) if A.TXN_OUTCOME in attributes else None
        if ended_txn is not None:
            end = TxnEnd(
                txn_id=ended_txn[0],
                span_id=span_id,
                trace_id=trace_id,
                outcome=ended_txn[1],  # type: ignore[arg-type]
                end_ns=record.end_ns,
                agent=ctx.agent or "",
                start_ns=record.start_ns,
            )
            view.txn_ends.append(end)
            append((record.end_ns, 0, -ctx.depth, seq, 1, add_txn_end, end))
        kind = kinds[span_id]
        if kind is not None:
            scope_agent = ctx.agent or str(record.resource.get("service.name") or "unknown_service")
            parent_agent = ctx.agent_scope if kind != ScopeKind.AGENT else None
            name = adapter.scope_name(attributes, record.name)
            failed = adapter.scope_failed(
                attributes, record.error, any(e.name == "exception" for e in record.events)
            )
            start, end_ns = record.start_ns, record.end_ns
            started = Scope(
                span_id, trace_id, kind, scope_agent, start, None, False, parent_agent, name
            )
            ended = Scope(
                span_id, trace_id, kind, scope_agent, start, end_ns, failed, parent_agent, name
            )
            view.scopes.append(ended)
            append((start, 1, ctx.depth, seq, 0, add_scope, started))
            append((end_ns, 0, -ctx.depth, seq, 2, add_scope, ended))
    events.sort()
    found: list[Anomaly] = []
    for event in events:
        found.extend(event[5](event[6]))
    found.extend(ledger.close_all())
    for anomaly in found:
        if not anomaly.fact_rule:
            rule = s.rule_for_fact(anomaly.fact)
            anomaly = replace(anomaly, fact_rule=rule.name if rule is not None else "unmatched")
        view.findings.append(anomaly)
    return view


def finding_attributes(f: Finding) -> dict[str, Any]:
    """The SPEC §4 `agentstate.anomaly.*` attributes of a finding (as the live processor)."""
    return adapter.anomaly_attributes(f)


def finding_json(f: Finding) -> dict[str, Any]:
    """One anomaly of the `check` report (SPEC §8), with severity, lag and store added."""
    out: dict[str, Any] = {
        "kind": f.kind.value,
        "trace_id": f.trace_id,
        "span_id": f.span_id,
        "fact": f.fact,
        "observed_version": f.observed_version,
        "expected_version": f.expected_version,
        "agents": list(f.agents),
        "evidence_span_ids": list(f.evidence_span_ids),
        "summary": f.summary,
        "severity": f.severity.value,
        "store": f.store,
    }
    if f.lag_ms is not None:
        out["lag_ms"] = f.lag_ms
    return out


__all__ = [
    "Finding",
    "FormatError",
    "PendingTrace",
    "ReadStats",
    "SpanEvent",
    "SpanLink",
    "SpanRecord",
    "TraceGrouper",
    "TraceView",
    "check_trace",
    "finding_attributes",
    "finding_json",
    "json_reason",
    "json_values",
    "judge",
    "may_hold_spans",
    "open_input",
    "spans_from_json",
    "spans_from_otlp_json",
]
