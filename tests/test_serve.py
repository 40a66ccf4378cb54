"""`serve` in process: OTLP/HTTP protocol (status codes, bodies, gzip), protobuf decoding
against the JSON path, bounded trace grouping, and re-export of findings to a real sink."""

from __future__ import annotations

import gzip
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc.status_pb2 import Status
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode
from opentelemetry.trace import Status as SpanStatus

from otel_agent_state.offline import FormatError, SpanRecord, spans_from_otlp_json
from otel_agent_state.serve import (
    JSON,
    PROTOBUF,
    Receiver,
    Reporter,
    TraceBuffer,
    decode,
    spans_from_protobuf,
)

from .apps.otlp_client import _hex_ids
from .apps.otlp_sink import Sink, attrs

FACT = "credit_score/42"


def _spans(service: str, build: Any) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("t"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def _stale_trace() -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """Planner (one process) commits n:2; analyst (another process) then reads n:1."""
    carrier: dict[str, Any] = {}

    def planner(tracer: trace.Tracer) -> None:
        agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}
        with tracer.start_as_current_span("invoke_agent planner", attributes=agent) as span:
            tracer.start_span(
                "UPDATE",
                attributes={
                    "agentstate.op": "write",
                    "agentstate.store": "postgresql",
                    "agentstate.write.facts": [FACT],
                    "agentstate.write.versions": ["n:2"],
                },
            ).end()
            carrier["parent"] = span.get_span_context()

    def analyst(tracer: trace.Tracer) -> None:
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(carrier["parent"]))
        agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "analyst"}
        with tracer.start_as_current_span("invoke_agent analyst", context=ctx, attributes=agent):
            tracer.start_span(
                "SELECT",
                attributes={
                    "agentstate.op": "read",
                    "agentstate.store": "postgresql",
                    "agentstate.read.facts": [FACT],
                    "agentstate.read.versions": ["n:1"],
                },
            ).end()

    return _spans("planner", planner), _spans("analyst", analyst)


def _protobuf(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


def _json(spans: Sequence[ReadableSpan]) -> bytes:
    return json.dumps(_hex_ids(MessageToDict(encode_spans(spans)))).encode()


def _post(
    url: str, body: bytes, content_type: str, method: str = "POST", **headers: str
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    request.add_header("Content-Type", content_type)
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


class Running:
    def __init__(self, sink: Sink, **buffer_args: Any) -> None:
        max_body = buffer_args.pop("max_body", 1 << 20)
        self.buffer = TraceBuffer(**{"idle_ms": 100, **buffer_args})
        self.reporter = Reporter(sink.endpoint, metric_interval_ms=100)
        self.receiver = Receiver(self.buffer, self.reporter, port=0, max_body=max_body, grpc_port=0)
        self.receiver.start()
        self.url = self.receiver.url
        self.grpc = self.receiver.grpc_address


@pytest.fixture
def sink() -> Iterator[Sink]:
    one = Sink()
    yield one
    one.close()


@pytest.fixture
def running(sink: Sink) -> Iterator[Running]:
    made = Running(sink)
    yield made
    made.receiver.stop()


# ---------------------------------------------------------------------- protocol


def test_protobuf_request_gets_an_export_response(running: Running, sink: Sink) -> None:
    planner, analyst = _stale_trace()
    code, content_type, body = _post(running.url, _protobuf(planner + analyst), PROTOBUF)
    assert (code, content_type) == (200, PROTOBUF)
    response = ExportTraceServiceResponse()
    response.ParseFromString(body)
    assert not response.HasField("partial_success")
    [anomaly] = sink.wait_for(sink.anomaly_spans)
    read = next(s for s in analyst if s.name == "SELECT")
    write = next(s for s in planner if s.name == "UPDATE")
    assert anomaly.trace_id == read.context.trace_id.to_bytes(16, "big")
    assert anomaly.parent_span_id == read.context.span_id.to_bytes(8, "big")
    assert [link.span_id for link in anomaly.links] == [write.context.span_id.to_bytes(8, "big")]
    assert attrs(anomaly.attributes)["agentstate.anomaly.expected_version"] == "n:2"


def test_gzip_json_request_gets_a_json_response(running: Running, sink: Sink) -> None:
    planner, analyst = _stale_trace()
    code, content_type, body = _post(
        running.url, gzip.compress(_json(planner + analyst)), JSON, Content_Encoding="gzip"
    )
    assert (code, content_type, json.loads(body)) == (200, JSON, {})
    assert len(sink.wait_for(sink.anomaly_spans)) == 1


def test_the_two_halves_of_a_trace_in_separate_requests(running: Running, sink: Sink) -> None:
    planner, analyst = _stale_trace()
    assert _post(running.url, _protobuf(planner), PROTOBUF)[0] == 200
    assert _post(running.url, _json(analyst), JSON)[0] == 200
    assert len(sink.wait_for(sink.anomaly_spans)) == 1


def test_late_spans_revive_a_judged_trace(running: Running, sink: Sink) -> None:
    planner, analyst = _stale_trace()
    assert _post(running.url, _protobuf(planner), PROTOBUF)[0] == 200
    sink.wait_for(lambda: running.buffer.stats.judged_traces >= 1)
    assert sink.anomaly_spans() == []
    assert _post(running.url, _protobuf(analyst), PROTOBUF)[0] == 200
    assert len(sink.wait_for(sink.anomaly_spans)) == 1
    assert running.buffer.stats.revived_traces == 1
    # Sending it all once more finds nothing new: each finding is reported once.
    assert _post(running.url, _protobuf(planner + analyst), PROTOBUF)[0] == 200
    sink.wait_for(lambda: running.buffer.stats.judged_traces >= 3)
    running.reporter.tracer_provider.force_flush()
    assert len(sink.anomaly_spans()) == 1


def test_findings_already_reported_live_are_not_reported_again(
    running: Running, sink: Sink
) -> None:
    """The downstream process's own processor (fed by the propagator) already exported an
    anomaly span for this read: serve does not add a second one."""
    planner, analyst = _stale_trace()
    read = next(s for s in analyst if s.name == "SELECT")

    def live(tracer: trace.Tracer) -> None:
        tracer.start_span(
            "agentstate.anomaly stale_read",
            context=trace.set_span_in_context(trace.NonRecordingSpan(read.context)),
            attributes={
                "agentstate.anomaly.kind": "stale_read",
                "agentstate.anomaly.fact": FACT,
            },
        ).end()

    provider = TracerProvider(resource=Resource.create({"service.name": "analyst"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    live(provider.get_tracer("otel_agent_state"))
    provider.shutdown()
    spans = planner + analyst + list(memory.get_finished_spans())
    assert _post(running.url, _protobuf(spans), PROTOBUF)[0] == 200
    sink.wait_for(lambda: running.buffer.stats.judged_traces >= 1)
    running.reporter.tracer_provider.force_flush()
    assert sink.anomaly_spans() == []
    assert running.buffer.stats.anomalies == 0


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "code"),
    [
        (b"{}", "text/plain", {}, 415),
        (b"\xff\xff\xff", PROTOBUF, {}, 400),
        (b"not json", JSON, {}, 400),
        (b"[1, 2]", JSON, {}, 400),
        (b"\x1f\x8b garbage", JSON, {"Content_Encoding": "gzip"}, 400),
        (b"{}", JSON, {"Content_Encoding": "br"}, 400),
        (
            json.dumps(
                {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "1"}]}]}]}
            ).encode(),
            JSON,
            {},
            400,
        ),
    ],
)
def test_bad_requests_are_refused(
    running: Running, body: bytes, content_type: str, headers: dict[str, str], code: int
) -> None:
    got, reply_type, reply = _post(running.url, body, content_type, **headers)
    assert got == code
    if code == 400 and content_type == PROTOBUF:
        assert reply_type == PROTOBUF
        assert Status.FromString(reply).message
    elif code == 400:
        assert json.loads(reply)["message"]
    assert running.buffer.stats.spans == 0


def test_paths_and_methods(running: Running) -> None:
    base = running.url.removesuffix("/v1/traces")
    assert _post(base + "/v1/other", b"", PROTOBUF)[0] == 404
    assert _post(running.url, b"", PROTOBUF, method="GET")[0] == 405
    assert _post(running.url, b"", PROTOBUF)[0] == 200  # an empty request is valid


def test_oversized_bodies_are_refused(sink: Sink) -> None:
    made = Running(sink, max_body=2000)
    try:
        assert _post(made.url, b"x" * 3000, PROTOBUF)[0] == 413
        bomb = gzip.compress(b"{" + b" " * 100_000 + b"}")
        assert _post(made.url, bomb, JSON, Content_Encoding="gzip")[0] == 413
    finally:
        made.receiver.stop()


def test_spans_over_the_per_trace_limit_are_reported_rejected(sink: Sink) -> None:
    made = Running(sink, max_spans_per_trace=3)
    try:
        planner, analyst = _stale_trace()
        code, _, body = _post(made.url, _protobuf(planner + analyst), PROTOBUF)
        assert code == 200
        response = ExportTraceServiceResponse.FromString(body)
        assert response.partial_success.rejected_spans == len(planner + analyst) - 3
        code, _, body = _post(made.url, _json(planner), JSON)
        assert json.loads(body)["partialSuccess"]["rejectedSpans"] == str(len(planner))
        assert made.buffer.stats.dropped_spans == len(planner + analyst) - 3 + len(planner)
    finally:
        made.receiver.stop()


# ---------------------------------------------------------------------- grouping


def _record(trace_id: str, span_id: str) -> SpanRecord:
    return SpanRecord(trace_id, span_id, None, "s", 1, 2, {"agentstate.op": "read"}, {})


def test_buffer_judges_traces_once_idle() -> None:
    now = [100.0]
    buffer = TraceBuffer(idle_ms=1000, clock=lambda: now[0])
    buffer.add([_record("a" * 32, "1" * 16)])
    now[0] += 0.5
    buffer.add([_record("b" * 32, "2" * 16), _record("a" * 32, "3" * 16)])
    now[0] += 0.9
    assert buffer.take_idle() == []
    now[0] += 0.2
    [b, a] = buffer.take_idle()  # least recently active first
    assert (a.trace_id, a.spans, b.trace_id) == ("a" * 32, 2, "b" * 32)
    assert len(buffer) == 0


def test_buffer_drops_the_oldest_trace_beyond_max_traces(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffer = TraceBuffer(max_traces=2)
    with caplog.at_level(logging.WARNING, logger="otel_agent_state.serve"):
        for i in range(5):
            buffer.add([_record(f"{i + 1:032x}", f"{i + 1:016x}")])
    assert len(buffer) == 2
    assert buffer.stats.dropped_traces == 3
    assert [t.trace_id for t in buffer.take_all()] == [f"{4:032x}", f"{5:032x}"]
    assert sum("dropped trace" in r.getMessage() for r in caplog.records) == 3


# ---------------------------------------------------------------------- decoding


def test_protobuf_and_json_decode_to_the_same_records() -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("root") as root:
            span = tracer.start_span(
                "child",
                attributes={
                    "agentstate.read.facts": ["a", "b"],
                    "n": 3,
                    "f": 1.5,
                    "ok": True,
                },
                links=[Link(root.get_span_context(), {"why": "evidence"})],
            )
            span.add_event("agentstate.anomaly", {"agentstate.anomaly.kind": "stale_read"})
            span.set_status(SpanStatus(StatusCode.ERROR, "boom"))
            span.end()

    spans = _spans("svc", build)
    from_pb = list(spans_from_protobuf(_protobuf(spans)))
    from_json = list(spans_from_otlp_json(json.loads(_json(spans))))
    assert from_pb == from_json
    child = next(r for r in from_pb if r.name == "child")
    sdk_child = next(s for s in spans if s.name == "child")
    assert child.trace_id == format(sdk_child.context.trace_id, "032x")
    assert child.span_id == format(sdk_child.context.span_id, "016x")
    assert child.parent_span_id == format(sdk_child.parent.span_id, "016x")
    assert child.attributes == {
        "agentstate.read.facts": ["a", "b"],
        "n": 3,
        "f": 1.5,
        "ok": True,
    }
    assert child.error and child.resource["service.name"] == "svc"
    assert child.links[0].span_id == child.parent_span_id
    assert child.events[0].name == "agentstate.anomaly"
    root = next(r for r in from_pb if r.name == "root")
    assert root.parent_span_id is None


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), content_type=st.sampled_from([PROTOBUF, JSON]))
def test_decode_raises_only_format_errors(body: bytes, content_type: str) -> None:
    try:
        records = decode(body, content_type)
    except FormatError:
        return
    for record in records:
        assert len(record.trace_id) == 32 and len(record.span_id) == 16


def test_real_exporter_with_gzip_compression(running: Running, sink: Sink) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    planner, analyst = _stale_trace()
    exporter = OTLPSpanExporter(endpoint=running.url, compression=Compression.Gzip)
    assert exporter.export(planner) == SpanExportResult.SUCCESS
    assert exporter.export(analyst) == SpanExportResult.SUCCESS
    exporter.shutdown()
    [anomaly] = sink.wait_for(sink.anomaly_spans)
    assert attrs(anomaly.attributes)["agentstate.anomaly.observed_version"] == "n:1"


# ---------------------------------------------------------------------- OTLP/gRPC

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def test_real_grpc_exporter_with_gzip_compression(running: Running, sink: Sink) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from otel_agent_state.serve import DEFAULT_GRPC_PORT, DEFAULT_PORT

    assert (DEFAULT_GRPC_PORT, DEFAULT_PORT) == (4317, 4318)  # as the Collector listens
    planner, analyst = _stale_trace()
    exporter = OTLPSpanExporter(
        endpoint=f"http://{running.grpc}", insecure=True, compression=grpc.Compression.Gzip
    )
    assert exporter.export(planner) == SpanExportResult.SUCCESS
    assert exporter.export(analyst) == SpanExportResult.SUCCESS
    exporter.shutdown()
    [anomaly] = sink.wait_for(sink.anomaly_spans)
    assert attrs(anomaly.attributes)["agentstate.anomaly.observed_version"] == "n:1"


def test_grpc_bad_requests_and_partial_success(sink: Sink) -> None:
    made = Running(sink, max_spans_per_trace=3)
    try:
        with grpc.insecure_channel(made.grpc) as channel:
            export = channel.unary_unary(EXPORT)
            with pytest.raises(grpc.RpcError) as refused:
                export(b"\xff\xff not protobuf", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a protobuf ExportTraceServiceRequest" in refused.value.details()
            planner, analyst = _stale_trace()
            body = export(_protobuf(planner + analyst), timeout=10)
        response = ExportTraceServiceResponse.FromString(body)
        assert response.partial_success.rejected_spans == len(planner + analyst) - 3
        assert "--max-spans-per-trace" in response.partial_success.error_message
    finally:
        made.receiver.stop()


def test_a_grpc_exporter_on_the_http_port_is_told_where_to_go(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    port = running.url.split(":")[2].split("/")[0]
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=2)
    with caplog.at_level(logging.WARNING, logger="otel_agent_state.serve"):
        exporter.export(_stale_trace()[0])
        exporter.shutdown()
    [hint] = [r.getMessage() for r in caplog.records if "OTLP/gRPC exporter" in r.getMessage()]
    assert f"point it at the gRPC port ({running.grpc})" in hint
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in hint


def test_a_busy_grpc_port_is_an_error_not_a_shared_port(sink: Sink) -> None:
    made = Running(sink)
    try:
        port = int(made.grpc.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            Receiver(TraceBuffer(), made.reporter, port=0, grpc_port=port)
    finally:
        made.receiver.stop()


def test_metrics_and_logs_sent_to_serve_are_taken_and_dropped(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """An application pointed at serve with OTEL_EXPORTER_OTLP_ENDPOINT also sends metrics
    (OTEL_METRICS_EXPORTER defaults to otlp): no UNIMPLEMENTED / 404 errors for it to log."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetrics,
    )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetrics,
    )
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("m").create_counter("c").add(1)
    data = reader.get_metrics_data()
    assert data is not None
    base = running.url.removesuffix("/v1/traces")
    with caplog.at_level(logging.INFO, logger="otel_agent_state.serve"):
        for exporter in (
            GrpcMetrics(endpoint=f"http://{running.grpc}", insecure=True, timeout=5),
            HttpMetrics(endpoint=base + "/v1/metrics", timeout=5),
        ):
            assert exporter.export(data) == MetricExportResult.SUCCESS
            exporter.shutdown()
        assert _post(base + "/v1/logs", b"{}", JSON) == (200, JSON, b"{}")
    provider.shutdown()
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("received")]
    assert notes == [  # once per signal
        "received OTLP metrics: dropped (serve judges traces only; set "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, not OTEL_EXPORTER_OTLP_ENDPOINT, to send it "
        "traces alone)",
        "received OTLP logs: dropped (serve judges traces only; set "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, not OTEL_EXPORTER_OTLP_ENDPOINT, to send it "
        "traces alone)",
    ]
