"""Reliability under load and faults: bounded memory, an unreachable collector, provider
shutdown while agents run, threads and asyncio tasks sharing one ledger."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_agent_state import agent, api, decision, observe_read, observe_write, workflow
from otel_agent_state.core import config
from otel_agent_state.core.config import Settings
from otel_agent_state.processor import StateCoherenceSpanProcessor

from .conftest import Telemetry


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def bounded() -> Iterator[tuple[TracerProvider, StateCoherenceSpanProcessor]]:
    settings = Settings(max_traces=50, max_facts_per_trace=20, max_events_per_fact=4)
    provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=provider, meter_provider=MeterProvider(), settings=settings
    )
    provider.add_span_processor(processor)
    api.configure(tracer_provider=provider)
    yield provider, processor
    provider.shutdown()
    api._tracer_provider = None


def test_ledger_stays_within_its_bounds_under_many_open_traces(
    bounded: tuple[TracerProvider, StateCoherenceSpanProcessor],
) -> None:
    provider, processor = bounded
    tracer = provider.get_tracer("load")
    roots = []
    for t in range(500):  # 10x the trace bound, all open at once
        root = tracer.start_span(f"workflow {t}")
        roots.append(root)
        from opentelemetry import trace

        with trace.use_span(root), agent(f"agent-{t % 7}"):
            for f in range(60):  # 3x the facts bound per trace
                observe_write(f"fact/{f}", f"n:{t + 1}")
                observe_read(f"fact/{f}", f"n:{t + 1}")
        stats = processor.ledger.stats()
        assert stats.traces <= 50
    stats = processor.ledger.stats()
    assert stats.evicted_traces >= 450
    assert stats.dropped_facts > 0
    for root in roots:
        root.end()
    assert processor.ledger.stats().traces == 0


def test_unreachable_collector_neither_blocks_nor_breaks_the_agents() -> None:
    config.set_settings(Settings())
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{_closed_port()}/v1/traces", timeout=1)
    batch = BatchSpanProcessor(
        exporter, max_queue_size=256, max_export_batch_size=64, schedule_delay_millis=50
    )
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    provider.add_span_processor(processor)
    provider.add_span_processor(batch)
    api.configure(tracer_provider=provider)
    try:
        for i in range(300):
            with workflow(f"credit {i}"):
                with agent("credit-scorer"):
                    observe_write("credit_score/42", "n:2")
                with agent("risk-assessor"), decision("approve"):
                    observe_read("credit_score/42", "n:1", tier="cache")  # stale: n:2 committed
        # The queue is bounded: spans beyond it are dropped, never buffered without limit.
        assert len(batch._batch_processor._queue) <= 256
        data = reader.get_metrics_data()
        assert data is not None
        found = [
            point.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "agentstate.anomalies"
            for point in metric.data.data_points
        ]
        assert sum(found) == 300  # detection kept working while nothing could be exported
    finally:
        done = threading.Event()
        closer = threading.Thread(target=lambda: (provider.shutdown(), done.set()), daemon=True)
        closer.start()
        closer.join(timeout=120)
        api._tracer_provider = None
        config.set_settings(None)
    assert done.is_set(), "TracerProvider.shutdown hung with the collector down"


def test_provider_shutdown_while_agents_run_never_reaches_them() -> None:
    config.set_settings(Settings())
    provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=provider, meter_provider=MeterProvider()
    )
    provider.add_span_processor(processor)
    api.configure(tracer_provider=provider)
    errors: list[BaseException] = []
    started = threading.Barrier(5, timeout=10)

    def work(index: int) -> None:
        try:
            started.wait()
            for step in range(400):
                with agent(f"agent-{index}"), decision("step"):
                    observe_write(f"fact/{index}", f"n:{step + 1}")
                    observe_read(f"fact/{index % 2}", f"n:{step}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    provider.shutdown()
    for thread in threads:
        thread.join(timeout=60)
    api._tracer_provider = None
    config.set_settings(None)
    assert not any(t.is_alive() for t in threads), "an agent thread deadlocked"
    assert errors == []


def test_threads_and_tasks_share_one_ledger_without_losing_observations(
    telemetry: Telemetry,
) -> None:
    threads_n, tasks_n, steps = 6, 20, 40

    def thread_work(index: int, parent: object) -> None:
        from opentelemetry import context

        token = context.attach(parent)  # type: ignore[arg-type]
        try:
            with agent(f"thread-{index}"):
                for step in range(steps):
                    observe_write(f"t/{index}", f"n:{step + 1}")
                    observe_read(f"t/{index}", f"n:{step + 1}")
        finally:
            context.detach(token)

    async def task_work(index: int) -> None:
        with agent(f"task-{index}"):
            for step in range(steps):
                observe_write(f"a/{index}", f"n:{step + 1}")
                await asyncio.sleep(0)
                observe_read(f"a/{index}", f"n:{step + 1}")

    async def main() -> None:
        from opentelemetry import context

        async with workflow("mixed"):
            parent = context.get_current()
            threads = [
                threading.Thread(target=thread_work, args=(i, parent)) for i in range(threads_n)
            ]
            for thread in threads:
                thread.start()
            await asyncio.gather(*(task_work(i) for i in range(tasks_n)))
            for thread in threads:
                await asyncio.to_thread(thread.join, 60)
            assert not any(t.is_alive() for t in threads)
            # One stale read, planted among the load, must still be found.
            with agent("late-reader"):
                observe_read("a/0", "n:1")

    asyncio.run(main())
    total = sum(p.value for p in telemetry.metric_points("agentstate.observations"))
    assert total == (threads_n + tasks_n) * steps * 2 + 1
    [stale] = telemetry.anomalies()
    assert (stale.attributes or {})["agentstate.anomaly.fact"] == "a/0"
    assert (stale.attributes or {})["agentstate.anomaly.expected_version"] == f"n:{steps}"
