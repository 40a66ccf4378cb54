"""SQLAlchemy + processor on the real PostgreSQL (psycopg sync, asyncpg async) and on SQLite
files (pysqlite sync, aiosqlite async): lost updates through the ORM, orphaned autocommit
transfers, stale replica reads, raise mode, and the correct twin of each."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import context as otel_context
from opentelemetry.trace import StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from otel_agent_state import StaleReadError, agent, configure, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

from .conftest import Telemetry

# Outside `public` a PostgreSQL key names the schema (`postgresql:test/<schema>.accounts/1`,
# as the psycopg instrumentation has it): the rules map the primary's and the lagging
# replica's rows (two schemas here) onto one logical fact.
RULES = [
    {
        "name": "account",
        "keys": ["postgresql:*/agentstate_sa_*.accounts/{id}", "sqlite:*/accounts/{id}"],
    },
    {
        "name": "ledger",
        "keys": ["postgresql:*/agentstate_sa_*.ledgers/{id}", "sqlite:*/ledgers/{id}"],
        "version": {"column": "version"},
    },
]

DDL = [
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner VARCHAR(20) NOT NULL, "
    "balance INTEGER NOT NULL)",
    "CREATE TABLE ledgers (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, "
    "version INTEGER NOT NULL)",
    "INSERT INTO accounts VALUES (1, 'alice', 1000), (2, 'bob', 0)",
    "INSERT INTO ledgers VALUES (1, 1000, 1)",
]


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str]
    balance: Mapped[int]


class Ledger(Base):
    """ORM optimistic concurrency: UPDATE ... WHERE version = <the version loaded>."""

    __tablename__ = "ledgers"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


@dataclass
class Backend:
    """One database (primary) and a lagging copy of it (replica) with the same fact keys."""

    name: str
    make: Callable[[str], sa.Engine]  # "primary" / "replica" -> engine
    make_async: Callable[[str], AsyncEngine]
    schemas: tuple[str, ...] = ()

    def engine(self, role: str = "primary", **options: Any) -> sa.Engine:
        engine = self.make(role)
        return engine.execution_options(**options) if options else engine


def _run_ddl(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for statement in DDL:
            conn.exec_driver_sql(statement)


@pytest.fixture
def postgresql(postgres_dsn: str) -> Iterator[Backend]:
    base = postgres_dsn.split("://", 1)[1]
    tag = uuid.uuid4().hex[:8]
    schemas = {"primary": f"agentstate_sa_{tag}", "replica": f"agentstate_sa_{tag}_replica"}
    admin = sa.create_engine(f"postgresql+psycopg://{base}", isolation_level="AUTOCOMMIT")
    engines: list[Any] = []

    def make(role: str) -> sa.Engine:
        engine = sa.create_engine(
            f"postgresql+psycopg://{base}",
            connect_args={"options": f"-csearch_path={schemas[role]}"},
        )
        engines.append(engine)
        return engine

    def make_async(role: str) -> AsyncEngine:
        engine = create_async_engine(
            f"postgresql+asyncpg://{base}",
            connect_args={"server_settings": {"search_path": schemas[role]}},
        )
        engines.append(engine.sync_engine)
        return engine

    with admin.connect() as conn:
        for schema in schemas.values():
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        for role in schemas:
            setup = make(role)
            _run_ddl(setup)
        yield Backend("postgresql", make, make_async, tuple(schemas.values()))
    finally:
        for engine in engines:
            engine.dispose()
        with admin.connect() as conn:
            for schema in schemas.values():
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Backend]:
    # Same file name in two folders: same namespace (`bank`), so the same fact keys.
    paths = {"primary": tmp_path / "bank.db", "replica": tmp_path / "replica" / "bank.db"}
    paths["replica"].parent.mkdir()
    engines: list[Any] = []

    def make(role: str) -> sa.Engine:
        engine = sa.create_engine(f"sqlite:///{paths[role]}")
        engines.append(engine)
        return engine

    def make_async(role: str) -> AsyncEngine:
        engine = create_async_engine(f"sqlite+aiosqlite:///{paths[role]}")
        engines.append(engine.sync_engine)
        return engine

    for role in paths:
        _run_ddl(make(role))
    yield Backend("sqlite", make, make_async)
    for engine in engines:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def ours(telemetry: Telemetry) -> Iterator[None]:
    configure(rules=RULES)
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield
    instrumentor.uninstrument()


def in_threads(*jobs: Callable[[], None]) -> None:
    """Run jobs in threads that carry the current OTel context (the workflow span)."""
    parent = otel_context.get_current()
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        token = otel_context.attach(parent)
        try:
            job()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)
        finally:
            otel_context.detach(token)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]


def anomaly_attrs(telemetry: Telemetry, kind: str) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in telemetry.anomalies(kind)]


def test_postgres_statement_shapes_resolve_or_say_why(
    telemetry: Telemetry, postgresql: Backend, ours: None
) -> None:
    """Upserts, RETURNING, joins, CTEs, DDL: row facts where the rows are known, else a
    table-level fact with `agentstate.unresolved`; never an error of ours."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    engine = postgresql.engine()
    accounts = sa.Table("accounts", sa.MetaData(), autoload_with=engine)
    telemetry.exporter.clear()
    with engine.begin() as conn:
        conn.execute(
            pg_insert(accounts)
            .values(id=3, owner="carol", balance=5)
            .on_conflict_do_update(index_elements=["id"], set_={"balance": 6})
        )
        returned = conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == 3)
            .values(balance=accounts.c.balance + 1)
            .returning(accounts.c.balance)
        ).scalar()
        joined = conn.execute(
            sa.text(
                "SELECT a.id, l.balance FROM accounts a JOIN ledgers l ON l.id = a.id "
                "WHERE a.id = :id"
            ),
            {"id": 1},
        ).all()
        cte = conn.execute(
            sa.text("WITH rich AS (SELECT id FROM accounts WHERE balance > 100) SELECT * FROM rich")
        ).all()
        conn.execute(sa.text("UPDATE accounts SET balance = balance WHERE owner = 'nobody'"))
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
    assert returned == 6 and joined == [(1, 1000)] and cte == [(1,)]
    obs = [dict(s.attributes or {}) for s in telemetry.spans() if A.OP in (s.attributes or {})]
    assert [a[A.DB_QUERY_SUMMARY] for a in obs] == [
        "INSERT accounts",
        "UPDATE accounts",
        "SELECT accounts",
        "SELECT rich",
        "UPDATE accounts",
        "INSERT scratch",
    ]
    upsert, returning, join, with_clause, nobody, scratch = obs
    assert upsert[A.WRITE_FACTS] == ("account/3",)
    assert returning[A.WRITE_FACTS] == ("account/3",)
    assert returning[A.WRITE_VERSIONS] != upsert[A.WRITE_VERSIONS]
    assert join[A.UNRESOLVED] == "join" and A.READ_FACTS not in join
    assert with_clause[A.UNRESOLVED] == "with clause"
    assert A.WRITE_FACTS not in nobody  # no row matched: nothing written
    schema = postgresql.schemas[0]
    assert scratch[A.WRITE_FACTS] == (f"postgresql:test/{schema}.scratch/1",)
    for span in telemetry.spans():
        assert span.status.status_code != StatusCode.ERROR


# --------------------------------------------------------------------------- lost update


def test_lost_update_through_the_orm_in_threads(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.engine()
    both_read = threading.Barrier(2, timeout=20)
    alice_done = threading.Event()

    def withdraw(name: str, amount: int) -> None:
        with agent(name), Session(engine, expire_on_commit=False) as session:
            account = session.get(Account, 1)
            assert account is not None and account.balance == 1000
            # ends the read transaction (no locks held while waiting); with expire_on_commit
            # off the ORM keeps the loaded values, as an agent keeps what it read
            session.commit()
            both_read.wait()
            if name == "bob":
                assert alice_done.wait(20)
            account.balance = 1000 - amount  # from the value both agents read
            session.commit()
            if name == "alice":
                alice_done.set()

    with workflow("payouts"):
        in_threads(lambda: withdraw("alice", 100), lambda: withdraw("bob", 300))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar() == 700
    [lost] = anomaly_attrs(telemetry, "lost_update")
    assert lost[A.ANOMALY_FACT] == "account/1"
    assert lost[A.ANOMALY_AGENTS] == ("alice", "bob")
    assert str(lost[A.ANOMALY_OBSERVED]).startswith("h:")


def test_optimistic_version_check_is_not_a_lost_update(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    """The twin: a version_id_col makes the second write fail; bob reloads and retries."""
    engine = backend.engine()
    both_read = threading.Barrier(2, timeout=20)
    alice_done = threading.Event()
    bob_conflicted: list[bool] = []

    def withdraw(name: str, amount: int) -> None:
        with agent(name), Session(engine, expire_on_commit=False) as session:
            ledger = session.get(Ledger, 1)
            assert ledger is not None
            session.commit()
            both_read.wait()
            if name == "bob":
                assert alice_done.wait(20)
            ledger.balance -= amount
            try:
                session.commit()
            except sa.orm.exc.StaleDataError:
                bob_conflicted.append(True)
                session.rollback()
                fresh = session.get(Ledger, 1)
                assert fresh is not None
                fresh.balance -= amount
                session.commit()
            if name == "alice":
                alice_done.set()

    with workflow("payouts"):
        in_threads(lambda: withdraw("alice", 100), lambda: withdraw("bob", 300))
    assert bob_conflicted == [True]
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT balance, version FROM ledgers WHERE id = 1")).one()
    assert tuple(row) == (600, 3)
    assert telemetry.anomalies() == []
    versions = [
        dict(s.attributes or {}).get(A.WRITE_VERSIONS)
        for s in telemetry.spans()
        if A.WRITE_FACTS in (s.attributes or {})
    ]
    assert versions == [("n:2",), ("n:3",)]  # the failed UPDATE (no row matched) wrote nothing


# --------------------------------------------------------------------------- orphaned mutation


def _transfer(engine: sa.Engine, fail: bool) -> None:
    accounts = sa.table("accounts", sa.column("id"), sa.column("balance"))
    with engine.connect() as conn:
        conn.execute(
            sa.update(accounts).where(accounts.c.id == 1).values(balance=accounts.c.balance - 50)
        )
        if fail:
            raise ConnectionError("the payment service went away")
        conn.execute(
            sa.update(accounts).where(accounts.c.id == 2).values(balance=accounts.c.balance + 50)
        )
        conn.commit()


def test_autocommit_transfer_failing_in_between_is_orphaned(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.engine(isolation_level="AUTOCOMMIT")
    with workflow("payments"), pytest.raises(ConnectionError), agent("transfer-agent"):
        _transfer(engine, fail=True)
    [orphan] = anomaly_attrs(telemetry, "orphaned_mutation")
    assert orphan[A.ANOMALY_FACT] == "account/1"
    assert orphan[A.ANOMALY_AGENTS] == ("transfer-agent",)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar() == 950


def test_transfer_failing_inside_a_transaction_is_rolled_back_not_orphaned(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.engine()
    with workflow("payments"):
        with pytest.raises(ConnectionError), agent("transfer-agent"):
            _transfer(engine, fail=True)
        with agent("transfer-agent"):
            _transfer(engine, fail=False)  # and a complete transfer commits both legs
    assert telemetry.anomalies() == []
    outcomes = [
        dict(s.attributes or {})[A.TXN_OUTCOME]
        for s in telemetry.spans()
        if A.TXN_OUTCOME in (s.attributes or {})
    ]
    assert outcomes == ["rollback", "commit"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, balance FROM accounts ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, 950), (2, 50)]


def test_rolled_back_savepoint_discards_its_writes(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    """ORM begin_nested(): the write under the rolled-back savepoint never commits, so the
    reader that sees the old row is not stale; the released savepoint commits with the rest."""
    engine = backend.engine()
    with workflow("edits"):
        with agent("editor"), Session(engine) as session:
            first = session.get(Account, 1)
            second = session.get(Account, 2)
            assert first is not None and second is not None
            with pytest.raises(ValueError), session.begin_nested():
                first.balance = 1
                session.flush()
                raise ValueError("changed my mind")
            with session.begin_nested():
                second.balance = 7
            session.commit()
        with agent("reader"), Session(engine) as session:
            first = session.get(Account, 1)
            second = session.get(Account, 2)
            assert first is not None and first.balance == 1000
            assert second is not None and second.balance == 7
    assert telemetry.anomalies() == []
    ends = [
        dict(s.attributes or {})[A.TXN_OUTCOME]
        for s in telemetry.spans()
        if s.name == "agentstate.savepoint"
    ]
    assert ends == ["rollback", "commit"]


def test_write_under_a_rolled_back_savepoint_is_not_read_as_committed(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    """Without scopes the savepoint's write would count as committed at COMMIT: check that a
    read of the restored row by another agent does not raise in raise mode."""
    configure(on_anomaly="raise")
    engine = backend.engine()
    with workflow("edits"):
        with agent("editor"), engine.begin() as conn:
            nested = conn.begin_nested()
            conn.execute(sa.text("UPDATE accounts SET balance = 5 WHERE id = 1"))
            nested.rollback()
            conn.execute(sa.text("UPDATE accounts SET balance = 6 WHERE id = 2"))
        with agent("reader"), engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM accounts ORDER BY id")).all()
    assert [r.balance for r in rows] == [1000, 6]
    assert telemetry.anomalies() == []


# --------------------------------------------------------------------------- stale read


def _rebalance(engine: sa.Engine) -> None:
    with agent("rebalancer"), Session(engine) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = 400
        session.commit()


def _replicate(backend: Backend) -> None:
    """Replication catches up: copy the primary row to the replica (untraced setup work)."""
    with backend.engine().connect() as conn:
        balance = conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar()
    with backend.engine("replica").begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = :b WHERE id = 1"), {"b": balance})


def _rebalance_ledger(engine: sa.Engine) -> None:
    with agent("rebalancer"), Session(engine) as session:
        ledger = session.get(Ledger, 1)
        assert ledger is not None
        ledger.balance = 400  # the ORM bumps its version column: n:2
        session.commit()


def test_replica_read_behind_a_committed_write_is_stale(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    replica = backend.engine("replica", agentstate_tier="replica")
    with workflow("credit"):
        _rebalance_ledger(backend.engine())
        with agent("risk-assessor"), Session(replica) as session:
            ledger = session.get(Ledger, 1)
            assert ledger is not None and ledger.balance == 1000  # the lagging copy
    [stale] = anomaly_attrs(telemetry, "stale_read")
    assert stale[A.ANOMALY_FACT] == "ledger/1"
    assert (stale[A.ANOMALY_OBSERVED], stale[A.ANOMALY_EXPECTED]) == ("n:1", "n:2")
    assert stale[A.ANOMALY_AGENTS] == ("risk-assessor", "rebalancer")
    [read] = [
        s
        for s in telemetry.spans()
        if dict(s.attributes or {}).get(A.GEN_AI_AGENT_NAME) == "risk-assessor"
        and A.READ_FACTS in (s.attributes or {})
    ]
    assert dict(read.attributes or {})[A.TIER] == "replica"


def test_a_replica_rows_digest_proves_nothing_about_the_primarys(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    """SPEC §5: digests compare only within one store and tier. Without a version column a
    lagging replica is not visible (docs/detection.md says so)."""
    replica = backend.engine("replica", agentstate_tier="replica")
    with workflow("credit"):
        _rebalance(backend.engine())
        with agent("risk-assessor"), Session(replica) as session:
            account = session.get(Account, 1)
            assert account is not None and account.balance == 1000
    assert anomaly_attrs(telemetry, "stale_read") == []


def test_replica_read_after_replication_caught_up_is_fresh(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    replica = backend.engine("replica", agentstate_tier="replica")
    with workflow("credit"):
        _rebalance(backend.engine())
        _replicate(backend)
        with agent("risk-assessor"), Session(replica) as session:
            account = session.get(Account, 1)
            assert account is not None and account.balance == 400
    assert telemetry.anomalies() == []


def test_raise_mode_stops_the_stale_row_before_the_orm_returns_it(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    configure(on_anomaly="raise")
    replica = backend.engine("replica", agentstate_tier="replica")
    with workflow("credit"):
        _rebalance_ledger(backend.engine())
        with agent("risk-assessor"):
            with Session(replica) as session, pytest.raises(StaleReadError) as caught:
                session.get(Ledger, 1)
            with replica.connect() as conn, pytest.raises(StaleReadError):
                conn.execute(sa.text("SELECT * FROM ledgers WHERE id = 1")).all()
            # the primary serves the fresh row, and a query the guard passes works as usual
            with Session(backend.engine()) as session:
                fresh = session.get(Ledger, 1)
                assert fresh is not None and fresh.balance == 400
    anomaly = caught.value.anomaly
    assert anomaly.fact == "ledger/1"
    assert anomaly.observed_version != anomaly.expected_version


# --------------------------------------------------------------------------- async engines


@pytest.mark.asyncio
async def test_async_lost_update_between_asyncio_tasks(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.make_async("primary")
    both_read = asyncio.Barrier(2)
    alice_done = asyncio.Event()

    async def withdraw(name: str, amount: int) -> None:
        with agent(name):
            async with AsyncSession(engine, expire_on_commit=False) as session:
                account = await session.get(Account, 1)
                assert account is not None and account.balance == 1000
                await session.commit()
                await both_read.wait()
                if name == "bob":
                    await alice_done.wait()
                account.balance = 1000 - amount
                await session.commit()
                if name == "alice":
                    alice_done.set()

    try:
        with workflow("payouts"):
            await asyncio.wait_for(asyncio.gather(withdraw("alice", 100), withdraw("bob", 300)), 30)
    finally:
        await engine.dispose()
    [lost] = anomaly_attrs(telemetry, "lost_update")
    assert lost[A.ANOMALY_FACT] == "account/1"
    assert lost[A.ANOMALY_AGENTS] == ("alice", "bob")
    stores = {
        dict(s.attributes or {}).get(A.STORE)
        for s in telemetry.spans()
        if A.OP in (s.attributes or {})
    }
    assert stores == {backend.name}


@pytest.mark.asyncio
async def test_async_sequential_read_modify_write_has_no_finding(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.make_async("primary")
    try:
        with workflow("payouts"):
            for name, amount in (("alice", 100), ("bob", 300)):
                with agent(name):
                    async with AsyncSession(engine) as session:
                        account = await session.get(Account, 1)
                        assert account is not None
                        account.balance -= amount
                        await session.commit()
    finally:
        await engine.dispose()
    assert telemetry.anomalies() == []
    writes = [s for s in telemetry.spans() if A.WRITE_FACTS in (s.attributes or {})]
    assert len(writes) == 2


@pytest.mark.asyncio
async def test_async_orphan_and_raise_mode(
    telemetry: Telemetry, backend: Backend, ours: None
) -> None:
    engine = backend.make_async("primary")
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    replica = backend.make_async("replica").execution_options(agentstate_tier="replica")
    try:
        with workflow("payments"):
            with pytest.raises(ConnectionError), agent("transfer-agent"):
                async with auto.connect() as conn:
                    await conn.execute(
                        sa.text("UPDATE accounts SET balance = balance - 50 WHERE id = 1")
                    )
                    raise ConnectionError("gone")
            _rebalance_ledger(backend.engine())
            configure(on_anomaly="raise")
            with agent("auditor"):
                async with AsyncSession(replica) as session:
                    with pytest.raises(StaleReadError):
                        await session.get(Ledger, 1)
    finally:
        await engine.dispose()
        await replica.dispose()
    assert [a[A.ANOMALY_FACT] for a in anomaly_attrs(telemetry, "orphaned_mutation")] == [
        "account/1"
    ]
    assert [a[A.ANOMALY_AGENTS] for a in anomaly_attrs(telemetry, "stale_read")] == [
        ("auditor", "rebalancer")
    ]


# --------------------------------------------------------------------------- with the driver's


def _get_and_update(engine: sa.Engine) -> None:
    with agent("teller"), Session(engine) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance += 5
        session.commit()


def _observations(telemetry: Telemetry) -> list[Any]:
    """Observations of the accounts table (not the dialect's own start-up queries)."""
    return [
        s
        for s in telemetry.spans()
        if A.OP in (s.attributes or {})
        and "accounts" in str((s.attributes or {}).get(A.DB_COLLECTION_NAME, ""))
    ]


def test_same_fact_keys_as_the_psycopg_instrumentation(
    telemetry: Telemetry, postgresql: Backend
) -> None:
    from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor

    engine = postgresql.engine()
    keys: list[list[tuple[str, ...]]] = []
    for instrumentor in (SQLAlchemyInstrumentor(), PsycopgInstrumentor()):
        telemetry.exporter.clear()
        instrumentor.instrument(tracer_provider=telemetry.provider)
        try:
            _get_and_update(engine)
        finally:
            instrumentor.uninstrument()
        keys.append(
            [
                tuple((s.attributes or {}).get(A.READ_FACTS, ()))
                + tuple((s.attributes or {}).get(A.WRITE_FACTS, ()))
                for s in _observations(telemetry)
            ]
        )
    [schema] = [k for k in postgresql.schemas if not k.endswith("_replica")]
    assert keys[0] == keys[1] == [(f"postgresql:test/{schema}.accounts/1",)] * 2


@pytest.mark.parametrize("order", ["psycopg_first", "sqlalchemy_first"])
def test_psycopg_instrumented_too_records_each_statement_once(
    telemetry: Telemetry, postgresql: Backend, order: str
) -> None:
    from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor

    driver, framework = PsycopgInstrumentor(), SQLAlchemyInstrumentor()
    first, second = (driver, framework) if order == "psycopg_first" else (framework, driver)
    engine = postgresql.engine()
    first.instrument(tracer_provider=telemetry.provider)
    second.instrument(tracer_provider=telemetry.provider)
    try:
        _get_and_update(engine)
    finally:
        second.uninstrument()
        first.uninstrument()
    obs = _observations(telemetry)
    assert [dict(s.attributes or {})[A.OP] for s in obs] == ["read", "write"]
    scopes = {s.instrumentation_scope.name for s in telemetry.spans() if s.instrumentation_scope}
    assert "otel_agent_state.instrumentation.sqlalchemy" not in scopes
