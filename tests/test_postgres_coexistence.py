"""SPEC §2: our psycopg / psycopg2 instrumentations next to contrib's, in either load order.

contrib's span (`opentelemetry.instrumentation.psycopg[2]`) is the one database span of a
statement and carries both sets of attributes; a SELECT's fetched rows are recorded on a short
`agentstate.read <table>` child span (contrib's span ends before the application fetches).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import pytest
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor as ContribPsycopg
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor as ContribPsycopg2

from otel_agent_state import StaleReadError, agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import psycopg as pg3_inst
from otel_agent_state.instrumentation import psycopg2 as pg2_inst

from .conftest import Telemetry

ORDERS = ["contrib_first", "ours_first"]
DRIVERS = ["psycopg", "psycopg2"]


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"agentstate_pg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.scores (id int PRIMARY KEY, score int, version int)")
        conn.execute(f"INSERT INTO {name}.scores VALUES (1, 600, 1), (2, 610, 1)")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def instrumentors(driver: str) -> tuple[Any, Any]:
    if driver == "psycopg":
        return ContribPsycopg(), pg3_inst.PsycopgInstrumentor()
    return ContribPsycopg2(), pg2_inst.Psycopg2Instrumentor()


def instrument(driver: str, order: str, telemetry: Telemetry) -> tuple[Any, Any]:
    contrib, ours = instrumentors(driver)
    first, second = (contrib, ours) if order == "contrib_first" else (ours, contrib)
    for inst in (first, second):
        inst.instrument(tracer_provider=telemetry.provider, skip_dep_check=True)
    return contrib, ours


def connect(driver: str, dsn: str, autocommit: bool = True) -> Any:
    if driver == "psycopg":
        return psycopg.connect(dsn, autocommit=autocommit)
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


def run(conn: Any, sql: str, params: Any = ()) -> Any:
    cursor = conn.cursor()
    cursor.execute(sql, params)
    return cursor


def db_spans(telemetry: Telemetry) -> list[Any]:
    """Database operation spans: any with a db system attribute, except transaction ends."""
    return [
        s
        for s in telemetry.spans()
        if ("db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {}))
        and s.name not in ("COMMIT", "ROLLBACK")
    ]


def contrib_scope(driver: str) -> str:
    return f"opentelemetry.instrumentation.{driver}"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_one_database_span_with_both_sets_of_attributes(
    telemetry: Telemetry, postgres_dsn: str, schema: str, driver: str, order: str
) -> None:
    configure(
        rules=[
            {
                "name": "score",
                "keys": [f"postgresql:*/{schema}.scores/{{id}}"],
                "version": {"column": "version"},
            }
        ]
    )
    contrib, ours = instrument(driver, order, telemetry)
    try:
        with agent("scorer"):
            conn = connect(driver, postgres_dsn)
            run(conn, f"UPDATE {schema}.scores SET score = 700, version = 2 WHERE id = %s", (1,))
            rows = run(conn, f"SELECT * FROM {schema}.scores WHERE id = %s", (1,)).fetchall()
            conn.close()
    finally:
        ours.uninstrument()
        contrib.uninstrument()
    assert rows == [(1, 700, 2)]
    spans = db_spans(telemetry)
    assert [s.instrumentation_scope.name for s in spans] == [contrib_scope(driver)] * 2
    update, select = spans
    attrs = update.attributes or {}
    assert attrs["db.system"] == "postgresql"  # contrib's
    assert "db.statement" in attrs
    assert attrs[A.WRITE_FACTS] == ("score/1",)  # ours
    assert attrs[A.WRITE_VERSIONS] == ("n:2",)
    assert attrs[A.OP] == "write"
    assert attrs[A.GEN_AI_AGENT_NAME] == "scorer"
    [read] = [s for s in telemetry.spans() if s.name.startswith("agentstate.read")]
    assert read.parent is not None and read.parent.span_id == select.context.span_id
    assert (read.attributes or {})[A.READ_VERSIONS] == ("n:2",)
    assert "db.system" not in (read.attributes or {})


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_raise_mode_through_contrib_spans(
    telemetry: Telemetry, postgres_dsn: str, schema: str, driver: str, order: str
) -> None:
    keys = [f"postgresql:*/{schema}.scores/{{id}}", f"postgresql:*/{schema}.scores_r/{{id}}"]
    configure(
        rules=[{"name": "score", "keys": keys, "version": {"column": "version"}}],
        on_anomaly="raise",
    )
    with psycopg.connect(postgres_dsn, autocommit=True) as setup:  # before instrumenting
        setup.execute(f"CREATE TABLE {schema}.scores_r AS SELECT * FROM {schema}.scores")
        setup.execute(f"ALTER TABLE {schema}.scores_r ADD PRIMARY KEY (id)")
    contrib, ours = instrument(driver, order, telemetry)
    module: Any = pg3_inst if driver == "psycopg" else pg2_inst
    try:
        with workflow("w"):
            with agent("writer"):
                conn = connect(driver, postgres_dsn)
                run(conn, f"UPDATE {schema}.scores SET version = 5 WHERE id = 2")
                conn.close()
            with agent("reader"):
                conn = connect(driver, postgres_dsn)
                module.instrument_connection(conn, tier="replica")
                cursor = run(conn, f"SELECT * FROM {schema}.scores_r WHERE id = %s", (2,))
                with pytest.raises(StaleReadError) as caught:
                    cursor.fetchone()
                fresh = run(conn, f"SELECT version FROM {schema}.scores WHERE id = 2").fetchone()
                conn.close()
    finally:
        contrib.uninstrument()
        ours.uninstrument()
    assert fresh == (5,)
    anomaly = caught.value.anomaly
    assert (anomaly.observed_version, anomaly.expected_version) == ("n:1", "n:5")
    [stale] = telemetry.anomalies("stale_read")
    [read] = [s for s in telemetry.spans() if s.name.startswith("agentstate.read")][:1]
    assert (read.attributes or {})[A.TIER] == "replica"
    assert stale.parent is not None


@pytest.mark.parametrize("uninstrument_first", ["contrib", "ours"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_uninstrument_in_either_order_leaves_working_clients(
    telemetry: Telemetry,
    postgres_dsn: str,
    schema: str,
    driver: str,
    order: str,
    uninstrument_first: str,
) -> None:
    contrib, ours = instrument(driver, order, telemetry)
    first, second = (contrib, ours) if uninstrument_first == "contrib" else (ours, contrib)
    first.uninstrument()
    conn = connect(driver, postgres_dsn)
    assert run(conn, f"SELECT score FROM {schema}.scores WHERE id = 1").fetchone() == (600,)
    conn.close()
    spans = db_spans(telemetry)
    assert len(spans) == 1  # the one left still traces, once
    left = spans[0]
    if uninstrument_first == "contrib":
        assert left.instrumentation_scope.name == f"otel_agent_state.instrumentation.{driver}"
        assert (left.attributes or {})[A.READ_FACTS] == (f"postgresql:test/{schema}.scores/1",)
    else:
        assert left.instrumentation_scope.name == contrib_scope(driver)
        assert A.OP not in (left.attributes or {})
    second.uninstrument()
    telemetry.exporter.clear()
    conn = connect(driver, postgres_dsn)
    assert run(conn, f"SELECT score FROM {schema}.scores WHERE id = 2").fetchone() == (610,)
    conn.close()
    assert db_spans(telemetry) == []


@pytest.mark.parametrize("order", ORDERS)
def test_async_psycopg_with_contrib(
    telemetry: Telemetry, postgres_dsn: str, schema: str, order: str
) -> None:
    configure(
        rules=[
            {
                "name": "score",
                "keys": [f"postgresql:*/{schema}.scores/{{id}}"],
                "version": {"column": "version"},
            }
        ]
    )
    contrib, ours = instrument("psycopg", order, telemetry)

    async def main() -> list[Any]:
        conn = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True)
        with agent("scorer"):
            await conn.execute(f"UPDATE {schema}.scores SET version = 3 WHERE id = %s", (1,))
            cursor = await conn.execute(f"SELECT * FROM {schema}.scores WHERE id = %s", (1,))
            rows = await cursor.fetchall()
        await conn.close()
        return rows

    try:
        rows = asyncio.run(main())
    finally:
        contrib.uninstrument()
        ours.uninstrument()
    assert rows == [(1, 600, 3)]
    spans = db_spans(telemetry)
    assert [s.instrumentation_scope.name for s in spans] == [contrib_scope("psycopg")] * 2
    assert (spans[0].attributes or {})[A.WRITE_VERSIONS] == ("n:3",)
    [read] = [s for s in telemetry.spans() if s.name.startswith("agentstate.read")]
    assert (read.attributes or {})[A.READ_VERSIONS] == ("n:3",)
