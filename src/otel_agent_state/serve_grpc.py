"""OTLP/gRPC for `otel-agent-state serve`: the trace service's Export method, on port 4317 as
the Collector listens (SPEC §8).

The SDK's OTLP exporter speaks gRPC unless told otherwise (`OTEL_EXPORTER_OTLP_PROTOCOL`
defaults to `grpc`), so a service pointed at `serve` with only an endpoint set sends gRPC.
Requests arrive as the protobuf bytes of an ExportTraceServiceRequest, the same bytes an
OTLP/HTTP protobuf body holds: one decoder serves both. grpcio handles the transport
compression (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`) itself. grpcio comes with
opentelemetry-exporter-otlp, a dependency; without it `serve` listens on OTLP/HTTP alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

from .offline import FormatError

_log = logging.getLogger("otel_agent_state.serve")

DEFAULT_GRPC_PORT = 4317
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
# The other signals an SDK sends to the same endpoint (OTEL_METRICS_EXPORTER and
# OTEL_LOGS_EXPORTER default to otlp): taken and dropped, as serve judges traces only,
# rather than answered UNIMPLEMENTED (an error the application would log every minute).
OTHER_SERVICES = {
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}

# Takes the protobuf bytes of one ExportTraceServiceRequest; returns the number of spans
# refused (partial success) and why; raises FormatError for a bad request.
Accept = Callable[[bytes], tuple[int, str]]


class BindError(OSError):
    """The gRPC port cannot be had (grpcio does not say why: in use, or not permitted)."""


def available() -> bool:
    """Whether grpcio can be imported (it ships with the OTLP gRPC exporter)."""
    return importlib.util.find_spec("grpc") is not None


class GrpcReceiver:
    """A gRPC server with the OTLP TraceService; `accept` does the work."""

    def __init__(
        self,
        accept: Accept,
        *,
        host: str,
        port: int,
        max_body: int,
        workers: int = 4,
        dropped: Callable[[str], None] = lambda signal: None,
    ) -> None:
        # grpcio ships no type hints: its module is used as Any.
        grpc: Any = importlib.import_module("grpc")
        self._accept = accept
        self._grpc = grpc
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentstate-grpc"),
            options=[
                ("grpc.max_receive_message_length", max_body),
                # grpcio reuses ports by default on Linux: a second serve on 4317 would
                # share the port and get half the traffic instead of failing to start.
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            # No (de)serializers: the request's bytes go to the shared protobuf decoder.
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)},
        )
        others = [
            grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(self._drop(signal))}
            )
            for service, signal in OTHER_SERVICES.items()
        ]
        self._dropped = dropped
        self.server.add_generic_rpc_handlers((handler, *others))
        try:
            bound = self.server.add_insecure_port(f"{_bracketed(host)}:{port}")
        except RuntimeError:  # grpcio >= 1.6x raises instead of returning 0
            bound = 0
        if not bound:  # grpcio says no more than that (and points at GRPC_VERBOSITY)
            raise BindError(f"cannot listen for OTLP/gRPC on {host}:{port} (in use?)")
        self.host = host
        self.port = int(bound)

    @property
    def address(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"

    def start(self) -> None:
        self.server.start()

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop taking requests; those in flight get `grace_s` to finish."""
        self.server.stop(grace_s).wait(grace_s + 1)

    def _drop(self, signal: str) -> Callable[[bytes, Any], bytes]:
        def export(request: bytes, context: Any) -> bytes:
            self._dropped(signal)
            return b""  # an empty Export*ServiceResponse: full success

        return export

    def _export(self, request: bytes, context: Any) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        grpc = self._grpc
        try:
            rejected, why = self._accept(request)
        except FormatError as exc:
            _log.info("rejected a gRPC request: %s", exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this line is never reached
        except Exception:
            _log.exception("handling a gRPC request failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = why
        return bytes(response.SerializeToString())


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


__all__ = ["DEFAULT_GRPC_PORT", "BindError", "GrpcReceiver", "available"]
