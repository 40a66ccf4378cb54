"""pytest plugin for scripts/conformance.sh: run a library's own test suite as it is, with
our instrumentation (and/or contrib's) switched on before the suite imports anything, and
write every test's outcome to a JSON file for `compare.py`.

Loaded with `-p agentstate_conformance` (its directory on PYTHONPATH). Environment:
  AGENTSTATE_CONFORMANCE_MODE  base | ours | contrib | both
  AGENTSTATE_CONFORMANCE_LIBS  comma list: sqlite3, psycopg2, psycopg, asyncpg, redis, sqlalchemy
  AGENTSTATE_CONFORMANCE_OUT   where to write {nodeid: outcome}
  AGENTSTATE_CONFORMANCE_SKIP_DEP_CHECK=1  every instrument() skips its dependency check
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import pytest

OURS = {
    "sqlite3": ("otel_agent_state.instrumentation.sqlite3", "SQLite3Instrumentor"),
    "psycopg2": ("otel_agent_state.instrumentation.psycopg2", "Psycopg2Instrumentor"),
    "psycopg": ("otel_agent_state.instrumentation.psycopg", "PsycopgInstrumentor"),
    "asyncpg": ("otel_agent_state.instrumentation.asyncpg", "AsyncpgInstrumentor"),
    "redis": ("otel_agent_state.instrumentation.redis", "RedisInstrumentor"),
    "sqlalchemy": ("otel_agent_state.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
}
CONTRIB = {
    "sqlite3": ("conformance", "ContribSQLite3"),
    "psycopg2": ("opentelemetry.instrumentation.psycopg2", "Psycopg2Instrumentor"),
    "psycopg": ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor"),
    "asyncpg": ("opentelemetry.instrumentation.asyncpg", "AsyncPGInstrumentor"),
    "redis": ("opentelemetry.instrumentation.redis", "RedisInstrumentor"),
    "sqlalchemy": ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
}

_outcomes: dict[str, str] = {}
_PROVIDER = pytest.StashKey[Any]()
_active: list[Any] = []


class ContribSQLite3:
    """contrib's `SQLite3Instrumentor` exactly (a `dbapi.wrap_connect` of `sqlite3` and
    `sqlite3.dbapi2`): its 0.66b2 is not on PyPI and 0.66b1 pins another dbapi package."""

    def instrument(self, tracer_provider: Any = None, **_: Any) -> None:
        import sqlite3
        import sqlite3.dbapi2

        from opentelemetry.instrumentation import dbapi

        for module in (sqlite3, sqlite3.dbapi2):
            dbapi.wrap_connect(
                "opentelemetry.instrumentation.sqlite3",
                module,
                "connect",
                "sqlite",
                {"database": "database"},
                version="0.66b2",
                tracer_provider=tracer_provider,
            )


def _instrumentor(table: dict[str, tuple[str, str]], lib: str) -> Any:
    module, name = table[lib]
    if module == "conformance":
        return globals()[name]()
    return getattr(importlib.import_module(module), name)()


def _provider() -> Any:
    """A hand-built provider as the README shows: our processor, spans kept in memory
    (bounded: the exporter is cleared as it fills)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_agent_state import StateCoherenceSpanProcessor

    class Bounded(InMemorySpanExporter):
        total = 0

        def export(self, spans: Any) -> Any:
            Bounded.total += len(spans)
            if len(self.get_finished_spans()) > 10_000:
                self.clear()
            return super().export(spans)

    provider = TracerProvider()
    provider.add_span_processor(StateCoherenceSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(Bounded()))
    return provider


def _skip_dependency_checks() -> None:
    """contrib 0.66b2's SQLAlchemy instrumentation declares `sqlalchemy < 2.1`, so its own
    tests instrument nothing next to SQLAlchemy 2.1 unless the check is skipped (in every
    mode alike: the comparison stays fair)."""
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

    original = BaseInstrumentor.instrument

    def instrument(self: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("skip_dep_check", True)
        return original(self, **kwargs)

    BaseInstrumentor.instrument = instrument  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("AGENTSTATE_CONFORMANCE_SKIP_DEP_CHECK") == "1":
        _skip_dependency_checks()
    mode = os.environ.get("AGENTSTATE_CONFORMANCE_MODE", "base")
    libs = [x for x in os.environ.get("AGENTSTATE_CONFORMANCE_LIBS", "").split(",") if x]
    if mode == "base" or not libs:
        return
    provider = _provider()
    for lib in libs:
        # contrib's first when both: the load order the zero-code launcher most often has.
        tables = {"ours": [OURS], "contrib": [CONTRIB], "both": [CONTRIB, OURS]}[mode]
        for table in tables:
            if lib not in table:
                continue
            try:
                inst = _instrumentor(table, lib)
            except ImportError as exc:
                raise pytest.UsageError(f"{table[lib][0]} is not installed: {exc}") from exc
            inst.instrument(tracer_provider=provider, skip_dep_check=True)
            _active.append(inst)
    config.stash[_PROVIDER] = provider


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    if report.when == "call" or outcome != "passed":
        # an error in setup/teardown counts as the test's outcome
        if report.when != "call" and outcome == "failed":
            outcome = f"error-{report.when}"
        if _outcomes.get(report.nodeid, "passed") in ("passed",) or report.when == "call":
            _outcomes.setdefault(report.nodeid, outcome)
            if outcome != "passed":
                _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("AGENTSTATE_CONFORMANCE_OUT")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)
        # How many spans the instrumented run made: a run that traced nothing proves nothing.
        provider = session.config.stash.get(_PROVIDER, None)
        if provider is not None:
            exported = 0
            for processor in provider._active_span_processor._span_processors:
                exporter = getattr(processor, "span_exporter", None)
                if exporter is not None:
                    exported += getattr(exporter, "total", 0)
            with open(out + ".spans", "w", encoding="utf-8") as f:
                f.write(f"{exported}\n")
