"""Shared fixtures: a real SDK TracerProvider and MeterProvider wired to in-memory exporters."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_agent_state import api, config
from otel_agent_state.processor import StateCoherenceSpanProcessor

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES_DSN = os.environ.get(
    "AGENTSTATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AGENTSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def service_missing(what: str, reason: object) -> None:
    """A test that needs a real service fails in CI when it is down, and skips elsewhere."""
    message = f"{what} is not reachable ({reason}); .ci/run starts it"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the real PostgreSQL server (db `test`, trust auth)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as exc:
        service_missing("PostgreSQL at 127.0.0.1:5432", exc)
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server, without a db number (tests pick their own db)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as exc:
        service_missing("Redis at 127.0.0.1:6379", exc)
    return REDIS_URL


@dataclass
class Telemetry:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    processor: StateCoherenceSpanProcessor

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def anomalies(self, kind: str | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.name.startswith("agentstate.anomaly")
            and (kind is None or (s.attributes or {}).get("agentstate.anomaly.kind") == kind)
        ]

    def span_named(self, name: str) -> ReadableSpan:
        matches = [s for s in self.spans() if s.name == name]
        names = [s.name for s in self.spans()]
        assert len(matches) == 1, f"expected one span {name!r}, got {names}"
        return matches[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """A provider with our processor first and an in-memory exporter after it."""
    config.set_settings(config.Settings())
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    processor = StateCoherenceSpanProcessor(tracer_provider=provider, meter_provider=meter_provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api.configure(tracer_provider=provider)
    yield Telemetry(provider, exporter, reader, processor)
    provider.shutdown()
    meter_provider.shutdown()
    api._tracer_provider = None
    config.set_settings(None)
