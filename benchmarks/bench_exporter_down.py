"""The application's speed and memory when the collector is unreachable.

Both sides run the same agents with our processor and a BatchSpanProcessor; the baseline's
exporter accepts everything at once, the other's is the real OTLP/HTTP exporter pointed at
a port where nothing listens. The app must not slow down (export happens on the batch
thread and its queue drops spans when full), and memory must not grow with the backlog.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable, Sequence

from _harness import Row, ratio_row, side_by_side
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_agent_state import agent, api, decision, observe_read, observe_write, workflow
from otel_agent_state.core.config import Settings
from otel_agent_state.processor import StateCoherenceSpanProcessor


class _Accepting(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _provider(exporter: SpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(
        StateCoherenceSpanProcessor(
            tracer_provider=provider, meter_provider=MeterProvider(), settings=Settings()
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048))
    return provider


def _agents(provider: TracerProvider) -> Callable[[int], None]:
    def run(n: int) -> None:
        api.configure(tracer_provider=provider)
        for i in range(max(1, n // 4)):  # four observation spans per workflow
            with workflow(f"credit {i}"):
                with agent("credit-scorer"):
                    observe_write("credit_score/42", f"n:{i + 2}")
                with agent("risk-assessor"), decision("approve"):
                    observe_read("credit_score/42", f"n:{i + 2}")

    return run


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(quick: bool) -> list[Row]:
    up = _provider(_Accepting())
    down = _provider(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{_closed_port()}/v1/traces"))
    n, rounds = (2_000, 3) if quick else (20_000, 7)
    before = _rss_mib()
    times = side_by_side({"up": _agents(up), "down": _agents(down)}, n, rounds)
    after = _rss_mib()
    rows = [
        ratio_row(
            "app speed with the collector unreachable (4 observations per workflow)",
            times["down"],
            times["up"],
            unit="µs/op",
            note=f"baseline: an exporter that accepts at once; peak RSS {before:.0f} -> "
            f"{after:.0f} MiB over {n * (rounds + 1) * 2:,} operations (queue bound 2048 spans)",
            target=1.10,
        )
    ]
    up.shutdown()
    # `down` is not shut down: its exporter would retry a dead collector for its timeout;
    # the runner ends this process with os._exit.
    api._tracer_provider = None
    return rows
