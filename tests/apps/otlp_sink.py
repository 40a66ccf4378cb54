"""A tiny OTLP/HTTP receiver that records what it is sent: the second hop of `serve`'s tests
(where the anomaly spans and metrics re-exported by `serve` arrive)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with sink._lock:
                    sink.received.append((self.path, self.headers.get("Content-Type") or "", body))
                reply = (
                    ExportMetricsServiceResponse()
                    if self.path.endswith("/metrics")
                    else ExportTraceServiceResponse()
                ).SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return [body for p, _, body in self.received if p == path]

    def spans(self) -> list[tuple[dict[str, Any], str, Any]]:
        """(resource attributes, scope name, protobuf Span) of every span received."""
        out = []
        for body in self._bodies("/v1/traces"):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((resource, ss.scope.name, span) for span in ss.spans)
        return out

    def anomaly_spans(self) -> list[Any]:
        return [s for _, _, s in self.spans() if s.name.startswith("agentstate.anomaly")]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> every data point received (sum or histogram)."""
        out: dict[str, list[Any]] = {}
        for body in self._bodies("/v1/metrics"):
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points if kind else []
                        out.setdefault(metric.name, []).extend(points)
        return out

    def wait_for(self, what: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = what()
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def attrs(items: Any) -> dict[str, Any]:
    """Protobuf KeyValues as plain values (strings, numbers, bools, string arrays)."""
    out: dict[str, Any] = {}
    for kv in items:
        kind = kv.value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values]
        elif kind is not None:
            out[kv.key] = getattr(kv.value, kind)
    return out
