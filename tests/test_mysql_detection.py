"""MySQL instrumentations (PyMySQL, mysqlclient, aiomysql) + processor on the real MariaDB
server: SPEC §5 findings from plain driver calls, each with a correct twin that gives none."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context

from otel_agent_state import StaleReadError, agent, configure, decision, runtime, workflow
from otel_agent_state import attributes as A

from .conftest import Telemetry
from .mysql_support import CLIENTS, Conn, instrumentor, sql, unique_prefix


class Tables:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        p = unique_prefix()
        self.scores, self.copy, self.replica_table = f"{p}scores", f"{p}copy", f"{p}replica"
        self.accounts = f"{p}accounts"

    def rules(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "credit_score",
                "keys": [
                    f"mysql:*/{self.scores}/{{id}}",
                    f"mysql:*/{self.copy}/{{id}}",  # read through a replica-tagged connection
                    {"pattern": f"mysql:*/{self.replica_table}/{{id}}", "tier": "replica"},
                ],
                "version": {"column": "version"},
            },
            {"name": "account", "keys": [f"mysql:*/{self.accounts}/{{id}}"]},  # digests
        ]


@pytest.fixture
def tables(mysql_dsn: str) -> Iterator[Tables]:
    t = Tables(mysql_dsn)
    statements = []
    for name in (t.scores, t.copy, t.replica_table):
        statements += [
            f"CREATE TABLE {name} (id int PRIMARY KEY, score int, version int) ENGINE=InnoDB",
            f"INSERT INTO {name} VALUES (42, 680, 1)",
        ]
    statements += [
        f"CREATE TABLE {t.accounts} (id varchar(8) PRIMARY KEY, balance int) ENGINE=InnoDB",
        f"INSERT INTO {t.accounts} VALUES ('A', 1000), ('B', 0)",
    ]
    sql(mysql_dsn, *statements)
    yield t
    sql(mysql_dsn, f"DROP TABLE IF EXISTS {t.scores}, {t.copy}, {t.replica_table}, {t.accounts}")


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, telemetry: Telemetry, tables: Tables) -> Iterator[str]:
    configure(rules=tables.rules())
    inst = instrumentor(request.param)
    inst.instrument(tracer_provider=telemetry.provider)
    module = {"mysqlclient": "MySQLdb"}.get(request.param, request.param)
    assert runtime.driver_instrumented(module)
    yield str(request.param)
    inst.uninstrument()
    assert not runtime.driver_instrumented(module)


def spans_with(telemetry: Telemetry, key: str) -> list[Any]:
    return [s for s in telemetry.spans() if key in (s.attributes or {})]


def _rescore(client: str, t: Tables) -> None:
    with agent("credit-scorer"):
        conn = Conn(client, t.dsn)
        conn.execute(f"UPDATE {t.scores} SET score = 750, version = 2 WHERE id = %s", (42,))
        conn.close()


def _assess(conn: Conn, table: str) -> int:
    with agent("risk-assessor"):
        score, _ = conn.one(f"SELECT score, version FROM {table} WHERE id = %s", (42,))
        with decision("approve transaction") as chosen:
            chosen.outcome("approve" if score < 700 else "flag")
        return int(score)


# --------------------------------------------------------------------------- credit score


@pytest.mark.parametrize("fresh", [False, True], ids=["old-snapshot", "fresh-snapshot"])
def test_credit_score_read_from_a_snapshot_older_than_the_rescore(
    telemetry: Telemetry, client: str, tables: Tables, fresh: bool
) -> None:
    """InnoDB's REPEATABLE READ: a transaction whose snapshot predates the committed rescore
    reads the old score (stale); one that starts after it reads the new one."""
    t = tables
    with workflow("credit"):
        assessor = Conn(client, t.dsn, autocommit=False)
        if not fresh:  # the snapshot is taken by the transaction's first read
            assert assessor.one(f"SELECT balance FROM {t.accounts} WHERE id = 'A'") is not None
        _rescore(client, t)
        if fresh:
            assessor.commit()  # a new transaction: a new snapshot
        score = _assess(assessor, t.scores)
        assessor.commit()
        assessor.close()
    assert score == (750 if fresh else 680)
    if fresh:
        assert telemetry.anomalies() == []
    else:
        [stale] = telemetry.anomalies("stale_read")
        attrs = stale.attributes or {}
        assert attrs[A.ANOMALY_FACT] == "credit_score/42"
        assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
        assert attrs[A.ANOMALY_SEVERITY] == "error"  # the decision depended on it


# --------------------------------------------------------------------------- replica lag


@pytest.mark.parametrize("caught_up", [False, True])
def test_replica_lag_is_a_stale_read_and_a_caught_up_replica_is_not(
    telemetry: Telemetry, client: str, tables: Tables, caught_up: bool
) -> None:
    t = tables
    with workflow("credit"):
        _rescore(client, t)
        if caught_up:  # replication applied the change before the read (untraced)
            sql(t.dsn, f"UPDATE {t.copy} SET score = 750, version = 2")
        replica = Conn(client, t.dsn, tier="replica")
        score = _assess(replica, t.copy)
        replica.close()
    assert score == (750 if caught_up else 680)
    [read] = [
        s for s in spans_with(telemetry, A.READ_FACTS) if (s.attributes or {})[A.TIER] == "replica"
    ]
    assert (read.attributes or {})[A.READ_FACTS] == ("credit_score/42",)
    if caught_up:
        assert telemetry.anomalies() == []
    else:
        [stale] = telemetry.anomalies("stale_read")
        attrs = stale.attributes or {}
        assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")


@pytest.mark.parametrize("caught_up", [False, True])
def test_replica_table_lag_and_caught_up_twin(
    telemetry: Telemetry, client: str, tables: Tables, caught_up: bool
) -> None:
    """A table the rules mark as the replica tier, read through an ordinary connection."""
    t = tables
    with workflow("credit"):
        _rescore(client, t)
        if caught_up:
            sql(t.dsn, f"UPDATE {t.replica_table} SET score = 750, version = 2")
        conn = Conn(client, t.dsn)
        score = _assess(conn, t.replica_table)
        conn.close()
    assert score == (750 if caught_up else 680)
    if caught_up:
        assert telemetry.anomalies() == []
    else:
        [stale] = telemetry.anomalies("stale_read")
        assert (stale.attributes or {})[A.ANOMALY_FACT] == "credit_score/42"


def test_raise_mode_stops_a_stale_replica_read(
    telemetry: Telemetry, client: str, tables: Tables
) -> None:
    configure(on_anomaly="raise")
    t = tables
    with workflow("credit"):
        _rescore(client, t)
        with agent("risk-assessor"):
            replica = Conn(client, t.dsn, tier="replica")
            cursor = replica.execute(f"SELECT * FROM {t.copy} WHERE id = %s", (42,))
            with pytest.raises(StaleReadError) as caught:
                cursor.fetchone()
            # the connection stays usable and a fresh read passes
            assert replica.one(f"SELECT version FROM {t.scores} WHERE id = 42") == (2,)
            replica.close()
    assert caught.value.anomaly.fact == "credit_score/42"


# --------------------------------------------------------------------------- transfers


def _transfer(client: str, t: Tables, *, in_txn: bool, fail: bool) -> None:
    conn = Conn(client, t.dsn, autocommit=not in_txn)
    update = f"UPDATE {t.accounts} SET balance = balance {{}} 100 WHERE id = %s"
    try:
        with agent("payments"):
            try:
                conn.execute(update.format("-"), ("A",))
                if fail:
                    raise RuntimeError("the payment service went away")
                conn.execute(update.format("+"), ("B",))
            except BaseException:
                if in_txn:
                    conn.rollback()
                raise
            if in_txn:
                conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("in_txn", "fail", "orphan"),
    [(False, True, True), (True, True, False), (False, False, False), (True, False, False)],
    ids=["autocommit-fails", "txn-rolls-back", "autocommit-ok", "txn-ok"],
)
def test_transfer_failing_between_its_updates(
    telemetry: Telemetry, client: str, tables: Tables, in_txn: bool, fail: bool, orphan: bool
) -> None:
    with workflow("transfer"):
        if fail:
            with pytest.raises(RuntimeError):
                _transfer(client, tables, in_txn=in_txn, fail=fail)
        else:
            _transfer(client, tables, in_txn=in_txn, fail=fail)
    balances = sql(tables.dsn, f"SELECT id, balance FROM {tables.accounts} ORDER BY id")
    expected = (
        [("A", 900), ("B", 0)]
        if orphan
        else ([("A", 1000), ("B", 0)] if fail else [("A", 900), ("B", 100)])
    )
    assert [tuple(r) for r in balances] == expected
    if orphan:
        [anomaly] = telemetry.anomalies("orphaned_mutation")
        assert (anomaly.attributes or {})[A.ANOMALY_FACT] == "account/A"
    else:
        assert telemetry.anomalies() == []
    writes = spans_with(telemetry, A.WRITE_FACTS)
    assert writes
    if in_txn:
        [end] = [
            s for s in spans_with(telemetry, A.TXN_OUTCOME) if s.name in ("COMMIT", "ROLLBACK")
        ]
        assert (end.attributes or {})[A.TXN_OUTCOME] == ("rollback" if fail else "commit")
        assert all((w.attributes or {})[A.COMMITTED] is False for w in writes)
        assert {(w.attributes or {})[A.TXN_ID] for w in writes} == {
            (end.attributes or {})[A.TXN_ID]
        }
    else:
        assert all((w.attributes or {})[A.COMMITTED] is True for w in writes)


def test_closing_with_an_open_transaction_rolls_it_back(
    telemetry: Telemetry, client: str, tables: Tables
) -> None:
    """The server rolls back what a closed session left open: no orphan, a rollback span."""
    with workflow("transfer"), agent("payments"):
        conn = Conn(client, tables.dsn, autocommit=False)
        conn.execute(f"UPDATE {tables.accounts} SET balance = 0 WHERE id = %s", ("A",))
        conn.close()
    assert sql(tables.dsn, f"SELECT balance FROM {tables.accounts} WHERE id = 'A'") == [(1000,)]
    [end] = spans_with(telemetry, A.TXN_OUTCOME)
    assert (end.attributes or {})[A.TXN_OUTCOME] == "rollback"
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- lost update


def _withdraw(
    client: str, t: Tables, name: str, amount: int, barrier: threading.Barrier | None
) -> None:
    with agent(name):
        conn = Conn(client, t.dsn)
        (balance,) = conn.one(f"SELECT balance FROM {t.accounts} WHERE id = %s", ("A",))
        if barrier is not None:
            barrier.wait()
        conn.execute(f"UPDATE {t.accounts} SET balance = %s WHERE id = %s", (balance - amount, "A"))
        if barrier is not None:
            barrier.wait()
        conn.close()


def test_lost_update_between_agents_in_threads(
    telemetry: Telemetry, client: str, tables: Tables
) -> None:
    barrier = threading.Barrier(2, timeout=20)
    with workflow("payouts"):
        parent = context.get_current()

        def work(name: str, amount: int) -> None:
            token = context.attach(parent)
            try:
                _withdraw(client, tables, name, amount, barrier)
            finally:
                context.detach(token)

        threads = [
            threading.Thread(target=work, args=("alice", 100)),
            threading.Thread(target=work, args=("bob", 300)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    [lost] = telemetry.anomalies("lost_update")
    attrs = lost.attributes or {}
    assert attrs[A.ANOMALY_FACT] == "account/A"
    assert sorted(attrs[A.ANOMALY_AGENTS]) == ["alice", "bob"]


def test_sequential_read_modify_write_is_not_a_lost_update(
    telemetry: Telemetry, client: str, tables: Tables
) -> None:
    with workflow("payouts"):
        _withdraw(client, tables, "alice", 100, None)
        _withdraw(client, tables, "bob", 300, None)
    assert telemetry.anomalies() == []
    assert sql(tables.dsn, f"SELECT balance FROM {tables.accounts} WHERE id = 'A'") == [(600,)]


def test_relative_updates_are_atomic_not_lost_updates(
    telemetry: Telemetry, client: str, tables: Tables
) -> None:
    """`SET balance = balance - n`: the server reads and writes the row at once."""
    with workflow("payouts"):
        for name, amount in (("alice", 100), ("bob", 300)):
            with agent(name):
                conn = Conn(client, tables.dsn)
                conn.one(f"SELECT balance FROM {tables.accounts} WHERE id = %s", ("A",))
                conn.execute(
                    f"UPDATE {tables.accounts} SET balance = balance - %s WHERE id = %s",
                    (amount, "A"),
                )
                conn.close()
    [write, *_] = [s for s in spans_with(telemetry, A.WRITE_FACTS)]
    assert (write.attributes or {})[A.OP] == "read_write"
    assert telemetry.anomalies() == []
