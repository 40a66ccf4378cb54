"""`otel-agent-state serve`: an OTLP trace receiver that judges whole traces.

Services export their spans here: OTLP/gRPC (port 4317, `serve_grpc`) or OTLP/HTTP
(port 4318; protobuf or JSON, optionally gzip, on `/v1/traces`).
Spans are grouped by trace; a trace is judged when no span of it arrived for
`--trace-idle-ms`, with the same detectors as the live processor but over every process
of the trace. Each finding is re-exported over OTLP as an anomaly span (SPEC §4: a child
of the offending span in the same trace, linked to the evidence spans) and as metrics.

Memory is bounded: at most `--max-traces` traces are held (the oldest is dropped, counted
and logged) and at most `--max-spans-per-trace` spans of one trace (later spans of it are
dropped and counted); only spans that carry state or agent attributes are kept whole, the
others as a parent link. SIGTERM/SIGINT stop the server and judge every pending trace
before the exporters flush.

To scale out, run several replicas behind the OTel Collector's `loadbalancing` exporter
keyed by trace ID, so each trace reaches one replica (docs/across-processes.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from types import FrameType
from typing import Any

from . import attributes as A
from . import serve_grpc
from .offline import (
    SpanRecord,
    finding_attributes,
    finding_json,
    is_interesting,
    is_own_anomaly,
    judge,
)
from .serve_http import (
    JSON,
    PROTOBUF,
    TRACES_PATH,
    decode,
    handler,
    rejected_message,
    spans_from_protobuf,
)

_log = logging.getLogger("otel_agent_state.serve")

DEFAULT_PORT = 4318
DEFAULT_GRPC_PORT = serve_grpc.DEFAULT_GRPC_PORT
DEFAULT_IDLE_MS = 5_000
DEFAULT_MAX_TRACES = 10_000
DEFAULT_MAX_SPANS_PER_TRACE = 10_000
DEFAULT_MAX_BODY = 64 << 20
DEFAULT_RETAIN_MS = 60_000

_DESCRIPTION = """\
Receive OTLP traces (gRPC and HTTP) from every service of a multi-agent system, judge
each whole trace across processes (stale reads, divergent views, orphaned mutations, lost
updates) and re-export the anomalies over OTLP: spans named 'agentstate.anomaly <kind>'
(children of the offending span, linked to the evidence) and the metrics
agentstate.anomalies, agentstate.stale_read.lag and agentstate.observations.

Point the services' exporters (or a collector) at it, as at a Collector: OTLP/gRPC on
port 4317 (the SDK exporter's default protocol), OTLP/HTTP on 4318:

    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://HOST:4317
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \\
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://HOST:4318/v1/traces

(OTLP metrics and logs sent here are taken and dropped: serve judges traces.)

OTLP/HTTP takes application/x-protobuf and application/json bodies, gzip or not, on
/v1/traces; OTLP/gRPC the TraceService Export call, compressed or not.
A trace is judged once no span of it arrived for --trace-idle-ms. Fact rules and the
consistency model come from OTEL_AGENTSTATE_CONFIG / OTEL_AGENTSTATE_* as in the
application; set OTEL_AGENTSTATE_CLOCK_SKEW_MS to the clock skew between your hosts.

An application that runs otel-agent-state's processor itself (opentelemetry-instrument)
already exports the findings it can make alone; serve adds, re-exports and --prints only
what needs spans of several processes, and its summary lines count the others.

Scale out with several replicas behind the OTel Collector's loadbalancing exporter
(routing_key: traceID): see collector-config/ and docs/across-processes.md.
"""


# ---------------------------------------------------------------------- grouping traces


@dataclass
class PendingTrace:
    trace_id: str
    touched: float
    records: list[SpanRecord] = field(default_factory=list)
    parents: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    spans: int = 0
    # What earlier judgements of this trace already reported (a trace judged, then revived
    # by late spans, is judged again whole; only new findings are reported).
    reported: set[tuple[object, ...]] = field(default_factory=set)
    counted: set[str] = field(default_factory=set)
    # (kind, offending span id, fact) of anomaly spans already in the trace: found live by
    # a process's own processor (or re-exported by us before); not reported twice.
    known: set[tuple[str, str, str]] = field(default_factory=set)


@dataclass
class BufferStats:
    traces: int = 0
    spans: int = 0
    dropped_traces: int = 0
    dropped_spans: int = 0
    judged_traces: int = 0
    revived_traces: int = 0
    anomalies: int = 0
    # Findings the exporting process had already reported itself (its own span processor
    # exported the anomaly span live): not reported, printed or counted again.
    already_live: int = 0


class TraceBuffer:
    """Spans grouped by trace until the trace goes idle; thread-safe and bounded.

    A judged trace is kept for `retain_ms` (at most `max_traces` of them): when spans of it
    arrive late (a slow process, a batching exporter), it is revived and judged again whole.
    """

    def __init__(
        self,
        *,
        idle_ms: int = DEFAULT_IDLE_MS,
        max_traces: int = DEFAULT_MAX_TRACES,
        max_spans_per_trace: int = DEFAULT_MAX_SPANS_PER_TRACE,
        retain_ms: int = DEFAULT_RETAIN_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_ms / 1000
        self.retain_s = retain_ms / 1000
        self._judged: OrderedDict[str, PendingTrace] = OrderedDict()
        self.max_traces = max(1, max_traces)
        self.max_spans = max(1, max_spans_per_trace)
        self._clock = clock
        self._traces: OrderedDict[str, PendingTrace] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = BufferStats()

    def add(self, records: Iterable[SpanRecord]) -> int:
        """Take spans; returns how many were rejected (their trace is over its limit)."""
        rejected = 0
        now = self._clock()
        with self._lock:
            for record in records:
                pending = self._traces.get(record.trace_id)
                if pending is None:
                    pending = self._judged.pop(record.trace_id, None)
                    if pending is not None:
                        self.stats.revived_traces += 1
                if pending is None or record.trace_id not in self._traces:
                    while len(self._traces) >= self.max_traces:
                        _, oldest = self._traces.popitem(last=False)
                        self.stats.dropped_traces += 1
                        _log.warning(
                            "dropped trace %s (%d spans) unjudged: more than %d traces "
                            "pending (--max-traces); %d dropped so far",
                            oldest.trace_id,
                            oldest.spans,
                            self.max_traces,
                            self.stats.dropped_traces,
                        )
                    if pending is None:
                        pending = PendingTrace(record.trace_id, now)
                    self._traces[record.trace_id] = pending
                if pending.spans >= self.max_spans:
                    rejected += 1
                    self.stats.dropped_spans += 1
                    if self.stats.dropped_spans == 1 or self.stats.dropped_spans % 1000 == 0:
                        _log.warning(
                            "dropped a span of trace %s: more than %d spans "
                            "(--max-spans-per-trace); %d dropped so far",
                            record.trace_id,
                            self.max_spans,
                            self.stats.dropped_spans,
                        )
                    continue
                pending.touched = now
                self._traces.move_to_end(record.trace_id)
                pending.spans += 1
                self.stats.spans += 1
                pending.parents[record.span_id] = (record.parent_span_id, record.process)
                if not is_interesting(record.attributes):
                    continue
                if is_own_anomaly(record.name, record.attributes, record.scope_name):
                    kind = record.attributes.get(A.ANOMALY_KIND)
                    fact = record.attributes.get(A.ANOMALY_FACT)
                    if record.parent_span_id and isinstance(kind, str):
                        pending.known.add((kind, record.parent_span_id, str(fact)))
                else:
                    pending.records.append(record)
            self.stats.traces = len(self._traces)
        return rejected

    def take_idle(self) -> list[PendingTrace]:
        """Traces no span of which arrived for the idle time, oldest first (kept as judged,
        so late spans revive them)."""
        now = self._clock()
        deadline = now - self.idle_s
        out = []
        with self._lock:
            while self._judged:
                oldest = next(iter(self._judged.values()))
                if oldest.touched > now - self.retain_s and len(self._judged) <= self.max_traces:
                    break
                self._judged.popitem(last=False)
            while self._traces:
                pending = next(iter(self._traces.values()))
                if pending.touched > deadline:
                    break
                out.append(self._traces.popitem(last=False)[1])
            for pending in out:
                self._judged[pending.trace_id] = pending
            self.stats.traces = len(self._traces)
        return out

    def take_all(self) -> list[PendingTrace]:
        with self._lock:
            out = list(self._traces.values())
            self._traces.clear()
            self._judged.clear()
            self.stats.traces = 0
        return out

    def snapshot(
        self, pending: PendingTrace
    ) -> tuple[list[SpanRecord], dict[str, tuple[str | None, str]]]:
        """A consistent copy of a trace's spans (late spans may be arriving meanwhile)."""
        with self._lock:
            return list(pending.records), dict(pending.parents)

    def __len__(self) -> int:
        with self._lock:
            return len(self._traces)


# ---------------------------------------------------------------------- reporting


class Reporter:
    """Re-exports findings as anomaly spans and metrics through an OTel SDK pipeline."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        service_name: str = "otel-agent-state-serve",
        metric_interval_ms: int = 10_000,
        echo: bool = False,
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from .core.config import get_settings

        self.settings = get_settings()
        self.echo = echo
        resource = Resource.create({"service.name": service_name})
        self.tracer_provider = TracerProvider(resource=resource)
        readers = []
        if endpoint:
            base = endpoint.rstrip("/")
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{base}/v1/traces"), schedule_delay_millis=200
                )
            )
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                    export_interval_millis=metric_interval_ms,
                )
            )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer = self.tracer_provider.get_tracer(A.SCOPE_NAME)
        meter = self.meter_provider.get_meter(A.SCOPE_NAME)
        self.anomalies = meter.create_counter(
            A.METRIC_ANOMALIES, unit="{anomaly}", description="State anomalies found"
        )
        self.lag = meter.create_histogram(
            A.METRIC_STALE_LAG,
            unit="ms",
            description="How long a newer version had been committed when a stale read missed it",
        )
        self.observations = meter.create_counter(
            A.METRIC_OBSERVATIONS, unit="{observation}", description="State observations"
        )
        self._lock = threading.Lock()

    def judge(
        self,
        pending: PendingTrace,
        records: list[SpanRecord],
        parents: dict[str, tuple[str | None, str]],
    ) -> tuple[int, int]:
        """Judge one trace and report what it shows that was not reported before; returns
        the number of new findings, and of those the exporting process had already reported
        live. Calls for one trace must not overlap."""
        if not records:
            return 0, 0
        view = judge(pending.trace_id, records, parents, self.settings)
        for obs in view.observations:
            if obs.span_id in pending.counted:
                continue
            pending.counted.add(obs.span_id)
            self.observations.add(
                1, {"op": obs.op.value, "store": obs.store, "tier": obs.tier.value}
            )
        ends = {r.span_id: r.end_ns for r in records}
        new = live = 0
        for finding in view.findings:
            key = finding.key or (finding.kind, finding.span_id, finding.fact)
            if key in pending.reported:
                continue
            if (finding.kind.value, finding.span_id, finding.fact) in pending.known:
                pending.reported.add(key)
                live += 1
                continue
            pending.reported.add(key)
            new += 1
            try:
                self.report(finding, ends.get(finding.span_id))
            except Exception:
                _log.exception("reporting a %s finding failed", finding.kind.value)
        return new, live

    def report(self, finding: Any, at_ns: int | None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace_id = int(finding.trace_id, 16)

        def context(span_id: str) -> SpanContext:
            return SpanContext(
                trace_id=trace_id,
                span_id=int(span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )

        attributes = finding_attributes(finding)
        start = at_ns if at_ns else time.time_ns()
        span = self.tracer.start_span(
            f"{A.ANOMALY_SPAN_PREFIX} {finding.kind.value}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(context(finding.span_id))),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=[
                Link(context(evidence), {"agentstate.evidence": True})
                for evidence in finding.evidence_span_ids
            ],
            start_time=start,
        )
        if finding.severity.value == "error":
            span.set_status(Status(StatusCode.ERROR, finding.summary))
        span.end(end_time=start)
        self.anomalies.add(
            1,
            {
                "kind": finding.kind.value,
                "store": finding.store,
                "agent": finding.agents[0] if finding.agents else "unknown",
                "fact_rule": finding.fact_rule or "unmatched",
            },
        )
        if finding.kind.value == "stale_read" and finding.lag_ms is not None:
            self.lag.record(
                max(finding.lag_ms, 0.0),
                {"store": finding.store, "fact_rule": finding.fact_rule or "unmatched"},
            )
        if self.echo:
            with self._lock:
                print(json.dumps(finding_json(finding)), flush=True)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()  # flushes the batch of anomaly spans
        self.meter_provider.shutdown()  # exports the metrics one last time


def summary(stats: BufferStats, printing: bool = False) -> str:
    """One line on what was received and found (logged periodically and at stop)."""
    line = (
        f"{_n(stats.spans, 'span')}, {_n(stats.judged_traces, 'trace')} judged, "
        f"{_n(stats.anomalies, 'anomaly', 'anomalies')} reported, "
        f"{_n(stats.dropped_traces, 'trace')} and {_n(stats.dropped_spans, 'span')} dropped"
    )
    if stats.already_live:
        # A single-process application with our processor finds everything itself: say
        # so, or an empty --print looks like serve is not working.
        line += (
            f"; {_n(stats.already_live, 'anomaly', 'anomalies')} found that the exporting "
            "application's own otel-agent-state processor had already reported live "
            + ("(not printed again)" if printing else "(not re-exported)")
        )
    return line


def _n(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


# ---------------------------------------------------------------------- the server


class Receiver:
    """The HTTP server, the idle sweeper and the reporter, with graceful shutdown."""

    def __init__(
        self,
        buffer: TraceBuffer,
        reporter: Reporter,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_body: int = DEFAULT_MAX_BODY,
        grpc_port: int | None = None,
        summary_interval_s: float = 0.0,
    ) -> None:
        """`grpc_port`: also take OTLP/gRPC there (0: any free port; None: not at all).
        `summary_interval_s`: log a summary line that often when traces were judged."""
        self.buffer = buffer
        self.reporter = reporter
        self.max_body = max_body
        self.summary_interval_s = summary_interval_s
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._judge_lock = threading.Lock()
        self.grpc_on_http_port = 0
        self._dropped_signals: set[str] = set()
        try:
            self.server = ThreadingHTTPServer((host, port), handler(self))
        except OSError as exc:
            raise OSError(
                f"cannot listen for OTLP/HTTP on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.server.daemon_threads = True
        self.grpc: Any = None
        if grpc_port is not None:
            from .serve_grpc import GrpcReceiver

            try:
                self.grpc = GrpcReceiver(
                    self.accept_protobuf,
                    host=host,
                    port=grpc_port,
                    max_body=max_body,
                    dropped=self.dropped_signal,
                )
            except BaseException:
                self.server.server_close()
                raise
        self._sweeper = threading.Thread(target=self._sweep, name="agentstate-sweep", daemon=True)
        self._serving = threading.Thread(
            target=self.server.serve_forever, name="agentstate-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{TRACES_PATH}"

    @property
    def grpc_address(self) -> str | None:
        return self.grpc.address if self.grpc is not None else None

    def dropped_signal(self, signal: str) -> None:
        """Metrics or logs sent here: dropped, said once per signal."""
        if signal not in self._dropped_signals:
            self._dropped_signals.add(signal)
            _log.info(
                "received OTLP %s: dropped (serve judges traces only; set "
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, not OTEL_EXPORTER_OTLP_ENDPOINT, to send "
                "it traces alone)",
                signal,
            )

    def accept_protobuf(self, body: bytes) -> tuple[int, str]:
        """Take one protobuf ExportTraceServiceRequest (an OTLP/gRPC request); returns the
        spans refused and why. FormatError when the request is bad."""
        rejected = self.buffer.add(list(spans_from_protobuf(body)))
        return rejected, rejected_message(rejected)

    def start(self) -> None:
        self._serving.start()
        if self.grpc is not None:
            self.grpc.start()
        self._sweeper.start()

    def _sweep(self) -> None:
        interval = min(max(self.buffer.idle_s / 4, 0.05), 1.0)
        last, judged = time.monotonic(), self.buffer.stats.judged_traces
        while not self._stop.wait(interval):
            self._judge(self.buffer.take_idle())
            now = time.monotonic()
            due = self.summary_interval_s and now - last >= self.summary_interval_s
            if due and self.buffer.stats.judged_traces != judged:
                last, judged = now, self.buffer.stats.judged_traces
                _log.info("%s", summary(self.buffer.stats, self.reporter.echo))

    def _judge(self, traces: list[PendingTrace]) -> None:
        with self._judge_lock:
            for pending in traces:
                try:
                    records, parents = self.buffer.snapshot(pending)
                    found, live = self.reporter.judge(pending, records, parents)
                except Exception:
                    _log.exception("judging trace %s failed", pending.trace_id)
                    continue
                self.buffer.stats.judged_traces += 1
                self.buffer.stats.anomalies += found
                self.buffer.stats.already_live += live

    def stop(self) -> None:
        """Stop receiving, judge every pending trace, flush the exporters."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        if self.grpc is not None:
            self.grpc.stop()
        self._sweeper.join(timeout=10)
        try:
            self._judge(self.buffer.take_all())
            self.reporter.shutdown()
        finally:
            self._stopped.set()

    def wait(self) -> None:
        """Until stop() has judged the pending traces and flushed the exporters."""
        while not self._stopped.wait(0.5):
            pass


# ---------------------------------------------------------------------- command line


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` options, on the subcommand's parser."""
    parser.description = _DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"OTLP/HTTP port, 0 = any free port (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--grpc-port",
        type=_port,
        default=None,
        help=f"OTLP/gRPC port, 0 = any free port (default: {DEFAULT_GRPC_PORT}, or OTLP/HTTP "
        "alone with a warning when that port is taken, e.g. by a sidecar Collector)",
    )
    parser.add_argument(
        "--no-grpc", action="store_true", help="do not listen for OTLP/gRPC (OTLP/HTTP only)"
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="OTLP/HTTP base URL to re-export anomaly spans and metrics to (/v1/traces and "
        "/v1/metrics are appended); default: $OTEL_EXPORTER_OTLP_ENDPOINT. Required unless "
        "--print is given",
    )
    parser.add_argument(
        "--trace-idle-ms",
        type=_positive,
        default=DEFAULT_IDLE_MS,
        metavar="MS",
        help=f"judge a trace once no span of it arrived for this long (default: {DEFAULT_IDLE_MS})",
    )
    parser.add_argument(
        "--trace-retain-ms",
        type=_positive,
        default=DEFAULT_RETAIN_MS,
        metavar="MS",
        help="keep a judged trace this long: spans of it arriving later revive it and it is "
        f"judged again whole, reporting only new findings (default: {DEFAULT_RETAIN_MS})",
    )
    parser.add_argument(
        "--max-traces",
        type=_positive,
        default=DEFAULT_MAX_TRACES,
        metavar="N",
        help="traces held at once; beyond it the oldest is dropped unjudged, counted and "
        f"logged (default: {DEFAULT_MAX_TRACES})",
    )
    parser.add_argument(
        "--max-spans-per-trace",
        type=_positive,
        default=DEFAULT_MAX_SPANS_PER_TRACE,
        metavar="N",
        help="spans held per trace; later spans of that trace are dropped, counted, logged "
        f"and reported as rejected to the sender (default: {DEFAULT_MAX_SPANS_PER_TRACE})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY,
        metavar="N",
        help=f"largest request body, after gunzip (default: {DEFAULT_MAX_BODY})",
    )
    parser.add_argument(
        "--service-name",
        default="otel-agent-state-serve",
        help="service.name of the re-exported telemetry (default: otel-agent-state-serve)",
    )
    parser.add_argument(
        "--metric-interval-ms",
        type=_positive,
        default=10_000,
        metavar="MS",
        help="how often metrics are exported (default: 10000)",
    )
    parser.add_argument(
        "--print",
        dest="echo",
        action="store_true",
        help="also print each anomaly as one JSON line on stdout (the `check` report's form); "
        "not those the exporting application's own processor already reported live",
    )
    parser.add_argument(
        "--summary-interval-s",
        type=_positive,
        default=30,
        metavar="S",
        help="log a summary line this often while traces are judged (default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown, 2 on bad settings."""
    from .core.config import ConfigError, get_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="otel-agent-state serve: %(levelname)s %(message)s"
        )
    endpoint = args.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if not endpoint and not args.echo:
        print(
            "otel-agent-state serve: no --otlp-endpoint and no OTEL_EXPORTER_OTLP_ENDPOINT: "
            "nowhere to send anomalies (or pass --print)",
            file=sys.stderr,
        )
        return 2
    try:
        get_settings()
    except ConfigError as exc:
        print(f"otel-agent-state serve: configuration error: {exc}", file=sys.stderr)
        return 2
    buffer = TraceBuffer(
        idle_ms=args.trace_idle_ms,
        max_traces=args.max_traces,
        max_spans_per_trace=args.max_spans_per_trace,
        retain_ms=args.trace_retain_ms,
    )
    reporter = Reporter(
        endpoint,
        service_name=args.service_name,
        metric_interval_ms=args.metric_interval_ms,
        echo=args.echo,
    )
    grpc_port: int | None = None
    if not args.no_grpc:
        # gRPC's core logs to stderr on its own (a failed bind, twice); serve says it once.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        if serve_grpc.available():
            grpc_port = DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port
        else:
            _log.warning("OTLP/gRPC is off: grpcio is not installed (pip install grpcio)")

    def receiver_on(grpc_port: int | None) -> Receiver:
        return Receiver(
            buffer,
            reporter,
            host=args.host,
            port=args.port,
            max_body=args.max_body_bytes,
            grpc_port=grpc_port,
            summary_interval_s=args.summary_interval_s,
        )

    try:
        try:
            receiver = receiver_on(grpc_port)
        except serve_grpc.BindError as exc:
            if args.grpc_port is not None:
                raise
            # The default port taken (a Collector, a sidecar forwarding to our OTLP/HTTP):
            # serve as before, over OTLP/HTTP alone, rather than not at all.
            _log.warning("%s: OTLP/HTTP only (--grpc-port chooses another gRPC port)", exc)
            receiver = receiver_on(None)
    except OSError as exc:
        print(
            f"otel-agent-state serve: {exc}; choose other ports with --port / --grpc-port "
            "(or --no-grpc)",
            file=sys.stderr,
        )
        reporter.shutdown()
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=receiver.stop, name="agentstate-stop").start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        receiver.start()
        grpc_address = receiver.grpc_address
        _log.info(
            "listening on %s (OTLP/HTTP)%s; re-exporting to %s",
            receiver.url,
            f"; OTLP/gRPC on {grpc_address}" if grpc_address else "",
            endpoint or "stdout (--print)",
        )
        if args.echo:
            _log.info(
                "--print: anomalies that need spans of several processes are printed here; "
                "an application running otel-agent-state's processor itself has already "
                "exported those it finds alone (they are counted in the summary, not printed)"
            )
        receiver.wait()
        _log.info("stopped: %s", summary(buffer.stats, args.echo))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-agent-state serve")
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_PORT",
    "JSON",
    "PROTOBUF",
    "Receiver",
    "Reporter",
    "TraceBuffer",
    "add_arguments",
    "decode",
    "main",
    "run",
    "spans_from_protobuf",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
