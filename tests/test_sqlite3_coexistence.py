"""SPEC §2: our sqlite3 instrumentation next to contrib's, in either load order.

contrib's `opentelemetry-instrumentation-sqlite3` (0.66b1 only, not installable next to our
0.66b2 pins) is a thin layer over `opentelemetry.instrumentation.dbapi.wrap_connect` on
`sqlite3` and `sqlite3.dbapi2`; the tests do exactly that with the real dbapi package.

Whatever the load order, contrib's wrapper ends up outermost (ours goes under it), so
contrib's span is the one database span and we annotate it; reads get a short
`agentstate.read <table>` child span for the fetched rows. Ours outermost still happens for a
connection contrib instrumented that we then wrap with `instrument_connection`: then our span
is the database span and contrib's inner cursor sees instrumentation suppressed.
"""

from __future__ import annotations

import gc
import sqlite3
import sqlite3.dbapi2 as dbapi2
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation import dbapi
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import otel_agent_state
from otel_agent_state import attributes as A
from otel_agent_state import runtime
from otel_agent_state.core import config
from otel_agent_state.core.model import Anomaly, AnomalyKind
from otel_agent_state.errors import StaleReadError
from otel_agent_state.instrumentation import sqlite3 as inst
from otel_agent_state.instrumentation._wrapping import chain_of

from .conftest import Telemetry
from .semconv_support import MODES, semconv_mode
from .test_sqlite3_instrumentation import attrs, reads, writes

ORIGINAL_CONNECT = sqlite3.connect
CONTRIB_SCOPE = "opentelemetry.instrumentation.sqlite3"
OURS_SCOPE = "otel_agent_state.instrumentation.sqlite3"
ORDERS = ["contrib_first", "ours_first"]
# ours_outermost: contrib wraps connect, we wrap the open connection it returned.
LAYOUTS = [*ORDERS, "ours_outermost"]

RULES = """
[[facts]]
name = "credit_score"
keys = ["sqlite:*/credit_scores/{id}", { pattern = "sqlite:*/score_cache/{id}", tier = "cache" }]
version = { column = "version" }
"""

SCHEMA = """
CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
CREATE TABLE score_cache (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
INSERT INTO credit_scores VALUES (1, 600, 1), (2, 610, 1), (3, 620, 1);
INSERT INTO score_cache VALUES (1, 600, 1);
INSERT INTO notes VALUES (1, 'a'), (2, 'b'), (3, 'c');
"""


# --------------------------------------------------------------------------- contrib


def contrib_instrument(provider: TracerProvider) -> None:
    """What contrib's SQLite3Instrumentor.instrument() does (both connect entry points)."""
    for module in (sqlite3, dbapi2):
        dbapi.wrap_connect(
            CONTRIB_SCOPE,
            module,
            "connect",
            "sqlite",
            {"database": "database"},
            tracer_provider=provider,
        )


def contrib_uninstrument() -> None:
    for module in (sqlite3, dbapi2):
        dbapi.unwrap_connect(module, "connect")


def is_contrib_wrapper(obj: Any) -> bool:
    wrapper = getattr(obj, "_self_wrapper", None)
    return getattr(wrapper, "__qualname__", "").startswith("wrap_connect.")


def is_our_wrapper(obj: Any) -> bool:
    wrapper = getattr(obj, "_self_wrapper", None)
    return getattr(wrapper, "__module__", "") == inst.__name__


@contextmanager
def stack(
    layout: str, provider: TracerProvider, unwrap: str = "ours_then_contrib"
) -> Iterator[inst.SQLite3Instrumentor]:
    """Both instrumentations on `provider`, removed afterwards in the order `unwrap` says."""
    ours = inst.SQLite3Instrumentor()
    if layout == "ours_first":
        ours.instrument(tracer_provider=provider)
        contrib_instrument(provider)
    elif layout == "contrib_first":
        contrib_instrument(provider)
        ours.instrument(tracer_provider=provider)
    else:
        contrib_instrument(provider)
    try:
        yield ours
    finally:
        if unwrap == "ours_then_contrib":
            if ours.is_instrumented_by_opentelemetry:
                ours.uninstrument()
            contrib_uninstrument()
        else:
            contrib_uninstrument()
            if ours.is_instrumented_by_opentelemetry:
                ours.uninstrument()
        assert sqlite3.connect is ORIGINAL_CONNECT
        assert dbapi2.connect is ORIGINAL_CONNECT


class Env:
    def __init__(self, tmp_path: Path, layout: str, provider: TracerProvider | None = None):
        self.layout = layout
        self.exporter = InMemorySpanExporter()
        self.provider = provider or TracerProvider()
        if provider is None:
            self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.path = tmp_path / "agents.db"
        setup = ORIGINAL_CONNECT(str(self.path), isolation_level=None)
        setup.executescript(SCHEMA)
        setup.close()

    def connect(self, **kwargs: Any) -> Any:
        conn = sqlite3.connect(str(self.path), **kwargs)
        if self.layout == "ours_outermost":
            conn = inst.instrument_connection(conn, tracer_provider=self.provider)
        return conn

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def clear(self) -> None:
        self.exporter.clear()


def db_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """Database spans: those with any `db.*` attribute."""
    return [s for s in spans if any(k.startswith("db.") for k in (s.attributes or {}))]


def scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _rules() -> Iterator[None]:
    config.set_settings(config.Settings(rules=config.parse_rules_text(RULES, "rules.toml")))
    inst.row_states.clear()
    yield
    config.set_settings(None)


@pytest.fixture(params=LAYOUTS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, request.param)
    with stack(request.param, e.provider):
        yield e
    e.provider.shutdown()


# --------------------------------------------------------------------------- wrapping


@pytest.mark.parametrize("order", ORDERS)
def test_contrib_wrapper_is_outermost_in_either_load_order(tmp_path: Path, order: str) -> None:
    e = Env(tmp_path, order)
    with stack(order, e.provider):
        for module in (sqlite3, dbapi2):
            chain = chain_of(module, "connect")
            assert len(chain) == 3
            assert is_contrib_wrapper(chain[0])
            assert is_our_wrapper(chain[1])
            assert chain[2] is ORIGINAL_CONNECT
        conn = e.connect()
        assert isinstance(conn, dbapi.TracedConnectionProxy)
        assert inst.is_traced(conn.__wrapped__)
        assert issubclass(type(conn.__wrapped__), sqlite3.Connection)
        assert isinstance(conn, sqlite3.Connection)
        conn.close()


@pytest.mark.parametrize("unwrap", ["ours_then_contrib", "contrib_then_ours"])
@pytest.mark.parametrize("order", ORDERS)
def test_uninstrument_either_order_leaves_the_other_working(
    tmp_path: Path, order: str, unwrap: str
) -> None:
    e = Env(tmp_path, order)
    with stack(order, e.provider, unwrap=unwrap) as ours:
        if unwrap == "ours_then_contrib":
            ours.uninstrument()
            conn = e.connect()
            cur = conn.cursor()
            assert cur.execute("SELECT score FROM credit_scores WHERE id = 1").fetchone() == (600,)
            conn.close()
            # contrib's span is intact and nothing of ours is left on it.
            (span,) = e.spans()
            assert scope(span) == CONTRIB_SCOPE
            assert attrs(span)["db.statement"] == "SELECT score FROM credit_scores WHERE id = 1"
            assert not any(k.startswith("agentstate.") for k in attrs(span))
            ours.instrument(tracer_provider=e.provider)  # the stack's teardown takes it out
        else:
            contrib_uninstrument()
            assert is_our_wrapper(sqlite3.connect)
            conn = e.connect()
            cur = conn.cursor()
            row = cur.execute("SELECT score, version FROM credit_scores WHERE id = 1").fetchone()
            assert row == (600, 1)
            conn.close()
            (span,) = e.spans()
            assert scope(span) == OURS_SCOPE
            assert reads(span) == {"credit_score/1": "n:1"}
            contrib_instrument(e.provider)  # the stack's teardown takes it out
    # Both gone: plain connections, no spans.
    e.clear()
    conn = sqlite3.connect(str(e.path))
    assert type(conn) is sqlite3.Connection
    conn.execute("SELECT * FROM notes").fetchall()
    conn.close()
    assert e.spans() == []


# --------------------------------------------------------------------------- statements


def run_workload(conn: Any) -> list[Any]:
    """Everything an application does, through both the cursor and the shortcut API."""
    out: list[Any] = []
    cur = conn.cursor()
    out.append(cur.execute("SELECT * FROM credit_scores WHERE id = ?", (1,)).fetchone())
    out.append(cur.description)
    out.append(cur.execute("SELECT id, score FROM credit_scores ORDER BY id").fetchmany(2))
    out.append(cur.fetchall())
    out.append(list(cur.execute("SELECT * FROM notes ORDER BY id")))
    out.append(conn.execute("SELECT body FROM notes WHERE id = 2").fetchone())
    cur.execute("INSERT INTO notes (body) VALUES (?)", ("d",))
    out.append((cur.lastrowid, cur.rowcount))
    cur.executemany("UPDATE notes SET body = ? WHERE id = ?", [("x", 1), ("y", 2)])
    out.append(cur.rowcount)
    conn.commit()
    with conn:
        conn.execute("DELETE FROM notes WHERE id = 3")
    with pytest.raises(sqlite3.IntegrityError), conn:
        cur.execute("INSERT INTO notes VALUES (1, 'dup')")
    with pytest.raises(ZeroDivisionError), conn:
        cur.execute("UPDATE notes SET body = 'gone' WHERE id = 1")
        raise ZeroDivisionError
    conn.row_factory = sqlite3.Row
    rows = conn.cursor().execute("SELECT * FROM notes ORDER BY id").fetchall()
    out.append([dict(r) for r in rows])
    conn.row_factory = None
    cur.executescript("UPDATE notes SET body = body || '!';")
    out.append(conn.execute("SELECT * FROM notes ORDER BY id").fetchall())
    out.append(conn.total_changes)
    out.append(conn.in_transaction)
    cur.close()
    conn.close()
    return out


def test_results_identical_to_uninstrumented(env: Env, tmp_path: Path) -> None:
    plain_path = tmp_path / "plain.db"
    plain = ORIGINAL_CONNECT(str(plain_path), isolation_level=None)
    plain.executescript(SCHEMA)
    plain.close()
    expected = run_workload(ORIGINAL_CONNECT(str(plain_path)))
    assert run_workload(env.connect()) == expected
    assert env.spans()  # it was traced


@pytest.mark.parametrize("mode", MODES)
def test_one_database_span_per_statement_with_both_attribute_sets(env: Env, mode: str) -> None:
    """In contrib's default (old) convention mode only our `agentstate.*` attributes go on
    its span (issue 19); with `database/dup` the stable `db.*` ones it lacks too."""
    with semconv_mode(mode):
        _one_span_per_statement(env, stable=mode != "default")


def _one_span_per_statement(env: Env, stable: bool) -> None:
    conn = env.connect()
    cur = conn.cursor()
    statements = [
        ("SELECT score FROM credit_scores WHERE id = ?", (1,)),
        ("UPDATE credit_scores SET score = 700, version = 2 WHERE id = ?", (1,)),
        ("INSERT INTO notes (body) VALUES (?)", ("n",)),
        ("DELETE FROM notes WHERE id = ?", (2,)),
    ]
    for sql, params in statements:
        env.clear()
        cur.execute(sql, params).fetchall()
        found = db_spans(env.spans())
        assert len(found) == 1, [(s.name, scope(s)) for s in env.spans()]
        (span,) = found
        a = attrs(span)
        assert span.kind == SpanKind.CLIENT
        assert a[A.STORE] == "sqlite"
        if env.layout == "ours_outermost":
            assert scope(span) == OURS_SCOPE
            assert "db.statement" not in a  # contrib's cursor was suppressed under our span
        else:
            assert scope(span) == CONTRIB_SCOPE
            assert a["db.system"] == "sqlite"  # contrib's own attributes stay
            assert a["db.statement"] == sql
        if stable or env.layout == "ours_outermost":
            assert a[A.DB_SYSTEM_NAME] == "sqlite"
            assert a[A.DB_COLLECTION_NAME] in ("credit_scores", "notes")
            assert a[A.DB_OPERATION_NAME] == sql.split()[0]
        else:  # contrib's span in its default mode: no stable db.* of ours
            ours = (A.DB_SYSTEM_NAME, A.DB_NAMESPACE, A.DB_OPERATION_NAME, A.DB_QUERY_SUMMARY)
            assert not [k for k in ours if k in a], a
        if sql.startswith("SELECT"):
            assert a[A.OP] == "read"
        else:
            assert a[A.OP] in ("write", "delete")
            assert writes(span), a
    # The shortcut API: contrib does not trace Connection.execute, we do; still one span.
    env.clear()
    conn.execute("SELECT * FROM notes WHERE id = 1").fetchall()
    (span,) = db_spans(env.spans())
    assert scope(span) == OURS_SCOPE
    assert reads(span) == {"sqlite:agents/notes/1": reads(span)["sqlite:agents/notes/1"]}
    conn.commit()
    conn.close()


def read_span_of(env: Env) -> ReadableSpan:
    """The span with the fetched rows' facts: our read span, or our database span."""
    if env.layout == "ours_outermost":
        (span,) = env.spans("SELECT credit_scores")
        return span
    (span,) = env.spans("agentstate.read credit_scores")
    return span


def test_read_span_shape_under_the_contrib_span(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    assert cur.execute("SELECT * FROM credit_scores WHERE id = ?", (2,)).fetchone() == (2, 610, 1)
    if env.layout == "ours_outermost":
        (span,) = env.spans()
        assert reads(span) == {"credit_score/2": "n:1"}
        return
    contrib_span, read_span = env.spans()
    assert scope(contrib_span) == CONTRIB_SCOPE and contrib_span.name == "SELECT"
    assert read_span.name == "agentstate.read credit_scores"
    assert scope(read_span) == OURS_SCOPE
    assert read_span.kind == SpanKind.CLIENT
    assert read_span.parent is not None
    assert read_span.parent.span_id == contrib_span.context.span_id
    a = attrs(read_span)
    assert not any(k.startswith("db.") for k in a)
    assert a[A.STORE] == "sqlite" and a[A.OP] == "read" and a[A.TIER] == "primary"
    assert reads(read_span) == {"credit_score/2": "n:1"}
    assert A.READ_FACTS not in attrs(contrib_span)
    conn.close()


def test_read_span_attributes_at_start_and_cache_tier(env: Env) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Spy(SimpleSpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append((span.name, dict(span.attributes or {})))

    env.provider.add_span_processor(Spy(InMemorySpanExporter()))
    conn = env.connect()
    cur = conn.cursor()
    assert cur.execute("SELECT version FROM score_cache WHERE id = 1").fetchone() == (1,)
    span = (
        env.spans("SELECT score_cache")[0]
        if env.layout == "ours_outermost"
        else env.spans("agentstate.read score_cache")[0]
    )
    assert attrs(span)[A.TIER] == "cache"
    assert reads(span) == {"credit_score/1": "n:1"}
    at_start = dict(seen)[span.name]
    assert at_start[A.STORE] == "sqlite"
    assert at_start[A.OP] == "read"
    if env.layout != "ours_outermost":  # our database span settles its tier at the first row
        assert at_start[A.TIER] == "cache"  # a point lookup: its rule's tier from the start
    conn.close()


def test_reads_record_fetched_rows_and_end_when_ours_would(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    name = (
        "SELECT credit_scores"
        if env.layout == "ours_outermost"
        else "agentstate.read credit_scores"
    )

    # Not a point lookup: open until the result is used up; only fetched rows count.
    cur.execute("SELECT id, score FROM credit_scores ORDER BY id")
    assert env.spans(name) == []
    assert cur.fetchone() == (1, 600)
    assert cur.fetchmany(1) == [(2, 610)]
    assert env.spans(name) == []
    cur.close()
    assert list(reads(read_span_of(env))) == ["credit_score/1", "credit_score/2"]

    # Point lookup: ends at the first fetch.
    env.clear()
    cur = conn.cursor()
    cur.execute("SELECT * FROM credit_scores WHERE id = 3")
    assert env.spans(name) == []
    cur.fetchone()
    assert reads(read_span_of(env)) == {"credit_score/3": "n:1"}

    # Missing row: the fact is read as absent.
    env.clear()
    assert cur.execute("SELECT * FROM credit_scores WHERE id = 99").fetchone() is None
    assert reads(read_span_of(env)) == {"credit_score/99": "none"}

    # Exhaustion by iteration, fetchall.
    env.clear()
    assert len(list(cur.execute("SELECT * FROM credit_scores"))) == 3
    assert len(reads(read_span_of(env))) == 3
    env.clear()
    assert len(cur.execute("SELECT * FROM credit_scores").fetchall()) == 3
    assert len(reads(read_span_of(env))) == 3

    # Re-execute ends the previous read.
    env.clear()
    cur.execute("SELECT * FROM credit_scores")
    cur.fetchone()
    cur.execute("SELECT * FROM notes")
    assert list(reads(read_span_of(env))) == ["credit_score/1"]
    cur.fetchall()

    # Garbage collection ends it too.
    env.clear()
    cur = conn.cursor()
    cur.execute("SELECT * FROM credit_scores")
    cur.fetchone()
    del cur
    gc.collect()
    wait_for(lambda: env.spans(name))
    assert list(reads(read_span_of(env))) == ["credit_score/1"]
    conn.close()


def test_writes_and_transactions(env: Env) -> None:
    conn = env.connect()
    cur = conn.cursor()
    cur.execute("UPDATE credit_scores SET score = 1, version = 2 WHERE id = 1")
    cur.execute("UPDATE credit_scores SET score = 2, version = 2 WHERE id = 2")
    first, second = db_spans(env.spans())
    assert writes(first) == {"credit_score/1": "n:2"}
    assert writes(second) == {"credit_score/2": "n:2"}
    txn = attrs(first)[A.TXN_ID]
    assert attrs(first)[A.COMMITTED] is False
    assert attrs(second)[A.TXN_ID] == txn
    conn.commit()
    (commit,) = env.spans("COMMIT")
    assert attrs(commit)[A.TXN_ID] == txn
    assert attrs(commit)[A.TXN_OUTCOME] == "commit"
    env.clear()
    with pytest.raises(ZeroDivisionError), conn:
        cur.execute("DELETE FROM credit_scores WHERE id = 3")
        raise ZeroDivisionError
    (delete,) = db_spans([s for s in env.spans() if s.name != "ROLLBACK"])
    assert writes(delete) == {"credit_score/3": "none"}
    (rollback,) = env.spans("ROLLBACK")
    assert attrs(rollback)[A.TXN_ID] == attrs(delete)[A.TXN_ID]
    assert attrs(rollback)[A.TXN_OUTCOME] == "rollback"
    # Errors from sqlite3 reach the application unchanged and mark the database span.
    env.clear()
    with pytest.raises(sqlite3.IntegrityError):
        cur.execute("INSERT INTO credit_scores (id) VALUES (1)")
    (failed,) = db_spans(env.spans())
    assert failed.status.status_code == StatusCode.ERROR
    conn.close()
    check = ORIGINAL_CONNECT(str(env.path))
    assert check.execute("SELECT * FROM credit_scores ORDER BY id").fetchall() == [
        (1, 1, 2),
        (2, 2, 2),
        (3, 620, 1),
    ]
    check.close()


class _Guard:
    """Raises a stale read for the span that carries the facts; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def guard_read(self, span: Any) -> None:
        facts = list((span.attributes or {}).get(A.READ_FACTS, ()))
        self.seen.append((span.name, {"recording": span.is_recording(), "facts": facts}))
        if facts:
            anomaly = Anomaly(
                kind=AnomalyKind.STALE_READ,
                trace_id="0" * 32,
                span_id="0" * 16,
                fact=facts[0],
                observed_version="n:1",
                expected_version="n:2",
                agents=("a",),
                evidence_span_ids=(),
                summary="stale",
            )
            raise StaleReadError(anomaly)


def test_read_guard_runs_on_the_open_read_span_before_rows_are_returned(env: Env) -> None:
    guard = _Guard()
    runtime.register(guard)
    try:
        conn = env.connect()
        cur = conn.cursor()
        cur.execute("SELECT * FROM credit_scores WHERE id = 1")
        with pytest.raises(StaleReadError):
            cur.fetchone()
        name = (
            "SELECT credit_scores"
            if env.layout == "ours_outermost"
            else "agentstate.read credit_scores"
        )
        assert guard.seen == [(name, {"recording": True, "facts": ["credit_score/1"]})]
        span = read_span_of(env)
        assert span.status.status_code == StatusCode.ERROR
        conn.close()
    finally:
        runtime.unregister(guard)


# --------------------------------------------------------------------------- processor


@pytest.mark.parametrize("layout", LAYOUTS)
def test_processor_flags_stale_cache_read(
    telemetry: Telemetry, tmp_path: Path, layout: str
) -> None:
    config.set_settings(config.Settings(rules=config.parse_rules_text(RULES, "rules.toml")))
    e = Env(tmp_path, layout, provider=telemetry.provider)
    with stack(layout, telemetry.provider), otel_agent_state.workflow("scoring"):
        with otel_agent_state.agent("writer"):
            conn = e.connect()
            cur = conn.cursor()
            cur.execute("SELECT score, version FROM credit_scores WHERE id = 1").fetchone()
            cur.execute("UPDATE credit_scores SET score = 700, version = 2 WHERE id = 1")
            conn.commit()
            conn.close()
        time.sleep(0.005)
        with otel_agent_state.agent("reader"):
            conn = e.connect()
            cur = conn.cursor()
            # The cache still holds version 1: a stale read of credit_score/1.
            row = cur.execute("SELECT score, version FROM score_cache WHERE id = 1").fetchone()
            assert row == (600, 1)
            conn.close()
    spans = telemetry.spans()
    stale = telemetry.anomalies("stale_read")
    assert len(stale) == 1, [(s.name, attrs(s)) for s in telemetry.anomalies()]
    a = attrs(stale[0])
    assert a[A.ANOMALY_FACT] == "credit_score/1"
    assert a[A.ANOMALY_OBSERVED] == "n:1"
    assert a[A.ANOMALY_EXPECTED] == "n:2"
    assert a[A.ANOMALY_AGENTS] == ["reader", "writer"]
    # The anomaly points at the span that carries the stale read.
    (cache_read,) = [s for s in spans if reads(s) and attrs(s).get(A.TIER) == "cache"]
    assert stale[0].parent is not None
    assert stale[0].parent.span_id == cache_read.context.span_id
    assert attrs(cache_read)[A.GEN_AI_AGENT_NAME] == "reader"
    # Every observation span is attributed to its agent, contrib's annotated spans included.
    for span in spans:
        if A.STORE in attrs(span) and span.name not in ("COMMIT",):
            assert attrs(span)[A.GEN_AI_AGENT_NAME] in ("writer", "reader"), span.name
    if layout != "ours_outermost":
        contrib_spans = [s for s in spans if scope(s) == CONTRIB_SCOPE]
        assert {attrs(s)[A.GEN_AI_AGENT_NAME] for s in contrib_spans} == {"writer", "reader"}
    # No duplicates: one database span per statement (2 SELECTs, 1 UPDATE) plus the COMMIT.
    assert len(db_spans([s for s in spans if s.name != "COMMIT"])) == 3
