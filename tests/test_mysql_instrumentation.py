"""The MySQL instrumentations are transparent: what the driver returns is unchanged, caller
iterables are streamed, our catalog queries never surface; savepoints, errors, suppression."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, configure, workflow
from otel_agent_state import attributes as A

from .conftest import Telemetry
from .mysql_support import CLIENTS, Conn, instrumentor, module, sql, unique_prefix


@pytest.fixture
def table(mysql_dsn: str) -> Iterator[str]:
    name = f"{unique_prefix()}items"
    sql(
        mysql_dsn,
        f"CREATE TABLE {name} (id int AUTO_INCREMENT PRIMARY KEY, label varchar(20), n int)",
        f"INSERT INTO {name} (label, n) VALUES ('a', 1), ('b', 2), ('c', 3)",
    )
    yield name
    sql(mysql_dsn, f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, telemetry: Telemetry, table: str) -> Iterator[str]:
    configure(rules=[])  # default fact keys: mysql:<db>/<table>/<pk>
    inst = instrumentor(request.param)
    inst.instrument(tracer_provider=telemetry.provider)
    yield str(request.param)
    inst.uninstrument()


def _session(client: str, dsn: str, table: str) -> list[Any]:
    """What the application sees over a small session: every return value that matters."""
    seen: list[Any] = []
    conn = Conn(client, dsn, autocommit=False)
    cur = conn.cursor()
    seen.append(cur.execute(f"INSERT INTO {table} (label, n) VALUES (%s, %s)", ("d", 4)))
    seen += [cur.rowcount, cur.lastrowid]
    seen += [conn.raw.insert_id(), conn.raw.affected_rows()]  # the connection's last result
    seen.append(cur.execute(f"SELECT id, label, n FROM {table} WHERE id = %s", (2,)))
    seen += [cur.description, cur.rowcount, cur.fetchone(), cur.fetchone()]
    seen.append(cur.execute(f"UPDATE {table} SET n = n + 1 WHERE label IN (%s, %s)", ("a", "b")))
    seen += [cur.rowcount, conn.raw.affected_rows()]
    if client == "mysqlclient":  # libmysqlclient's own account of the last statement
        seen += [conn.raw.info(), conn.raw.warning_count()]
    seen.append(cur.execute(f"SELECT label FROM {table} ORDER BY id"))
    seen += [cur.fetchmany(2), cur.fetchall(), cur.fetchall()]
    dict_cur = conn.cursor("dict")
    dict_cur.execute(f"SELECT * FROM {table} WHERE id = %s", (1,))
    seen.append(dict_cur.fetchall())
    conn.rollback()
    conn.close()
    return seen


def test_the_driver_returns_the_same_with_and_without_us(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    with workflow("w"), agent("a"):
        traced = _session(client, mysql_dsn, table)
    with suppress_instrumentation():
        plain = _session(client, mysql_dsn, table)
    # the AUTO_INCREMENT id moves on: compare everything else
    assert traced[2] == traced[3] and plain[2] == plain[3]
    assert [v for i, v in enumerate(traced) if i not in (2, 3)] == [
        v for i, v in enumerate(plain) if i not in (2, 3)
    ]
    spans = telemetry.spans()
    # our own catalog / read-back queries never become spans of the application's
    names = [s.name for s in spans if "db.system.name" in (s.attributes or {})]
    assert sorted(names) == sorted(
        [f"INSERT {table}", f"UPDATE {table}", "ROLLBACK"] + [f"SELECT {table}"] * 3
    )
    [insert] = [s for s in spans if s.name.startswith("INSERT")]
    assert (insert.attributes or {})[A.WRITE_FACTS] == (f"mysql:test/{table}/{traced[2]}",)
    assert (insert.attributes or {})[A.COMMITTED] is False


def test_executemany_streams_a_generator_and_records_each_row(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    taken: list[int] = []

    def rows() -> Iterator[tuple[int, str, int]]:
        for i in (10, 11, 12):
            taken.append(i)
            yield (i, f"g{i}", i)

    conn = Conn(client, mysql_dsn)
    cur = conn.cursor()
    generator = rows()
    cur.executemany(f"INSERT INTO {table} (id, label, n) VALUES (%s, %s, %s)", generator)
    assert taken == [10, 11, 12]  # the driver took them, one pass
    assert list(generator) == []
    assert cur.rowcount == 3
    conn.close()
    [span] = [s for s in telemetry.spans() if A.WRITE_FACTS in (s.attributes or {})]
    assert (span.attributes or {})[A.WRITE_FACTS] == tuple(
        f"mysql:test/{table}/{i}" for i in (10, 11, 12)
    )
    assert len([s for s in telemetry.spans() if s.name.startswith("INSERT")]) == 1


def test_unbuffered_cursor_streams_rows_on_a_table_seen_first(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    """The first statement on a table through an unbuffered cursor: the catalog lookup runs
    before it (no query of ours can run while its rows stream), rows are recorded as read."""
    conn = Conn(client, mysql_dsn)
    cur = conn.execute(f"SELECT id, label FROM {table} ORDER BY id", kind="ss")
    first = cur.fetchone()
    rest = list(cur.fetchall())
    cur.close()
    assert [first, *rest] == [(1, "a"), (2, "b"), (3, "c")]
    # the connection is usable at once
    assert conn.one(f"SELECT n FROM {table} WHERE id = %s", (3,)) == (3,)
    conn.close()
    reads = [s for s in telemetry.spans() if A.READ_FACTS in (s.attributes or {})]
    assert (reads[0].attributes or {})[A.READ_FACTS] == tuple(
        f"mysql:test/{table}/{i}" for i in (1, 2, 3)
    )


def test_savepoint_rolled_back_scopes_its_writes(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    conn = Conn(client, mysql_dsn, autocommit=False)
    conn.execute(f"UPDATE {table} SET n = 100 WHERE id = %s", (1,))
    conn.execute("SAVEPOINT before_two")
    conn.execute(f"UPDATE {table} SET n = 200 WHERE id = %s", (2,))
    conn.execute("ROLLBACK TO SAVEPOINT before_two")
    conn.commit()
    conn.close()
    assert sql(mysql_dsn, f"SELECT n FROM {table} WHERE id IN (1, 2) ORDER BY id") == [
        (100,),
        (2,),
    ]
    spans = telemetry.spans()
    one, two = (
        next(
            s
            for s in spans
            if s.name.startswith("UPDATE") and i in str((s.attributes or {}).get(A.WRITE_FACTS))
        )
        for i in (f"/{table}/1'", f"/{table}/2'")
    )
    txn_one, txn_two = ((s.attributes or {})[A.TXN_ID] for s in (one, two))
    assert txn_one != txn_two
    [dropped] = [s for s in spans if s.name == "agentstate.savepoint"]
    assert (dropped.attributes or {})[A.TXN_ID] == txn_two
    assert (dropped.attributes or {})[A.TXN_OUTCOME] == "rollback"
    [commit] = [s for s in spans if s.name == "COMMIT"]
    assert (commit.attributes or {})[A.TXN_ID] == txn_one


def test_client_errors_propagate_unchanged(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    conn = Conn(client, mysql_dsn)
    with pytest.raises(Exception) as caught:
        conn.execute(f"INSERT INTO {table} (id, label, n) VALUES (%s, %s, %s)", (1, "x", 0))
    assert type(caught.value).__name__ == "IntegrityError"
    assert caught.value.args[0] == 1062  # duplicate entry, as the driver raised it
    assert conn.one(f"SELECT label FROM {table} WHERE id = 1") == ("a",)
    conn.close()
    [failed] = [s for s in telemetry.spans() if s.name.startswith("INSERT")]
    assert not failed.status.is_ok


def test_suppressed_instrumentation_records_nothing(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    with suppress_instrumentation():
        conn = Conn(client, mysql_dsn)
        conn.execute(f"UPDATE {table} SET n = 9 WHERE id = %s", (1,))
        assert conn.one(f"SELECT n FROM {table} WHERE id = 1") == (9,)
        conn.close()
    assert telemetry.spans() == []


@pytest.mark.parametrize("name", CLIENTS)
def test_instrument_and_uninstrument_are_symmetric(telemetry: Telemetry, name: str) -> None:
    targets = module(name)._targets()
    before = {(cls, attr): cls.__dict__.get(attr) for cls, attr, _ in targets}
    inst = instrumentor(name)
    inst.instrument(tracer_provider=telemetry.provider)
    for cls, attr, fn in targets:
        chain = [cls.__dict__.get(attr)]
        while hasattr(chain[-1], "__wrapped__") and len(chain) < 8:
            chain.append(chain[-1].__wrapped__)
        assert any(getattr(link, "_self_wrapper", None) is fn for link in chain), (cls, attr)
    inst.uninstrument()
    assert {(cls, attr): cls.__dict__.get(attr) for cls, attr, _ in targets} == before


def test_entry_points_name_each_instrumentor() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert found["agentstate_pymysql"].endswith("pymysql:PyMySQLInstrumentor")
    assert found["agentstate_mysqlclient"].endswith("mysqlclient:MySQLClientInstrumentor")
    assert found["agentstate_aiomysql"].endswith("aiomysql:AioMySQLInstrumentor")


def test_inserts_that_may_touch_other_rows_fall_back_to_a_table_fact(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    """REPLACE fires on any unique key (here `label`): the row it deleted is not the one the
    key names. INSERT IGNORE that skipped a row did not write it. Without such a key, or
    with every row inserted, the rows are named."""
    keyed = f"{table}_u"
    sql(
        mysql_dsn,
        f"CREATE TABLE {keyed} (id int PRIMARY KEY, label varchar(20) UNIQUE, n int)",
        f"INSERT INTO {keyed} VALUES (1, 'a', 1)",
    )
    try:
        conn = Conn(client, mysql_dsn)
        conn.execute(f"REPLACE INTO {keyed} (id, label, n) VALUES (%s, %s, %s)", (9, "a", 5))
        conn.execute(f"REPLACE INTO {table} (id, label, n) VALUES (%s, %s, %s)", (2, "z", 5))
        cur = conn.cursor()
        cur.executemany(
            f"INSERT IGNORE INTO {table} (id, label, n) VALUES (%s, %s, %s)",
            [(1, "x", 0), (50, "y", 0)],
        )
        cur.executemany(
            f"INSERT IGNORE INTO {table} (id, label, n) VALUES (%s, %s, %s)",
            [(51, "x", 0), (52, "y", 0)],
        )
        conn.close()
        assert sql(mysql_dsn, f"SELECT id FROM {keyed}") == [(9,)]  # row 1 is gone
    finally:
        sql(mysql_dsn, f"DROP TABLE IF EXISTS {keyed}")
    writes = [
        s.attributes or {} for s in telemetry.spans() if A.WRITE_FACTS in (s.attributes or {})
    ]
    assert [(w[A.WRITE_FACTS], w.get(A.UNRESOLVED)) for w in writes] == [
        ((f"mysql:test/{keyed}",), "upsert on a table with another unique key"),
        ((f"mysql:test/{table}/2",), None),
        ((f"mysql:test/{table}",), "INSERT IGNORE skipped rows"),
        ((f"mysql:test/{table}/51", f"mysql:test/{table}/52"), None),
    ]


def test_transactions_begun_and_ended_in_sql_and_by_calls(
    telemetry: Telemetry, client: str, mysql_dsn: str, table: str
) -> None:
    """START TRANSACTION ... COMMIT in SQL, begin() ended by DDL's implicit commit, and a
    write after `SET autocommit = 0` ended by rollback(): each write's scope and its end."""
    conn = Conn(client, mysql_dsn)  # autocommit on
    conn.execute("START TRANSACTION")
    conn.execute(f"UPDATE {table} SET n = 10 WHERE id = %s", (1,))
    conn.execute("COMMIT")
    conn.begin()
    conn.execute(f"UPDATE {table} SET n = 20 WHERE id = %s", (2,))
    conn.execute(f"CREATE TABLE {table}_ddl (id int PRIMARY KEY)")  # commits implicitly
    conn.execute(f"DROP TABLE {table}_ddl")
    conn.execute("SET autocommit = 0")
    conn.execute(f"UPDATE {table} SET n = 30 WHERE id = %s", (3,))
    conn.rollback()
    conn.execute("SET autocommit = 1")
    conn.execute(f"UPDATE {table} SET n = 40 WHERE id = %s", (3,))
    conn.close()
    assert sql(mysql_dsn, f"SELECT n FROM {table} ORDER BY id") == [(10,), (20,), (40,)]
    spans = telemetry.spans()
    writes = [s.attributes or {} for s in spans if s.name.startswith("UPDATE")]
    assert [w[A.COMMITTED] for w in writes] == [False, False, False, True]
    ends = {
        (s.attributes or {})[A.TXN_ID]: (s.name, (s.attributes or {})[A.TXN_OUTCOME])
        for s in spans
        if A.TXN_OUTCOME in (s.attributes or {})
    }
    assert [ends[w[A.TXN_ID]] for w in writes[:3]] == [
        ("COMMIT", "commit"),
        (f"DDL {table}_ddl", "commit"),
        ("ROLLBACK", "rollback"),
    ]
