"""sqlite3 per-operation cost: uninstrumented, contrib's DB-API instrumentation, ours.

contrib's sqlite3 package is a thin layer over `opentelemetry.instrumentation.dbapi` (what
we install at 0.66b2), so its connection is built with `dbapi.instrument_connection`.
"Contrib alone" runs on an SDK TracerProvider without our processor; "ours" on one with it,
so the ratio includes all of our state work: facts, versions, the ledger, detection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from _harness import Row, in_agents, ratio_row, side_by_side
from opentelemetry.instrumentation import dbapi
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_agent_state import api
from otel_agent_state.core.config import Settings
from otel_agent_state.instrumentation.sqlite3 import instrument_connection
from otel_agent_state.processor import StateCoherenceSpanProcessor

ROWS = 200


def _db(connection: Any) -> Any:
    connection.execute(
        "CREATE TABLE scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER)"
    )
    connection.executemany("INSERT INTO scores VALUES (?, ?, 1)", [(i, 600) for i in range(ROWS)])
    connection.commit()
    return connection


# Through a cursor: contrib's DB-API layer traces cursor.execute, not Connection.execute.
def _select(connection: Any) -> Callable[[int], None]:
    cursor = connection.cursor()

    def run(n: int) -> None:
        for i in range(n):
            cursor.execute("SELECT score, version FROM scores WHERE id = ?", (i % ROWS,))
            cursor.fetchall()

    return run


def _update(connection: Any) -> Callable[[int], None]:
    cursor = connection.cursor()

    def run(n: int) -> None:
        for i in range(n):
            cursor.execute(
                "UPDATE scores SET score = score + 1, version = version + 1 WHERE id = ?",
                (i % ROWS,),
            )
            connection.commit()

    return run


def run(quick: bool) -> list[Row]:
    contrib_provider = TracerProvider()
    ours_provider = TracerProvider()
    processor = StateCoherenceSpanProcessor(
        tracer_provider=ours_provider, meter_provider=MeterProvider(), settings=Settings()
    )
    ours_provider.add_span_processor(processor)
    api.configure(tracer_provider=ours_provider)

    plain = _db(sqlite3.connect(":memory:", check_same_thread=False))
    contrib = _db(
        dbapi.instrument_connection(
            "bench", sqlite3.connect(":memory:"), "sqlite", tracer_provider=contrib_provider
        )
    )
    ours = _db(instrument_connection(sqlite3.connect(":memory:"), tracer_provider=ours_provider))
    n, rounds = (500, 5) if quick else (3_000, 9)
    rows: list[Row] = []
    for op, make in (
        ("SELECT by primary key", _select),
        ("UPDATE by primary key + commit", _update),
    ):
        times = side_by_side(
            {
                "none": make(plain),
                "contrib": in_agents(contrib_provider, make(contrib)),
                "ours": in_agents(ours_provider, make(ours)),
            },
            n,
            rounds,
        )
        rows.append(
            ratio_row(
                f"sqlite3 {op}: ours vs contrib",
                times["ours"],
                times["contrib"],
                note=f"uninstrumented {times['none']:.1f} µs/op; "
                f"contrib {times['contrib'] / times['none']:.1f}x it",
                target=1.10,
            )
        )
    processor.shutdown()
    return rows
