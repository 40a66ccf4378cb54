"""Scenarios on the real Redis server (db 5 only) through our redis-py instrumentation, with a
real SQLite file as the primary store where the workflow has one."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import StaleReadError, agent, decision, mutation, workflow

from . import Env, scenario
from .sqlite_cases import Failure, _in_threads

REDIS = ("sqlite", "redis")
CREDIT = {
    "name": "credit_score",
    "keys": ["sqlite:*/credit_scores/{id}", "redis:*/credit_score:{id}"],  # Redis: cache tier
    "version": {"column": "version", "json_field": "version"},
}
PROFILE = {
    "name": "profile",
    "keys": ["sqlite:*/profiles/{id}", "redis:*/profile:{id}"],
    "version": {"column": "rev", "hash_field": "rev"},
}
BALANCE = {  # Redis is the only copy of wallet balances
    "name": "wallet",
    "keys": [{"pattern": "redis:*/wallet:{id}", "tier": "primary"}],
}
PREFS = {  # a customer's preferences: a hash in Redis only, no version field (digests)
    "name": "prefs",
    "keys": [{"pattern": "redis:*/prefs:{id}", "tier": "primary"}],
}
LIMIT = {  # a credit limit kept in Redis, with a per-region cached copy beside it
    "name": "limit",
    "keys": [
        {"pattern": "redis:*/limit:{id}", "tier": "primary"},
        {"pattern": "redis:*/limit_cache:{id}", "tier": "cache"},
    ],
}
RULES = (CREDIT, PROFILE, BALANCE, PREFS, LIMIT)


def _cached(version: int, score: int) -> str:
    return json.dumps({"score": score, "version": version})


def _setup(env: Env) -> redis.Redis:
    """Primary rows and warm cache entries, untraced: the state before the workflow."""
    with suppress_instrumentation():
        conn = env.sqlite()
        conn.executescript(
            """
            CREATE TABLE credit_scores (id INTEGER PRIMARY KEY, score INTEGER, version INTEGER);
            CREATE TABLE profiles (id INTEGER PRIMARY KEY, tier TEXT, rev INTEGER);
            INSERT INTO credit_scores VALUES (42, 680, 1);
            INSERT INTO profiles VALUES (7, 'silver', 1);
            """
        )
        client = env.redis()
        client.flushdb()
        client.set("credit_score:42", _cached(1, 680))
        client.hset("profile:7", mapping={"tier": "silver", "rev": 1})
        client.mset({"wallet:A": 1000, "wallet:B": 0, "hits": 10})
        client.hset("prefs:7", mapping={"channel": "email"})
    return client


def _stored(client: redis.Redis, *keys: str) -> list[Any]:
    """What Redis holds after the workflow, read untraced (the check, not the workflow)."""
    with suppress_instrumentation():
        return list(client.mget(*keys))


# ------------------------------------------------------------------------ stale cache


def _rescore(
    env: Env, client: redis.Redis, *, invalidate: bool = False, refresh: bool = False
) -> None:
    with agent("credit-scorer"):
        env.sqlite().execute("UPDATE credit_scores SET score = 750, version = 2 WHERE id = 42")
        if invalidate:
            client.delete("credit_score:42")
        if refresh:  # write-through
            client.set("credit_score:42", _cached(2, 750))


def _assess(env: Env, client: redis.Redis) -> int:
    """Cache-aside: a hit is used as it is; a miss reads the primary and fills the cache."""
    with agent("risk-assessor"):
        cached = client.get("credit_score:42")
        if cached is not None:
            score = int(json.loads(cached)["score"])
        else:
            score, version = (
                env.sqlite()
                .execute("SELECT score, version FROM credit_scores WHERE id = 42")
                .fetchone()
            )
            client.set("credit_score:42", _cached(version, score))
        with decision("approve transaction") as chosen:
            chosen.outcome("approve" if score < 700 else "flag")
        return int(score)


@scenario(
    "Redis credit-score cache never invalidated after the primary changed",
    expect={"stale_read": 1},
    stores=REDIS,
    rules=RULES,
)
def stale_cache_not_invalidated(env: Env) -> None:
    client = _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        assert _assess(env, client) == 680  # acted on the old score


@scenario(
    "raise mode: the stale cached score never reaches the agent, which falls back",
    expect={"stale_read": 1},
    stores=REDIS,
    rules=RULES,
    on_anomaly="raise",
)
def stale_cache_raise_mode(env: Env) -> None:
    client = _setup(env)
    with workflow("credit"):
        _rescore(env, client)
        try:
            _assess(env, client)
            raise AssertionError("the stale read was not stopped")
        except StaleReadError:
            pass
        with suppress_instrumentation():
            client.delete("credit_score:42")  # the operator's fix: drop the bad entry
        assert _assess(env, client) == 750


@scenario("Redis cache key deleted right after the primary write", stores=REDIS, rules=RULES)
def cache_invalidated_with_del(env: Env) -> None:
    client = _setup(env)
    with workflow("credit"):
        _rescore(env, client, invalidate=True)
        assert _assess(env, client) == 750  # miss, primary, refill
        assert _assess(env, client) == 750  # hit on the refilled entry


@scenario("Redis cache refreshed write-through with the new version", stores=REDIS, rules=RULES)
def cache_write_through(env: Env) -> None:
    client = _setup(env)
    with workflow("credit"):
        _rescore(env, client, refresh=True)
        assert _assess(env, client) == 750


def _raise_limit(client: redis.Redis) -> None:
    """One MULTI pipeline drops the cached copy and writes the new limit: two tiers."""
    with agent("limit-admin"):
        pipe = client.pipeline()
        pipe.delete("limit_cache:9")
        pipe.set("limit:9", "900")
        pipe.execute()


def _limit_decision(client: redis.Redis) -> int:
    with agent("risk-assessor"):
        limit = int(client.get("limit_cache:9") or client.get("limit:9") or 0)
        with decision("approve purchase") as chosen:
            chosen.outcome("approve" if limit >= 700 else "decline")
        return limit


@scenario(
    "a cache fill from an old read lands after a pipelined invalidate-and-write",
    expect={"stale_read": 1},
    stores=("redis",),
    rules=RULES,
)
def stale_fill_after_pipelined_write(env: Env) -> None:
    client = _setup(env)
    with suppress_instrumentation():
        client.mset({"limit:9": "500", "limit_cache:9": "500"})
    filler_read, raised = threading.Event(), threading.Event()

    def slow_filler() -> None:
        # One agent scope reads the primary and fills the cache (SPEC §5 "Copies"): paused in
        # between, it puts back the value from before the write.
        with agent("cache-filler"):
            old = env.redis().get("limit:9")
            filler_read.set()
            raised.wait(10)
            env.redis().set("limit_cache:9", old or b"")

    def admin() -> None:
        filler_read.wait(10)
        _raise_limit(env.redis())
        raised.set()

    with workflow("limits"):
        _in_threads(slow_filler, admin)
        assert _limit_decision(client) == 500


@scenario(
    "a pipelined invalidate-and-write, then the cache filled from the primary",
    stores=("redis",),
    rules=RULES,
)
def fill_after_pipelined_write(env: Env) -> None:
    client = _setup(env)
    with suppress_instrumentation():
        client.mset({"limit:9": "500", "limit_cache:9": "500"})
    with workflow("limits"):
        _raise_limit(client)
        with agent("cache-filler"):
            client.set("limit_cache:9", client.get("limit:9") or b"")
        assert _limit_decision(client) == 900


@scenario(
    "cache-aside fill by one agent, then primary and cache reads by others",
    stores=REDIS,
    rules=RULES,
)
def cache_aside_fill_then_primary_read(env: Env) -> None:
    client = _setup(env)
    with suppress_instrumentation():
        client.delete("credit_score:42")  # a cold cache
    with workflow("credit"):
        assert _assess(env, client) == 680  # miss, primary, fill
        with agent("auditor"):
            env.sqlite().execute(
                "SELECT score, version FROM credit_scores WHERE id = 42"
            ).fetchone()
            client.get("credit_score:42")
        with agent("janitor"):
            client.delete("credit_score:42")
        assert _assess(env, client) == 680


@scenario(
    "cache-aside race: a slow filler puts the old score back after the writer's DEL",
    expect={"stale_read": 1},
    stores=REDIS,
    rules=RULES,
)
def cache_aside_race_refills_old_value(env: Env) -> None:
    client = _setup(env)
    with suppress_instrumentation():
        client.delete("credit_score:42")
    filler_read, invalidated = threading.Event(), threading.Event()

    def slow_filler() -> None:
        with agent("report-builder"):
            assert env.redis().get("credit_score:42") is None
            row = env.sqlite().execute("SELECT score, version FROM credit_scores WHERE id = 42")
            score, version = row.fetchone()
            filler_read.set()
            invalidated.wait(10)  # paused (GC, network) while the score changes
            env.redis().set("credit_score:42", _cached(version, score))

    def writer() -> None:
        filler_read.wait(10)
        _rescore(env, env.redis(), invalidate=True)
        invalidated.set()

    with workflow("credit"):
        _in_threads(slow_filler, writer)
        assert _assess(env, client) == 680  # the refilled old score


def _upgrade(env: Env, client: redis.Redis, *, invalidate: bool) -> None:
    with agent("loyalty"):
        env.sqlite().execute("UPDATE profiles SET tier = 'gold', rev = 2 WHERE id = 7")
        if invalidate:
            client.hset("profile:7", mapping={"tier": "gold", "rev": 2})


def _greet(client: redis.Redis) -> None:
    with agent("concierge"):
        profile = client.hgetall("profile:7")
        with decision("offer lounge access") as chosen:
            chosen.outcome(profile.get(b"tier") == b"gold")


@scenario(
    "cached profile hash still at the old rev after the primary row changed",
    expect={"stale_read": 1},
    stores=REDIS,
    rules=RULES,
)
def stale_profile_hash(env: Env) -> None:
    client = _setup(env)
    with workflow("lounge"):
        _upgrade(env, client, invalidate=False)
        _greet(client)


@scenario("cached profile hash updated with the primary row", stores=REDIS, rules=RULES)
def profile_hash_updated(env: Env) -> None:
    client = _setup(env)
    with workflow("lounge"):
        _upgrade(env, client, invalidate=True)
        _greet(client)


# ------------------------------------------------------------------------ lost updates


def _spend(env: Env, name: str, amount: int, barrier: threading.Barrier) -> None:
    client = env.redis()
    with agent(name):
        balance = int(client.get("wallet:A") or 0)
        barrier.wait()  # both read before either writes
        if name == "bob":
            barrier.wait()  # bob writes after alice
        client.set("wallet:A", balance - amount)
        if name == "alice":
            barrier.wait()


@scenario(
    "two agents GET the same wallet balance, then both SET it",
    expect={"lost_update": 1},
    stores=("redis",),
    rules=RULES,
)
def lost_update_get_set(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("payouts"):
        _in_threads(
            lambda: _spend(env, "alice", 100, barrier),
            lambda: _spend(env, "bob", 300, barrier),
        )
    assert _stored(client, "wallet:A") == [b"700"]  # alice's withdrawal is lost


def _spend_watched(env: Env, name: str, amount: int, barrier: threading.Barrier) -> None:
    client = env.redis()
    first = True
    with agent(name), client.pipeline() as pipe:
        while True:
            try:
                pipe.watch("wallet:A")
                balance = int(pipe.get("wallet:A") or 0)
                if first:
                    barrier.wait()
                    if name == "bob":
                        barrier.wait()
                pipe.multi()
                pipe.set("wallet:A", balance - amount)
                pipe.execute()
                return
            except redis.WatchError:
                continue  # someone else changed it: read again
            finally:
                if first and name == "alice":
                    barrier.wait()
                first = False


@scenario(
    "the same two withdrawals with WATCH/MULTI and a retry on conflict",
    stores=("redis",),
    rules=RULES,
)
def watch_multi_retry(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("payouts"):
        _in_threads(
            lambda: _spend_watched(env, "alice", 100, barrier),
            lambda: _spend_watched(env, "bob", 300, barrier),
        )
    assert _stored(client, "wallet:A") == [b"600"]


@scenario(
    "two agents GET a counter concurrently, then both INCRBY it",
    stores=("redis",),
    rules=RULES,
)
def concurrent_incr(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)

    def count(name: str) -> None:
        conn = env.redis()
        with agent(name):
            conn.get("hits")
            barrier.wait()
            if name == "bob":
                barrier.wait()
            conn.incrby("hits", 5)
            if name == "alice":
                barrier.wait()

    with workflow("analytics"):
        _in_threads(lambda: count("alice"), lambda: count("bob"))
    assert _stored(client, "hits") == [b"20"]


def _set_pref(env: Env, name: str, field: str, value: str, barrier: threading.Barrier) -> None:
    client = env.redis()
    with agent(name):
        client.hgetall("prefs:7")
        barrier.wait()  # both read the same preferences before either writes
        if name == "bob":
            barrier.wait()
        client.hset("prefs:7", field, value)  # merges one field into the hash on the server
        if name == "alice":
            barrier.wait()


@scenario(
    "two agents read a preferences hash, then both HSET the same field",
    expect={"lost_update": 1},
    stores=("redis",),
    rules=RULES,
)
def concurrent_hset_same_field(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("preferences"):
        _in_threads(
            lambda: _set_pref(env, "alice", "tone", "formal", barrier),
            lambda: _set_pref(env, "bob", "tone", "casual", barrier),
        )
    with suppress_instrumentation():
        assert client.hget("prefs:7", "tone") == b"casual"  # alice's choice is gone


@scenario(
    "two agents read a preferences hash, then HSET different fields (both kept)",
    stores=("redis",),
    rules=RULES,
)
def concurrent_hset_different_fields(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("preferences"):
        _in_threads(
            lambda: _set_pref(env, "alice", "tone", "formal", barrier),
            lambda: _set_pref(env, "bob", "language", "fr", barrier),
        )
    with suppress_instrumentation():
        assert client.hmget("prefs:7", "tone", "language") == [b"formal", b"fr"]


# ------------------------------------------------------------------ orphaned mutations


def _transfer(client: redis.Redis, *, atomic: bool, fail: bool) -> None:
    try:
        with agent("payments"):
            balance = int(client.get("wallet:A") or 0)
            if atomic:
                client.pipeline().set("wallet:A", balance - 100).incrby("wallet:B", 100).execute()
            else:
                client.set("wallet:A", balance - 100)
                if fail:
                    raise Failure("crashed before crediting B")
                client.incrby("wallet:B", 100)
            if fail:
                raise Failure("crashed after the transfer")
    except Failure:
        pass


@scenario(
    "transfer with two plain writes crashes between them",
    expect={"orphaned_mutation": 1},
    stores=("redis",),
    rules=RULES,
)
def transfer_plain_writes_crash(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"):
        _transfer(client, atomic=False, fail=True)
    assert _stored(client, "wallet:A", "wallet:B") == [b"900", b"0"]


@scenario(
    "transfer in one MULTI/EXEC, the agent crashes after it committed",
    stores=("redis",),
    rules=RULES,
)
def transfer_multi_then_crash(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"):
        _transfer(client, atomic=True, fail=True)
    assert _stored(client, "wallet:A", "wallet:B") == [b"900", b"100"]


@scenario("transfer with two plain writes completes", stores=("redis",), rules=RULES)
def transfer_plain_writes_complete(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"):
        _transfer(client, atomic=False, fail=False)
    assert _stored(client, "wallet:A", "wallet:B") == [b"900", b"100"]


@scenario(
    "MULTI transfer aborted by a malformed queued command applies nothing",
    stores=("redis",),
    rules=RULES,
)
def transfer_multi_aborted(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"), agent("payments"):
        pipe: Any = client.pipeline()
        pipe.set("wallet:A", 900)
        pipe.execute_command("INCRBY", "wallet:B")  # wrong arity: refused when queued
        with pytest.raises(redis.ResponseError):  # EXECABORT: Redis discarded the transaction
            pipe.execute()
    assert _stored(client, "wallet:A", "wallet:B") == [b"1000", b"0"]


@scenario(
    "transfer as a plain (non-MULTI) pipeline whose credit command fails",
    expect={"orphaned_mutation": 1},
    stores=("redis",),
    rules=RULES,
)
def transfer_pipeline_partly_applied(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"):
        try:
            with agent("payments"):
                pipe = client.pipeline(transaction=False)
                pipe.set("wallet:A", 900)
                pipe.hincrby("wallet:B", "balance", 100)  # WRONGTYPE: wallet:B is a string
                pipe.execute()  # runs both, then raises the HINCRBY error
        except redis.ResponseError:
            pass
    assert _stored(client, "wallet:A", "wallet:B") == [b"900", b"0"]


@scenario(
    "failed transfer scope compensated by putting the debit back",
    stores=("redis",),
    rules=RULES,
)
def transfer_compensated(env: Env) -> None:
    client = _setup(env)
    with workflow("payout"), agent("payments"):
        try:
            with mutation("transfer"):
                client.decrby("wallet:A", 100)
                raise Failure("ledger service refused the credit")
        except Failure:
            client.incrby("wallet:A", 100)
    assert _stored(client, "wallet:A") == [b"1000"]


# ---------------------------------------------------------------------- divergent views


@scenario(
    "two concurrent agents decide on different wallet balances written by a third",
    expect={"divergent_view": 1},
    stores=("redis",),
    rules=RULES,
)
def divergent_wallet_views(env: Env) -> None:
    _setup(env)
    go_a, a_read, go_b, b_read, decided = (threading.Event() for _ in range(5))

    def decide(name: str, go: threading.Event, done: threading.Event) -> None:
        client = env.redis()
        with agent(name):
            go.wait(10)
            client.get("wallet:A")
            done.set()
            with decision("credit line"):
                decided.wait(10)  # both agents are deciding at the same time

    def coordinator() -> None:
        go_a.set()
        a_read.wait(10)
        with agent("payments"):
            env.redis().set("wallet:A", 400)
        go_b.set()
        b_read.wait(10)
        decided.set()

    with workflow("limits"):
        _in_threads(
            lambda: decide("underwriter", go_a, a_read),
            lambda: decide("pricing", go_b, b_read),
            coordinator,
        )
