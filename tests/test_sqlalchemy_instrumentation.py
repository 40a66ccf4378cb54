"""SQLAlchemy instrumentation on real SQLite files: spans, fact keys, versions, transactions,
no double counting with our sqlite3 instrumentation, coexistence with contrib's."""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor as ContribInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Imported before any test instruments contrib: contrib wraps `create_engine` by replacing
# module attributes, and a module first imported while it is wrapped keeps the wrapper.
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from otel_agent_state import agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation import sqlalchemy as inst
from otel_agent_state.instrumentation.sqlalchemy import (
    SQLAlchemyInstrumentor,
    instrument_engine,
    normalise,
    uninstrument_engine,
)
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry
from .semconv_support import MODES, semconv_mode

OURS_SCOPE = "otel_agent_state.instrumentation.sqlalchemy"
CONTRIB_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
SQLITE3_SCOPE = "otel_agent_state.instrumentation.sqlite3"


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str]
    balance: Mapped[int]


SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
CREATE TABLE scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
CREATE TABLE log (msg TEXT);
INSERT INTO accounts VALUES (1, 'alice', 100), (2, 'bob', 0);
INSERT INTO scores VALUES (42, 680, 1);
"""


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def observations(telemetry: Telemetry) -> list[ReadableSpan]:
    return [s for s in telemetry.spans() if A.OP in attrs(s)]


def reads(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.READ_FACTS, ()), a.get(A.READ_VERSIONS, ()), strict=True))


def writes(span: ReadableSpan) -> dict[str, str]:
    a = attrs(span)
    return dict(zip(a.get(A.WRITE_FACTS, ()), a.get(A.WRITE_VERSIONS, ()), strict=True))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "bank.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def ours(telemetry: Telemetry) -> Iterator[SQLAlchemyInstrumentor]:
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield instrumentor
    instrumentor.uninstrument()


@contextmanager
def instrumented(telemetry: Telemetry) -> Iterator[None]:
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


def engine_for(path: Path, **kw: Any) -> Engine:
    return sa.create_engine(f"sqlite:///{path}", **kw)


# --------------------------------------------------------------------------- helpers


NORMALISED = [
    (
        "SELECT a FROM t WHERE id = %(id_1)s::INTEGER",
        "pyformat",
        "SELECT a FROM t WHERE id = :id_1",
    ),
    (
        "SELECT a FROM t WHERE b LIKE 'x%%' AND id = %s",
        "format",
        "SELECT a FROM t WHERE b LIKE 'x%' AND id = ?",
    ),
    (
        "UPDATE t SET a=$1::VARCHAR(20) WHERE id = $2::INTEGER",
        "numeric_dollar",
        "UPDATE t SET a=?1 WHERE id = ?2",
    ),
    (
        "SELECT '$1', '%(x)s' FROM t WHERE ts = $1::TIMESTAMP WITHOUT TIME ZONE",
        "numeric_dollar",
        "SELECT '$1', '%(x)s' FROM t WHERE ts = ?1",
    ),
    ("SELECT a FROM t WHERE id = ?", "qmark", "SELECT a FROM t WHERE id = ?"),
]


@pytest.mark.parametrize(("sql", "style", "expected"), NORMALISED)
def test_normalise_brings_paramstyles_to_the_analysers(sql: str, style: str, expected: str) -> None:
    assert normalise(sql, style) == expected


# --------------------------------------------------------------------------- core and ORM


def test_core_reads_and_writes_carry_row_facts_and_semconv(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    accounts = sa.Table("accounts", sa.MetaData(), autoload_with=engine)
    telemetry.exporter.clear()
    with agent("teller"):
        with engine.begin() as conn:
            rows = conn.execute(sa.select(accounts).where(accounts.c.id == 1)).all()
            conn.execute(
                sa.update(accounts)
                .where(accounts.c.id == 1)
                .values(balance=accounts.c.balance - 10)
            )
        with engine.connect() as conn:
            after = conn.execute(sa.select(accounts.c.balance).where(accounts.c.id == 1)).all()
    assert rows == [(1, "alice", 100)] and after == [(90,)]
    select, update, select2 = observations(telemetry)
    a = attrs(select)
    assert select.instrumentation_scope is not None
    assert select.instrumentation_scope.name == OURS_SCOPE
    assert a[A.DB_SYSTEM_NAME] == "sqlite" and a[A.DB_NAMESPACE] == "bank"
    assert a[A.DB_COLLECTION_NAME] == "accounts" and a[A.DB_OPERATION_NAME] == "SELECT"
    assert a[A.DB_QUERY_SUMMARY] == "SELECT accounts" and a[A.OP] == "read"
    assert a[A.GEN_AI_AGENT_NAME] == "teller"
    assert not any("alice" in str(v) or str(v) == "100" for v in a.values())  # no values
    [(fact, old)] = reads(select).items()
    assert fact == "sqlite:bank/accounts/1" and old.startswith("h:")
    u = attrs(update)
    [(wfact, new)] = writes(update).items()
    assert wfact == fact and new != old
    assert u[A.COMMITTED] is False and u[A.TXN_ID]
    commit = telemetry.span_named("COMMIT")
    assert attrs(commit)[A.TXN_ID] == u[A.TXN_ID]
    assert attrs(commit)[A.TXN_OUTCOME] == "commit"
    assert commit.end_time is not None and update.end_time is not None
    assert commit.end_time >= update.end_time
    # A projection read maps to the version of the full row it belongs to.
    assert reads(select2) == {fact: new}


def test_orm_get_flush_and_delete(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    with Session(engine) as session:
        account = session.get(Account, 2)
        assert account is not None
        account.balance = 5
        session.add(Account(id=3, owner="carol", balance=7))
        session.flush()
        session.delete(account)
        session.commit()
    ops = [(attrs(s)[A.OP], attrs(s)[A.DB_OPERATION_NAME]) for s in observations(telemetry)]
    assert ops == [
        ("read", "SELECT"),
        ("write", "UPDATE"),
        ("write", "INSERT"),
        ("delete", "DELETE"),
    ]
    get, update, insert, delete = observations(telemetry)
    assert list(reads(get)) == ["sqlite:bank/accounts/2"]
    assert list(writes(update)) == ["sqlite:bank/accounts/2"]
    assert list(writes(insert)) == ["sqlite:bank/accounts/3"]
    assert writes(delete) == {"sqlite:bank/accounts/2": "none"}
    txn = {attrs(s)[A.TXN_ID] for s in (update, insert, delete)}
    assert len(txn) == 1 and attrs(telemetry.span_named("COMMIT"))[A.TXN_ID] in txn


def test_point_lookup_of_a_missing_row_reads_none(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    with Session(engine_for(db)) as session:
        assert session.get(Account, 99) is None
    [span] = observations(telemetry)
    assert reads(span) == {"sqlite:bank/accounts/99": "none"}


def test_rollback_is_a_scope_outcome(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = 0 WHERE id = :id"), {"id": 1})
        raise RuntimeError("boom")
    [update] = observations(telemetry)
    rollback = telemetry.span_named("ROLLBACK")
    assert attrs(rollback)[A.TXN_OUTCOME] == "rollback"
    assert attrs(rollback)[A.TXN_ID] == attrs(update)[A.TXN_ID]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar() == 100


def test_autocommit_writes_are_committed_at_once(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = 1 WHERE id = 1"))
    [update] = observations(telemetry)
    assert attrs(update)[A.COMMITTED] is True and A.TXN_ID not in attrs(update)
    assert not [s for s in telemetry.spans() if s.name in ("COMMIT", "ROLLBACK")]


def test_unresolvable_statements_fall_back_to_table_facts(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = balance + 1 WHERE balance > 0"))
        conn.execute(sa.text("INSERT INTO log VALUES ('x')"))
        got = conn.execute(sa.text("SELECT count(*) FROM accounts")).all()
    assert got == [(2,)]
    update, insert, count = observations(telemetry)
    assert list(writes(update)) == ["sqlite:bank/accounts"]
    assert attrs(update)[A.UNRESOLVED]
    assert list(writes(insert)) == ["sqlite:bank/log"]
    assert attrs(insert)[A.UNRESOLVED] == "no primary key"
    assert reads(count) == {} and attrs(count)[A.UNRESOLVED]


def test_failed_statement_is_an_error_span_and_the_error_reaches_the_app(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts VALUES (1, 'dup', 0)"))
    [span] = [s for s in telemetry.spans() if attrs(s).get(A.DB_OPERATION_NAME) == "INSERT"]
    assert span.status.status_code == StatusCode.ERROR
    assert A.WRITE_FACTS not in attrs(span)


def test_fact_keys_and_versions_match_the_sqlite3_instrumentation(
    telemetry: Telemetry, db: Path
) -> None:
    """The same row read through SQLAlchemy or through plain sqlite3: same fact, same version."""
    configure(rules=[{"name": "score", "keys": ["sqlite:*/scores/{id}"]}])
    with instrumented(telemetry), engine_for(db).connect() as conn:
        conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
        conn.execute(sa.text("SELECT * FROM scores WHERE id = 42")).all()
    sa_reads = [reads(s) for s in observations(telemetry)]
    telemetry.exporter.clear()
    driver = SQLite3Instrumentor()
    driver.instrument(tracer_provider=telemetry.provider)
    try:
        conn = sqlite3.connect(db)
        conn.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        conn.execute("SELECT * FROM scores WHERE id = 42").fetchall()
        conn.close()
    finally:
        driver.uninstrument()
    driver_reads = [reads(s) for s in observations(telemetry)]
    assert sa_reads == driver_reads
    assert list(sa_reads[1]) == ["score/42"]


# --------------------------------------------------------------------------- double counting


@pytest.mark.parametrize("order", ["sqlite3_first", "sqlalchemy_first"])
def test_driver_instrumented_too_records_each_statement_once(
    telemetry: Telemetry, db: Path, order: str
) -> None:
    driver, framework = SQLite3Instrumentor(), SQLAlchemyInstrumentor()
    first, second = (driver, framework) if order == "sqlite3_first" else (framework, driver)
    first.instrument(tracer_provider=telemetry.provider)
    second.instrument(tracer_provider=telemetry.provider)
    try:
        engine = engine_for(db)
        with agent("teller"), Session(engine) as session:
            account = session.get(Account, 1)
            assert account is not None
            account.balance = 1
            session.commit()
    finally:
        second.uninstrument()
        first.uninstrument()
    obs = observations(telemetry)
    assert [attrs(s)[A.OP] for s in obs] == ["read", "write"]
    assert {s.instrumentation_scope.name for s in obs if s.instrumentation_scope} == {SQLITE3_SCOPE}
    assert not [
        s
        for s in telemetry.spans()
        if s.instrumentation_scope and s.instrumentation_scope.name == OURS_SCOPE
    ]
    assert list(reads(obs[0])) == ["sqlite:bank/accounts/1"]


def test_connection_opened_before_the_driver_instrumentor_is_still_recorded(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db, poolclass=sa.pool.StaticPool)
    with engine.connect() as conn:  # the pool's one connection: a plain sqlite3 connection
        conn.execute(sa.text("SELECT 1")).all()
    driver = SQLite3Instrumentor()
    driver.instrument(tracer_provider=telemetry.provider)
    try:
        telemetry.exporter.clear()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM accounts WHERE id = 2")).all()
    finally:
        driver.uninstrument()
    [span] = observations(telemetry)
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == OURS_SCOPE


# --------------------------------------------------------------------------- contrib


ORDERS = ["contrib_first", "ours_first"]


@contextmanager
def both(telemetry: Telemetry, order: str) -> Iterator[tuple[Any, Any]]:
    contrib, mine = ContribInstrumentor(), SQLAlchemyInstrumentor()
    first, second = (contrib, mine) if order == "contrib_first" else (mine, contrib)
    # contrib 0.66b2 declares sqlalchemy < 2.1: without skip_dep_check it does nothing here
    first.instrument(tracer_provider=telemetry.provider, skip_dep_check=True)
    second.instrument(tracer_provider=telemetry.provider, skip_dep_check=True)
    try:
        yield contrib, mine
    finally:
        for one in (contrib, mine):
            if one.is_instrumented_by_opentelemetry:
                one.uninstrument()


def db_spans(telemetry: Telemetry) -> list[ReadableSpan]:
    return [
        s
        for s in telemetry.spans()
        if ("db.system" in attrs(s) or A.DB_SYSTEM_NAME in attrs(s)) and s.name != "connect"
    ]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_contrib_span_is_annotated_not_duplicated(
    telemetry: Telemetry, db: Path, order: str, mode: str
) -> None:
    with semconv_mode(mode), both(telemetry, order):
        engine = engine_for(db)
        telemetry.exporter.clear()
        with agent("teller"), Session(engine) as session:
            account = session.get(Account, 1)
            assert account is not None and account.balance == 100
            account.balance = 50
            session.commit()
    statements = [s for s in db_spans(telemetry) if s.name not in ("COMMIT", "ROLLBACK", "connect")]
    assert len(statements) == 2, [s.name for s in telemetry.spans()]
    assert all(
        s.instrumentation_scope and s.instrumentation_scope.name == CONTRIB_SCOPE
        for s in statements
    )
    select, update = statements
    # ours on contrib's span; the stable db.* ones only when contrib emits them too (issue 19)
    assert attrs(select)[A.OP] == "read"
    if mode == "default":
        assert "db.system" in attrs(select)
        assert not {A.DB_SYSTEM_NAME, A.DB_COLLECTION_NAME, A.DB_QUERY_SUMMARY} & set(attrs(select))
    else:
        assert attrs(select)[A.DB_COLLECTION_NAME] == "accounts"
    assert attrs(select)[A.GEN_AI_AGENT_NAME] == "teller"
    assert attrs(update)[A.OP] == "write"
    assert list(writes(update)) == ["sqlite:bank/accounts/1"]
    assert "db.statement" in attrs(update) or "db.query.text" in attrs(update)
    # the rows fetched after contrib's span ended: on our short read child span
    [read] = [s for s in telemetry.spans() if s.name == "agentstate.read accounts"]
    assert read.parent is not None and read.parent.span_id == select.context.span_id
    assert list(reads(read)) == ["sqlite:bank/accounts/1"]
    assert not any(k.startswith("db.") for k in attrs(read))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("removed_first", ["contrib", "ours"])
def test_uninstrument_in_either_order(
    telemetry: Telemetry, db: Path, order: str, removed_first: str
) -> None:
    with both(telemetry, order) as (contrib, mine):
        engine = engine_for(db)
        (contrib if removed_first == "contrib" else mine).uninstrument()
        telemetry.exporter.clear()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
        spans = db_spans(telemetry)
        assert len(spans) == 1
        [span] = spans
        scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
        if removed_first == "contrib":
            assert scope == OURS_SCOPE and list(reads(span)) == ["sqlite:bank/accounts/1"]
        else:
            assert scope == CONTRIB_SCOPE and A.OP not in attrs(span)
        (mine if removed_first == "contrib" else contrib).uninstrument()
        telemetry.exporter.clear()
        with engine_for(db).connect() as conn:
            conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
        assert db_spans(telemetry) == []


# --------------------------------------------------------------------------- one engine


def test_instrument_engine_and_symmetric_uninstrument(telemetry: Telemetry, db: Path) -> None:
    engine = engine_for(db)
    other = engine_for(db)
    instrument_engine(engine, tracer_provider=telemetry.provider)
    try:
        assert event.contains(
            engine, "after_cursor_execute", inst._engine_listeners[engine].after_cursor_execute
        )
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
        with other.connect() as conn:
            conn.execute(sa.text("SELECT * FROM accounts WHERE id = 2")).all()
        assert [list(reads(s)) for s in observations(telemetry)] == [["sqlite:bank/accounts/1"]]
        # with the global instrumentor too, the engine's statements are still recorded once
        with instrumented(telemetry):
            telemetry.exporter.clear()
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
            assert len(observations(telemetry)) == 1
    finally:
        uninstrument_engine(engine)
    telemetry.exporter.clear()
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
    assert telemetry.spans() == []
    assert "do_commit" not in vars(engine.dialect)


def test_uninstrument_removes_every_listener_and_dialect_wrapper(
    telemetry: Telemetry, db: Path
) -> None:
    engine = engine_for(db)
    with instrumented(telemetry):
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE accounts SET balance = 3 WHERE id = 1"))
        assert "do_commit" in vars(engine.dialect)
        listeners = inst._global
        assert listeners is not None
    for name, fn, _ in listeners.events():
        assert not event.contains(Engine, name, fn)
    assert "do_commit" not in vars(engine.dialect) and "do_rollback" not in vars(engine.dialect)
    telemetry.exporter.clear()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = 4 WHERE id = 1"))
    assert telemetry.spans() == []


def test_engine_tier_from_execution_options(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    replica = engine_for(db).execution_options(agentstate_tier="replica")
    with replica.connect() as conn:
        conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
    [span] = observations(telemetry)
    assert attrs(span)[A.TIER] == "replica"


def test_workflow_unaffected_when_no_provider_span_is_recording(db: Path) -> None:
    """Instrumented with the no-op global provider: statements run, nothing breaks."""
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument()
    try:
        with workflow("w"), Session(engine_for(db)) as session:
            account = session.get(Account, 1)
            assert account is not None
            account.balance = 9
            session.commit()
    finally:
        instrumentor.uninstrument()


def test_connection_collected_mid_transaction_reports_a_rollback(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)

    def abandon() -> str:
        conn = engine.connect()  # never committed, closed or rolled back
        conn.execute(sa.text("UPDATE accounts SET balance = 2 WHERE id = 1"))
        [update] = observations(telemetry)
        return str(attrs(update)[A.TXN_ID])

    txn = abandon()
    gc.collect()
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and not telemetry.anomalies()
        and not [s for s in telemetry.spans() if s.name == "ROLLBACK"]
    ):
        time.sleep(0.02)
    rollback = telemetry.span_named("ROLLBACK")
    assert attrs(rollback)[A.TXN_ID] == txn
    assert attrs(rollback)[A.TXN_OUTCOME] == "rollback"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar() == 100


def test_session_closed_without_commit_rolls_back(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    with Session(engine_for(db)) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = 0
        session.flush()
    rollback = telemetry.span_named("ROLLBACK")
    [update] = [s for s in observations(telemetry) if attrs(s)[A.OP] == "write"]
    assert attrs(rollback)[A.TXN_ID] == attrs(update)[A.TXN_ID]


def test_executemany_and_composite_keys(
    telemetry: Telemetry, tmp_path: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(tmp_path / "shop.db")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE stock (shop TEXT, sku TEXT, qty INTEGER, PRIMARY KEY (shop, sku))"
        )
    telemetry.exporter.clear()
    stock = sa.table("stock", sa.column("shop"), sa.column("sku"), sa.column("qty"))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(stock),
            [{"shop": "a/1", "sku": "x", "qty": 1}, {"shop": "b", "sku": "y,z", "qty": 2}],
        )
        rows = conn.execute(sa.select(stock).where(stock.c.shop == "b")).all()
    assert [tuple(r) for r in rows] == [("b", "y,z", 2)]
    insert, select = observations(telemetry)
    assert list(writes(insert)) == ["sqlite:shop/stock/a%2F1,x", "sqlite:shop/stock/b,y%2Cz"]
    assert list(reads(select)) == ["sqlite:shop/stock/b,y%2Cz"]
    assert reads(select)["sqlite:shop/stock/b,y%2Cz"] == writes(insert)["sqlite:shop/stock/b,y%2Cz"]


def test_result_abandoned_unconsumed_ends_its_span(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = engine_for(db)
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM accounts"))
        first = result.fetchone()
        assert first is not None
        assert observations(telemetry) == []  # still open: more rows may come
        result.close()
    [span] = observations(telemetry)
    assert list(reads(span)) == ["sqlite:bank/accounts/1"]  # only the row the app fetched


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["sqlite3_first", "sqlalchemy_first"])
async def test_aiosqlite_with_the_sqlite3_instrumentation_records_once(
    telemetry: Telemetry, db: Path, order: str
) -> None:
    driver, framework = SQLite3Instrumentor(), SQLAlchemyInstrumentor()
    first, second = (driver, framework) if order == "sqlite3_first" else (framework, driver)
    first.instrument(tracer_provider=telemetry.provider)
    second.instrument(tracer_provider=telemetry.provider)
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with AsyncSession(engine) as session:
            account = await session.get(Account, 1)
            assert account is not None
            account.balance = 3
            await session.commit()
    finally:
        await engine.dispose()
        second.uninstrument()
        first.uninstrument()
    obs = observations(telemetry)
    assert [attrs(s)[A.OP] for s in obs] == ["read", "write"]
    assert {s.instrumentation_scope.name for s in obs if s.instrumentation_scope} == {SQLITE3_SCOPE}


@pytest.mark.asyncio
async def test_aiosqlite_alone_is_recorded_by_sqlalchemy(
    telemetry: Telemetry, db: Path, ours: SQLAlchemyInstrumentor
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE accounts SET balance = 4 WHERE id = 2"))
            rows = (await conn.execute(sa.text("SELECT * FROM accounts WHERE id = 2"))).all()
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows] == [(2, "bob", 4)]
    update, select = observations(telemetry)
    assert writes(update) == reads(select)
    assert list(reads(select)) == ["sqlite:bank/accounts/2"]
    assert attrs(telemetry.span_named("COMMIT"))[A.TXN_ID] == attrs(update)[A.TXN_ID]


def test_engines_argument_like_contrib_and_symmetric_uninstrument(
    telemetry: Telemetry, db: Path
) -> None:
    engine = engine_for(db)
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, engines=[engine])
    assert engine in inst._engine_listeners
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
    assert len(observations(telemetry)) == 1  # once, though listened on twice
    instrumentor.uninstrument()
    assert engine not in inst._engine_listeners
    telemetry.exporter.clear()
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
    assert telemetry.spans() == []


@pytest.mark.parametrize("order", ORDERS)
def test_contrib_connect_span_gets_no_statement_attributes(
    telemetry: Telemetry, db: Path, order: str
) -> None:
    """Issue 19: with our sqlite3 instrumentation on too, the dialect's first queries run
    while contrib's `connect` span is current; they are not that span's statements."""
    driver = SQLite3Instrumentor()
    driver.instrument(tracer_provider=telemetry.provider)
    try:
        with both(telemetry, order):
            engine = engine_for(db)
            telemetry.exporter.clear()
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT * FROM accounts WHERE id = 1")).all()
    finally:
        driver.uninstrument()
    connects = [s for s in telemetry.spans() if s.name == "connect"]
    assert connects, [s.name for s in telemetry.spans()]
    for span in connects:
        assert span.instrumentation_scope and span.instrumentation_scope.name == CONTRIB_SCOPE
        assert not [k for k in attrs(span) if k.startswith("agentstate.")], attrs(span)
        assert A.DB_QUERY_SUMMARY not in attrs(span) and A.DB_OPERATION_NAME not in attrs(span)
