"""Scenarios on real SQLite files through our sqlite3 instrumentation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from opentelemetry import context
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, decision, mutation, workflow

from . import Env, scenario

CREDIT = {
    "name": "credit_score",
    "keys": [
        "sqlite:*/credit_scores/{id}",
        {"pattern": "sqlite:*/score_cache/{id}", "tier": "cache"},
        {"pattern": "sqlite:*/scores_replica/{id}", "tier": "replica"},
    ],
    "version": {"column": "version"},
}
ACCOUNT = {"name": "account", "keys": ["sqlite:*/accounts/{id}"]}  # content-digest versions
RULES = (CREDIT, ACCOUNT)


class Failure(Exception):
    """What the workflows raise to simulate an agent crashing half-way."""


def _schema(env: Env) -> None:
    with suppress_instrumentation():
        conn = env.sqlite()
        conn.executescript(
            """
            CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
            CREATE TABLE score_cache (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
            CREATE TABLE scores_replica (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
            CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER);
            INSERT INTO credit_scores VALUES (42, 680, 1);
            INSERT INTO score_cache VALUES (42, 680, 1);
            INSERT INTO scores_replica VALUES (42, 680, 1);
            INSERT INTO accounts VALUES ('A', 1000), ('B', 0);
            """
        )


def _replicate(env: Env) -> None:
    """The database's own replication: not an agent's action, so not traced."""
    with suppress_instrumentation():
        env.sqlite().execute(
            "UPDATE scores_replica SET score = (SELECT score FROM credit_scores WHERE id = 42),"
            " version = (SELECT version FROM credit_scores WHERE id = 42) WHERE id = 42"
        )


def _rescore(env: Env, *, invalidate: bool = False, refresh: bool = False) -> None:
    with agent("credit-scorer"):
        conn = env.sqlite()
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        if invalidate:
            conn.execute("DELETE FROM score_cache WHERE id = 42")
        if refresh:
            conn.execute("UPDATE score_cache SET score = 750, version = 2 WHERE id = 42")


def _assess(env: Env, table: str = "score_cache", *, decide: bool = True) -> None:
    with agent("risk-assessor"):
        conn = env.sqlite()
        row = conn.execute(f"SELECT score, version FROM {table} WHERE id = 42").fetchone()
        if row is None:
            row = conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
        if decide:
            with decision("approve transaction") as chosen:
                chosen.outcome("approve" if row[0] < 700 else "flag")


def _in_threads(*work: Callable[[], None]) -> None:
    parent = context.get_current()
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> None:
        token = context.attach(parent)
        try:
            fn()
        except BaseException as exc:  # surfaced below: a scenario bug must not pass quietly
            errors.append(exc)
        finally:
            context.detach(token)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------ stale cache


@scenario("cache never invalidated after the score changed", expect={"stale_read": 1}, rules=RULES)
def stale_cache_not_invalidated(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env)


@scenario("stale cache read that nothing acted on (warning)", expect={"stale_read": 1}, rules=RULES)
def stale_cache_read_without_acting(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env, decide=False)


@scenario("cache invalidated right after the write", rules=RULES)
def cache_invalidated_after_write(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env, invalidate=True)
        _assess(env)


@scenario("cache refreshed with the new version after the write", rules=RULES)
def cache_refreshed_after_write(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env, refresh=True)
        _assess(env)


def _rescore_in_savepoint(env: Env, *, undo: bool) -> None:
    """The scorer's new score goes through a savepoint that it keeps or undoes; either way
    the transaction commits."""
    with agent("credit-scorer"):
        conn = env.sqlite()
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT rescore")
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        conn.execute("ROLLBACK TO rescore" if undo else "RELEASE rescore")
        conn.execute("COMMIT")


@scenario(
    "score changed under a released savepoint, cache never invalidated",
    expect={"stale_read": 1},
    rules=RULES,
)
def stale_cache_after_released_savepoint(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore_in_savepoint(env, undo=False)
        _assess(env)


@scenario("score change undone by ROLLBACK TO savepoint: the cache is still right", rules=RULES)
def cache_right_after_rollback_to_savepoint(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore_in_savepoint(env, undo=True)
        _assess(env)


@scenario("cache read before the score changed", rules=RULES)
def cache_read_before_write(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _assess(env)
        _rescore(env)


@scenario("stale cache under eventual consistency is allowed", rules=RULES, consistency="eventual")
def stale_cache_under_eventual(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env)


@scenario(
    "stale cache read within a bounded-staleness window",
    rules=RULES,
    consistency="bounded:60000",
)
def stale_cache_within_bound(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env)


@scenario(
    "stale cache read beyond a bounded-staleness window",
    expect={"stale_read": 1},
    rules=RULES,
    consistency="bounded:20",
)
def stale_cache_beyond_bound(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        time.sleep(0.08)
        _assess(env)


# ------------------------------------------------------------------------ replica lag


@scenario("read from a replica that has not caught up", expect={"stale_read": 1}, rules=RULES)
def replica_lag(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env, table="scores_replica")


@scenario("read from the replica after replication caught up", rules=RULES)
def replica_caught_up(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _replicate(env)
        _assess(env, table="scores_replica")


# ------------------------------------------------------------------- session guarantees


@scenario(
    "agent misses its own write (read-your-writes) under session consistency",
    expect={"stale_read": 1},
    rules=RULES,
    consistency="session",
)
def session_read_your_writes_violated(env: Env) -> None:
    _schema(env)
    with workflow("credit"), agent("credit-scorer"):
        conn = env.sqlite()
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        conn.execute("SELECT score, version FROM score_cache WHERE id = 42").fetchone()


@scenario(
    "another agent's newer write does not bind a session-consistent reader",
    rules=RULES,
    consistency="session",
)
def session_other_agents_write(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        _assess(env)


@scenario(
    "agent reads an older version after a newer one (monotonic reads) under session",
    expect={"stale_read": 1},
    rules=RULES,
    consistency="session",
)
def session_monotonic_reads_violated(env: Env) -> None:
    _schema(env)
    with workflow("credit"):
        _rescore(env)
        with agent("risk-assessor"):
            conn = env.sqlite()
            conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
            conn.execute("SELECT score, version FROM score_cache WHERE id = 42").fetchone()


@scenario("agent reads its own write back", rules=RULES)
def read_own_write(env: Env) -> None:
    _schema(env)
    with workflow("credit"), agent("credit-scorer"):
        conn = env.sqlite()
        conn.execute("UPDATE credit_scores SET score = 750, version = version + 1 WHERE id = 42")
        conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()


# ------------------------------------------------------------------ orphaned mutations


def _transfer(env: Env, *, fail: bool, transaction: bool) -> None:
    conn = env.sqlite(autocommit=not transaction)
    try:
        with agent("payments"):
            conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 'A'")
            if fail:
                raise Failure("payment gateway timed out between the two updates")
            conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id = 'B'")
            if transaction:
                conn.commit()
    except Failure:
        if transaction:
            conn.rollback()


@scenario(
    "transfer fails between its two UPDATEs in autocommit",
    expect={"orphaned_mutation": 1},
    rules=RULES,
)
def half_applied_transfer_autocommit(env: Env) -> None:
    _schema(env)
    with workflow("payout"):
        _transfer(env, fail=True, transaction=False)


@scenario("transfer fails inside a transaction that is rolled back", rules=RULES)
def failed_transfer_rolled_back(env: Env) -> None:
    _schema(env)
    with workflow("payout"):
        _transfer(env, fail=True, transaction=True)


@scenario("transfer completes in autocommit", rules=RULES)
def transfer_completed_autocommit(env: Env) -> None:
    _schema(env)
    with workflow("payout"):
        _transfer(env, fail=False, transaction=False)


@scenario("transfer completes in a transaction", rules=RULES)
def transfer_committed(env: Env) -> None:
    _schema(env)
    with workflow("payout"):
        _transfer(env, fail=False, transaction=True)


@scenario(
    "explicit mutation scope fails after committing its first step",
    expect={"orphaned_mutation": 1},
    rules=RULES,
)
def mutation_scope_fails(env: Env) -> None:
    _schema(env)
    with workflow("payout"), agent("payments"):
        conn = env.sqlite()
        try:
            with mutation("transfer"):
                conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 'A'")
                raise Failure("crash")
        except Failure:
            pass


@scenario("failed mutation scope compensated by restoring the balance", rules=RULES)
def mutation_scope_compensated(env: Env) -> None:
    _schema(env)
    with workflow("payout"), agent("payments"):
        conn = env.sqlite()
        try:
            with mutation("transfer"):
                conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 'A'")
                raise Failure("crash")
        except Failure:
            conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id = 'A'")


@scenario(
    "schema migration applied step by step in autocommit crashes midway",
    expect={"orphaned_mutation": 1},
    rules=RULES,
)
def migration_autocommit_crash(env: Env) -> None:
    _schema(env)
    with workflow("migration"):
        try:
            with agent("migrator"):
                conn = env.sqlite()
                conn.execute(
                    "UPDATE credit_scores SET score = score * 2, version = 2 WHERE id = 42"
                )
                raise Failure("migration step 2 failed")
        except Failure:
            pass


@scenario(
    "migration crashes mid-transaction; a concurrent reader sees the old committed state",
    rules=RULES,
)
def migration_mid_transaction(env: Env) -> None:
    _schema(env)
    with workflow("migration"):
        conn = env.sqlite(autocommit=False)
        try:
            with agent("migrator"):
                conn.execute(
                    "UPDATE credit_scores SET score = score * 2, version = 2 WHERE id = 42"
                )
                _assess(env, table="credit_scores")
                raise Failure("migration step 2 failed")
        except Failure:
            conn.rollback()


# ------------------------------------------------------------------------ lost updates


def _withdraw(env: Env, name: str, amount: int, barrier: threading.Barrier) -> None:
    with agent(name):
        conn = env.sqlite()
        (balance,) = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
        barrier.wait()  # both read before either writes
        if name == "bob":
            barrier.wait()
        conn.execute("UPDATE accounts SET balance = ? WHERE id = 'A'", (balance - amount,))
        if name == "alice":
            barrier.wait()


@scenario("two agents read the balance, both write it back", expect={"lost_update": 1}, rules=RULES)
def lost_update_concurrent_agents(env: Env) -> None:
    _schema(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("payouts"):
        _in_threads(
            lambda: _withdraw(env, "alice", 100, barrier),
            lambda: _withdraw(env, "bob", 300, barrier),
        )


@scenario("the same two withdrawals, one after the other", rules=RULES)
def sequential_read_modify_write(env: Env) -> None:
    _schema(env)
    with workflow("payouts"):
        for name, amount in (("alice", 100), ("bob", 300)):
            with agent(name):
                conn = env.sqlite()
                (balance,) = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()
                conn.execute("UPDATE accounts SET balance = ? WHERE id = 'A'", (balance - amount,))


@scenario("two agents write different accounts concurrently", rules=RULES)
def concurrent_writes_to_different_facts(env: Env) -> None:
    _schema(env)
    barrier = threading.Barrier(2, timeout=10)

    def pay(name: str, account: str) -> None:
        with agent(name):
            conn = env.sqlite()
            (balance,) = conn.execute(
                "SELECT balance FROM accounts WHERE id = ?", (account,)
            ).fetchone()
            barrier.wait()
            conn.execute("UPDATE accounts SET balance = ? WHERE id = ?", (balance + 1, account))

    with workflow("payouts"):
        _in_threads(lambda: pay("alice", "A"), lambda: pay("bob", "B"))


# ---------------------------------------------------------------------- divergent views


def _decide_on_score(env: Env, name: str, before: threading.Event, after: threading.Event) -> None:
    with agent(name):
        before.wait(10)
        conn = env.sqlite()
        conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
        after.set()
        with decision("limit"):
            time.sleep(0.05)  # both agents are still deciding at the same time


@scenario(
    "two concurrent agents decide on different versions written by a third",
    expect={"divergent_view": 1},
    rules=RULES,
)
def divergent_view_concurrent_deciders(env: Env) -> None:
    _schema(env)
    go_a, a_read, go_b, b_read = (threading.Event() for _ in range(4))

    def coordinator() -> None:
        go_a.set()
        a_read.wait(10)
        _rescore(env)  # a third agent changes the score between the two reads
        go_b.set()
        b_read.wait(10)

    with workflow("limits"):
        _in_threads(
            lambda: _decide_on_score(env, "underwriter", go_a, a_read),
            lambda: _decide_on_score(env, "pricing", go_b, b_read),
            coordinator,
        )


@scenario("two concurrent agents decide on the same version", rules=RULES)
def concurrent_deciders_same_version(env: Env) -> None:
    _schema(env)
    go, a_read, b_read = threading.Event(), threading.Event(), threading.Event()

    with workflow("limits"):
        _in_threads(
            lambda: _decide_on_score(env, "underwriter", go, a_read),
            lambda: _decide_on_score(env, "pricing", go, b_read),
            go.set,
        )


@scenario("a read-modify-write chain of two concurrent agents is not a divergence", rules=RULES)
def read_modify_write_chain(env: Env) -> None:
    _schema(env)
    first_done = threading.Event()

    def first() -> None:
        with agent("scorer"):
            conn = env.sqlite()
            conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
            conn.execute("UPDATE credit_scores SET score = 700, version = 2 WHERE id = 42")
            first_done.set()
            with decision("done"):
                time.sleep(0.05)

    def second() -> None:
        with agent("reviewer"):
            first_done.wait(10)
            conn = env.sqlite()
            conn.execute("SELECT score, version FROM credit_scores WHERE id = 42").fetchone()
            conn.execute("UPDATE credit_scores SET score = 710, version = 3 WHERE id = 42")

    with workflow("review"):
        _in_threads(first, second)
