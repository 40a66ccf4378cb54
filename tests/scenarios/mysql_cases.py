"""Scenarios on the real MariaDB server through our PyMySQL, mysqlclient and aiomysql
instrumentations: the PostgreSQL pairs (replica and replica-table lag, orphaned autocommit
transfer vs rolled-back transaction, lost update) and InnoDB's old-snapshot stale read, each
with its correct twin, once per client. Each scenario runs in its own database
(`myi_sc_*`, created and dropped around it)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, decision, workflow

from ..mysql_support import CLIENTS, Conn
from . import Env, scenario
from .sqlite_cases import Failure, _in_threads

# Fact keys are `mysql:<db>/<table>/<pk>`; `*` matches the per-scenario database.
CREDIT = {
    "name": "credit_score",
    "keys": [
        "mysql:*/credit_scores/{id}",
        "mysql:*/credit_scores_copy/{id}",  # what a replica-tagged connection reads
        {"pattern": "mysql:*/scores_replica/{id}", "tier": "replica"},
    ],
    "version": {"column": "version"},
}
ACCOUNT = {"name": "account", "keys": ["mysql:*/accounts/{id}"]}  # content digests
RULES = (CREDIT, ACCOUNT)

Case = Callable[[Env, str], None]


def _untraced(env: Env, *statements: str) -> list[tuple[object, ...]]:
    with suppress_instrumentation():
        conn = env.mysql("pymysql")
        rows: list[tuple[object, ...]] = []
        for statement in statements:
            if statement.startswith("SELECT"):
                rows = [tuple(row) for row in conn.all(statement)]
            else:
                conn.execute(statement)
        return rows


def _setup(env: Env) -> None:
    statements = []
    for table in ("credit_scores", "credit_scores_copy", "scores_replica"):
        statements += [
            f"CREATE TABLE {table} (id int PRIMARY KEY, score int, version int)",
            f"INSERT INTO {table} VALUES (42, 680, 1)",
        ]
    statements += [
        "CREATE TABLE accounts (id varchar(8) PRIMARY KEY, balance int)",
        "INSERT INTO accounts VALUES ('A', 1000), ('B', 0)",
    ]
    _untraced(env, *statements)


def _balance(env: Env, account: str = "A") -> int:
    [(balance,)] = _untraced(env, f"SELECT balance FROM accounts WHERE id = '{account}'")
    return int(str(balance))


def _rescore(env: Env, client: str) -> None:
    with agent("credit-scorer"):
        conn = env.mysql(client)
        conn.execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = %s", (42,))


def _assess(conn: Conn, table: str) -> int:
    with agent("risk-assessor"):
        score, _ = conn.one(f"SELECT score, version FROM {table} WHERE id = %s", (42,))
        with decision("approve transaction") as chosen:
            chosen.outcome("approve" if score < 700 else "flag")
        return int(score)


# ------------------------------------------------------------------------ stale reads


def replica_lag(env: Env, client: str) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        assert _assess(env.mysql(client, tier="replica"), "credit_scores_copy") == 680


def replica_caught_up(env: Env, client: str) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        _untraced(env, "UPDATE credit_scores_copy SET score = 750, version = 2")  # replication
        assert _assess(env.mysql(client, tier="replica"), "credit_scores_copy") == 750


def replica_table_lag(env: Env, client: str) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        assert _assess(env.mysql(client), "scores_replica") == 680


def replica_table_caught_up(env: Env, client: str) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        _untraced(env, "UPDATE scores_replica SET score = 750, version = 2")
        assert _assess(env.mysql(client), "scores_replica") == 750


def old_snapshot(env: Env, client: str) -> None:
    """REPEATABLE READ: the assessor's snapshot was taken before the rescore committed."""
    _setup(env)
    with workflow("credit"):
        assessor = env.mysql(client, autocommit=False)
        assessor.one("SELECT balance FROM accounts WHERE id = 'A'")  # takes the snapshot
        _rescore(env, client)
        assert _assess(assessor, "credit_scores") == 680
        assessor.commit()


def fresh_snapshot(env: Env, client: str) -> None:
    _setup(env)
    with workflow("credit"):
        assessor = env.mysql(client, autocommit=False)
        assessor.one("SELECT balance FROM accounts WHERE id = 'A'")
        _rescore(env, client)
        assessor.commit()  # the next read opens a new snapshot
        assert _assess(assessor, "credit_scores") == 750
        assessor.commit()


# ------------------------------------------------------------------ orphaned mutations


def _transfer(env: Env, client: str, *, fail: bool, transaction: bool) -> None:
    conn = env.mysql(client, autocommit=not transaction)
    debit = "UPDATE accounts SET balance = balance - 100 WHERE id = 'A'"
    credit = "UPDATE accounts SET balance = balance + 100 WHERE id = 'B'"
    try:
        with agent("payments"):
            try:
                conn.execute(debit)
                if fail:
                    raise Failure("payment gateway timed out between the two updates")
                conn.execute(credit)
            except Failure:
                if transaction:
                    conn.rollback()
                raise
            if transaction:
                conn.commit()
    except Failure:
        pass


def half_applied_transfer_autocommit(env: Env, client: str) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, client, fail=True, transaction=False)
    assert (_balance(env, "A"), _balance(env, "B")) == (900, 0)


def failed_transfer_rolled_back(env: Env, client: str) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, client, fail=True, transaction=True)
    assert (_balance(env, "A"), _balance(env, "B")) == (1000, 0)


def transfer_committed(env: Env, client: str) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, client, fail=False, transaction=True)
    assert (_balance(env, "A"), _balance(env, "B")) == (900, 100)


# ------------------------------------------------------------------------ lost updates


def _withdraw(
    env: Env, client: str, name: str, amount: int, barrier: threading.Barrier | None
) -> None:
    with agent(name):
        conn = Conn(client, env.mysql_dsn)  # its own, on this thread (closed here)
        try:
            (balance,) = conn.one("SELECT balance FROM accounts WHERE id = 'A'")
            if barrier is not None:
                barrier.wait()  # both read before either writes
                if name == "bob":
                    barrier.wait()
            conn.execute("UPDATE accounts SET balance = %s WHERE id = 'A'", (balance - amount,))
            if barrier is not None and name == "alice":
                barrier.wait()
        finally:
            conn.close()


def lost_update_concurrent_agents(env: Env, client: str) -> None:
    _setup(env)
    barrier = threading.Barrier(2, timeout=20)
    with workflow("payouts"):
        _in_threads(
            lambda: _withdraw(env, client, "alice", 100, barrier),
            lambda: _withdraw(env, client, "bob", 300, barrier),
        )
    assert _balance(env) == 700


def sequential_withdrawals(env: Env, client: str) -> None:
    _setup(env)
    with workflow("payouts"):
        _withdraw(env, client, "alice", 100, None)
        _withdraw(env, client, "bob", 300, None)
    assert _balance(env) == 600


# ------------------------------------------------------------------------ registry

CASES: list[tuple[Case, str, dict[str, int]]] = [
    (replica_lag, "replica connection reads the score before replication", {"stale_read": 1}),
    (replica_caught_up, "replica connection reads after replication caught up", {}),
    (replica_table_lag, "a table the rules mark as replica holds the old score", {"stale_read": 1}),
    (replica_table_caught_up, "the replica-tier table caught up before the read", {}),
    (old_snapshot, "REPEATABLE READ snapshot older than the rescore", {"stale_read": 1}),
    (fresh_snapshot, "a new transaction's snapshot sees the rescore", {}),
    (
        half_applied_transfer_autocommit,
        "transfer fails between its two UPDATEs in autocommit",
        {"orphaned_mutation": 1},
    ),
    (failed_transfer_rolled_back, "transfer fails inside a transaction that rolls back", {}),
    (transfer_committed, "transfer commits in a transaction", {}),
    (
        lost_update_concurrent_agents,
        "two agents SELECT the balance, then both UPDATE it",
        {"lost_update": 1},
    ),
    (sequential_withdrawals, "the same two withdrawals, one after the other", {}),
]


def _register(case: Case, client: str, description: str, expect: dict[str, int]) -> None:
    def run(env: Env) -> None:
        case(env, client)

    run.__name__ = f"{client}_{case.__name__}"
    run.__module__ = __name__
    scenario(f"{description} ({client})", expect=expect, stores=(client,), rules=RULES)(run)


for _client in CLIENTS:
    for _case, _description, _expect in CASES:
        _register(_case, _client, _description, _expect)
