"""MERGE is a write (issue 15): a table-level fact with the reason, never a span the processor
drops for want of `agentstate.op`."""

from __future__ import annotations

import uuid

import psycopg

from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor

from .conftest import Telemetry


def test_merge_is_a_table_level_write(telemetry: Telemetry, postgres_dsn: str) -> None:
    schema = f"agentstate_mg_{uuid.uuid4().hex[:10]}"
    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            try:
                conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v int)")
                conn.execute(f"INSERT INTO {schema}.t VALUES (1, 1)")
                conn.execute(
                    f"MERGE INTO {schema}.t AS t USING (SELECT 1 AS id, 5 AS v) AS src "
                    "ON t.id = src.id WHEN MATCHED THEN UPDATE SET v = src.v "
                    "WHEN NOT MATCHED THEN INSERT VALUES (src.id, src.v)"
                )
                assert conn.execute(f"SELECT v FROM {schema}.t").fetchall() == [(5,)]
            finally:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        instrumentor.uninstrument()
    [merge] = [
        dict(s.attributes or {})
        for s in telemetry.spans()
        if dict(s.attributes or {}).get(A.DB_OPERATION_NAME) == "MERGE"
    ]
    assert merge[A.OP] == "write"
    assert merge[A.WRITE_FACTS] == (f"postgresql:test/{schema}.t",)
    assert merge[A.UNRESOLVED] == "merge"
