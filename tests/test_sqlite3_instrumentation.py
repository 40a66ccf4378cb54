"""SQLite3Instrumentor against real sqlite3 files and a real SDK TracerProvider."""

from __future__ import annotations

import gc
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from otel_agent_state import attributes as A
from otel_agent_state import runtime
from otel_agent_state.core import config
from otel_agent_state.core.model import Anomaly, AnomalyKind
from otel_agent_state.errors import StaleReadError
from otel_agent_state.instrumentation import sqlite3 as inst

ORIGINAL_CONNECT = sqlite3.connect


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.instrumentor = inst.SQLite3Instrumentor()
        self.path = tmp_path / "agents.db"

    def connect(self, **kwargs: Any) -> Any:
        return sqlite3.connect(str(self.path), **kwargs)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def last(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert found, [s.name for s in self.spans()]
        return found[-1]

    def clear(self) -> None:
        self.exporter.clear()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (span.attributes or {}).items()}


def reads(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.READ_FACTS, []), a.get(A.READ_VERSIONS, []), strict=True))


def writes(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.WRITE_FACTS, []), a.get(A.WRITE_VERSIONS, []), strict=True))


RULES = [
    {"name": "credit_score", "keys": ["sqlite:*/credit_scores/{customer_id}"]},
    {
        "name": "profile",
        "keys": ["sqlite:*/profiles/{id}"],
        "version": {"column": "version"},
        "tier": "replica",
    },
]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    config.set_settings(config.Settings(rules=config.rules_from_dicts(RULES)))
    inst.row_states.clear()
    e = Env(tmp_path)
    e.instrumentor.instrument(tracer_provider=e.provider)
    setup = sqlite3.connect(str(e.path), isolation_level=None)
    setup.executescript(
        """
        CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score INTEGER, note TEXT);
        CREATE TABLE profiles (id TEXT PRIMARY KEY, name TEXT, version INTEGER);
        CREATE TABLE pairs (a INTEGER, b TEXT, v REAL, PRIMARY KEY (a, b));
        CREATE TABLE log (msg TEXT);
        INSERT INTO credit_scores VALUES (1, 600, 'a'), (2, 610, 'b'), (3, 620, 'c');
        INSERT INTO profiles VALUES ('p1', 'Ann', 3);
        """
    )
    setup.close()
    e.clear()
    yield e
    e.instrumentor.uninstrument()
    e.provider.shutdown()
    config.set_settings(None)


# --------------------------------------------------------------------------- basics


def test_uninstrument_restores_connect(tmp_path: Path) -> None:
    instrumentor = inst.SQLite3Instrumentor()
    assert instrumentor.instrumentation_dependencies() == ()
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert sqlite3.connect is not ORIGINAL_CONNECT
        conn = sqlite3.connect(":memory:")
        assert inst.is_traced(conn)
        assert issubclass(type(conn), sqlite3.Connection)  # a real connection, not a proxy
        conn.close()
    finally:
        instrumentor.uninstrument()
    assert sqlite3.connect is ORIGINAL_CONNECT
    assert sqlite3.dbapi2.connect is ORIGINAL_CONNECT
    assert not inst.is_traced(sqlite3.connect(":memory:"))


def test_span_shape_and_semconv(env: Env) -> None:
    conn = env.connect()
    conn.execute("SELECT score FROM credit_scores WHERE customer_id = ?", (1,)).fetchone()
    span = env.one("SELECT credit_scores")
    assert span.kind == SpanKind.CLIENT
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "otel_agent_state.instrumentation.sqlite3"
    a = attrs(span)
    assert a[A.DB_SYSTEM_NAME] == "sqlite"
    assert a[A.DB_NAMESPACE] == "agents"
    assert a[A.DB_COLLECTION_NAME] == "credit_scores"
    assert a[A.DB_OPERATION_NAME] == "SELECT"
    assert a[A.DB_QUERY_SUMMARY] == "SELECT credit_scores"
    assert a[A.STORE] == "sqlite"
    assert a[A.OP] == "read"
    assert a[A.TIER] == "primary"
    assert "db.query.text" not in a
    # No values on the span: the score (600) shows nowhere, the version is a keyed digest (whose
    # hex may contain "600" by chance, so it is checked for its form instead).
    [version] = a[A.READ_VERSIONS]
    assert re.fullmatch(r"h:[0-9a-f]{32}", version)
    assert not any("600" in str(v) for k, v in a.items() if k != A.READ_VERSIONS)
    conn.close()


def test_store_attribute_present_at_span_start(env: Env) -> None:
    seen: list[dict[str, Any]] = []

    class Spy(SimpleSpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append(dict(span.attributes or {}))

    env.provider.add_span_processor(Spy(InMemorySpanExporter()))
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    assert seen and seen[0][A.STORE] == "sqlite"
    assert seen[0][A.OP] == "write"
    conn.close()


def test_memory_namespace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = inst.SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        conn.execute("INSERT INTO t VALUES (5, 'x')")
        span = next(s for s in exporter.get_finished_spans() if s.name == "INSERT t")
        assert attrs(span)[A.DB_NAMESPACE] == "memory"
        assert list(writes(span)) == ["sqlite:memory/t/5"]
        conn.close()
    finally:
        instrumentor.uninstrument()


# --------------------------------------------------------------------------- reads


def test_point_read_digest_matches_write_version(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = ? WHERE customer_id = ?", (700, 1))
    conn.commit()
    written = writes(env.one("UPDATE credit_scores"))
    assert list(written) == ["credit_score/1"]
    assert written["credit_score/1"].startswith("h:")
    row = conn.execute("SELECT * FROM credit_scores WHERE customer_id = ?", (1,)).fetchone()
    assert row == (1, 700, "a")
    assert reads(env.one("SELECT credit_scores")) == written
    conn.close()


def test_projection_read_mapped_through_digest_cache(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 701, note = 'n' WHERE customer_id = 2")
    conn.commit()
    written = writes(env.one("UPDATE credit_scores"))["credit_score/2"]
    env.clear()
    assert conn.execute(
        "SELECT score FROM credit_scores WHERE customer_id = ?", (2,)
    ).fetchone() == (701,)
    assert reads(env.one("SELECT credit_scores")) == {"credit_score/2": written}
    conn.close()


def test_projection_of_unknown_state_gets_its_own_digest(env: Env) -> None:
    conn = env.connect()
    conn.execute("SELECT score FROM credit_scores WHERE customer_id = 3").fetchone()
    version = reads(env.one("SELECT credit_scores"))["credit_score/3"]
    assert version.startswith("h:")
    # A different value written by another process (raw, untraced) gives another digest.
    raw = ORIGINAL_CONNECT(str(env.path))
    raw.execute("UPDATE credit_scores SET score = 999 WHERE customer_id = 3")
    raw.commit()
    raw.close()
    env.clear()
    conn.execute("SELECT score FROM credit_scores WHERE customer_id = 3").fetchone()
    assert reads(env.one("SELECT credit_scores"))["credit_score/3"] != version
    conn.close()


def test_projection_maps_to_older_state_when_value_went_back(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    first = writes(env.last("UPDATE credit_scores"))["credit_score/1"]
    conn.execute("UPDATE credit_scores SET note = 'zz' WHERE customer_id = 1")
    second = writes(env.last("UPDATE credit_scores"))["credit_score/1"]
    assert first != second
    env.clear()
    conn.execute("SELECT score FROM credit_scores WHERE customer_id = 1").fetchone()
    # Both states have score 1: the newest matching state wins.
    assert reads(env.one("SELECT credit_scores"))["credit_score/1"] == second
    conn.close()


def test_version_column_and_rule_tier(env: Env) -> None:
    conn = env.connect()
    conn.execute("SELECT name, version FROM profiles WHERE id = ?", ("p1",)).fetchone()
    span = env.one("SELECT profiles")
    assert reads(span) == {"profile/p1": "n:3"}
    assert attrs(span)[A.TIER] == "replica"
    env.clear()
    conn.execute("UPDATE profiles SET name = 'Bo', version = version + 1 WHERE id = 'p1'")
    assert writes(env.one("UPDATE profiles")) == {"profile/p1": "n:4"}
    conn.commit()
    env.clear()
    # Projection without the version column: the digest cache knows the state's version.
    conn.execute("SELECT name FROM profiles WHERE id = 'p1'").fetchone()
    assert reads(env.one("SELECT profiles")) == {"profile/p1": "n:4"}
    conn.close()


def test_timestamp_version_column(tmp_path: Path) -> None:
    config.set_settings(
        config.Settings(
            rules=config.rules_from_dicts(
                [{"name": "doc", "keys": ["sqlite:*/docs/{id}"], "version": {"column": "at"}}]
            )
        )
    )
    instrumentor = inst.SQLite3Instrumentor()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor.instrument(tracer_provider=provider)
    try:
        conn = sqlite3.connect(str(tmp_path / "d.db"), isolation_level=None)
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, at)")
        conn.execute("INSERT INTO docs VALUES (1, '2026-01-02T03:04:05+00:00'), (2, 1.5)")
        conn.execute("INSERT INTO docs VALUES (3, 'yesterday')")
        list(conn.execute("SELECT id, at FROM docs"))
        span = next(s for s in exporter.get_finished_spans() if s.name == "SELECT docs")
        got = reads(span)
        assert got["doc/1"] == "t:2026-01-02T03:04:05+00:00"
        assert got["doc/2"] == "t:1500000000"
        assert got["doc/3"].startswith("h:")
        conn.close()
    finally:
        instrumentor.uninstrument()
        config.set_settings(None)


def test_missing_row_reads_none(env: Env) -> None:
    conn = env.connect()
    assert conn.execute("SELECT * FROM credit_scores WHERE customer_id = 99").fetchone() is None
    assert reads(env.one("SELECT credit_scores")) == {"credit_score/99": "none"}
    env.clear()
    assert conn.execute("SELECT * FROM credit_scores WHERE customer_id = 98").fetchall() == []
    assert reads(env.one("SELECT credit_scores")) == {"credit_score/98": "none"}
    conn.close()


def test_span_stays_open_until_fetch_and_records_only_fetched_rows(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    cur.execute("SELECT customer_id, score FROM credit_scores ORDER BY customer_id")
    assert env.spans("SELECT credit_scores") == []  # still open
    assert cur.fetchone() == (1, 600)
    assert env.spans("SELECT credit_scores") == []  # not a point lookup: more may follow
    assert cur.fetchmany(1) == [(2, 610)]
    assert env.spans("SELECT credit_scores") == []
    cur.close()
    span = env.one("SELECT credit_scores")
    assert list(reads(span)) == ["credit_score/1", "credit_score/2"]
    conn.close()


def test_span_ends_on_exhaustion_short_fetchmany_and_next_execute(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    for _ in cur.execute("SELECT * FROM credit_scores"):
        pass
    assert len(reads(env.one("SELECT credit_scores"))) == 3
    env.clear()
    cur.execute("SELECT * FROM credit_scores")
    assert len(cur.fetchmany(10)) == 3
    assert len(env.spans("SELECT credit_scores")) == 1
    env.clear()
    cur.execute("SELECT * FROM credit_scores")
    cur.fetchone()
    cur.execute("SELECT * FROM profiles WHERE id = 'p1'")
    assert list(reads(env.one("SELECT credit_scores"))) == ["credit_score/1"]
    assert env.spans("SELECT profiles") == []
    cur.fetchone()
    assert len(env.spans("SELECT profiles")) == 1
    conn.close()


def test_span_ends_when_cursor_is_collected(env: Env) -> None:
    conn = env.connect()
    cur = conn.execute("SELECT * FROM credit_scores")
    cur.fetchone()
    del cur
    gc.collect()
    deadline = time.monotonic() + 5
    while not env.spans("SELECT credit_scores") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(reads(env.one("SELECT credit_scores"))) == ["credit_score/1"]
    conn.close()


def test_rows_without_pk_are_not_facts(env: Env) -> None:
    conn = env.connect()
    conn.execute("SELECT score FROM credit_scores WHERE score > 0").fetchall()
    span = env.one("SELECT credit_scores")
    assert reads(span) == {}
    assert attrs(span)[A.UNRESOLVED] == "rows not identified by primary key"
    conn.close()


def test_composite_key_and_row_factory(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("INSERT INTO pairs VALUES (?, ?, ?)", (1, "x/y", 0.5))
    assert list(writes(env.one("INSERT pairs"))) == ["sqlite:agents/pairs/1,x%2Fy"]
    conn.row_factory = sqlite3.Row
    (row,) = conn.execute("SELECT v, b, a FROM pairs").fetchall()
    assert row["v"] == 0.5
    assert reads(env.one("SELECT pairs")) == {
        "sqlite:agents/pairs/1,x%2Fy": writes(env.one("INSERT pairs"))[
            "sqlite:agents/pairs/1,x%2Fy"
        ]
    }
    conn.close()


def test_rowid_table_only_with_rowid_in_statement(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("INSERT INTO log (msg) VALUES ('hi')")
    span = env.one("INSERT log")
    assert list(writes(span)) == ["sqlite:agents/log"]
    assert attrs(span)[A.UNRESOLVED] == "primary key not given"
    conn.execute("SELECT msg FROM log WHERE rowid = 1").fetchone()
    assert list(reads(env.one("SELECT log"))) == ["sqlite:agents/log/1"]
    conn.close()


# --------------------------------------------------------------------------- writes


def test_insert_with_lastrowid_update_delete_versions(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    cur.execute("INSERT INTO credit_scores (score, note) VALUES (?, ?)", (500, "new"))
    new_id = cur.lastrowid
    ins = writes(env.one("INSERT credit_scores"))
    assert list(ins) == [f"credit_score/{new_id}"]
    cur.execute("UPDATE credit_scores SET score = score + 1 WHERE customer_id = ?", (new_id,))
    upd = writes(env.one("UPDATE credit_scores"))
    assert upd[f"credit_score/{new_id}"] != ins[f"credit_score/{new_id}"]
    cur.execute("DELETE FROM credit_scores WHERE customer_id = :id", {"id": new_id})
    span = env.one("DELETE credit_scores")
    assert writes(span) == {f"credit_score/{new_id}": "none"}
    assert attrs(span)[A.OP] == "delete"
    conn.commit()
    conn.close()


def test_update_matching_nothing_records_no_write(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 404")
    span = env.one("UPDATE credit_scores")
    assert writes(span) == {}
    assert A.COMMITTED not in attrs(span)
    conn.close()


def test_unresolved_write_gets_table_fact_and_unique_version(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("UPDATE credit_scores SET score = 0 WHERE score < 615")
    conn.execute("UPDATE credit_scores SET score = 0 WHERE score < 615")
    first, second = env.spans("UPDATE credit_scores")
    assert list(writes(first)) == ["sqlite:agents/credit_scores"]
    assert writes(first) != writes(second)  # each unknown write is a distinct version
    assert attrs(first)[A.UNRESOLVED] == "range"
    assert attrs(first)[A.COMMITTED] is True
    conn.execute("UPDATE credit_scores SET customer_id = 10 WHERE customer_id = 3")
    assert attrs(env.last("UPDATE credit_scores"))[A.UNRESOLVED] == "primary key updated"
    conn.close()


def test_upsert_and_replace_with_pk(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute(
        "INSERT INTO credit_scores (customer_id, score) VALUES (?, ?) "
        "ON CONFLICT(customer_id) DO UPDATE SET score = excluded.score",
        (1, 42),
    )
    conn.execute("REPLACE INTO credit_scores (customer_id, score) VALUES (2, 43)")
    assert list(writes(env.one("INSERT credit_scores"))) == ["credit_score/1"]
    assert list(writes(env.one("REPLACE credit_scores"))) == ["credit_score/2"]
    conn.close()


def test_executemany_one_span_all_rows(env: Env) -> None:
    conn = env.connect()
    conn.executemany(
        "INSERT INTO credit_scores (customer_id, score) VALUES (?, ?)",
        ((i, i * 10) for i in range(10, 13)),  # a generator: rows seen as sqlite3 reads them
    )
    span = env.one("INSERT credit_scores")
    assert list(writes(span)) == ["credit_score/10", "credit_score/11", "credit_score/12"]
    assert len(set(writes(span).values())) == 3
    conn.executemany("DELETE FROM credit_scores WHERE customer_id = ?", [(10,), (11,)])
    assert writes(env.one("DELETE credit_scores")) == {
        "credit_score/10": "none",
        "credit_score/11": "none",
    }
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- transactions


def test_implicit_transaction_commit(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    conn.execute("UPDATE credit_scores SET score = 2 WHERE customer_id = 2")
    first, second = env.spans("UPDATE credit_scores")
    txn = attrs(first)[A.TXN_ID]
    assert attrs(first)[A.COMMITTED] is False
    assert attrs(second)[A.TXN_ID] == txn
    assert env.spans("COMMIT") == []
    conn.commit()
    commit = attrs(env.one("COMMIT"))
    assert commit[A.TXN_ID] == txn
    assert commit[A.TXN_OUTCOME] == "commit"
    assert A.READ_FACTS not in commit and A.WRITE_FACTS not in commit
    conn.commit()  # nothing open: no second span
    assert len(env.spans("COMMIT")) == 1
    conn.execute("UPDATE credit_scores SET score = 3 WHERE customer_id = 1")
    assert attrs(env.last("UPDATE credit_scores"))[A.TXN_ID] != txn  # a fresh transaction
    conn.rollback()
    rollback = attrs(env.one("ROLLBACK"))
    assert rollback[A.TXN_OUTCOME] == "rollback"
    assert rollback[A.TXN_ID] == attrs(env.last("UPDATE credit_scores"))[A.TXN_ID]
    conn.close()


def test_read_only_commit_makes_no_span(env: Env) -> None:
    conn = env.connect()
    conn.execute("SELECT * FROM credit_scores").fetchall()
    conn.commit()
    assert env.spans("COMMIT") == []
    conn.close()


def test_autocommit_writes(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("UPDATE credit_scores SET score = 5 WHERE customer_id = 1")
    a = attrs(env.one("UPDATE credit_scores"))
    assert a[A.COMMITTED] is True
    assert A.TXN_ID not in a
    env.clear()
    conn.execute("BEGIN")
    conn.execute("UPDATE credit_scores SET score = 6 WHERE customer_id = 1")
    txn = attrs(env.one("UPDATE credit_scores"))[A.TXN_ID]
    conn.execute("COMMIT")
    end = attrs(env.one("COMMIT"))
    assert end[A.TXN_ID] == txn
    assert end[A.TXN_OUTCOME] == "commit"
    conn.execute("BEGIN")
    conn.execute("DELETE FROM credit_scores WHERE customer_id = 2")
    conn.execute("ROLLBACK")
    assert attrs(env.one("ROLLBACK"))[A.TXN_OUTCOME] == "rollback"
    conn.close()


def test_with_connection_context_manager(env: Env) -> None:
    conn = env.connect()
    with conn as entered:
        assert entered is conn
        conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    assert attrs(env.one("COMMIT"))[A.TXN_OUTCOME] == "commit"
    with pytest.raises(ZeroDivisionError), conn:
        conn.execute("UPDATE credit_scores SET score = 2 WHERE customer_id = 1")
        raise ZeroDivisionError
    assert attrs(env.one("ROLLBACK"))[A.TXN_OUTCOME] == "rollback"
    conn.close()
    check = ORIGINAL_CONNECT(str(env.path))
    assert check.execute("SELECT score FROM credit_scores WHERE customer_id = 1").fetchone() == (1,)
    check.close()


def test_close_with_open_transaction_is_rollback(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    txn = attrs(env.one("UPDATE credit_scores"))[A.TXN_ID]
    conn.close()
    end = attrs(env.one("ROLLBACK"))
    assert end[A.TXN_ID] == txn
    assert end[A.TXN_OUTCOME] == "rollback"


def test_rollback_to_savepoint_ends_the_writes_it_undoes(env: Env) -> None:
    conn = env.connect(isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("UPDATE credit_scores SET score = 2 WHERE customer_id = 2")
    conn.execute("SAVEPOINT sp")
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    conn.execute("ROLLBACK TO sp")
    conn.execute("RELEASE sp")
    conn.execute("COMMIT")
    conn.close()
    kept, undone = (attrs(s) for s in env.spans() if s.name.startswith("UPDATE"))
    assert not kept[A.COMMITTED] and not undone[A.COMMITTED]
    assert kept[A.TXN_ID] != undone[A.TXN_ID]
    ends = {
        attrs(s)[A.TXN_ID]: attrs(s)[A.TXN_OUTCOME]
        for s in env.spans()
        if A.TXN_OUTCOME in attrs(s)
    }
    # The undone write's scope ends as a rollback at ROLLBACK TO; the transaction commits.
    assert ends == {undone[A.TXN_ID]: "rollback", kept[A.TXN_ID]: "commit"}
    assert attrs(env.one("COMMIT"))[A.TXN_ID] == kept[A.TXN_ID]


def test_released_savepoint_writes_commit_or_roll_back_with_the_transaction(env: Env) -> None:
    for end in ("COMMIT", "ROLLBACK"):
        env.exporter.clear()
        conn = env.connect(isolation_level=None)
        conn.execute("SAVEPOINT outer_sp")  # outside a transaction: begins one
        conn.execute("SAVEPOINT sp")
        conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
        conn.execute("RELEASE sp")
        conn.execute(end)
        conn.close()
        [write] = [attrs(s) for s in env.spans() if s.name.startswith("UPDATE")]
        ended = [attrs(s) for s in env.spans() if s.name == "agentstate.savepoint"]
        assert [e[A.TXN_ID] for e in ended] == [write[A.TXN_ID]]
        assert ended[0][A.TXN_OUTCOME] == end.lower()


def test_executescript_commits_pending_transaction(env: Env) -> None:
    conn = env.connect()
    conn.execute("UPDATE credit_scores SET score = 1 WHERE customer_id = 1")
    conn.executescript("UPDATE credit_scores SET score = 2; DELETE FROM log;")
    assert attrs(env.one("COMMIT"))[A.TXN_OUTCOME] == "commit"
    script = [s for s in env.spans() if attrs(s).get(A.UNRESOLVED) == "script"]
    assert len(script) == 1
    assert set(writes(script[0])) == {"sqlite:agents/credit_scores", "sqlite:agents/log"}
    conn.close()


# --------------------------------------------------------------------------- errors


def test_sqlite_errors_propagate_unchanged_and_are_recorded(env: Env) -> None:
    conn = env.connect()
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO credit_scores (customer_id) VALUES (1)")
    span = env.one("INSERT credit_scores")
    assert span.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM nope WHERE id = 1")
    # Python 3.10 raises sqlite3.Warning here, 3.11+ ProgrammingError: ours passes either on.
    with pytest.raises((sqlite3.ProgrammingError, sqlite3.Warning)):
        conn.execute("SELECT 1; SELECT 2")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


class _RaisingGuard:
    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0

    def guard_read(self, span: Any) -> None:
        self.calls += 1
        if span.name == self.target:
            anomaly = Anomaly(
                kind=AnomalyKind.STALE_READ,
                trace_id="0" * 32,
                span_id="0" * 16,
                fact="credit_score/1",
                observed_version="h:00",
                expected_version="h:11",
                agents=("a",),
                evidence_span_ids=(),
                summary="stale",
            )
            raise StaleReadError(anomaly)
        raise RuntimeError("a broken guard must not reach the application")


def test_stale_read_guard_raises_to_the_app(env: Env) -> None:
    guard = _RaisingGuard("SELECT credit_scores")
    runtime.register(guard)
    try:
        conn = env.connect()
        with pytest.raises(StaleReadError):
            conn.execute("SELECT * FROM credit_scores WHERE customer_id = 1").fetchone()
        span = env.one("SELECT credit_scores")
        assert span.status.status_code == StatusCode.ERROR
        assert reads(span) == {"credit_score/1": reads(span)["credit_score/1"]}
        # Another read: the guard's own bug is swallowed, the app gets its row.
        assert conn.execute("SELECT * FROM profiles WHERE id = 'p1'").fetchone()[0] == "p1"
        assert guard.calls == 2
        conn.close()
    finally:
        runtime.unregister(guard)


# --------------------------------------------------------------------------- coexistence


def test_suppressed_instrumentation_calls_through(env: Env) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    conn = env.connect()
    with suppress_instrumentation():
        assert conn.execute("SELECT score FROM credit_scores WHERE customer_id = 1").fetchone()
    assert env.spans() == []
    conn.close()


def test_annotates_a_contrib_database_span(env: Env) -> None:
    contrib = env.provider.get_tracer("opentelemetry.instrumentation.sqlite3")
    conn = env.connect(isolation_level=None)
    with contrib.start_as_current_span(
        "UPDATE", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}
    ):
        conn.execute("UPDATE credit_scores SET score = 9 WHERE customer_id = 1")
    assert [s.name for s in env.spans()] == ["UPDATE"]
    a = attrs(env.one("UPDATE"))
    assert a[A.STORE] == "sqlite"
    assert list(writes(env.one("UPDATE"))) == ["credit_score/1"]
    conn.close()


def test_inner_span_sees_suppression(env: Env) -> None:
    seen: list[bool] = []
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    conn = env.connect()

    def probe(x: Any) -> Any:
        seen.append(is_instrumentation_enabled())
        seen.append(trace.get_current_span().is_recording())
        return x

    conn.create_function("probe", 1, probe)
    conn.execute("SELECT probe(score) FROM credit_scores WHERE customer_id = 1").fetchall()
    assert seen == [False, True]
    conn.close()


def test_instrument_connection_for_open_connection(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    raw = ORIGINAL_CONNECT(str(tmp_path / "x.db"))
    conn = inst.instrument_connection(raw, tracer_provider=provider)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert [s.name for s in exporter.get_finished_spans()] == ["DDL t", "INSERT t"]
    assert inst.uninstrument_connection(conn) is raw
    conn.close()


# --------------------------------------------------------------------------- robustness

_PARAMS = st.one_of(
    st.none(),
    st.lists(st.one_of(st.integers(), st.text(), st.binary(), st.floats(), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.binary()), max_size=3),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.integers(),
)
_SQL = st.one_of(
    st.text(max_size=60),
    st.builds(
        " ".join,
        st.lists(
            st.sampled_from(
                [
                    "SELECT",
                    "INSERT",
                    "INTO",
                    "VALUES",
                    "UPDATE",
                    "SET",
                    "DELETE",
                    "FROM",
                    "WHERE",
                    "AND",
                    "OR",
                    "=",
                    "?",
                    ":a",
                    "(",
                    ")",
                    ",",
                    "*",
                    "credit_scores",
                    "profiles",
                    "customer_id",
                    "id",
                    "score",
                    "1",
                    "'x'",
                    "BEGIN",
                    "COMMIT",
                    "ROLLBACK",
                    ";",
                    "--",
                    "RETURNING",
                    "ON",
                    "CONFLICT",
                    "DO",
                    "NOTHING",
                ]
            ),
            max_size=14,
        ),
    ),
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sql=_SQL, params=_PARAMS)
def test_no_exception_of_ours_on_weird_input(env: Env, sql: str, params: Any) -> None:
    plain = ORIGINAL_CONNECT(":memory:")
    plain.execute("CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score)")
    plain.execute("CREATE TABLE profiles (id TEXT PRIMARY KEY, version)")
    traced = inst.instrument_connection(ORIGINAL_CONNECT(":memory:"), env.provider)
    traced.execute("CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score)")
    traced.execute("CREATE TABLE profiles (id TEXT PRIMARY KEY, version)")

    def outcome(conn: Any) -> Any:
        try:
            args = (sql,) if params is None else (sql, params)
            rows = conn.execute(*args).fetchall()
            return ("ok", rows)
        except Exception as exc:  # the same error type and message as without us
            return (type(exc), str(exc))

    assert outcome(traced) == outcome(plain)
    traced.close()
    plain.close()
