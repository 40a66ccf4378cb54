"""SPEC §2: our PyMySQL / mysqlclient instrumentations next to contrib's, in either load order.

contrib's span (`opentelemetry.instrumentation.pymysql` / `.mysqlclient`) is the one database
span of a statement and carries both sets of attributes; a SELECT's fetched rows are recorded
on a short `agentstate.read <table>` child span (contrib's span ends before the fetch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from otel_agent_state import StaleReadError, agent, configure, workflow
from otel_agent_state import attributes as A

from .conftest import Telemetry
from .mysql_support import Conn, instrumentor, sql, unique_prefix

ORDERS = ["contrib_first", "ours_first"]
CLIENTS = ["pymysql", "mysqlclient"]


def contrib(client: str) -> Any:
    if client == "pymysql":
        from opentelemetry.instrumentation.pymysql import PyMySQLInstrumentor

        return PyMySQLInstrumentor()
    from opentelemetry.instrumentation.mysqlclient import MySQLClientInstrumentor

    return MySQLClientInstrumentor()


@pytest.fixture
def table(mysql_dsn: str) -> Iterator[str]:
    name = f"{unique_prefix()}scores"
    sql(
        mysql_dsn,
        f"CREATE TABLE {name} (id int PRIMARY KEY, score int, version int)",
        f"INSERT INTO {name} VALUES (1, 600, 1), (2, 610, 1)",
    )
    yield name
    sql(mysql_dsn, f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(params=[(c, o) for c in CLIENTS for o in ORDERS], ids=lambda p: "-".join(p))
def setup(
    request: pytest.FixtureRequest, telemetry: Telemetry, table: str
) -> Iterator[tuple[str, str]]:
    client, order = request.param
    rule = {"name": "score", "keys": [f"mysql:*/{table}/{{id}}"], "version": {"column": "version"}}
    configure(rules=[rule])
    theirs, ours = contrib(client), instrumentor(client)
    first, second = (theirs, ours) if order == "contrib_first" else (ours, theirs)
    for inst in (first, second):
        inst.instrument(tracer_provider=telemetry.provider, skip_dep_check=True)
    yield client, table
    for inst in (second, first):
        inst.uninstrument()


def db_spans(telemetry: Telemetry) -> list[Any]:
    return [
        s
        for s in telemetry.spans()
        if "db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {})
    ]


def test_one_database_span_with_both_sets_of_attributes(
    telemetry: Telemetry, setup: tuple[str, str], mysql_dsn: str
) -> None:
    client, table = setup
    with workflow("w"), agent("writer"):
        conn = Conn(client, mysql_dsn)
        conn.execute(f"UPDATE {table} SET score = %s, version = 2 WHERE id = %s", (650, 1))
        rows = conn.all(f"SELECT id, score, version FROM {table} WHERE id = %s", (1,))
        conn.close()
    assert [tuple(r) for r in rows] == [(1, 650, 2)]
    spans = db_spans(telemetry)
    statements = [s for s in spans if s.name not in ("COMMIT", "ROLLBACK")]
    # one span per statement, contrib's, with our attributes on it
    assert len(statements) == 2, [s.name for s in spans]
    assert all(
        s.instrumentation_scope.name.startswith("opentelemetry.instrumentation.")
        for s in statements
    )
    update, select = statements
    assert (update.attributes or {})[A.WRITE_FACTS] == ("score/1",)
    assert (update.attributes or {})[A.WRITE_VERSIONS] == ("n:2",)
    assert (update.attributes or {})["gen_ai.agent.name"] == "writer"
    [read] = [s for s in telemetry.spans() if s.name.startswith("agentstate.read")]
    assert read.parent is not None and read.parent.span_id == select.context.span_id
    assert (read.attributes or {})[A.READ_FACTS] == ("score/1",)
    assert (read.attributes or {})[A.READ_VERSIONS] == ("n:2",)
    assert "db.system.name" not in (read.attributes or {})  # not a second database span


def test_raise_mode_through_contrib_spans(
    telemetry: Telemetry, setup: tuple[str, str], mysql_dsn: str
) -> None:
    client, table = setup
    configure(
        on_anomaly="raise",
        rules=[
            {"name": "score", "keys": [f"mysql:*/{table}/{{id}}"], "version": {"column": "version"}}
        ],
    )
    with workflow("w"):
        with agent("writer"):
            conn = Conn(client, mysql_dsn)
            conn.execute(f"UPDATE {table} SET version = 2 WHERE id = 2")
            conn.close()
        sql(mysql_dsn, f"UPDATE {table} SET version = 1 WHERE id = 2")  # a restore we miss
        with agent("reader"):
            conn = Conn(client, mysql_dsn)
            cursor = conn.execute(f"SELECT * FROM {table} WHERE id = %s", (2,))
            with pytest.raises(StaleReadError):
                cursor.fetchone()
            conn.close()


def test_uninstrument_leaves_working_clients(
    telemetry: Telemetry, setup: tuple[str, str], mysql_dsn: str
) -> None:
    client, table = setup
    conn = Conn(client, mysql_dsn)
    assert [tuple(r) for r in conn.all(f"SELECT id FROM {table} ORDER BY id")] == [(1,), (2,)]
    conn.close()
    assert any(A.READ_FACTS in (s.attributes or {}) for s in telemetry.spans())
