"""sqlite3 instrumentation + processor on real SQLite files: findings from plain sqlite3
calls, raise mode, and the correct twins."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_agent_state import StaleReadError, agent, configure, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry

RULES = [
    {
        "name": "credit_score",
        "keys": [
            "sqlite:*/credit_scores/{id}",
            {"pattern": "sqlite:*/score_cache/{id}", "tier": "cache"},
        ],
        "version": {"column": "version"},
    },
    {"name": "account", "keys": ["sqlite:*/accounts/{id}"]},  # digest versions
]


@pytest.fixture
def db(telemetry: Telemetry, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.db"
    setup = sqlite3.connect(path)
    setup.executescript(
        """
        CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
        CREATE TABLE score_cache (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
        CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER);
        INSERT INTO credit_scores VALUES (42, 680, 1);
        INSERT INTO score_cache VALUES (42, 680, 1);
        INSERT INTO accounts VALUES ('A', 1000), ('B', 0);
        """
    )
    setup.commit()
    setup.close()
    configure(rules=RULES)
    instrumentor = SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield path
    instrumentor.uninstrument()


def _rescore(path: Path, invalidate: bool) -> None:
    with agent("credit-scorer"):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        if invalidate:
            conn.execute("DELETE FROM score_cache WHERE id = 42")
        conn.close()


def test_raise_mode_stops_the_stale_cache_read_before_the_agent_sees_it(
    telemetry: Telemetry, db: Path
) -> None:
    configure(on_anomaly="raise")
    with workflow("credit"):
        _rescore(db, invalidate=False)
        with agent("risk-assessor"):
            conn = sqlite3.connect(db)
            cursor = conn.execute("SELECT score, version FROM score_cache WHERE id = 42")
            with pytest.raises(StaleReadError) as caught:
                cursor.fetchone()
            fresh = conn.execute("SELECT score FROM credit_scores WHERE id = 42").fetchone()
            conn.close()
    assert fresh == (750,)
    anomaly = caught.value.anomaly
    assert (anomaly.fact, anomaly.observed_version, anomaly.expected_version) == (
        "credit_score/42",
        "n:1",
        "n:2",
    )
    [span] = telemetry.anomalies("stale_read")
    assert (span.attributes or {})[A.ANOMALY_AGENTS] == ("risk-assessor", "credit-scorer")


def test_raise_mode_lets_fresh_reads_through(telemetry: Telemetry, db: Path) -> None:
    configure(on_anomaly="raise")
    with workflow("credit"):
        _rescore(db, invalidate=True)
        with agent("risk-assessor"):
            conn = sqlite3.connect(db)
            assert conn.execute("SELECT score FROM score_cache WHERE id = 42").fetchone() is None
            assert conn.execute("SELECT * FROM credit_scores WHERE id = 42").fetchone() == (
                42,
                750,
                2,
            )
            conn.close()
    assert telemetry.anomalies() == []


def _transfer_share(path: Path, name: str, barrier: threading.Barrier, amount: int) -> None:
    with agent(name):
        conn = sqlite3.connect(path, isolation_level=None)
        (balance,) = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
        barrier.wait()  # both read before either writes: the classic lost update
        if name == "bob":
            barrier.wait()
        conn.execute("UPDATE accounts SET balance = ? WHERE id = 'A'", (balance - amount,))
        if name == "alice":
            barrier.wait()
        conn.close()


def test_lost_update_between_two_agents_in_threads(telemetry: Telemetry, db: Path) -> None:
    from opentelemetry import context

    barrier = threading.Barrier(2, timeout=10)
    with workflow("payouts"):
        parent = context.get_current()

        def run(name: str, amount: int) -> None:
            token = context.attach(parent)
            try:
                _transfer_share(db, name, barrier, amount)
            finally:
                context.detach(token)

        threads = [
            threading.Thread(target=run, args=("alice", 100)),
            threading.Thread(target=run, args=("bob", 300)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone() == (700,)
    conn.close()
    [lost] = telemetry.anomalies("lost_update")
    attrs = lost.attributes or {}
    assert attrs[A.ANOMALY_FACT] == "account/A"
    assert attrs[A.ANOMALY_AGENTS] == ("alice", "bob")
    assert str(attrs[A.ANOMALY_OBSERVED]).startswith("h:")  # digest versions
    assert attrs[A.ANOMALY_OBSERVED] != attrs[A.ANOMALY_EXPECTED]
    assert len(lost.links) == 3


def test_sequential_read_modify_write_is_not_a_lost_update(telemetry: Telemetry, db: Path) -> None:
    with workflow("payouts"):
        for name, amount in (("alice", 100), ("bob", 300)):
            with agent(name):
                conn = sqlite3.connect(db, isolation_level=None)
                (balance,) = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
                conn.execute("UPDATE accounts SET balance = ? WHERE id = 'A'", (balance - amount,))
                conn.close()
    assert telemetry.anomalies() == []


def test_decision_inputs_come_from_instrumented_reads(telemetry: Telemetry, db: Path) -> None:
    with agent("risk-assessor"), decision("approve") as chosen:
        conn = sqlite3.connect(db)
        conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
        conn.close()
        chosen.outcome("approved")
    span = telemetry.span_named("decision approve")
    assert (span.attributes or {})[A.DECISION_INPUTS] == ("credit_score/42@n:1",)
    [read] = [s for s in telemetry.spans() if A.READ_FACTS in (s.attributes or {})]
    assert (read.attributes or {})[A.CONSISTENCY] == "linearizable"


@pytest.mark.parametrize(
    "row_factory",
    [
        sqlite3.Row,
        lambda cursor, row: {d[0]: v for d, v in zip(cursor.description, row, strict=True)},
    ],
    ids=["sqlite3.Row", "dict"],
)
def test_row_and_text_factories_do_not_change_what_is_recorded(
    telemetry: Telemetry, db: Path, row_factory: object
) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = row_factory  # type: ignore[assignment]
    conn.text_factory = bytes
    conn.execute("UPDATE accounts SET balance = 900 WHERE id = 'A'")
    row = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
    assert row["balance"] == 900  # the application's row shape is untouched
    conn.close()
    [update] = [s for s in telemetry.spans() if s.name == "UPDATE accounts"]
    [select] = [s for s in telemetry.spans() if s.name == "SELECT accounts"]
    written = (update.attributes or {})[A.WRITE_VERSIONS]
    assert (update.attributes or {})[A.WRITE_FACTS] == ("account/A",)
    assert (select.attributes or {})[A.READ_FACTS] == ("account/A",)
    assert (select.attributes or {})[A.READ_VERSIONS] == written  # projection matched
    assert A.UNRESOLVED not in (update.attributes or {})


def test_custom_row_shapes_are_not_guessed(telemetry: Telemetry, db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.row_factory = lambda cursor, row: "opaque"
    assert conn.execute("SELECT * FROM accounts WHERE id = 'A'").fetchone() == "opaque"
    conn.close()
    [select] = [s for s in telemetry.spans() if s.name == "SELECT accounts"]
    attrs = select.attributes or {}
    assert attrs.get(A.READ_FACTS, ()) == ()
    assert attrs[A.UNRESOLVED] == "row factory"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-26T10:00:00Z", "t:2026-11-26T10:00:00Z"),
        ("2026-11-26 10:00:00.5+01:00", "t:2026-11-26 10:00:00.5+01:00"),
        (
            "2026-11-26T10:00+0000",  # not RFC 3339, but Python 3.11+ reads it: epoch ns
            "t:1795687200000000000" if sys.version_info >= (3, 11) else "h:",
        ),
        (7, "n:7"),
    ],
)
def test_version_column_values_always_give_parseable_versions(
    telemetry: Telemetry, tmp_path: Path, stored: object, expected: str
) -> None:
    from otel_agent_state.core.model import parse_version

    path = tmp_path / "v.db"
    configure(rules=[{"name": "doc", "keys": ["sqlite:*/docs/{id}"], "version": {"column": "v"}}])
    instrumentor = SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, v)")
        conn.execute("INSERT INTO docs VALUES (1, ?)", (stored,))
        conn.execute("SELECT id, v FROM docs WHERE id = 1").fetchone()
        conn.close()
    finally:
        instrumentor.uninstrument()
    [read] = [s for s in telemetry.spans() if A.READ_FACTS in (s.attributes or {})]
    [version] = (read.attributes or {})[A.READ_VERSIONS]
    if expected == "h:":  # Python 3.10 cannot read the value as a time: a content digest
        assert str(version).startswith("h:")
    else:
        assert version == expected
    parse_version(str(version))  # what the processor will parse


def _rescore_in_savepoint(path: Path, undo: bool) -> None:
    """The scorer writes 750 inside a savepoint, then undoes it (ROLLBACK TO) or keeps it
    (RELEASE), and commits the transaction either way."""
    with agent("credit-scorer"):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT rescore")
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        conn.execute("ROLLBACK TO rescore" if undo else "RELEASE rescore")
        conn.execute("COMMIT")
        conn.close()


@pytest.mark.parametrize("undo", [True, False], ids=["rolled-back-to", "released"])
def test_a_write_undone_by_rollback_to_savepoint_is_not_the_latest_version(
    telemetry: Telemetry, db: Path, undo: bool
) -> None:
    with workflow("credit"):
        _rescore_in_savepoint(db, undo)
        with agent("risk-assessor"):
            conn = sqlite3.connect(db)
            row = conn.execute("SELECT score, version FROM score_cache WHERE id = 42").fetchone()
            conn.close()
    assert row == (680, 1)
    stale = telemetry.anomalies("stale_read")
    if undo:  # the database still holds version 1: reading it is no stale read
        assert stale == []
        undone = [s for s in telemetry.spans() if s.name == "agentstate.savepoint"]
        assert [(s.attributes or {}).get(A.TXN_OUTCOME) for s in undone] == ["rollback"]
    else:
        [anomaly] = stale
        attrs = anomaly.attributes or {}
        assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
