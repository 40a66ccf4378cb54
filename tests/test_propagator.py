"""AgentStatePropagator in one process: header format and limits, seeding the ledger on
extract, the clock-skew boundary, and hostile headers (never raise, never seed)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_agent_state import api
from otel_agent_state.core import config
from otel_agent_state.processor import StateCoherenceSpanProcessor
from otel_agent_state.propagator import (
    HEADER,
    MAX_BYTES,
    MAX_FACTS,
    AgentStatePropagator,
    encode_entry,
    parse_header,
)

from .conftest import Telemetry

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
UPSTREAM_WRITE = "a1a2a3a4a5a6a7a8"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
FACT = "credit_score/42"
MS = 1_000_000


def _propagator() -> CompositePropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), AgentStatePropagator()])


def _header(commit_ns: int, version: str = "n:2", fact: str = FACT) -> str:
    entry = encode_entry(fact, version, commit_ns, UPSTREAM_WRITE, "planner", "planner/4242")
    return f"{TRACE},{entry}"


def _read(tracer: trace.Tracer, version: str, start_ns: int, fact: str = FACT) -> None:
    span = tracer.start_span(
        "SELECT credit_scores",
        start_time=start_ns,
        attributes={
            "agentstate.op": "read",
            "agentstate.store": "sqlite",
            "agentstate.tier": "primary",
            "agentstate.read.facts": [fact],
            "agentstate.read.versions": [version],
        },
    )
    span.end(end_time=start_ns + MS)


def _serve(tracer: trace.Tracer, header: str | None, read_version: str, read_start_ns: int) -> None:
    """What a server instrumentation does: extract, then a server span for the request."""
    carrier = {"traceparent": TRACEPARENT}
    if header is not None:
        carrier[HEADER] = header
    ctx = _propagator().extract(carrier)
    token = otel_context.attach(ctx)
    try:
        with tracer.start_as_current_span("GET /score", kind=trace.SpanKind.SERVER):
            _read(tracer, read_version, read_start_ns)
    finally:
        otel_context.detach(token)


class Skewed:
    def __init__(self, skew_ms: int) -> None:
        config.set_settings(config.Settings(clock_skew_ms=skew_ms))
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.provider = TracerProvider(resource=Resource.create({"service.name": "analyst-svc"}))
        self.processor = StateCoherenceSpanProcessor(
            tracer_provider=self.provider, meter_provider=self.meters
        )
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def anomalies(self) -> list[trace.Span]:
        return [
            s for s in self.exporter.get_finished_spans() if s.name.startswith("agentstate.anomaly")
        ]

    def close(self) -> None:
        self.provider.shutdown()
        self.meters.shutdown()
        config.set_settings(None)


@pytest.fixture
def skewed() -> Iterator[type[Skewed]]:
    made: list[Skewed] = []

    class Made(Skewed):
        def __init__(self, skew_ms: int) -> None:
            super().__init__(skew_ms)
            made.append(self)

    yield Made
    for one in made:
        one.close()


def test_entry_point_is_registered() -> None:
    found = [e for e in entry_points(group="opentelemetry_propagator") if e.name == "agentstate"]
    assert len(found) == 1
    assert found[0].load() is AgentStatePropagator


def test_inject_carries_the_latest_committed_versions_never_values(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("test")
    carrier: dict[str, str] = {}
    with api.agent("planner"), tracer.start_as_current_span("plan"):
        api.observe_write(FACT, 1, store="sqlite")
        api.observe_write(FACT, 2, store="sqlite")
        api.observe_write("limit/42", "h:00ff", store="redis")
        api.observe_write("pending/42", 5, txn_id="t1", committed=False)  # not committed
        _propagator().inject(carrier)
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
    header = carrier[HEADER]
    assert header.split(",")[0] == trace_id
    writes = parse_header(header, trace_id)
    assert [(w.writes[0].fact, w.writes[0].version.text) for w in writes] == [
        ("limit/42", "h:00ff"),  # most recent commit first
        (FACT, "n:2"),
    ]
    spans = {format(s.context.span_id, "016x"): s for s in telemetry.spans()}
    for write in writes:
        assert spans[write.span_id].name.startswith("agentstate.write")
        assert write.agent == "planner"
        assert write.process == telemetry.provider.resource.attributes["service.instance.id"]
    # Nothing but keys, versions, times, ids and names: per entry `fact=version;commit ns;
    # span id;agent;process` (a substring test would trip on random hex ids).
    entries = [entry.split(";") for entry in header.split(",")[1:]]
    assert [len(fields) for fields in entries] == [5, 5]
    assert [fields[0] for fields in entries] == ["limit/42=h:00ff", f"{FACT}=n:2"]
    assert all(fields[1].isdigit() and fields[3] == "planner" for fields in entries)


def test_inject_outside_a_trace_or_without_writes_sets_nothing(telemetry: Telemetry) -> None:
    carrier: dict[str, str] = {}
    AgentStatePropagator().inject(carrier)
    with telemetry.provider.get_tracer("t").start_as_current_span("empty"):
        AgentStatePropagator().inject(carrier)
    assert carrier == {}


def test_inject_is_bounded_most_recent_first(telemetry: Telemetry) -> None:
    carrier: dict[str, str] = {}
    with api.agent("planner"):
        for i in range(200):
            api.observe_write(f"doc/{i:04d}/" + "x" * 60, i + 1)
        AgentStatePropagator().inject(carrier)
    header = carrier[HEADER]
    assert len(header) <= MAX_BYTES
    entries = header.split(",")[1:]
    assert 0 < len(entries) <= MAX_FACTS
    facts = [e.split("=")[0] for e in entries]
    assert facts[0].startswith("doc/0199/")
    assert facts == sorted(facts, reverse=True)
    small: dict[str, str] = {}
    with api.agent("planner"):
        api.observe_write("a", 1)
        api.observe_write("b", 1)
        AgentStatePropagator(max_facts=1).inject(small)
    assert len(small[HEADER].split(",")) == 2


def test_extract_seeds_the_ledger_and_flags_the_stale_read(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("test")
    committed = 1_800_000_000_000_000_000
    _serve(tracer, _header(committed), "n:1", committed + 5 * MS)
    [anomaly] = telemetry.anomalies("stale_read")
    attrs = dict(anomaly.attributes or {})
    assert attrs["agentstate.anomaly.fact"] == FACT
    assert attrs["agentstate.anomaly.observed_version"] == "n:1"
    assert attrs["agentstate.anomaly.expected_version"] == "n:2"
    assert attrs["agentstate.anomaly.lag_ms"] == 5.0
    assert "planner" in attrs["agentstate.anomaly.agents"]
    read = telemetry.span_named("SELECT credit_scores")
    assert anomaly.parent is not None and anomaly.parent.span_id == read.context.span_id
    assert format(anomaly.context.trace_id, "032x") == TRACE
    assert [format(link.context.span_id, "016x") for link in anomaly.links] == [UPSTREAM_WRITE]


def test_extract_then_correct_read_is_not_flagged(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("test")
    committed = 1_800_000_000_000_000_000
    _serve(tracer, _header(committed), "n:2", committed + 5 * MS)
    _serve(tracer, None, "n:1", committed + 5 * MS)  # no header: nothing known upstream
    assert telemetry.anomalies() == []


def test_header_for_another_trace_is_ignored(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("test")
    committed = 1_800_000_000_000_000_000
    other = _header(committed).replace(TRACE, "f" * 32)
    _serve(tracer, other, "n:1", committed + 5 * MS)
    assert telemetry.anomalies() == []


@pytest.mark.parametrize(
    ("offset_ns", "flagged"),
    [(-MS, False), (0, False), (50 * MS, False), (50 * MS + 1, True), (80 * MS, True)],
)
def test_clock_skew_boundary(skewed: type[Skewed], offset_ns: int, flagged: bool) -> None:
    """SPEC §5: the upstream commit counts only if it ended more than the skew before the
    read started (the commit time comes from another clock)."""
    svc = skewed(50)
    committed = 1_800_000_000_000_000_000
    _serve(svc.tracer, _header(committed), "n:1", committed + offset_ns)
    assert len(svc.anomalies()) == (1 if flagged else 0)


def test_without_skew_tolerance_any_later_read_counts(skewed: type[Skewed]) -> None:
    svc = skewed(0)
    committed = 1_800_000_000_000_000_000
    _serve(svc.tracer, _header(committed), "n:1", committed + 1)
    assert len(svc.anomalies()) == 1


def test_forwarded_frontier_keeps_the_upstream_origin(telemetry: Telemetry) -> None:
    """A middle service re-injects what it learnt, with the original writer and clock."""
    tracer = telemetry.provider.get_tracer("test")
    ctx = _propagator().extract({"traceparent": TRACEPARENT, HEADER: _header(10**18)})
    token = otel_context.attach(ctx)
    try:
        with tracer.start_as_current_span("GET /score", kind=trace.SpanKind.SERVER):
            carrier: dict[str, str] = {}
            _propagator().inject(carrier)
    finally:
        otel_context.detach(token)
    [write] = parse_header(carrier[HEADER], TRACE)
    assert (write.span_id, write.agent, write.process, write.end_ns) == (
        UPSTREAM_WRITE,
        "planner",
        "planner/4242",
        10**18,
    )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        TRACE,
        f"{TRACE},",
        f"{'0' * 32},{FACT}=n:2;1;{UPSTREAM_WRITE};a;p",
        f"{TRACE},{FACT}=n:2;1;{'0' * 16};a;p",
        f"{TRACE},{FACT}=n:2;-5;{UPSTREAM_WRITE};a;p",
        f"{TRACE},{FACT}=n:2;{1 << 64};{UPSTREAM_WRITE};a;p",
        f"{TRACE},{FACT}=bogus;1;{UPSTREAM_WRITE};a;p",
        f"{TRACE},{FACT}=n:2;1;{UPSTREAM_WRITE};a",
        f"{TRACE},=n:2;1;{UPSTREAM_WRITE};a;p",
        f"{TRACE},%ff%fe=n:2;1;{UPSTREAM_WRITE};a;p",
        f"{TRACE},{FACT}=n:2;1;{UPSTREAM_WRITE};a;p".ljust(9000, "x"),
        f"{TRACE},caf\u00e9=n:2;1;{UPSTREAM_WRITE};a;p",
    ],
)
def test_malformed_headers_seed_nothing(header: str) -> None:
    assert parse_header(header, TRACE) == []


def test_bad_entries_are_skipped_one_by_one() -> None:
    good = encode_entry(FACT, "n:2", 7, UPSTREAM_WRITE, "planner", "p/1")
    writes = parse_header(f"{TRACE},junk;;,{good},x=y", TRACE)
    assert [w.span_id for w in writes] == [UPSTREAM_WRITE]


def test_too_many_entries_are_cut(telemetry: Telemetry) -> None:
    entries = [encode_entry(f"f{i}", "n:1", 10 + i, f"{i + 1:016x}", "a", "p") for i in range(100)]
    assert len(parse_header(",".join([TRACE, *entries]), TRACE)) == MAX_FACTS


_entry_text = st.builds(
    lambda fact, version, ns, span, agent, proc: f"{fact}={version};{ns};{span};{agent};{proc}",
    st.text(max_size=20),
    st.sampled_from(["n:1", "n:-3", "h:zz", "t:2026-11-26T10:00:00Z", "none", "", "n:"]),
    st.one_of(st.integers(min_value=-5, max_value=1 << 70), st.text(max_size=5)),
    st.one_of(st.just(UPSTREAM_WRITE), st.text(max_size=17)),
    st.text(max_size=10),
    st.text(max_size=10),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.one_of(
        st.text(max_size=300),
        st.binary(max_size=100),
        st.lists(_entry_text, max_size=6).map(lambda es: ",".join([TRACE, *es])),
        st.none(),
        st.integers(),
    )
)
def test_extract_never_raises(telemetry: Telemetry, value: object) -> None:
    carrier: dict[str, object] = {"traceparent": TRACEPARENT, HEADER: value}
    ctx = _propagator().extract(carrier)  # type: ignore[arg-type]
    assert trace.get_current_span(ctx).get_span_context().trace_id == int(TRACE, 16)
    for obs in parse_header(value, TRACE):
        assert obs.trace_id == TRACE and len(obs.span_id) == 16
        assert obs.end_ns > 0 and len(obs.writes) == 1


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fact=st.text(min_size=1, max_size=60).filter(str.isprintable),
    agent=st.text(max_size=20).filter(str.isprintable),
    version=st.integers(min_value=0, max_value=10**12),
)
def test_encoding_round_trips(telemetry: Telemetry, fact: str, agent: str, version: int) -> None:
    value = f"{TRACE},{encode_entry(fact, f'n:{version}', 99, UPSTREAM_WRITE, agent, 'svc/1')}"
    assert value.isascii()
    [obs] = parse_header(value, TRACE)
    assert obs.writes[0].fact == fact
    assert obs.writes[0].version.text == f"n:{version}"
    assert obs.agent == (agent or "upstream")


def test_raise_mode_halts_the_stale_read_of_an_upstream_write() -> None:
    """OTEL_AGENTSTATE_ON_ANOMALY=raise: the downstream agent never gets the stale value."""
    import time

    from otel_agent_state import StaleReadError

    config.set_settings(config.Settings(on_anomaly="raise"))
    provider = TracerProvider(resource=Resource.create({"service.name": "analyst-svc"}))
    processor = StateCoherenceSpanProcessor(tracer_provider=provider)
    provider.add_span_processor(processor)
    api.configure(tracer_provider=provider)
    try:
        header = _header(time.time_ns() - 1_000 * MS)
        ctx = _propagator().extract({"traceparent": TRACEPARENT, HEADER: header})
        token = otel_context.attach(ctx)
        try:
            with provider.get_tracer("t").start_as_current_span("GET /score"):
                with pytest.raises(StaleReadError) as raised:
                    api.observe_read(FACT, 1, store="sqlite")
                api.observe_read(FACT, 2, store="sqlite")  # the current version passes
        finally:
            otel_context.detach(token)
        assert raised.value.anomaly.expected_version == "n:2"
        assert raised.value.anomaly.evidence_span_ids == (UPSTREAM_WRITE,)
    finally:
        provider.shutdown()
        api._tracer_provider = None
        config.set_settings(None)
