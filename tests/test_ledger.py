"""The ledger: when findings are reported, exactly once, and its memory bounds."""

from __future__ import annotations

import threading
from dataclasses import replace

from otel_agent_state.config import Consistency
from otel_agent_state.ledger import Ledger, LedgerLimits
from otel_agent_state.model import AnomalyKind, Scope, Severity

from .histories import TRACE, H


def _ledger(clock: list[float] | None = None, **limits: int) -> Ledger:
    now = clock if clock is not None else [0.0]
    return Ledger(
        lambda _fact: Consistency("linearizable"),
        LedgerLimits(**limits),
        clock=lambda: now[0],
    )


def _story() -> tuple[H, str]:
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    h.write("credit-scorer", "score/42", "n:2", (10, 12), scope=scorer)
    risk = h.agent("risk", (30, 60))
    h.read("risk", "score/42", "n:1", (40, 41), tier="cache", scope=risk)
    return h, risk


def _start(ledger: Ledger, scope: Scope) -> None:
    ledger.add_scope(replace(scope, end_ns=None))


def test_stale_read_reported_as_error_once_the_agent_acts() -> None:
    h, risk = _story()
    ledger = _ledger()
    scorer_scope, risk_scope = h.scopes
    _start(ledger, scorer_scope)
    assert ledger.add_observation(h.observations[0]) == []
    assert ledger.add_scope(scorer_scope) == []
    _start(ledger, risk_scope)
    assert ledger.add_observation(h.observations[1]) == []  # pending: did it matter?
    decision = h.decision("risk", risk, (45, 46))
    [anomaly] = ledger.add_scope(h.scopes[-1])
    assert anomaly.kind == AnomalyKind.STALE_READ
    assert anomaly.severity == Severity.ERROR
    assert decision != anomaly.span_id
    assert ledger.add_scope(risk_scope) == []  # not again at scope end
    assert ledger.close_trace(TRACE) == []  # nor at close


def test_stale_read_nobody_acted_on_is_a_warning_at_scope_end() -> None:
    h, _ = _story()
    ledger = _ledger()
    for scope in h.scopes:
        _start(ledger, scope)
    for obs in h.observations:
        assert ledger.add_observation(obs) == []
    assert ledger.add_scope(h.scopes[0]) == []
    [anomaly] = ledger.add_scope(h.scopes[1])
    assert anomaly.severity == Severity.WARNING
    assert ledger.close_trace(TRACE) == []


def test_read_racing_a_write_on_another_thread_is_caught_at_close() -> None:
    h, _ = _story()
    ledger = _ledger()
    read, write = h.observations[1], h.observations[0]
    assert ledger.add_observation(read) == []  # arrives first, though the write ended earlier
    assert ledger.add_observation(write) == []
    [anomaly] = ledger.close_trace(TRACE)
    assert anomaly.kind == AnomalyKind.STALE_READ
    assert anomaly.severity == Severity.WARNING
    assert ledger.stats().traces == 0


def test_lost_update_reported_when_the_second_write_commits() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    h.read("alice", "x", "n:1", (1, 2), scope=a)
    h.read("bob", "x", "n:1", (3, 4), scope=b)
    h.write("alice", "x", "n:2", (5, 6), scope=a)
    h.write("bob", "x", "n:3", (7, 8), scope=b, txn="t")
    h.txn_end("t", "commit", 9)
    ledger = _ledger()
    for scope in h.scopes:
        _start(ledger, scope)
    reported = [a for obs in h.observations for a in ledger.add_observation(obs)]
    assert reported == []  # bob's write is not committed yet
    [anomaly] = ledger.add_txn_end(h.txn_ends[0])
    assert anomaly.kind == AnomalyKind.LOST_UPDATE
    assert [ledger.add_scope(scope) for scope in h.scopes] == [[], []]
    assert ledger.close_trace(TRACE) == []


def test_orphan_reported_when_the_trace_closes() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    ledger = _ledger()
    _start(ledger, h.scopes[0])
    assert ledger.add_observation(h.observations[0]) == []
    assert ledger.add_scope(h.scopes[0]) == []  # a compensating write may still come
    [anomaly] = ledger.close_trace(TRACE)
    assert anomaly.kind == AnomalyKind.ORPHANED_MUTATION


def test_max_traces_closes_the_least_recently_active() -> None:
    ledger = _ledger(max_traces=2)
    h = H()
    pay = h.agent("payments", (0, None))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    ledger.add_scope(h.scopes[0])
    ledger.add_observation(h.observations[0])
    other = [replace(h.observations[0], trace_id=f"{i:032x}", span_id=f"{i:016x}") for i in (7, 8)]
    assert ledger.add_observation(other[0]) == []
    evicted = ledger.add_observation(other[1])  # third trace: the first one is closed
    assert [a.kind for a in evicted] == [AnomalyKind.ORPHANED_MUTATION]  # never ended
    assert ledger.stats().traces == 2
    assert ledger.stats().evicted_traces == 1


def test_max_facts_per_trace_drops_and_counts() -> None:
    ledger = _ledger(max_facts_per_trace=3)
    h = H()
    for i in range(5):
        h.write("w", f"fact/{i}", "n:1", (i, i + 1))
    for obs in h.observations:
        ledger.add_observation(obs)
    h.write("w", "fact/0", "n:2", (10, 11))  # a known fact is still tracked
    ledger.add_observation(h.observations[-1])
    assert ledger.stats().dropped_facts == 2
    assert ledger.stats().traces == 1


def test_max_events_per_fact_caps_history() -> None:
    ledger = _ledger(max_events_per_fact=4)
    h = H()
    for i in range(10):
        h.write("w", "f", f"n:{i + 1}", (2 * i, 2 * i + 1))
    for obs in h.observations:
        ledger.add_observation(obs)
    state = ledger._traces[TRACE]
    assert [w.version.text for w in state.history.writes("f")] == ["n:7", "n:8", "n:9", "n:10"]


def test_ttl_closes_idle_traces_and_reports_never_ended_scopes() -> None:
    clock = [100.0]
    ledger = _ledger(clock, trace_ttl_ms=5_000)
    h = H()
    pay = h.agent("payments", (0, None))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    ledger.add_scope(h.scopes[0])
    ledger.add_observation(h.observations[0])
    clock[0] = 104.0
    assert ledger.close_expired() == []
    clock[0] = 106.0
    [anomaly] = ledger.close_expired()
    assert anomaly.kind == AnomalyKind.ORPHANED_MUTATION
    assert "never ended" in anomaly.summary
    assert ledger.stats().traces == 0


def test_many_threads_one_ledger_no_lost_observations() -> None:
    ledger = _ledger()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            h = H()
            for step in range(300):
                h.write(f"w{worker}", f"f/{worker}", f"n:{step + 1}", (step, step))
                h.read(f"w{worker}", f"f/{worker}", f"n:{step + 1}", (step, step))
            for obs in h.observations:
                found = ledger.add_observation(
                    replace(obs, span_id=f"{worker:04x}{obs.span_id[4:]}")
                )
                assert found == []
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    history = ledger._traces[TRACE].history
    assert history.fact_count() == 8
    assert sum(len(history.committed_writes(f"f/{i}")) for i in range(8)) == 8 * 256
    assert ledger.close_trace(TRACE) == []
