"""A labelled corpus of small multi-agent workflows on real stores (issue: accuracy).

Each scenario states the anomalies it must produce, by kind and count; its correct twin
states none. `run_scenario` runs one on a fresh real SDK pipeline with our processor and
instrumentors and returns what was found, so the tests (tests/test_scenarios.py) and the
report (`python -m tests.scenarios.report`, precision and recall per kind) share one runner.
"""

from __future__ import annotations

import importlib
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_agent_state import api
from otel_agent_state import attributes as A
from otel_agent_state.core import config
from otel_agent_state.processor import StateCoherenceSpanProcessor

KINDS = ("stale_read", "divergent_view", "lost_update", "orphaned_mutation")
CASE_MODULES = (
    "sqlite_cases",
    "redis_cases",
    "postgres_cases",
    "vector_cases",
    "memory_cases",
    "mysql_cases",
)

# Instrumentors each store needs: (module, class). Imported lazily: a store's module may need
# its client library, which only that store's scenarios require.
INSTRUMENTORS: dict[str, tuple[str, str]] = {
    "sqlite": ("otel_agent_state.instrumentation.sqlite3", "SQLite3Instrumentor"),
    "redis": ("otel_agent_state.instrumentation.redis", "RedisInstrumentor"),
    "postgres": ("otel_agent_state.instrumentation.psycopg", "PsycopgInstrumentor"),
    "qdrant": ("otel_agent_state.instrumentation.qdrant", "QdrantInstrumentor"),
    "langgraph-store": (
        "otel_agent_state.instrumentation.langgraph_store",
        "LangGraphStoreInstrumentor",
    ),
    "mem0": ("otel_agent_state.instrumentation.mem0", "Mem0Instrumentor"),
    "milvus": ("otel_agent_state.instrumentation.milvus", "MilvusInstrumentor"),
    "pymysql": ("otel_agent_state.instrumentation.pymysql", "PyMySQLInstrumentor"),
    "mysqlclient": ("otel_agent_state.instrumentation.mysqlclient", "MySQLClientInstrumentor"),
    "aiomysql": ("otel_agent_state.instrumentation.aiomysql", "AioMySQLInstrumentor"),
}
MYSQL_STORES = ("pymysql", "mysqlclient", "aiomysql")  # one MariaDB server, three clients


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expect: Mapping[str, int]  # anomaly kind -> how many; empty for a correct workflow
    stores: tuple[str, ...]
    run: Callable[[Env], None]
    rules: tuple[Mapping[str, Any], ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)  # extra configure() arguments
    # A detector/instrumentation bug this scenario exposes: the test is a strict xfail and
    # the report lists it, so the label stays honest until the bug is fixed.
    known_issue: str = ""


@dataclass
class Env:
    """What a scenario works with: a temp dir and clients of the real stores."""

    tmp: Path
    redis_url: str = ""
    postgres_dsn: str = ""
    schema: str = ""
    mysql_dsn: str = ""  # names the scenario's own database
    _cleanup: ExitStack = field(default_factory=ExitStack)

    def sqlite_path(self, name: str = "app.db") -> Path:
        return self.tmp / name

    def sqlite(self, name: str = "app.db", *, autocommit: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.tmp / name,
            isolation_level=None if autocommit else "DEFERRED",
            check_same_thread=False,  # closed by the runner, maybe from another thread
        )
        self._cleanup.callback(conn.close)
        return conn

    def redis(self) -> Any:
        import redis

        client = redis.Redis.from_url(self.redis_url, db=REDIS_DB)
        self._cleanup.callback(client.close)
        return client

    def qdrant(self, name: str = "qdrant") -> Any:
        """A local-mode (embedded, on-disk) Qdrant store in the scenario's temp dir."""
        from qdrant_client import QdrantClient

        client = QdrantClient(path=str(self.tmp / name))
        self._cleanup.callback(client.close)
        return client

    def postgres(self, *, autocommit: bool = True) -> Any:
        import psycopg

        conn = psycopg.connect(self.postgres_dsn, autocommit=autocommit)
        conn.execute(f"SET search_path TO {self.schema}")
        self._cleanup.callback(conn.close)
        return conn

    def mysql(self, client: str, *, autocommit: bool = True, tier: str | None = None) -> Any:
        """A connection of `client` (pymysql, mysqlclient, aiomysql) to the scenario's
        database; `tier="replica"` tags it as a read replica."""
        from ..mysql_support import Conn

        conn = Conn(client, self.mysql_dsn, autocommit=autocommit, tier=tier)
        self._cleanup.callback(conn.close)
        return conn


REDIS_DB = 5  # the corpus' own Redis db (other suites use others)

_registry: dict[str, Scenario] = {}


def scenario(
    description: str,
    *,
    expect: Mapping[str, int] | None = None,
    stores: Sequence[str] = ("sqlite",),
    rules: Sequence[Mapping[str, Any]] = (),
    known_issue: str = "",
    **settings: Any,
) -> Callable[[Callable[[Env], None]], Callable[[Env], None]]:
    """Register the decorated workflow as a labelled scenario named after the function."""

    def register(fn: Callable[[Env], None]) -> Callable[[Env], None]:
        unknown = set(expect or {}) - set(KINDS)
        assert not unknown, f"{fn.__name__}: unknown kinds {unknown}"
        name = f"{fn.__module__.rsplit('.', 1)[-1].removesuffix('_cases')}/{fn.__name__}"
        assert name not in _registry, f"duplicate scenario {name}"
        _registry[name] = Scenario(
            name=name,
            description=description,
            expect=dict(expect or {}),
            stores=tuple(stores),
            run=fn,
            rules=tuple(rules),
            settings=settings,
            known_issue=known_issue,
        )
        return fn

    return register


def all_scenarios() -> list[Scenario]:
    for module in CASE_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
    return sorted(_registry.values(), key=lambda s: s.name)


@dataclass(frozen=True)
class Outcome:
    found: Counter[str]
    spans: tuple[ReadableSpan, ...]

    def anomalies(self) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith("agentstate.anomaly")]


@contextmanager
def _pipeline() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    provider = TracerProvider(resource=Resource.create({"service.name": "scenarios"}))
    processor = StateCoherenceSpanProcessor(tracer_provider=provider, meter_provider=meters)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api.configure(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        processor.close_all_traces()
        provider.shutdown()
        meters.shutdown()
        api._tracer_provider = None


def run_scenario(s: Scenario, env: Env) -> Outcome:
    config.set_settings(config.Settings())
    instrumentors: list[Any] = []
    try:
        api.configure(rules=list(s.rules), **dict(s.settings))
        with _pipeline() as (provider, exporter), env._cleanup:
            for store in s.stores:
                module, cls = INSTRUMENTORS[store]
                instrumentor = getattr(importlib.import_module(module), cls)()
                instrumentor.instrument(tracer_provider=provider)
                instrumentors.append(instrumentor)
            try:
                s.run(env)
            finally:
                for instrumentor in reversed(instrumentors):
                    instrumentor.uninstrument()
        spans = tuple(exporter.get_finished_spans())
    finally:
        config.set_settings(None)
    found: Counter[str] = Counter(
        str((span.attributes or {}).get(A.ANOMALY_KIND))
        for span in spans
        if span.name.startswith("agentstate.anomaly")
    )
    return Outcome(found=found, spans=spans)


def new_schema() -> str:
    return f"agentstate_sc_{uuid.uuid4().hex[:12]}"


@contextmanager
def environment(s: Scenario, tmp: Path, service: Callable[[str], str]) -> Iterator[Env]:
    """The Env scenario `s` runs in, with its own PostgreSQL schema when it needs one.

    `service("redis_url")` / `service("postgres_dsn")` give the servers' addresses; the tests
    pass pytest's fixture lookup, so a server that is down fails in CI rather than skipping.
    """
    env = Env(tmp=tmp)
    if "redis" in s.stores:
        env.redis_url = service("redis_url")
    if set(s.stores) & set(MYSQL_STORES):
        with _mysql_database(service("mysql_dsn")) as env.mysql_dsn:
            yield env
        return
    if "postgres" not in s.stores:
        yield env
        return
    import psycopg

    env.postgres_dsn = service("postgres_dsn")
    env.schema = new_schema()
    with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {env.schema}")
    try:
        yield env
    finally:
        with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {env.schema} CASCADE")


@contextmanager
def _mysql_database(dsn: str) -> Iterator[str]:
    """A database of the scenario's own on the MariaDB server; its DSN."""
    from ..mysql_support import sql

    name = f"myi_sc_{uuid.uuid4().hex[:12]}"
    sql(dsn, f"CREATE DATABASE {name}")
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        sql(dsn, f"DROP DATABASE IF EXISTS {name}")


def precision_recall(
    results: Sequence[tuple[Scenario, Counter[str]]],
) -> dict[str, tuple[int, int, int]]:
    """Per kind: (true positives, false positives, false negatives) over the corpus."""
    table: dict[str, tuple[int, int, int]] = {}
    for kind in KINDS:
        tp = fp = fn = 0
        for s, found in results:
            expected, got = s.expect.get(kind, 0), found.get(kind, 0)
            tp += min(expected, got)
            fp += max(0, got - expected)
            fn += max(0, expected - got)
        table[kind] = (tp, fp, fn)
    return table
