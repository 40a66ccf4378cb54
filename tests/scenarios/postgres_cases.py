"""Scenarios on the real PostgreSQL server through our psycopg 3 instrumentation, each in its
own schema (`agentstate_sc_*`, created and dropped around it; connections set search_path)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, decision, workflow
from otel_agent_state.instrumentation.psycopg import instrument_connection

from . import Env, scenario
from .sqlite_cases import Failure, _in_threads

PG = ("postgres",)
# Fact keys are `postgresql:<db>/<schema>.<table>/<pk>`; `*` matches the per-scenario schema.
CREDIT = {
    "name": "credit_score",
    "keys": [
        "postgresql:*/*.credit_scores/{id}",
        "postgresql:*/*.credit_scores_copy/{id}",  # what a replica-tagged connection reads
        {"pattern": "postgresql:*/*.scores_replica/{id}", "tier": "replica"},
    ],
    "version": {"column": "version"},
}
ACCOUNT = {"name": "account", "keys": ["postgresql:*/*.accounts/{id}"]}  # content digests
RULES = (CREDIT, ACCOUNT)


def _setup(env: Env) -> None:
    with suppress_instrumentation():
        conn = env.postgres()
        for table in ("credit_scores", "credit_scores_copy", "scores_replica"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, score int, version int)")
            conn.execute(f"INSERT INTO {table} VALUES (42, 680, 1)")
        conn.execute("CREATE TABLE accounts (id text PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO accounts VALUES ('A', 1000), ('B', 0)")


def _replicate(env: Env, table: str) -> None:
    """The server's replication, not an agent's action: untraced."""
    with suppress_instrumentation():
        env.postgres().execute(
            f"UPDATE {table} r SET score = p.score, version = p.version"
            " FROM credit_scores p WHERE r.id = p.id"
        )


def _balance(env: Env, account: str = "A") -> int:
    with suppress_instrumentation():
        row = env.postgres().execute("SELECT balance FROM accounts WHERE id = %s", (account,))
        return int(row.fetchone()[0])


def _rescore(env: Env) -> None:
    with agent("credit-scorer"):
        env.postgres().execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")


def _assess(conn: Any, table: str) -> int:
    with agent("risk-assessor"):
        score, _ = conn.execute(
            f"SELECT score, version FROM {table} WHERE id = %s", (42,)
        ).fetchone()
        with decision("approve transaction") as chosen:
            chosen.outcome("approve" if score < 700 else "flag")
        return int(score)


def _replica(env: Env) -> Any:
    return instrument_connection(env.postgres(), tier="replica")


# ------------------------------------------------------------------------ replica lag


@scenario(
    "replica connection reads the score before replication applied the new version",
    expect={"stale_read": 1},
    stores=PG,
    rules=RULES,
)
def replica_lag(env: Env) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env)
        assert _assess(_replica(env), "credit_scores_copy") == 680


@scenario("replica connection reads after replication caught up", stores=PG, rules=RULES)
def replica_caught_up(env: Env) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env)
        _replicate(env, "credit_scores_copy")
        assert _assess(_replica(env), "credit_scores_copy") == 750


@scenario(
    "a table the rules mark as replica still holds the old score",
    expect={"stale_read": 1},
    stores=PG,
    rules=RULES,
)
def replica_table_lag(env: Env) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env)
        assert _assess(env.postgres(), "scores_replica") == 680


@scenario(
    "replica lag within a bounded-staleness window is allowed",
    stores=PG,
    rules=RULES,
    consistency="bounded:60000",
)
def replica_lag_within_bound(env: Env) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env)
        _assess(_replica(env), "credit_scores_copy")


@scenario(
    "agent routes the read of its own write to a lagging replica (session consistency)",
    expect={"stale_read": 1},
    stores=PG,
    rules=RULES,
    consistency="session",
)
def session_own_write_on_lagging_replica(env: Env) -> None:
    _setup(env)
    with workflow("credit"), agent("credit-scorer"):
        env.postgres().execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
        _replica(env).execute(
            "SELECT score, version FROM credit_scores_copy WHERE id = 42"
        ).fetchone()


@scenario(
    "another agent's write does not bind a session-consistent replica reader",
    stores=PG,
    rules=RULES,
    consistency="session",
)
def session_other_agents_write_on_replica(env: Env) -> None:
    _setup(env)
    with workflow("credit"):
        _rescore(env)
        _assess(_replica(env), "credit_scores_copy")


# ------------------------------------------------------------------ orphaned mutations


def _transfer(env: Env, *, fail: bool, transaction: bool) -> None:
    conn = env.postgres()
    debit = "UPDATE accounts SET balance = balance - 100 WHERE id = 'A'"
    credit = "UPDATE accounts SET balance = balance + 100 WHERE id = 'B'"
    try:
        with agent("payments"):
            if transaction:
                with conn.transaction():
                    conn.execute(debit)
                    if fail:
                        raise Failure("payment gateway timed out between the two updates")
                    conn.execute(credit)
            else:
                conn.execute(debit)
                if fail:
                    raise Failure("payment gateway timed out between the two updates")
                conn.execute(credit)
    except Failure:
        pass


@scenario(
    "transfer fails between its two UPDATEs in autocommit",
    expect={"orphaned_mutation": 1},
    stores=PG,
    rules=RULES,
)
def half_applied_transfer_autocommit(env: Env) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, fail=True, transaction=False)
    assert (_balance(env, "A"), _balance(env, "B")) == (900, 0)


@scenario("transfer fails inside a transaction that rolls back", stores=PG, rules=RULES)
def failed_transfer_rolled_back(env: Env) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, fail=True, transaction=True)
    assert (_balance(env, "A"), _balance(env, "B")) == (1000, 0)


@scenario("transfer commits in a transaction", stores=PG, rules=RULES)
def transfer_committed(env: Env) -> None:
    _setup(env)
    with workflow("payout"):
        _transfer(env, fail=False, transaction=True)
    assert (_balance(env, "A"), _balance(env, "B")) == (900, 100)


@scenario(
    "agent crashes mid-transaction and its connection closes: the server rolls back",
    stores=PG,
    rules=RULES,
)
def crash_mid_transaction_connection_closed(env: Env) -> None:
    _setup(env)
    conn = env.postgres(autocommit=False)
    with workflow("payout"):
        try:
            with agent("payments"):
                conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 'A'")
                raise Failure("worker killed before COMMIT")
        except Failure:
            conn.close()  # never committed: PostgreSQL discards the transaction
    assert (_balance(env, "A"), _balance(env, "B")) == (1000, 0)


# ------------------------------------------------------------------------ migrations


@scenario(
    "migration crashes mid-transaction; a concurrent reader sees the old committed state",
    stores=PG,
    rules=RULES,
)
def migration_mid_transaction(env: Env) -> None:
    _setup(env)
    migrator = env.postgres(autocommit=False)
    reader = env.postgres()
    with workflow("migration"):
        try:
            with agent("migrator"):
                migrator.execute("ALTER TABLE accounts ADD COLUMN currency text")
                migrator.execute(
                    "UPDATE credit_scores SET score = score * 2, version = 2 WHERE id = 42"
                )
                assert _assess(reader, "credit_scores") == 680  # not blocked: MVCC
                raise Failure("migration step 3 failed")
        except Failure:
            migrator.rollback()


@scenario(
    "migration applied statement by statement in autocommit crashes midway",
    expect={"orphaned_mutation": 1},
    stores=PG,
    rules=RULES,
)
def migration_autocommit_crash(env: Env) -> None:
    _setup(env)
    with workflow("migration"):
        try:
            with agent("migrator"):
                conn = env.postgres()
                conn.execute(
                    "UPDATE credit_scores SET score = score * 2, version = 2 WHERE id = 42"
                )
                raise Failure("migration step 2 failed")
        except Failure:
            pass


# ------------------------------------------------------------------------ lost updates


def _withdraw(env: Env, name: str, amount: int, barrier: threading.Barrier | None) -> None:
    with agent(name):
        conn = env.postgres()
        (balance,) = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
        if barrier is not None:
            barrier.wait()  # both read before either writes
            if name == "bob":
                barrier.wait()
        conn.execute("UPDATE accounts SET balance = %s WHERE id = 'A'", (balance - amount,))
        if barrier is not None and name == "alice":
            barrier.wait()


@scenario(
    "two agents SELECT the balance, then both UPDATE it with what they computed",
    expect={"lost_update": 1},
    stores=PG,
    rules=RULES,
)
def lost_update_concurrent_agents(env: Env) -> None:
    _setup(env)
    barrier = threading.Barrier(2, timeout=20)
    with workflow("payouts"):
        _in_threads(
            lambda: _withdraw(env, "alice", 100, barrier),
            lambda: _withdraw(env, "bob", 300, barrier),
        )
    assert _balance(env) == 700


@scenario("the same two withdrawals, one after the other", stores=PG, rules=RULES)
def sequential_withdrawals(env: Env) -> None:
    _setup(env)
    with workflow("payouts"):
        _withdraw(env, "alice", 100, None)
        _withdraw(env, "bob", 300, None)
    assert _balance(env) == 600


@scenario(
    "the same two withdrawals with SELECT ... FOR UPDATE in transactions",
    stores=PG,
    rules=RULES,
)
def select_for_update(env: Env) -> None:
    _setup(env)
    alice_locked = threading.Event()

    def withdraw(name: str, amount: int) -> None:
        with agent(name):
            conn = env.postgres()
            if name == "bob":
                alice_locked.wait(20)  # bob's SELECT waits for alice's row lock
            with conn.transaction():
                (balance,) = conn.execute(
                    "SELECT balance FROM accounts WHERE id = 'A' FOR UPDATE"
                ).fetchone()
                if name == "alice":
                    alice_locked.set()
                conn.execute("UPDATE accounts SET balance = %s WHERE id = 'A'", (balance - amount,))

    with workflow("payouts"):
        _in_threads(lambda: withdraw("alice", 100), lambda: withdraw("bob", 300))
    assert _balance(env) == 600


def _relative_withdrawals(env: Env, update: str) -> None:
    barrier = threading.Barrier(2, timeout=20)

    def withdraw(name: str, amount: int) -> None:
        with agent(name):
            conn = env.postgres()
            conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
            barrier.wait()  # both read the same balance before either writes
            if name == "bob":
                barrier.wait()
            cursor = conn.execute(update, (amount,))
            if cursor.description is not None:  # RETURNING: fetch the new balance
                cursor.fetchall()
            if name == "alice":
                barrier.wait()

    with workflow("payouts"):
        _in_threads(lambda: withdraw("alice", 100), lambda: withdraw("bob", 300))
    assert _balance(env) == 600  # nothing lost: the server computed each new balance


@scenario(
    "the same two withdrawals in REPEATABLE READ: the second fails to serialize and retries",
    stores=PG,
    rules=RULES,
)
def repeatable_read_retry(env: Env) -> None:
    _setup(env)
    barrier = threading.Barrier(2, timeout=20)

    def withdraw(name: str, amount: int) -> None:
        conn = env.postgres()
        first = True
        with agent(name):
            while True:
                try:
                    with conn.transaction():
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        (balance,) = conn.execute(
                            "SELECT balance FROM accounts WHERE id = 'A'"
                        ).fetchone()
                        if first:
                            barrier.wait()  # both read 1000
                            if name == "bob":
                                barrier.wait()  # alice has committed
                        conn.execute(
                            "UPDATE accounts SET balance = %s WHERE id = 'A'", (balance - amount,)
                        )
                    return
                except psycopg.errors.SerializationFailure:
                    continue  # first updater wins: read again in a new transaction
                finally:
                    if first and name == "alice":
                        barrier.wait()
                    first = False

    with workflow("payouts"):
        _in_threads(lambda: withdraw("alice", 100), lambda: withdraw("bob", 300))
    assert _balance(env) == 600


@scenario(
    "a long REPEATABLE READ transaction decides on its snapshot after a newer score committed",
    expect={"stale_read": 1},
    stores=PG,
    rules=RULES,
)
def repeatable_read_old_snapshot(env: Env) -> None:
    _setup(env)
    first_read, rescored = threading.Event(), threading.Event()

    def assess() -> None:
        conn = env.postgres()
        with agent("risk-assessor"), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
            first_read.set()
            rescored.wait(20)  # another agent commits version 2 meanwhile
            score, version = conn.execute(
                "SELECT score, version FROM credit_scores WHERE id = 42"
            ).fetchone()
            assert version == 1  # the snapshot still shows version 1
            with decision("approve transaction") as chosen:
                chosen.outcome("approve" if score < 700 else "flag")

    def rescore() -> None:
        first_read.wait(20)
        _rescore(env)
        rescored.set()

    with workflow("credit"):
        _in_threads(assess, rescore)


@scenario(
    "two agents SELECT the balance, then both apply UPDATE ... SET balance = balance - n",
    stores=PG,
    rules=RULES,
)
def concurrent_relative_updates(env: Env) -> None:
    _setup(env)
    _relative_withdrawals(env, "UPDATE accounts SET balance = balance - %s WHERE id = 'A'")


@scenario(
    "the same relative UPDATEs with RETURNING the new balance",
    stores=PG,
    rules=RULES,
)
def concurrent_relative_updates_returning(env: Env) -> None:
    _setup(env)
    _relative_withdrawals(
        env, "UPDATE accounts SET balance = balance - %s WHERE id = 'A' RETURNING balance"
    )


# ---------------------------------------------------------------------- divergent views


@scenario(
    "two concurrent agents decide on different scores written by a third",
    expect={"divergent_view": 1},
    stores=PG,
    rules=RULES,
)
def divergent_view_concurrent_deciders(env: Env) -> None:
    _setup(env)
    go_a, a_read, go_b, b_read, decided = (threading.Event() for _ in range(5))

    def decide(name: str, go: threading.Event, done: threading.Event) -> None:
        with agent(name):
            conn = env.postgres()
            go.wait(20)
            conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
            done.set()
            with decision("limit"):
                decided.wait(20)  # both agents are deciding at the same time

    def coordinator() -> None:
        go_a.set()
        a_read.wait(20)
        _rescore(env)
        go_b.set()
        b_read.wait(20)
        decided.set()

    with workflow("limits"):
        _in_threads(
            lambda: decide("underwriter", go_a, a_read),
            lambda: decide("pricing", go_b, b_read),
            coordinator,
        )
