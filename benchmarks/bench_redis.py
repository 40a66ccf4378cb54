"""Redis GET/SET per-operation cost on the real server: uninstrumented, contrib's redis
instrumentation alone, ours alone (with our processor doing the state work).

Both instrumentations patch redis-py's classes, so only one is active at a time: rounds
alternate none → contrib → ours, each instrumenting, measuring and uninstrumenting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from _harness import Row, in_agents, ratio_row, side_by_side_setups
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_agent_state import api
from otel_agent_state.core.config import Settings
from otel_agent_state.processor import StateCoherenceSpanProcessor

URL = os.environ.get("AGENTSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
DB = 7  # the benchmarks' own db
KEYS = 200


def _ops(op: str) -> Callable[[object], Callable[[int], None]]:
    def make(client: object) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                key = f"credit_score:{i % KEYS}"
                if op == "GET":
                    client.get(key)  # type: ignore[attr-defined]
                else:
                    client.set(key, f'{{"score": 700, "version": {i}}}')  # type: ignore[attr-defined]

        return run

    return make


def run(quick: bool) -> list[Row]:
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor as ContribRedis

    from otel_agent_state.instrumentation.redis import RedisInstrumentor as OurRedis

    contrib_provider = TracerProvider()
    ours_provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=ours_provider, meter_provider=MeterProvider(), settings=Settings()
    )
    ours_provider.add_span_processor(processor)
    api.configure(tracer_provider=ours_provider)
    seed = redis.Redis.from_url(URL, db=DB)
    seed.flushdb()
    for i in range(KEYS):
        seed.set(f"credit_score:{i}", '{"score": 680, "version": 1}')
    seed.close()

    def setup(kind: str, op: str) -> Callable[[], object]:
        @contextmanager
        def around() -> Iterator[Callable[[int], None]]:
            instrumentor = {"contrib": ContribRedis, "ours": OurRedis}.get(kind)
            provider = contrib_provider if kind == "contrib" else ours_provider
            if instrumentor is not None:
                instrumentor().instrument(tracer_provider=provider)
            client = redis.Redis.from_url(URL, db=DB)
            try:
                work = _ops(op)(client)
                yield work if instrumentor is None else in_agents(provider, work)
            finally:
                client.close()
                if instrumentor is not None:
                    instrumentor().uninstrument()

        return around

    n, rounds = (300, 3) if quick else (2_000, 7)
    rows: list[Row] = []
    for op in ("GET", "SET"):
        times = side_by_side_setups(
            {kind: setup(kind, op) for kind in ("none", "contrib", "ours")},
            n,
            rounds,
        )
        rows.append(
            ratio_row(
                f"redis {op}: ours vs contrib",
                times["ours"],
                times["contrib"],
                note=f"uninstrumented {times['none']:.1f} µs/op; "
                f"contrib {times['contrib'] / times['none']:.2f}x it",
                target=1.10,
            )
        )
    processor.shutdown()
    return rows
