"""`otel-agent-state demo`: the credit-scoring scenario, on embedded stores or real servers.

Two runs of one multi-agent workflow over a primary database, a score cache and a lagging
replica. The faulty run makes the classic mistakes (no cache invalidation, reading a
replica that has not caught up, a transfer in autocommit that dies half-way); the correct
run does the same work properly. Only plain client calls are made (`sqlite3`, and `redis`
/ `psycopg` when the demo is pointed at servers): the instrumentations and the processor
find the anomalies.

By default everything is embedded SQLite. With a Redis URL the cache is a JSON value in
Redis; with a PostgreSQL DSN the primary tables and the replica live in the schemas
`agentstate_demo` and `agentstate_demo_replica` (created if missing; the demo rows are reset
at the start of each workflow, nothing else is touched).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from . import attributes as A
from .api import agent, configure, decision, workflow
from .autoinstrument import install_processor
from .instrumentation.sqlite3 import SQLite3Instrumentor

CUSTOMER = 42
OLD_SCORE, NEW_SCORE = 680, 750
APPROVAL_THRESHOLD = 700

# Everything the demo creates on a server is named after this: PostgreSQL schemas
# `<ns>` and `<ns>_replica`, the Redis key `<ns>:credit_score:42`. AGENTSTATE_DEMO_NAMESPACE
# overrides it, so several demos (or test runs) can share one server.
DEFAULT_NAMESPACE = "agentstate_demo"
NAMESPACE_ENV = "AGENTSTATE_DEMO_NAMESPACE"
_NAMESPACE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class _Names:
    namespace: str

    @property
    def schema(self) -> str:
        return self.namespace

    @property
    def replica_schema(self) -> str:
        return f"{self.namespace}_replica"

    @property
    def redis_key_prefix(self) -> str:
        return f"{self.namespace}:credit_score:"


def fact_rules(namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    """The demo's fact rules: each copy of a credit score (primary row, replica row, cache
    entry) in every store the demo can use is one logical fact `credit_score/<id>`."""
    names = _Names(namespace)
    return [
        {
            "name": "credit_score",
            "consistency": "linearizable",
            "keys": [
                "sqlite:app/credit_scores/{customer_id}",
                {"pattern": "sqlite:app/score_cache/{customer_id}", "tier": "cache"},
                {"pattern": "sqlite:replica/credit_scores/{customer_id}", "tier": "replica"},
                f"postgresql:*/{names.schema}.credit_scores/{{customer_id}}",
                f"mysql:{names.schema}/credit_scores/{{customer_id}}",
                {
                    "pattern": f"mysql:{names.replica_schema}/credit_scores/{{customer_id}}",
                    "tier": "replica",
                },
                {
                    "pattern": f"postgresql:*/{names.replica_schema}.credit_scores/{{customer_id}}",
                    "tier": "replica",
                },
                {"pattern": f"redis:*/{names.redis_key_prefix}{{customer_id}}", "tier": "cache"},
            ],
            # The cached JSON carries the row's version, so cache and primary compare directly.
            "version": {"column": "version", "json_field": "version"},
        },
        {
            "name": "account",
            "keys": [
                "sqlite:app/accounts/{account_id}",
                f"postgresql:*/{names.schema}.accounts/{{account_id}}",
                f"mysql:{names.schema}/accounts/{{account_id}}",
            ],
            "version": {"column": "version"},
        },
    ]


FACT_RULES: list[dict[str, Any]] = fact_rules()


class LedgerUnavailable(RuntimeError):
    """The demo's simulated failure between the two halves of a transfer."""


class DemoError(Exception):
    """A server the demo was pointed at cannot be used; the message says what to do."""


@dataclass
class Finding:
    kind: str
    fact: str
    severity: str
    agents: tuple[str, ...]
    summary: str
    trace_id: str


@dataclass
class DemoResult:
    faulty: list[Finding]
    correct: list[Finding]


def redact(url: str) -> str:
    """`url` without its password, for messages."""
    url = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url, flags=re.IGNORECASE)


# --------------------------------------------------------------------------- stores


class _Database(Protocol):
    """The primary database (credit scores, accounts) and its lagging replica."""

    placeholder: str
    where: str

    def connect(self, which: str = "primary", autocommit: bool = True) -> Any: ...
    def table(self, name: str, which: str = "primary") -> str: ...
    def seed(self) -> None: ...
    def replicate(self) -> None: ...
    def close(self) -> None: ...


class _Cache(Protocol):
    """The credit-score cache in front of the primary."""

    where: str

    def get(self) -> int | None: ...
    def invalidate(self) -> None: ...
    def seed(self) -> None: ...
    def close(self) -> None: ...


_SCORES_DDL = "(customer_id INTEGER PRIMARY KEY, score INTEGER NOT NULL, version INTEGER NOT NULL)"
_ACCOUNTS_DDL = "(account_id TEXT PRIMARY KEY, balance INTEGER NOT NULL, version INTEGER NOT NULL)"


class _SQLiteDatabase:
    """app.db (primary) and replica.db (the replica) in one directory."""

    placeholder = "?"

    def __init__(self, directory: Path) -> None:
        self.primary = directory / "app.db"
        self.replica = directory / "replica.db"
        self.where = f"embedded SQLite in {directory}"

    def connect(self, which: str = "primary", autocommit: bool = True) -> sqlite3.Connection:
        path = self.primary if which == "primary" else self.replica
        # isolation_level=None: autocommit, each statement commits on its own.
        return sqlite3.connect(
            path, isolation_level=None if autocommit else "DEFERRED", check_same_thread=False
        )

    def table(self, name: str, which: str = "primary") -> str:
        return name

    def seed(self) -> None:
        """Fresh tables and a replica in sync; made without telemetry."""
        with suppress_instrumentation():
            for path in (self.primary, self.replica):
                path.unlink(missing_ok=True)
            conn = self.connect()
            conn.executescript(
                f"""
                CREATE TABLE credit_scores {_SCORES_DDL};
                CREATE TABLE accounts {_ACCOUNTS_DDL};
                INSERT INTO credit_scores VALUES ({CUSTOMER}, {OLD_SCORE}, 1);
                INSERT INTO accounts VALUES ('A', 1000, 1), ('B', 0, 1);
                """
            )
            conn.close()
        self.replicate()

    def replicate(self) -> None:
        """Copy credit scores to the replica: replication is infrastructure, not an agent."""
        with suppress_instrumentation():
            source = self.connect()
            rows = source.execute(
                "SELECT customer_id, score, version FROM credit_scores"
            ).fetchall()
            source.close()
            target = self.connect("replica")
            target.execute(f"CREATE TABLE IF NOT EXISTS credit_scores {_SCORES_DDL}")
            target.executemany("INSERT OR REPLACE INTO credit_scores VALUES (?, ?, ?)", rows)
            target.close()

    def close(self) -> None:
        pass


class _PostgresDatabase:
    """Schema `<ns>` (primary) and `<ns>_replica` (a lagging copy)."""

    placeholder = "%s"

    def __init__(self, dsn: str, names: _Names) -> None:
        self.dsn = dsn
        self.schema = names.schema
        self.replica_schema = names.replica_schema
        self.where = f"PostgreSQL {redact(dsn)} (schemas {self.schema}, {self.replica_schema})"

    def connect(self, which: str = "primary", autocommit: bool = True) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=_CONNECT_TIMEOUT)

    def table(self, name: str, which: str = "primary") -> str:
        return f"{self.schema if which == 'primary' else self.replica_schema}.{name}"

    def seed(self) -> None:
        """Create the schemas once, reset the demo rows; made without telemetry."""
        with suppress_instrumentation():
            conn = self.connect(autocommit=False)
            try:
                # Serialise concurrent demos' CREATE ... IF NOT EXISTS (they can race).
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema,))
                for schema in (self.schema, self.replica_schema):
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.credit_scores {_SCORES_DDL}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.schema}.accounts {_ACCOUNTS_DDL}")
                conn.execute(
                    f"INSERT INTO {self.schema}.credit_scores VALUES (%s, %s, 1) "
                    "ON CONFLICT (customer_id) DO UPDATE SET score = EXCLUDED.score, "
                    "version = EXCLUDED.version",
                    (CUSTOMER, OLD_SCORE),
                )
                conn.execute(
                    f"INSERT INTO {self.schema}.accounts VALUES ('A', 1000, 1), ('B', 0, 1) "
                    "ON CONFLICT (account_id) DO UPDATE SET balance = EXCLUDED.balance, "
                    "version = EXCLUDED.version"
                )
                conn.commit()
            finally:
                conn.close()
        self.replicate()

    def replicate(self) -> None:
        """Copy the demo's credit score to the replica schema (infrastructure, untraced)."""
        with suppress_instrumentation():
            conn = self.connect()
            try:
                conn.execute(
                    f"INSERT INTO {self.replica_schema}.credit_scores "
                    f"SELECT customer_id, score, version FROM {self.schema}.credit_scores "
                    "WHERE customer_id = %s ON CONFLICT (customer_id) DO UPDATE SET "
                    "score = EXCLUDED.score, version = EXCLUDED.version",
                    (CUSTOMER,),
                )
            finally:
                conn.close()

    def close(self) -> None:
        pass


class _SQLiteCache:
    """The `score_cache` table in app.db."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "app.db"
        self.where = f"embedded SQLite (table score_cache in {self.path})"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def get(self) -> int | None:
        conn = self._connect()
        try:
            return _read_score(conn, "score_cache", "?")
        finally:
            conn.close()

    def invalidate(self) -> None:
        conn = self._connect()
        try:
            conn.execute("DELETE FROM score_cache WHERE customer_id = ?", (CUSTOMER,))
        finally:
            conn.close()

    def seed(self) -> None:
        with suppress_instrumentation():
            conn = self._connect()
            conn.executescript(
                f"""
                DROP TABLE IF EXISTS score_cache;
                CREATE TABLE score_cache {_SCORES_DDL};
                INSERT INTO score_cache VALUES ({CUSTOMER}, {OLD_SCORE}, 1);
                """
            )
            conn.close()

    def close(self) -> None:
        pass


class _RedisCache:
    """A JSON value `{"score": ..., "version": ...}` under `<ns>:credit_score:42`."""

    def __init__(self, url: str, names: _Names) -> None:
        import redis

        self.key = f"{names.redis_key_prefix}{CUSTOMER}"

        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=10
        )
        self.where = f"Redis {redact(url)} (key {self.key})"

    def get(self) -> int | None:
        raw = self.client.get(self.key)
        return None if raw is None else int(json.loads(raw)["score"])

    def invalidate(self) -> None:
        self.client.delete(self.key)

    def seed(self) -> None:
        with suppress_instrumentation():
            self.client.set(self.key, json.dumps({"score": OLD_SCORE, "version": 1}))

    def close(self) -> None:
        self.client.close()


class _Stores:
    """The database (primary + replica) and the cache one run of the demo uses."""

    def __init__(self, database: _Database, cache: _Cache) -> None:
        self.database = database
        self.cache = cache

    def seed(self) -> None:
        """Fresh rows, cache filled and replica in sync (the database first: it may reset files)."""
        self.database.seed()
        self.cache.seed()

    def replicate(self) -> None:
        self.database.replicate()

    def connect(self, which: str = "primary", autocommit: bool = True) -> Any:
        return self.database.connect(which, autocommit)


def _open_stores(
    directory: Path,
    redis_url: str | None,
    postgres_dsn: str | None,
    names: _Names,
    mysql_dsn: str | None = None,
) -> _Stores:
    """Connect to the servers asked for, with a clear DemoError when one cannot be used."""
    database: _Database = _SQLiteDatabase(directory)
    cache: _Cache = _SQLiteCache(directory)
    if postgres_dsn and mysql_dsn:
        raise DemoError("--postgres-dsn and --mysql-dsn both hold the primary: pass one")
    if postgres_dsn:
        database = _postgres(postgres_dsn, names)
    if mysql_dsn:
        database = _mysql(mysql_dsn, names)
    if redis_url:
        cache = _redis(redis_url, names)
    return _Stores(database, cache)


def _names(namespace: str | None) -> _Names:
    value = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    if not _NAMESPACE.match(value):
        raise DemoError(
            f"namespace {value!r} ({NAMESPACE_ENV}): use lower-case letters, digits and _, "
            "starting with a letter or _ (at most 41 characters)"
        )
    return _Names(value)


def _postgres(dsn: str, names: _Names) -> _PostgresDatabase:
    where = f"PostgreSQL at {redact(dsn)} (--postgres-dsn / AGENTSTATE_POSTGRES_DSN)"
    try:
        import psycopg
    except ImportError:
        raise DemoError(
            f"{where}: psycopg 3 is not installed; pip install 'otel-agent-state[postgres]'"
        ) from None
    database = _PostgresDatabase(dsn, names)
    try:
        with suppress_instrumentation():
            database.connect().close()
    except (psycopg.Error, ValueError) as exc:
        raise DemoError(
            f"cannot connect to {where}: {_first_line(exc)}\n"
            "Start PostgreSQL there (docker compose up -d postgres), or pass a DSN that "
            "works (e.g. postgresql://postgres@127.0.0.1:5432/test); leave the option "
            "out to run on embedded SQLite."
        ) from None
    try:
        database.seed()
    except psycopg.Error as exc:
        raise DemoError(
            f"cannot set up the schemas {database.schema} and {database.replica_schema} in "
            f"{where}: {_first_line(exc)}\n"
            "Connect as a user that may create schemas in that database (CREATE privilege), "
            f"or pick another namespace with {NAMESPACE_ENV}."
        ) from None
    return database


def _mysql(dsn: str, names: _Names) -> _Database:
    where = f"MySQL/MariaDB at {redact(dsn)} (--mysql-dsn / AGENTSTATE_MYSQL_DSN)"
    try:
        import pymysql
    except ImportError:
        raise DemoError(
            f"{where}: PyMySQL is not installed; pip install 'otel-agent-state[mysql]'"
        ) from None
    from ._demo_mysql import MySQLDatabase

    try:
        database = MySQLDatabase(
            dsn,
            names.schema,
            names.replica_schema,
            where,
            _CONNECT_TIMEOUT,
            (CUSTOMER, OLD_SCORE),
        )
        with suppress_instrumentation():
            database.connect().close()
    except (pymysql.Error, ValueError) as exc:
        raise DemoError(
            f"cannot connect to {where}: {_first_line(exc)}\n"
            "Start MariaDB or MySQL there, or pass a DSN that works "
            "(e.g. mysql://root@127.0.0.1:3306/test); leave the option out to run on "
            "embedded SQLite."
        ) from None
    try:
        database.seed()
    except pymysql.Error as exc:
        raise DemoError(
            f"cannot set up the databases {names.schema} and {names.replica_schema} in "
            f"{where}: {_first_line(exc)}\n"
            "Connect as a user that may create databases (CREATE privilege), "
            f"or pick another namespace with {NAMESPACE_ENV}."
        ) from None
    return database


def _redis(url: str, names: _Names) -> _RedisCache:
    where = f"Redis at {redact(url)} (--redis-url / AGENTSTATE_REDIS_URL)"
    try:
        import redis
    except ImportError:
        raise DemoError(
            f"{where}: redis-py is not installed; pip install 'otel-agent-state[redis]'"
        ) from None
    try:
        cache = _RedisCache(url, names)
        with suppress_instrumentation():
            cache.client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise DemoError(
            f"cannot connect to {where}: {_first_line(exc)}\n"
            "Start Redis there (docker compose up -d redis), or pass a URL that works "
            "(e.g. redis://127.0.0.1:6379/0); leave the option out to use the embedded "
            "SQLite cache table."
        ) from None
    return cache


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _server_errors() -> tuple[type[BaseException], ...]:
    """The client libraries' own errors (only of those that are installed)."""
    errors: list[type[BaseException]] = []
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:
        pass
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:
        pass
    try:
        import pymysql

        errors.append(pymysql.Error)
    except ImportError:
        pass
    return tuple(errors)


# --------------------------------------------------------------------------- agents


def _score_decision(score: int) -> str:
    return "approve" if score >= APPROVAL_THRESHOLD else "decline"


def _read_score(conn: Any, table: str, placeholder: str) -> int | None:
    row = conn.execute(
        f"SELECT score, version FROM {table} WHERE customer_id = {placeholder}", (CUSTOMER,)
    ).fetchone()
    return None if row is None else int(row[0])


def _credit_scorer(stores: _Stores, invalidate_cache: bool, say: Callable[[str], None]) -> None:
    db = stores.database
    with agent("credit-scorer"):
        conn = stores.connect()
        try:
            old = _read_score(conn, db.table("credit_scores"), db.placeholder)
            conn.execute(
                f"UPDATE {db.table('credit_scores')} SET score = {db.placeholder}, "
                f"version = version + 1 WHERE customer_id = {db.placeholder}",
                (NEW_SCORE, CUSTOMER),
            )
        finally:
            conn.close()
        if invalidate_cache:
            stores.cache.invalidate()
        note = "and invalidated the cache" if invalidate_cache else "but left the cache as it was"
        say(f"credit-scorer  rescored customer {CUSTOMER}: {old} -> {NEW_SCORE}, {note}")


def _risk_assessor(stores: _Stores, say: Callable[[str], None]) -> None:
    db = stores.database
    with agent("risk-assessor"):
        score = stores.cache.get()
        source = "the cache"
        if score is None:
            conn = stores.connect()
            try:
                score = _read_score(conn, db.table("credit_scores"), db.placeholder)
            finally:
                conn.close()
            source = "the primary (cache miss)"
        with decision("approve-transaction", policy=f"score >= {APPROVAL_THRESHOLD}") as chosen:
            verdict = _score_decision(score or 0)
            chosen.outcome(verdict)
        say(f"risk-assessor  read score {score} from {source} -> {verdict}")


def _concurrent_pair(stores: _Stores, say: Callable[[str], None]) -> None:
    """limit-setter (replica) and fraud-checker (primary) work at the same time."""
    parent = otel_context.get_current()
    both_read = threading.Barrier(2, timeout=10)
    lines: dict[str, str] = {}
    failures: list[BaseException] = []
    db = stores.database

    def run(name: str, which: str) -> None:
        token = otel_context.attach(parent)
        try:
            with agent(name):
                conn = stores.connect(which)
                try:
                    score = _read_score(conn, db.table("credit_scores", which), db.placeholder)
                finally:
                    conn.close()
                both_read.wait()
                with decision("set-limit" if name == "limit-setter" else "fraud-check") as chosen:
                    chosen.outcome(_score_decision(score or 0))
                lines[name] = f"{name:<14} read score {score} from the {which}, concurrently"
        except BaseException as exc:  # reported by the main thread, not as a thread traceback
            failures.append(exc)
            both_read.abort()
        finally:
            otel_context.detach(token)

    threads = [
        threading.Thread(target=run, args=("limit-setter", "replica")),
        threading.Thread(target=run, args=("fraud-checker", "primary")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    for name in ("limit-setter", "fraud-checker"):
        say(lines.get(name, f"{name} did not finish"))


def _payments(stores: _Stores, in_transaction: bool, say: Callable[[str], None]) -> None:
    """Move 100 from A to B; the ledger service fails between the two updates."""
    db = stores.database
    try:
        with agent("payments"):
            conn = stores.connect(autocommit=not in_transaction)
            try:
                conn.execute(
                    f"UPDATE {db.table('accounts')} SET balance = balance - 100, "
                    f"version = version + 1 WHERE account_id = {db.placeholder}",
                    ("A",),
                )
                raise LedgerUnavailable("ledger service unavailable before crediting B")
            except LedgerUnavailable:
                if in_transaction:
                    conn.rollback()
                raise
            finally:
                conn.close()
    except LedgerUnavailable as exc:
        how = "rolled back" if in_transaction else "left A debited (autocommit)"
        say(f"payments       transfer A->B failed ({exc}); {how}")


def run_workflow(stores: _Stores, correct: bool, say: Callable[[str], None]) -> str:
    """One traced run of the workflow; returns its trace id."""
    stores.seed()
    with workflow("credit-approval" + ("" if not correct else " (correct)")) as flow:
        trace_id = format(flow.span.get_span_context().trace_id, "032x")
        _credit_scorer(stores, invalidate_cache=correct, say=say)
        if correct:
            stores.replicate()  # readers wait until the replica has caught up
        _risk_assessor(stores, say)
        _concurrent_pair(stores, say)
        _payments(stores, in_transaction=correct, say=say)
    return trace_id


# --------------------------------------------------------------------------- telemetry


def _instrumentors(redis: bool, postgres: bool, mysql: bool = False) -> list[Any]:
    out: list[Any] = [SQLite3Instrumentor()]
    if redis:
        from .instrumentation.redis import RedisInstrumentor

        out.append(RedisInstrumentor())
    if postgres:
        from .instrumentation.psycopg import PsycopgInstrumentor

        out.append(PsycopgInstrumentor())
    if mysql:
        from .instrumentation.pymysql import PyMySQLInstrumentor

        out.append(PyMySQLInstrumentor())
    return out


@contextmanager
def _telemetry(
    console: bool, redis: bool = False, postgres: bool = False, mysql: bool = False
) -> Iterator[InMemorySpanExporter]:
    """Use the launcher's provider if there is one; else build ours. Collect anomaly spans."""
    provider = trace.get_tracer_provider()
    own = not isinstance(provider, TracerProvider)
    if own:
        provider = TracerProvider(resource=Resource.create({"service.name": "credit-demo"}))
        if console:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
    assert isinstance(provider, TracerProvider)
    install_processor(provider)
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    # Under the launcher our instrumentors are already on (entry points); else turn them on.
    wanted = _instrumentors(redis, postgres, mysql)
    ours = [i for i in wanted if not i.is_instrumented_by_opentelemetry]
    for instrumentor in ours:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield collected
    finally:
        for instrumentor in reversed(ours):
            instrumentor.uninstrument()
        provider.force_flush()


def _findings(spans: list[ReadableSpan], trace_id: str) -> list[Finding]:
    out = []
    for span in spans:
        attrs = span.attributes or {}
        if not span.name.startswith(A.ANOMALY_SPAN_PREFIX):
            continue
        if format(span.context.trace_id, "032x") != trace_id:
            continue
        out.append(
            Finding(
                kind=str(attrs.get(A.ANOMALY_KIND)),
                fact=str(attrs.get(A.ANOMALY_FACT)),
                severity=str(attrs.get(A.ANOMALY_SEVERITY)),
                agents=_strings(attrs.get(A.ANOMALY_AGENTS)),
                summary=str(attrs.get(A.ANOMALY_SUMMARY)),
                trace_id=trace_id,
            )
        )
    return out


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    return ()


def _print_findings(findings: list[Finding], out: TextIO) -> None:
    if not findings:
        out.write("  => no anomalies: every agent acted on the latest committed state\n")
        return
    out.write(f"  => {len(findings)} anomalies:\n")
    for number, finding in enumerate(findings, 1):
        title = finding.kind.replace("_", " ").upper()
        out.write(f"  {number}. {title} of {finding.fact} [{finding.severity}]\n")
        out.write(f"     {finding.summary}\n")


def _header(stores: _Stores, directory: Path) -> str:
    if isinstance(stores.database, _SQLiteDatabase) and isinstance(stores.cache, _SQLiteCache):
        return (
            "otel-agent-state demo: credit scoring on embedded SQLite "
            f"(primary + cache table + lagging replica in {directory})"
        )
    return (
        "otel-agent-state demo: credit scoring on\n"
        f"  primary + lagging replica: {stores.database.where}\n"
        f"  score cache: {stores.cache.where}"
    )


def run(
    out: TextIO,
    workdir: Path | None = None,
    console: bool = False,
    which: str = "both",
    repeat: int = 1,
    interval: float = 0.0,
    redis_url: str | None = None,
    postgres_dsn: str | None = None,
    namespace: str | None = None,
    mysql_dsn: str | None = None,
) -> DemoResult:
    """Run the workflows `repeat` times (0: until interrupted), `interval` seconds apart.

    Repeating keeps a long-lived process producing anomalies, so a metrics scraper
    (Prometheus, the collector) sees the counters grow and alert rules fire. With
    `redis_url` the cache is in Redis, with `postgres_dsn` the primary and the replica are
    in PostgreSQL, both named after `namespace` (default: $AGENTSTATE_DEMO_NAMESPACE, else
    `agentstate_demo`). Raises DemoError (with what to do) when a server cannot be used.
    """
    names = _names(namespace)
    configure(rules=fact_rules(names.namespace))
    result = DemoResult([], [])
    with ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="otel-agent-state-demo-"))
        directory = workdir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        stores = _open_stores(
            directory, redis_url or None, postgres_dsn or None, names, mysql_dsn or None
        )
        stack.callback(stores.cache.close)
        stack.callback(stores.database.close)

        def say(line: str) -> None:
            out.write(f"  {line}\n")

        out.write(_header(stores, directory) + "\n")
        collected = stack.enter_context(
            _telemetry(
                console, redis=bool(redis_url), postgres=bool(postgres_dsn), mysql=bool(mysql_dsn)
            )
        )
        errors = _server_errors()
        round_ = 0
        while repeat <= 0 or round_ < repeat:
            if round_:
                time.sleep(max(interval, 0.0))
                out.write(f"\nround {round_ + 1}:\n")
            round_ += 1
            for correct in (False, True):
                if which == ("correct" if not correct else "faulty"):
                    continue
                label = "correct workflow" if correct else "faulty workflow"
                out.write(f"\n{label}:\n")
                try:
                    trace_id = run_workflow(stores, correct, say)
                except errors as exc:
                    raise DemoError(_lost(exc, stores)) from None
                out.write(f"  (trace {trace_id})\n")
                findings = _findings(list(collected.get_finished_spans()), trace_id)
                _print_findings(findings, out)
                if correct:
                    result.correct = findings
                else:
                    result.faulty = findings
            collected.clear()  # a long-running demo keeps bounded memory
            out.flush()
    return result


def _lost(exc: BaseException, stores: _Stores) -> str:
    """The message for a server error in the middle of a run."""
    module = type(exc).__module__.split(".")[0]
    where = stores.cache.where if module == "redis" else stores.database.where
    return f"{where} failed during the demo: {_first_line(exc)}"
