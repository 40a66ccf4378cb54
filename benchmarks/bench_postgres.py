"""PostgreSQL SELECT/UPDATE per-operation cost on the real server through psycopg 3:
uninstrumented, contrib's psycopg instrumentation alone, ours alone (with our processor).

Both instrumentations patch psycopg's connect, so only one is active at a time: rounds
alternate none → contrib → ours, each instrumenting, connecting, measuring, uninstrumenting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _harness import Row, in_agents, ratio_row, side_by_side_setups
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_agent_state import api
from otel_agent_state.core.config import Settings
from otel_agent_state.processor import StateCoherenceSpanProcessor

DSN = os.environ.get("AGENTSTATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "agentstate_bench"
ROWS = 200


def _ops(op: str) -> Callable[[Any], Callable[[int], None]]:
    def make(conn: Any) -> Callable[[int], None]:
        cursor = conn.cursor()

        def run(n: int) -> None:
            for i in range(n):
                if op == "SELECT":
                    cursor.execute(
                        f"SELECT score, version FROM {SCHEMA}.scores WHERE id = %s", (i % ROWS,)
                    )
                    cursor.fetchall()
                else:
                    cursor.execute(
                        f"UPDATE {SCHEMA}.scores SET score = score + 1, version = version + 1"
                        " WHERE id = %s",
                        (i % ROWS,),
                    )

        return run

    return make


def run(quick: bool) -> list[Row]:
    import psycopg
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor as ContribPsycopg

    from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor as OurPsycopg

    contrib_provider = TracerProvider()
    ours_provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=ours_provider, meter_provider=MeterProvider(), settings=Settings()
    )
    ours_provider.add_span_processor(processor)
    api.configure(tracer_provider=ours_provider)
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.scores (id int PRIMARY KEY, score int, version int)")
        conn.execute(
            f"INSERT INTO {SCHEMA}.scores SELECT g, 680, 1 FROM generate_series(0, {ROWS - 1}) g"
        )

    def setup(kind: str, op: str) -> Callable[[], Any]:
        @contextmanager
        def around() -> Iterator[Callable[[int], None]]:
            instrumentor = {"contrib": ContribPsycopg, "ours": OurPsycopg}.get(kind)
            provider = contrib_provider if kind == "contrib" else ours_provider
            if instrumentor is not None:
                instrumentor().instrument(tracer_provider=provider)
            conn = psycopg.connect(DSN, autocommit=True)
            try:
                work = _ops(op)(conn)
                yield work if instrumentor is None else in_agents(provider, work)
            finally:
                conn.close()
                if instrumentor is not None:
                    instrumentor().uninstrument()

        return around

    n, rounds = (300, 3) if quick else (2_000, 7)
    rows: list[Row] = []
    try:
        for op in ("SELECT", "UPDATE"):
            times = side_by_side_setups(
                {kind: setup(kind, op) for kind in ("none", "contrib", "ours")}, n, rounds
            )
            rows.append(
                ratio_row(
                    f"postgresql (psycopg 3) {op} by primary key: ours vs contrib",
                    times["ours"],
                    times["contrib"],
                    note=f"uninstrumented {times['none']:.1f} µs/op; "
                    f"contrib {times['contrib'] / times['none']:.2f}x it",
                    target=1.10,
                )
            )
    finally:
        processor.shutdown()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    return rows
