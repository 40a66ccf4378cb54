"""The coherence processor's cost per span against the SDK's own, and its memory under load.

Baselines run in the same process: a TracerProvider without our processor, doing the same
spans. "Observation" spans carry SPEC §3 read attributes, so they do the state work.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable

from _harness import Row, ratio_row, side_by_side
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from otel_agent_state import attributes as A
from otel_agent_state.core.config import Settings
from otel_agent_state.processor import StateCoherenceSpanProcessor

SPANS_PER_TRACE = 20


def _providers() -> tuple[TracerProvider, TracerProvider, StateCoherenceSpanProcessor]:
    plain = TracerProvider()
    ours = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=ours, meter_provider=MeterProvider(), settings=Settings()
    )
    ours.add_span_processor(processor)
    return plain, ours, processor


def _workload(tracer: Tracer, observe: bool) -> Callable[[int], None]:
    """n spans, in traces of an agent span with SPANS_PER_TRACE - 1 children."""

    def run(n: int) -> None:
        for t in range(max(1, n // SPANS_PER_TRACE)):
            with tracer.start_as_current_span(
                "invoke_agent planner",
                attributes={
                    A.GEN_AI_OPERATION_NAME: "invoke_agent",
                    A.GEN_AI_AGENT_NAME: "planner",
                },
            ):
                for i in range(SPANS_PER_TRACE - 1):
                    if observe:
                        attrs = {
                            A.OP: "read",
                            A.STORE: "postgresql",
                            A.TIER: "primary",
                            A.READ_FACTS: [f"postgresql:app/scores/{t % 50}_{i}"],
                            A.READ_VERSIONS: [f"n:{i}"],
                        }
                        with tracer.start_as_current_span("SELECT scores", attributes=attrs):
                            pass
                    else:
                        with tracer.start_as_current_span("llm.call"):
                            pass

    return run


def _per_span(quick: bool) -> list[Row]:
    plain, ours, processor = _providers()
    n, rounds = (4_000, 5) if quick else (40_000, 9)
    rows: list[Row] = []
    for observe, label in ((False, "plain spans"), (True, "observation spans (1 read each)")):
        times = side_by_side(
            {
                "sdk": _workload(plain.get_tracer("bench"), observe),
                "ours": _workload(ours.get_tracer("bench"), observe),
            },
            n,
            rounds,
        )
        rows.append(
            ratio_row(
                f"processor: {label}",
                times["ours"],
                times["sdk"],
                unit="µs/span",
                note="baseline: the same spans on a TracerProvider without our processor",
                target=1.10 if not observe else None,
            )
        )
    processor.shutdown()
    return rows


def _rss_mib() -> float:
    # ru_maxrss is the peak, in KiB on Linux: flat peaks are what "bounded" means here.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(quick: bool) -> list[Row]:
    """10k traces open at once, observation spans spread round-robin over them."""
    concurrent = 1_000 if quick else 10_000
    total = 100_000 if quick else 1_000_000
    plain, ours, processor = _providers()
    rows: list[Row] = []
    for label, provider in (("sdk", plain), ("ours", ours)):
        tracer = provider.get_tracer("bench")
        gc.collect()
        roots = [
            tracer.start_span(
                "invoke_agent worker",
                attributes={
                    A.GEN_AI_OPERATION_NAME: "invoke_agent",
                    A.GEN_AI_AGENT_NAME: f"a{i % 8}",
                },
            )
            for i in range(concurrent)
        ]
        from opentelemetry import trace as api_trace

        contexts = [api_trace.set_span_in_context(r) for r in roots]
        checkpoints: list[tuple[int, float]] = []
        start = time.perf_counter()
        for k in range(total - concurrent):
            ctx = contexts[k % concurrent]
            span = tracer.start_span(
                "SELECT",
                context=ctx,
                attributes={
                    A.OP: "read" if k % 4 else "write",
                    A.STORE: "postgresql",
                    A.TIER: "primary",
                    (A.READ_FACTS if k % 4 else A.WRITE_FACTS): [f"postgresql:app/t/{k % 5_000}"],
                    (A.READ_VERSIONS if k % 4 else A.WRITE_VERSIONS): [f"n:{k // concurrent}"],
                },
            )
            span.end()
            if (k + 1) % (total // 5) == 0:
                checkpoints.append((k + 1, _rss_mib()))
        for r in roots:
            r.end()
        elapsed = time.perf_counter() - start
        rate = total / elapsed
        if label == "sdk":
            sdk_rate = rate
            continue
        stats = processor.ledger.stats()
        rss = ", ".join(f"{n // 1000}k:{m:.0f}" for n, m in checkpoints)
        rows.append(
            Row(
                benchmark=f"processor throughput, {concurrent:,} open traces, {total:,} spans",
                ours=rate,
                baseline=sdk_rate,
                unit="spans/s",
                ratio=rate / sdk_rate,
                note=f"peak RSS MiB by spans done: {rss}; ledger after: {stats}",
            )
        )
    processor.shutdown()
    return rows


def run(quick: bool) -> list[Row]:
    return _per_span(quick) + _load(quick)
