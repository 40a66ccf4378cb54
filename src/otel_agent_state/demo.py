"""`otel-agent-state demo`: the credit-scoring scenario on embedded SQLite.

Two runs of one multi-agent workflow over a primary database, a cache table and a lagging
replica file. The faulty run makes the classic mistakes (no cache invalidation, reading a
replica that has not caught up, a transfer in autocommit that dies half-way); the correct
run does the same work properly. Only plain `sqlite3` calls are made: the instrumentation
and the processor find the anomalies.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

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

FACT_RULES: list[dict[str, Any]] = [
    {
        "name": "credit_score",
        "consistency": "linearizable",
        "keys": [
            "sqlite:app/credit_scores/{customer_id}",
            {"pattern": "sqlite:app/score_cache/{customer_id}", "tier": "cache"},
            {"pattern": "sqlite:replica/credit_scores/{customer_id}", "tier": "replica"},
        ],
        "version": {"column": "version"},
    },
    {
        "name": "account",
        "keys": ["sqlite:app/accounts/{account_id}"],
        "version": {"column": "version"},
    },
]


class LedgerUnavailable(RuntimeError):
    """The demo's simulated failure between the two halves of a transfer."""


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


class _Stores:
    """The primary (app.db, with a cache table) and the replica (replica.db)."""

    def __init__(self, directory: Path) -> None:
        self.primary = directory / "app.db"
        self.replica = directory / "replica.db"

    def connect(self, which: str = "primary", autocommit: bool = True) -> sqlite3.Connection:
        path = self.primary if which == "primary" else self.replica
        # isolation_level=None: autocommit, each statement commits on its own.
        return sqlite3.connect(
            path, isolation_level=None if autocommit else "DEFERRED", check_same_thread=False
        )

    def seed(self) -> None:
        """Fresh tables, cache filled and replica in sync; made without telemetry."""
        with suppress_instrumentation():
            for path in (self.primary, self.replica):
                path.unlink(missing_ok=True)
            conn = self.connect()
            conn.executescript(
                f"""
                CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY,
                    score INTEGER NOT NULL, version INTEGER NOT NULL);
                CREATE TABLE score_cache (customer_id INTEGER PRIMARY KEY,
                    score INTEGER NOT NULL, version INTEGER NOT NULL);
                CREATE TABLE accounts (account_id TEXT PRIMARY KEY,
                    balance INTEGER NOT NULL, version INTEGER NOT NULL);
                INSERT INTO credit_scores VALUES ({CUSTOMER}, {OLD_SCORE}, 1);
                INSERT INTO score_cache VALUES ({CUSTOMER}, {OLD_SCORE}, 1);
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
            target.execute(
                "CREATE TABLE IF NOT EXISTS credit_scores (customer_id INTEGER PRIMARY KEY,"
                " score INTEGER NOT NULL, version INTEGER NOT NULL)"
            )
            target.executemany("INSERT OR REPLACE INTO credit_scores VALUES (?, ?, ?)", rows)
            target.close()


def _score_decision(score: int) -> str:
    return "approve" if score >= APPROVAL_THRESHOLD else "decline"


def _read_score(conn: sqlite3.Connection, table: str) -> int | None:
    row = conn.execute(
        f"SELECT score, version FROM {table} WHERE customer_id = ?", (CUSTOMER,)
    ).fetchone()
    return None if row is None else int(row[0])


def _credit_scorer(stores: _Stores, invalidate_cache: bool, say: Callable[[str], None]) -> None:
    with agent("credit-scorer"):
        conn = stores.connect()
        old = _read_score(conn, "credit_scores")
        conn.execute(
            "UPDATE credit_scores SET score = ?, version = version + 1 WHERE customer_id = ?",
            (NEW_SCORE, CUSTOMER),
        )
        if invalidate_cache:
            conn.execute("DELETE FROM score_cache WHERE customer_id = ?", (CUSTOMER,))
        conn.close()
        note = "and invalidated the cache" if invalidate_cache else "but left the cache as it was"
        say(f"credit-scorer  rescored customer {CUSTOMER}: {old} -> {NEW_SCORE}, {note}")


def _risk_assessor(stores: _Stores, say: Callable[[str], None]) -> None:
    with agent("risk-assessor"):
        conn = stores.connect()
        score = _read_score(conn, "score_cache")
        source = "the cache"
        if score is None:
            score = _read_score(conn, "credit_scores")
            source = "the primary (cache miss)"
        conn.close()
        with decision("approve-transaction", policy=f"score >= {APPROVAL_THRESHOLD}") as chosen:
            verdict = _score_decision(score or 0)
            chosen.outcome(verdict)
        say(f"risk-assessor  read score {score} from {source} -> {verdict}")


def _concurrent_pair(stores: _Stores, say: Callable[[str], None]) -> None:
    """limit-setter (replica) and fraud-checker (primary) work at the same time."""
    parent = otel_context.get_current()
    both_read = threading.Barrier(2, timeout=10)
    lines: dict[str, str] = {}

    def run(name: str, which: str) -> None:
        token = otel_context.attach(parent)
        try:
            with agent(name):
                conn = stores.connect(which)
                score = _read_score(conn, "credit_scores") or 0
                conn.close()
                both_read.wait()
                with decision("set-limit" if name == "limit-setter" else "fraud-check") as chosen:
                    chosen.outcome(_score_decision(score))
                lines[name] = f"{name:<14} read score {score} from the {which}, concurrently"
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
    for name in ("limit-setter", "fraud-checker"):
        say(lines.get(name, f"{name} did not finish"))


def _payments(stores: _Stores, in_transaction: bool, say: Callable[[str], None]) -> None:
    """Move 100 from A to B; the ledger service fails between the two updates."""
    try:
        with agent("payments"):
            conn = stores.connect(autocommit=not in_transaction)
            try:
                conn.execute(
                    "UPDATE accounts SET balance = balance - 100, version = version + 1 "
                    "WHERE account_id = ?",
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


@contextmanager
def _telemetry(console: bool) -> Iterator[InMemorySpanExporter]:
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
    instrumentor = SQLite3Instrumentor()
    instrumented_here = not instrumentor.is_instrumented_by_opentelemetry
    if instrumented_here:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield collected
    finally:
        if instrumented_here:
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


def run(
    out: TextIO,
    workdir: Path | None = None,
    console: bool = False,
    which: str = "both",
    repeat: int = 1,
    interval: float = 0.0,
) -> DemoResult:
    """Run the workflows `repeat` times (0: until interrupted), `interval` seconds apart.

    Repeating keeps a long-lived process producing anomalies, so a metrics scraper
    (Prometheus, the collector) sees the counters grow and alert rules fire.
    """
    configure(rules=FACT_RULES)
    result = DemoResult([], [])
    with tempfile.TemporaryDirectory(prefix="otel-agent-state-demo-") as scratch:
        directory = workdir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        stores = _Stores(directory)

        def say(line: str) -> None:
            out.write(f"  {line}\n")

        out.write(
            "otel-agent-state demo: credit scoring on embedded SQLite "
            f"(primary + cache table + lagging replica in {directory})\n"
        )
        with _telemetry(console) as collected:
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
                    trace_id = run_workflow(stores, correct, say)
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
