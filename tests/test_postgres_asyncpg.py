"""asyncpg instrumentation on the real server: SPEC §5 cases with their correct twins, cursors,
client errors, and coexistence with contrib's opentelemetry-instrumentation-asyncpg."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor as ContribAsyncpg

from otel_agent_state import StaleReadError, agent, configure, runtime, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import asyncpg as inst

from .conftest import Telemetry

ORDERS = ["contrib_first", "ours_first"]


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"agentstate_pg_{uuid.uuid4().hex[:10]}"

    async def setup() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        await conn.execute(
            f"""
            CREATE SCHEMA {name};
            CREATE TABLE {name}.accounts (id text PRIMARY KEY, balance int);
            INSERT INTO {name}.accounts VALUES ('A', 1000), ('B', 0);
            CREATE TABLE {name}.scores (id int PRIMARY KEY, score int, version int);
            CREATE TABLE {name}.scores_r (id int PRIMARY KEY, score int, version int);
            INSERT INTO {name}.scores VALUES (1, 600, 1), (2, 610, 1);
            INSERT INTO {name}.scores_r VALUES (1, 600, 1), (2, 610, 1);
            """
        )
        await conn.close()

    async def teardown() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


def rules(schema: str) -> list[dict[str, Any]]:
    return [
        {"name": "account", "keys": [f"postgresql:*/{schema}.accounts/{{id}}"]},
        {
            "name": "score",
            "keys": [
                f"postgresql:*/{schema}.scores/{{id}}",
                f"postgresql:*/{schema}.scores_r/{{id}}",
            ],
            "version": {"column": "version"},
        },
    ]


@pytest.fixture
def ours(telemetry: Telemetry, schema: str) -> Iterator[inst.AsyncpgInstrumentor]:
    configure(rules=rules(schema))
    instrumentor = inst.AsyncpgInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert runtime.driver_instrumented("asyncpg")
    yield instrumentor
    instrumentor.uninstrument()
    assert not runtime.driver_instrumented("asyncpg")


async def withdraw(dsn: str, schema: str, name: str, amount: int, gate: Any) -> None:
    with agent(name):
        conn = await asyncpg.connect(dsn)
        balance = await conn.fetchval(f"SELECT balance FROM {schema}.accounts WHERE id = $1", "A")
        if gate is not None:
            await gate.wait()
        await conn.execute(
            f"UPDATE {schema}.accounts SET balance = $1 WHERE id = $2", balance - amount, "A"
        )
        await conn.close()


@pytest.mark.parametrize("concurrent", [True, False])
def test_agents_in_tasks_lost_update_and_its_sequential_twin(
    telemetry: Telemetry, postgres_dsn: str, schema: str, ours: Any, concurrent: bool
) -> None:
    async def main() -> None:
        with workflow("payouts"):
            if concurrent:
                gate = asyncio.Barrier(2)
                await asyncio.gather(
                    withdraw(postgres_dsn, schema, "alice", 100, gate),
                    withdraw(postgres_dsn, schema, "bob", 300, gate),
                )
            else:
                await withdraw(postgres_dsn, schema, "alice", 100, None)
                await withdraw(postgres_dsn, schema, "bob", 300, None)

    asyncio.run(main())
    if concurrent:
        [lost] = telemetry.anomalies("lost_update")
        attrs = lost.attributes or {}
        assert attrs[A.ANOMALY_FACT] == "account/A"
        assert sorted(attrs[A.ANOMALY_AGENTS]) == ["alice", "bob"]
    else:
        assert telemetry.anomalies() == []


@pytest.mark.parametrize(
    ("in_txn", "fail", "orphan"),
    [(False, True, True), (True, True, False), (True, False, False)],
    ids=["autocommit-fails", "txn-rolls-back", "txn-ok"],
)
def test_transfer_failing_between_its_updates(
    telemetry: Telemetry,
    postgres_dsn: str,
    schema: str,
    ours: Any,
    in_txn: bool,
    fail: bool,
    orphan: bool,
) -> None:
    async def steps(conn: Any) -> None:
        await conn.execute(
            f"UPDATE {schema}.accounts SET balance = balance - 100 WHERE id = $1", "A"
        )
        if fail:
            raise RuntimeError("the payment service went away")
        await conn.execute(
            f"UPDATE {schema}.accounts SET balance = balance + 100 WHERE id = $1", "B"
        )

    async def main() -> list[Any]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            with workflow("transfer"), agent("payments"):
                if in_txn:
                    async with conn.transaction():
                        await steps(conn)
                else:
                    await steps(conn)
        except RuntimeError:
            pass
        rows = await conn.fetch(f"SELECT id, balance FROM {schema}.accounts ORDER BY id")
        await conn.close()
        return [tuple(r.values()) for r in rows]

    balances = asyncio.run(main())
    if orphan:
        assert balances == [("A", 900), ("B", 0)]
        [anomaly] = telemetry.anomalies("orphaned_mutation")
        assert (anomaly.attributes or {})[A.ANOMALY_FACT] == "account/A"
    else:
        assert balances == ([("A", 1000), ("B", 0)] if fail else [("A", 900), ("B", 100)])
        assert telemetry.anomalies() == []


@pytest.mark.parametrize("caught_up", [False, True])
def test_replica_lag_raises_in_raise_mode_and_caught_up_replica_passes(
    telemetry: Telemetry, postgres_dsn: str, schema: str, ours: Any, caught_up: bool
) -> None:
    configure(rules=rules(schema), on_anomaly="raise")

    async def main() -> Any:
        with workflow("credit"):
            with agent("scorer"):
                primary = await asyncpg.connect(postgres_dsn)
                await primary.execute(f"UPDATE {schema}.scores SET version = 2 WHERE id = $1", 2)
                if caught_up:
                    await primary.execute(f"UPDATE {schema}.scores_r SET version = 2 WHERE id = 2")
                await primary.close()
            with agent("assessor"):
                replica = inst.instrument_connection(
                    await asyncpg.connect(postgres_dsn), tier="replica"
                )
                try:
                    return await replica.fetchrow(
                        f"SELECT * FROM {schema}.scores_r WHERE id = $1", 2
                    )
                finally:
                    await replica.close()

    if caught_up:
        row = asyncio.run(main())
        assert row["version"] == 2
        assert telemetry.anomalies() == []
    else:
        with pytest.raises(StaleReadError) as caught:
            asyncio.run(main())
        assert (caught.value.anomaly.observed_version, caught.value.anomaly.expected_version) == (
            "n:1",
            "n:2",
        )
    [read] = [s for s in telemetry.spans() if (s.attributes or {}).get(A.TIER) == "replica"]
    assert (read.attributes or {})[A.READ_FACTS] == ("score/2",)


def test_cursor_reads_record_the_rows_fetched(
    telemetry: Telemetry, postgres_dsn: str, schema: str, ours: Any
) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(postgres_dsn)
        async with conn.transaction():
            streamed = [
                r["id"] async for r in conn.cursor(f"SELECT * FROM {schema}.scores ORDER BY id")
            ]
            cursor = await conn.cursor(
                f"SELECT * FROM {schema}.scores WHERE id > $1 ORDER BY id", 0
            )
            first = await cursor.fetch(1)
        await conn.close()
        return streamed, [r["id"] for r in first]

    streamed, first = asyncio.run(main())
    assert (streamed, first) == ([1, 2], [1])
    reads = [
        (s.attributes or {})[A.READ_FACTS]
        for s in telemetry.spans()
        if A.READ_FACTS in (s.attributes or {})
    ]
    assert reads == [("score/1", "score/2"), ("score/1",)]


def test_client_errors_propagate_unchanged(
    telemetry: Telemetry, postgres_dsn: str, schema: str, ours: Any
) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await conn.execute("SELEC 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(f"INSERT INTO {schema}.accounts VALUES ($1, $2)", "A", 1)
        async with conn.transaction():
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"UPDATE {schema}.accounts SET balance = 5 WHERE id = 'B'")
                    await conn.execute(f"INSERT INTO {schema}.accounts VALUES ($1, $2)", "A", 1)
        assert await conn.fetchval(f"SELECT balance FROM {schema}.accounts WHERE id = 'B'") == 0
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        killer = await asyncpg.connect(postgres_dsn)
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await killer.close()
        with pytest.raises(
            (
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # asyncpg itself races on a killed backend
                ConnectionError,
            )
        ):
            await conn.fetch("SELECT 1")
        await conn.close()

    asyncio.run(main())
    assert telemetry.anomalies() == []


@pytest.mark.parametrize("order", ORDERS)
def test_coexistence_with_contrib(
    telemetry: Telemetry, postgres_dsn: str, schema: str, order: str
) -> None:
    configure(rules=rules(schema))
    contrib, ours = ContribAsyncpg(), inst.AsyncpgInstrumentor()
    for one in (contrib, ours) if order == "contrib_first" else (ours, contrib):
        one.instrument(tracer_provider=telemetry.provider, skip_dep_check=True)

    async def main(expect: int) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        with agent("scorer"):
            await conn.execute(f"UPDATE {schema}.scores SET version = $1 WHERE id = 1", expect)
            row = await conn.fetchrow(f"SELECT * FROM {schema}.scores WHERE id = $1", 1)
        assert row["version"] == expect
        await conn.close()

    try:
        asyncio.run(main(3))
        db = [
            s
            for s in telemetry.spans()
            if "db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {})
        ]
        assert [s.instrumentation_scope.name for s in db] == [
            "opentelemetry.instrumentation.asyncpg"
        ] * 2
        update, select = db
        assert (update.attributes or {})[A.WRITE_VERSIONS] == ("n:3",)
        assert (update.attributes or {})["db.system"] == "postgresql"
        [read] = [s for s in telemetry.spans() if s.name.startswith("agentstate.read")]
        assert read.parent is not None and read.parent.span_id == select.context.span_id
        assert (read.attributes or {})[A.READ_VERSIONS] == ("n:3",)
        # uninstrument contrib first: ours keeps working alone
        contrib.uninstrument()
        telemetry.exporter.clear()
        asyncio.run(main(4))
        names = {
            s.instrumentation_scope.name
            for s in telemetry.spans()
            if s.name != "invoke_agent scorer"
        }
        assert names == {"otel_agent_state.instrumentation.asyncpg"}
    finally:
        ours.uninstrument()
        contrib.uninstrument()
    telemetry.exporter.clear()
    asyncio.run(main(5))
    assert [s.name for s in telemetry.spans()] == ["invoke_agent scorer"]
