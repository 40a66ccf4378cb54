"""OTLP/HTTP for `otel-agent-state serve`: request bodies decoded (protobuf, the bytes an
OTLP/gRPC request holds too, and OTLP/JSON; gzip or not) and the HTTP handler of
`/v1/traces`, with the status codes and bodies the OTLP/HTTP specification asks for.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from .offline import FormatError, SpanEvent, SpanLink, SpanRecord, spans_from_otlp_json

_log = logging.getLogger("otel_agent_state.serve")

TRACES_PATH = "/v1/traces"
# The other signals an SDK sends to the same endpoint (OTEL_METRICS_EXPORTER and
# OTEL_LOGS_EXPORTER default to otlp): taken and dropped, as serve judges traces only.
OTHER_SIGNALS = ("/v1/metrics", "/v1/logs")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


# ---------------------------------------------------------------------- decoding protobuf


def _any_value(value: Any) -> Any:
    """An OTLP protobuf AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _key_values(items: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in items}


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or not any(raw):
        raise FormatError(f"bad {what} id {raw.hex()!r}")
    return raw.hex()


def spans_from_protobuf(body: bytes) -> Iterator[SpanRecord]:
    """Every span of one protobuf ExportTraceServiceRequest (ids are bytes there)."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise FormatError(f"not a protobuf ExportTraceServiceRequest: {exc}") from None
    for rs in request.resource_spans:
        resource = _key_values(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope_name = ss.scope.name
            for span in ss.spans:
                yield SpanRecord(
                    trace_id=_id(span.trace_id, 16, "trace"),
                    span_id=_id(span.span_id, 8, "span"),
                    parent_span_id=(
                        _id(span.parent_span_id, 8, "parent span")
                        if any(span.parent_span_id)
                        else None
                    ),
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_key_values(span.attributes),
                    resource=resource,
                    error=span.status.code == 2,  # STATUS_CODE_ERROR
                    events=tuple(
                        SpanEvent(e.name, e.time_unix_nano, _key_values(e.attributes))
                        for e in span.events
                    ),
                    links=tuple(
                        SpanLink(
                            _id(link.trace_id, 16, "link trace"),
                            _id(link.span_id, 8, "link span"),
                            _key_values(link.attributes),
                        )
                        for link in span.links
                    ),
                    scope_name=scope_name,
                )


def decode(body: bytes, content_type: str) -> list[SpanRecord]:
    """Spans of one request body (already un-gzipped); FormatError when it is bad."""
    if content_type == PROTOBUF:
        return list(spans_from_protobuf(body))
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError("the JSON body is not an ExportTraceServiceRequest object")
    try:
        return list(spans_from_otlp_json(doc))
    except (AttributeError, TypeError, KeyError) as exc:
        raise FormatError(f"malformed ExportTraceServiceRequest: {exc!r}") from None


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise FormatError(f"bad gzip body: {exc}") from None
    if len(out) > limit:
        raise TooLarge(f"the body inflates to more than {limit} bytes")
    return out


class TooLarge(Exception):
    pass


def rejected_message(rejected: int) -> str:
    if not rejected:
        return ""
    return f"{rejected} spans dropped: their trace is over --max-spans-per-trace"


def handler(receiver: Any) -> type[BaseHTTPRequestHandler]:
    """The request handler class for `receiver` (serve.Receiver: its buffer, limits and
    addresses)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "otel-agent-state"

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("%s " + format, self.address_string(), *args)

        def do_POST(self) -> None:
            try:
                self._post()
            except Exception:
                _log.exception("handling a request failed")
                self._reply(500, "text/plain", b"internal error")

        def parse_request(self) -> bool:
            # "PRI * HTTP/2.0": the HTTP/2 preface of a gRPC client sent to the HTTP port
            # (the SDK exporter's default protocol); http.server would only answer 505.
            if getattr(self, "raw_requestline", b"").startswith(b"PRI * HTTP/2"):
                self._grpc_here()
                return False
            return super().parse_request()

        def _grpc_here(self) -> None:
            receiver.grpc_on_http_port += 1
            if receiver.grpc_on_http_port == 1:
                where = receiver.grpc_address
                _log.warning(
                    "an OTLP/gRPC exporter connected to the OTLP/HTTP receiver %s: point it "
                    "at %s, or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf to send it here",
                    receiver.url,
                    f"the gRPC port ({where})" if where else "a gRPC port (--grpc-port)",
                )
            self.close_connection = True

        def do_GET(self) -> None:
            self._drain()
            if self.path.split("?")[0] == TRACES_PATH:
                self._reply(405, "text/plain", b"POST OTLP traces here", allow="POST")
            else:
                self._reply(404, "text/plain", b"not found: POST to /v1/traces")

        def _drain(self) -> int:
            length = self.headers.get("Content-Length")
            try:
                size = int(length) if length else 0
            except ValueError:
                size = -1
            if 0 < size <= receiver.max_body:
                self.rfile.read(size)
            elif size != 0:
                self.close_connection = True
            return size

        def _post(self) -> None:
            path = self.path.split("?")[0]
            if path in OTHER_SIGNALS:
                self._drain()
                receiver.dropped_signal(path.rsplit("/", 1)[1])
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                # An empty Export*ServiceResponse: b"" in protobuf, {} in JSON.
                if content_type.lower() == JSON:
                    self._reply(200, JSON, b"{}")
                else:
                    self._reply(200, PROTOBUF, b"")
                return
            if path != TRACES_PATH:
                self._drain()
                self._reply(404, "text/plain", b"not found: POST to /v1/traces")
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in (PROTOBUF, JSON):
                self._drain()
                self._reply(
                    415,
                    "text/plain",
                    b"unsupported Content-Type: use application/x-protobuf or application/json",
                )
                return
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                self._error(content_type, 411, "Content-Length is required")
                return
            try:
                size = int(length)
            except ValueError:
                self.close_connection = True
                self._error(content_type, 400, "bad Content-Length")
                return
            if size < 0 or size > receiver.max_body:
                self.close_connection = True
                self._error(content_type, 413, f"body larger than {receiver.max_body} bytes")
                return
            body = self.rfile.read(size)
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            try:
                if encoding == "gzip":
                    body = _gunzip(body, receiver.max_body)
                elif encoding not in ("identity", ""):
                    raise FormatError(f"unsupported Content-Encoding {encoding!r}")
                records = decode(body, content_type)
            except TooLarge as exc:
                self._error(content_type, 413, str(exc))
                return
            except FormatError as exc:
                self._error(content_type, 400, str(exc))
                return
            rejected = receiver.buffer.add(records)
            self._ok(content_type, rejected)

        def _ok(self, content_type: str, rejected: int) -> None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            response = ExportTraceServiceResponse()
            if rejected:
                response.partial_success.rejected_spans = rejected
                response.partial_success.error_message = rejected_message(rejected)
            if content_type == PROTOBUF:
                self._reply(200, PROTOBUF, response.SerializeToString())
            else:
                doc: dict[str, Any] = {}
                if rejected:
                    doc["partialSuccess"] = {
                        "rejectedSpans": str(rejected),
                        "errorMessage": response.partial_success.error_message,
                    }
                self._reply(200, JSON, json.dumps(doc).encode())

        def _error(self, content_type: str, code: int, message: str) -> None:
            """A google.rpc.Status body, as OTLP/HTTP asks for failed requests."""
            _log.info("rejected a request (%d): %s", code, message)
            if content_type == PROTOBUF:
                try:
                    from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

                    body = Status(code=3, message=message).SerializeToString()
                    self._reply(code, PROTOBUF, body)
                    return
                except ImportError:  # pragma: no cover - ships with the OTLP exporter
                    pass
            self._reply(code, JSON, json.dumps({"code": 3, "message": message}).encode())

        def _reply(self, code: int, content_type: str, body: bytes, **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.capitalize(), value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    return Handler


__all__ = [
    "JSON",
    "PROTOBUF",
    "TRACES_PATH",
    "TooLarge",
    "decode",
    "handler",
    "rejected_message",
    "spans_from_protobuf",
]
