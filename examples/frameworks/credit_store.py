"""The stores and the tool bodies of the credit workflow every framework example runs.

Two agents work on customer 42 at the same time, in one trace:

- `scorer` reads the customer's credit limit, then rescores: it writes the new score to
  PostgreSQL and raises the limit it read;
- `risk` reads the limit too and fills the Redis cache with the score (cache-aside: a miss,
  the row, `SET`), waits for the new score, reads the score through the cache, and cuts the
  limit it read.

In the buggy run (`stale`) the scorer forgets to invalidate the cache, so the risk agent
acts on the old score (a stale read), and both agents write a limit computed from the same
read (a lost update). In the correct twin (`correct`) the scorer deletes the cached score
and the risk agent reads the limit again before it writes: nothing to report.

No configuration is needed: the risk agent's `SET` of the score column it just read, under
a key holding the row's key, links the Redis key to the row (`agentstate.link`). Only the
stores' own clients and the OpenTelemetry API (for the workflow's root span) are used here:
otel-agent-state instruments them from the outside. `python credit_store.py` prints fact
rules that map the two keys onto one fact (`credit_facts.toml`), for a first rule of your own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import psycopg
import redis

CUSTOMER = 42
PREFIX = os.environ.get("CREDIT_PREFIX", "credit")
SCORES = f"{PREFIX}_scores"
LIMITS = f"{PREFIX}_limits"
CACHE_PREFIX = f"{PREFIX}:credit_score:"
CACHE_KEY = f"{CACHE_PREFIX}{CUSTOMER}"
PG_DSN = os.environ.get("CREDIT_PG", "host=127.0.0.1 user=postgres dbname=test")
REDIS_URL = os.environ.get("CREDIT_REDIS", "redis://127.0.0.1:6379/0")
_WAIT_S = 30.0  # a step waits this long at most for the other agent


def _pg() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_DSN, autocommit=True)


def _cache() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def reset() -> None:
    """Fresh tables (score 680 at version 1) and no cached score, before the workflow."""
    with _pg() as conn:
        for table, column, value in ((SCORES, "score", 680), (LIMITS, "credit_limit", 1000)):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                f"CREATE TABLE {table} (customer_id int PRIMARY KEY, {column} int, version int)"
            )
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, 1)", (CUSTOMER, value))
    _cache().delete(CACHE_KEY)


class Workflow:
    """The tools of both agents, synchronised so the interleaving is always the same: each
    step as a blocking call (frameworks that run tools in threads) and as a coroutine."""

    def __init__(self, correct: bool) -> None:
        self.correct = correct
        self._lock = threading.Lock()
        self._read = 0
        self._both_read = threading.Event()
        self._scored = threading.Event()
        self.limits: dict[str, int] = {}

    def read_limit_now(self, agent: str) -> str:
        """Either agent: read the customer's limit, then wait until both have read it."""
        text = self._read_limit(agent)
        self._both_read.wait(_WAIT_S)
        return text

    async def read_limit(self, agent: str) -> str:
        text = self._read_limit(agent)
        await asyncio.to_thread(self._both_read.wait, _WAIT_S)
        return text

    def rescore_now(self) -> str:
        """The scorer: a new score, and a higher limit from the one it read."""
        with _pg() as conn:
            conn.execute(
                f"UPDATE {SCORES} SET score = %s, version = version + 1 WHERE customer_id = %s",
                (750, CUSTOMER),
            )
            if self.correct:
                _cache().delete(CACHE_KEY)
            conn.execute(
                f"UPDATE {LIMITS} SET credit_limit = %s, version = version + 1"
                " WHERE customer_id = %s",
                (self.limits["scorer"] + 500, CUSTOMER),
            )
        self._scored.set()
        return "score 750"

    async def rescore(self) -> str:
        return self.rescore_now()

    def assess_now(self) -> str:
        """The risk agent: the score through the cache, and a lower limit."""
        self._scored.wait(_WAIT_S)
        score = self._score()
        with _pg() as conn:
            limit = self.limits["risk"]
            if self.correct:  # read the limit again: the scorer may have changed it
                row = conn.execute(
                    f"SELECT credit_limit, version FROM {LIMITS} WHERE customer_id = %s",
                    (CUSTOMER,),
                ).fetchone()
                assert row is not None
                limit = row[0]
            new_limit = limit - 200 if score < 700 else limit
            conn.execute(
                f"UPDATE {LIMITS} SET credit_limit = %s, version = version + 1"
                " WHERE customer_id = %s",
                (new_limit, CUSTOMER),
            )
        print(f"risk saw score {score}, set limit {new_limit}", flush=True)
        return f"score {score}, limit {new_limit}"

    async def assess(self) -> str:
        await asyncio.to_thread(self._scored.wait, _WAIT_S)
        return self.assess_now()

    def _score(self) -> int:
        """The score, cache-aside: the cached copy, else the row (then cached)."""
        cache = _cache()
        cached = cache.get(CACHE_KEY)
        if cached is not None:
            return int(cached)
        with _pg() as conn:
            row = conn.execute(
                f"SELECT score, version FROM {SCORES} WHERE customer_id = %s", (CUSTOMER,)
            ).fetchone()
        assert row is not None
        cache.set(CACHE_KEY, str(row[0]))  # the score column, as the row has it
        return int(row[0])

    def _read_limit(self, agent: str) -> str:
        with _pg() as conn:
            row = conn.execute(
                f"SELECT credit_limit, version FROM {LIMITS} WHERE customer_id = %s", (CUSTOMER,)
            ).fetchone()
        assert row is not None
        if agent == "risk":
            self._score()  # what the customer's score is now: fills the cache
        with self._lock:
            self.limits[agent] = row[0]
            self._read += 1
            if self._read == 2:
                self._both_read.set()
        return f"limit {row[0]}"


def facts_toml() -> str:
    """Fact rules that make the cached score and the row one fact, and version both tables
    by their `version` column."""
    return f"""[[facts]]
name = "credit_score"
keys = ["postgresql:*/{SCORES}/{{customer_id}}", "redis:*/{CACHE_PREFIX}{{customer_id}}"]
version = {{ column = "version" }}

[[facts]]
name = "credit_limit"
keys = ["postgresql:*/{LIMITS}/{{customer_id}}"]
version = {{ column = "version" }}
"""


if __name__ == "__main__":
    print(facts_toml(), end="")
