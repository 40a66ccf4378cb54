"""The ledger: when each finding is reported, with which severity, exactly once; its bounds."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_agent_state.core.config import parse_consistency
from otel_agent_state.core.detectors import (
    detect_all,
    detect_divergent_views,
    detect_lost_updates,
    detect_orphaned_mutations,
    detect_stale_reads,
)
from otel_agent_state.core.history import History
from otel_agent_state.core.ledger import Ledger, LedgerLimits, LedgerStats, TraceState, _acted_after
from otel_agent_state.core.model import (
    Anomaly,
    AnomalyKind,
    FactVersion,
    Observation,
    Scope,
    Severity,
    TxnEnd,
    parse_version,
)

from .histories import DIVERGENT, ERROR, LOST, MS, ORPHAN, STALE, TRACE, WARNING, H


def _ledger(
    clock: list[float] | None = None, consistency: str = "linearizable", **limits: int
) -> Ledger:
    now = clock if clock is not None else [0.0]
    model = parse_consistency(consistency)
    return Ledger(lambda _fact: model, LedgerLimits(**limits), clock=lambda: now[0])


def _start(ledger: Ledger, scope: Scope) -> list[Anomaly]:
    return ledger.add_scope(replace(scope, end_ns=None))


Event = tuple[int, int, object]


def replay(ledger: Ledger, h: H, *, close: bool = True) -> list[tuple[str, list[Anomaly]]]:
    """Feed `h` to the ledger as spans would end, in time order; what each event reported."""
    events: list[Event] = []
    for scope in h.scopes:
        events.append((scope.start_ns, 0, replace(scope, end_ns=None)))
        if scope.end_ns is not None:
            events.append((scope.end_ns, 2, scope))
    events.extend((obs.end_ns, 1, obs) for obs in h.observations)
    events.extend((end.end_ns, 1, end) for end in h.txn_ends)
    out: list[tuple[str, list[Anomaly]]] = []
    for _, _, item in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(item, Observation):
            out.append((item.span_id, ledger.add_observation(item)))
        elif isinstance(item, TxnEnd):
            out.append((item.span_id, ledger.add_txn_end(item)))
        else:
            assert isinstance(item, Scope)
            label = item.span_id if item.end_ns is not None else f"start {item.span_id}"
            out.append((label, ledger.add_scope(item)))
    if close:
        out.append(("close", ledger.close_trace(h.trace)))
    return out


def reported(
    events: list[tuple[str, list[Anomaly]]],
) -> list[tuple[str, AnomalyKind, str, Severity]]:
    """(event, kind, offending span, severity) for every finding, in reporting order."""
    return [(event, a.kind, a.span_id, a.severity) for event, found in events for a in found]


# ---------------------------------------------------------------- stale read severity


def _story() -> tuple[H, str, str, str]:
    """The scorer commits n:2 at 12 ms; risk reads n:1 from the cache at 40 ms."""
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    write = h.write("credit-scorer", "score/42", "n:2", (10, 12), scope=scorer)
    risk = h.agent("risk", (30, 60))
    read = h.read("risk", "score/42", "n:1", (40, 41), tier="cache", scope=risk)
    return h, risk, write, read


def test_stale_read_is_an_error_once_the_agent_decides_after_it() -> None:
    h, risk, write, read = _story()
    decision = h.decision("risk", risk, (45, 46))
    ledger = _ledger()
    events = replay(ledger, h)
    assert reported(events) == [(decision, STALE, read, ERROR)]
    [(_, [anomaly])] = [e for e in events if e[1]]
    assert (anomaly.fact, anomaly.observed_version, anomaly.expected_version) == (
        "score/42",
        "n:1",
        "n:2",
    )
    assert (anomaly.agents, anomaly.evidence_span_ids, anomaly.lag_ms) == (
        ("risk", "credit-scorer"),
        (write,),
        28.0,
    )
    assert ledger.stats().traces == 0


def test_stale_read_is_an_error_once_the_agent_writes_after_it() -> None:
    h, risk, _, read = _story()
    act = h.write("risk", "limit/42", "n:1", (50, 51), scope=risk)
    assert reported(replay(_ledger(), h)) == [(act, STALE, read, ERROR)]


def test_stale_read_nobody_acted_on_is_a_warning_when_its_agent_ends() -> None:
    h, risk, _, read = _story()
    assert reported(replay(_ledger(), h)) == [(risk, STALE, read, WARNING)]


def test_a_failed_write_is_not_acting_on_the_read() -> None:
    h, risk, _, read = _story()
    h.write("risk", "limit/42", "n:1", (50, 51), scope=risk, failed=True)
    assert reported(replay(_ledger(), h)) == [(risk, STALE, read, WARNING)]


def test_an_act_of_another_agent_does_not_raise_the_severity() -> None:
    h, risk, _, read = _story()
    other = h.agent("fraud", (30, 60))
    h.decision("fraud", other, (45, 46))
    assert reported(replay(_ledger(), h)) == [(risk, STALE, read, WARNING)]


def test_stale_read_inside_a_decision_is_reported_at_once_as_an_error() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2))
    risk = h.agent("risk", (3, 30))
    decision = h.decision("risk", risk, (4, 20))
    read = h.read("risk", "f", "n:1", (5, 6), scope=risk, decision=decision)
    assert reported(replay(_ledger(), h)) == [(read, STALE, read, ERROR)]


def test_pending_stale_read_is_a_warning_when_the_trace_closes_first() -> None:
    h, _, _, read = _story()
    h.scopes[1] = replace(h.scopes[1], end_ns=None)  # risk never ended
    assert reported(replay(_ledger(), h)) == [("close", STALE, read, WARNING)]


def test_read_racing_a_write_on_another_thread_is_caught_at_close() -> None:
    h, _, write, read = _story()
    ledger = _ledger()
    assert ledger.add_observation(h.obs(read)) == []  # arrives first, though it started later
    assert ledger.add_observation(h.obs(write)) == []
    [anomaly] = ledger.close_trace(TRACE)
    assert (anomaly.kind, anomaly.span_id, anomaly.severity) == (STALE, read, WARNING)
    assert ledger.stats().traces == 0
    assert ledger.close_trace(TRACE) == []  # a closed trace is gone


def test_race_caught_at_close_is_an_error_when_the_agent_acted() -> None:
    h, risk, write, read = _story()
    act = h.write("risk", "limit/42", "n:1", (50, 51), scope=risk)
    ledger = _ledger()
    for span in (read, act, write):
        assert ledger.add_observation(h.obs(span)) == []
    [anomaly] = ledger.close_trace(TRACE)
    assert (anomaly.kind, anomaly.span_id, anomaly.severity) == (STALE, read, ERROR)


def test_check_read_reports_before_the_read_ends_and_only_once() -> None:
    h, risk, _, read = _story()
    ledger = _ledger()
    for obs in h.observations[:1]:
        ledger.add_observation(obs)
    [anomaly] = ledger.check_read(h.obs(read))  # raise mode: the read is still in progress
    assert (anomaly.kind, anomaly.span_id, anomaly.expected_version) == (STALE, read, "n:2")
    assert ledger.add_observation(h.obs(read)) == []
    assert ledger.add_scope(h.scope(risk)) == []
    assert ledger.close_trace(TRACE) == []


def test_check_read_under_session_sees_the_agents_earlier_reads() -> None:
    h = H()
    first = h.read("me", "f", "n:5", (1, 2))
    later = h.read("me", "f", "n:4", (10, 11), tier="replica")
    ledger = _ledger(consistency="session")
    assert ledger.add_observation(h.obs(first)) == []
    [anomaly] = ledger.check_read(h.obs(later))  # monotonic reads, before the value is used
    assert (anomaly.kind, anomaly.span_id, anomaly.expected_version) == (STALE, later, "n:5")
    assert anomaly.evidence_span_ids == (first,)
    assert ledger.add_observation(h.obs(later)) == []
    assert ledger.close_trace(TRACE) == []


def test_session_model_applies_in_the_ledger() -> None:
    h, risk, _, _ = _story()
    h.decision("risk", risk, (45, 46))
    assert reported(replay(_ledger(consistency="session"), h)) == []
    assert reported(replay(_ledger(consistency="eventual"), h)) == []


# ---------------------------------------------------------------- each finding exactly once


def test_divergent_view_reported_when_the_second_agent_acts() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    older = h.read("limit", "f", "n:1", (10, 11), tier="replica", scope=a)
    h.read("fraud", "f", "n:2", (12, 13), scope=b)
    first = h.decision("limit", a, (20, 21))
    second = h.decision("fraud", b, (22, 23))
    assert reported(replay(_ledger(consistency="eventual"), h)) == [
        (second, DIVERGENT, older, ERROR)
    ]
    assert reported(replay(_ledger(), h)) == [
        (first, STALE, older, ERROR),
        (second, DIVERGENT, older, ERROR),
    ]


def test_lost_update_reported_when_the_second_write_commits() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    h.read("alice", "x", "n:1", (1, 2), scope=a)
    h.read("bob", "x", "n:1", (3, 4), scope=b)
    h.write("alice", "x", "n:2", (5, 6), scope=a)
    lost = h.write("bob", "x", "n:3", (7, 8), scope=b, txn="t")
    commit = h.commit("t", 9)
    assert reported(replay(_ledger(), h)) == [(commit, LOST, lost, ERROR)]


def test_orphan_reported_when_the_trace_closes_not_when_the_scope_fails() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    write = h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    assert reported(replay(_ledger(), h)) == [("close", ORPHAN, write, ERROR)]


def test_compensation_after_the_failure_prevents_the_orphan() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    h.write("ops", "account/A", "n:1", (40, 41))  # after the scope failed: still in time
    assert reported(replay(_ledger(), h)) == []


def test_rolled_back_transaction_is_no_orphan_in_the_ledger() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, txn="t")
    h.rollback("t", 5)
    assert reported(replay(_ledger(), h)) == []


def test_every_anomaly_reported_exactly_once_and_as_the_offline_check_finds_it() -> None:
    h = H()
    scorer = h.agent("scorer", (0, 20))
    h.write("scorer", "score", "n:2", (1, 2), scope=scorer)
    limit = h.agent("limit", (3, 60))
    fraud = h.agent("fraud", (5, 70))
    h.read("limit", "score", "n:1", (10, 11), tier="replica", scope=limit)
    h.read("fraud", "score", "n:2", (12, 13), scope=fraud)
    h.decision("limit", limit, (20, 21))
    h.decision("fraud", fraud, (22, 23))
    h.read("limit", "balance", "n:1", (24, 25), scope=limit)
    h.read("fraud", "balance", "n:1", (26, 27), scope=fraud)
    h.write("limit", "balance", "n:2", (28, 29), scope=limit)
    h.write("fraud", "balance", "n:3", (30, 31), scope=fraud)
    pay = h.agent("payments", (40, 50), failed=True)
    h.write("payments", "account/A", "n:2", (41, 42), scope=pay)
    ledger = _ledger()
    found = [a for _, batch in replay(ledger, h) for a in batch]
    assert Counter(a.kind for a in found) == {STALE: 1, DIVERGENT: 1, LOST: 1, ORPHAN: 1}
    assert len({a.key for a in found}) == len(found)
    offline = detect_all(h.history())
    assert sorted((a.kind.value, a.span_id, a.fact) for a in found) == sorted(
        (a.kind.value, a.span_id, a.fact) for a in offline
    )
    assert ledger.close_all() == [] and ledger.stats().traces == 0


def test_events_arriving_twice_do_not_report_twice() -> None:
    h, risk, _, read = _story()
    h.decision("risk", risk, (45, 46))
    ledger = _ledger()
    first = replay(ledger, h, close=False)
    again = replay(ledger, h, close=False)
    assert reported(first) == [(h.scopes[-1].span_id, STALE, read, ERROR)]
    assert reported(again) == []
    assert ledger.close_trace(TRACE) == []


# ---------------------------------------------------------------- bounds


def _orphan_trace(trace: str) -> H:
    h = H(trace)
    pay = h.agent("payments", (0, None))  # never ends
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    return h


def test_max_traces_closes_the_least_recently_active() -> None:
    ledger = _ledger(max_traces=2)
    first, second, third = (_orphan_trace(f"{i:032x}") for i in (1, 2, 3))
    for h in (first, second):
        assert reported(replay(ledger, h, close=False)) == []
    ledger.add_observation(replace(first.observations[0], span_id="00000000000000aa"))  # touch
    evicted = replay(ledger, third, close=False)[0][1]  # a third trace: `second` is closed
    assert [(a.kind, a.trace_id, a.severity) for a in evicted] == [
        (ORPHAN, second.trace, ERROR)  # its agent never ended: abandoned
    ]
    assert ledger.stats() == LedgerStats(
        traces=2, dropped_facts=0, evicted_traces=1, observations=3
    )
    assert ledger.close_trace(second.trace) == []
    assert [a.trace_id for a in ledger.close_all()] == [first.trace, third.trace]


def test_eviction_reports_pending_stale_reads_as_warnings() -> None:
    ledger = _ledger(max_traces=1)
    h, _, _, read = _story()
    h.scopes[1] = replace(h.scopes[1], end_ns=None)
    assert reported(replay(ledger, h, close=False)) == []
    evicted = ledger.add_observation(replace(h.observations[0], trace_id="f" * 32))
    assert [(a.kind, a.span_id, a.severity) for a in evicted] == [(STALE, read, WARNING)]
    assert ledger.stats().evicted_traces == 1


def test_max_facts_per_trace_drops_and_counts() -> None:
    ledger = _ledger(max_facts_per_trace=3)
    h = H()
    for i in range(5):
        h.write("w", f"fact/{i}", "n:1", (i, i + 1))
    h.write("w", "fact/0", "n:2", (10, 11))  # a known fact is still tracked
    h.read("r", "fact/4", "n:0", (20, 21))  # a dropped one stays dropped: no finding on it
    for obs in h.observations:
        assert ledger.add_observation(obs) == []
    history = ledger._traces[TRACE].history
    assert sorted(history.facts()) == ["fact/0", "fact/1", "fact/2"]
    assert [w.version.text for w in history.writes("fact/0")] == ["n:1", "n:2"]
    assert ledger.stats().dropped_facts == 3
    assert ledger._traces[TRACE].dropped_facts == 3
    assert ledger.stats().traces == 1
    assert ledger.close_trace(TRACE) == []


def test_max_facts_keeps_the_known_facts_of_a_mixed_observation() -> None:
    ledger = _ledger(max_facts_per_trace=2)
    h = H()
    h.write("w", "a", "n:2", (1, 2))
    ledger.add_observation(h.observations[0])
    extra = tuple(FactVersion(fact, parse_version("n:1")) for fact in ("b", "c", "d"))
    mixed = replace(
        h.observations[0], span_id="00000000000000bb", writes=(*extra, *h.observations[0].writes)
    )
    ledger.add_observation(mixed)
    history = ledger._traces[TRACE].history
    assert sorted(history.facts()) == ["a", "b"]
    assert [w.version.text for w in history.writes("a")] == ["n:2", "n:2"]
    assert ledger.stats().dropped_facts == 2


def test_max_events_per_fact_caps_history() -> None:
    ledger = _ledger(max_events_per_fact=4)
    h = H()
    for i in range(10):
        h.write("w", "f", f"n:{i + 1}", (2 * i, 2 * i + 1))
        h.read("r", "f", f"n:{i + 1}", (2 * i + 1, 2 * i + 2))
    for obs in h.observations:
        ledger.add_observation(obs)
    history = ledger._traces[TRACE].history
    assert [w.version.text for w in history.writes("f")] == ["n:7", "n:8", "n:9", "n:10"]
    assert [r.version.text for r in history.reads("f")] == ["n:7", "n:8", "n:9", "n:10"]


def test_ttl_closes_idle_traces_and_reports_never_ended_scopes() -> None:
    clock = [100.0]
    ledger = _ledger(clock, trace_ttl_ms=5_000)
    idle = _orphan_trace("a" * 32)
    busy = _orphan_trace("b" * 32)
    replay(ledger, idle, close=False)
    replay(ledger, busy, close=False)
    clock[0] = 104.0
    ledger.add_observation(replace(busy.observations[0], span_id="00000000000000cc"))  # touch
    assert ledger.close_expired() == []
    clock[0] = 105.0  # idle for exactly the TTL
    [anomaly] = ledger.close_expired()
    assert (anomaly.kind, anomaly.trace_id, anomaly.severity) == (ORPHAN, idle.trace, ERROR)
    assert anomaly.evidence_span_ids == (idle.scopes[0].span_id, idle.observations[0].span_id)
    assert "never ended" in anomaly.summary
    assert ledger.stats().traces == 1
    clock[0] = 108.9
    assert ledger.close_expired() == []
    clock[0] = 109.0
    assert [a.trace_id for a in ledger.close_expired()] == [busy.trace]
    assert ledger.stats().traces == 0
    assert ledger.close_expired() == []


def test_scope_that_ends_before_the_ttl_is_not_an_orphan() -> None:
    clock = [0.0]
    ledger = _ledger(clock, trace_ttl_ms=1_000)
    h = H()
    pay = h.agent("payments", (0, 30))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    replay(ledger, h, close=False)
    clock[0] = 2.0
    assert ledger.close_expired() == []
    assert ledger.stats().traces == 0


# ---------------------------------------------------------------- threads


def test_many_threads_feeding_one_ledger_counts_are_exact() -> None:
    ledger = _ledger()
    workers, reads = 8, 50
    results: dict[int, list[Anomaly]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(worker: int) -> None:
        try:
            h = H()
            agent = f"r{worker}"
            h.write(f"w{worker}", f"f/{worker}", "n:2", (0, 1))
            for step in range(reads):
                h.read(agent, f"f/{worker}", "n:1", (10 + step, 10 + step))  # each stale
            h.decision(agent, None, (100, 101))
            found: list[Anomaly] = []
            barrier.wait()
            for obs in h.observations:
                found += ledger.add_observation(
                    replace(obs, span_id=f"{worker:04x}{obs.span_id[4:]}")
                )
            found += ledger.add_scope(replace(h.scopes[0], span_id=f"{worker:04x}{'d' * 12}"))
            results[worker] = found
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for worker, found in results.items():
        assert len(found) == reads
        assert {(a.kind, a.fact, a.severity, a.agents) for a in found} == {
            (STALE, f"f/{worker}", ERROR, (f"r{worker}", f"w{worker}"))
        }
        assert len({a.span_id for a in found}) == reads
    history = ledger._traces[TRACE].history
    assert history.fact_count() == workers
    assert sum(len(history.reads(f"f/{i}")) for i in range(workers)) == workers * reads
    assert ledger.close_trace(TRACE) == []


def test_many_threads_many_traces_each_closed_once() -> None:
    ledger = _ledger(max_traces=1_000)
    traces = [_orphan_trace(f"{i + 1:032x}") for i in range(32)]

    def feed(chunk: list[H]) -> None:
        for h in chunk:
            replay(ledger, h, close=False)

    threads = [threading.Thread(target=feed, args=(traces[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.stats().traces == 32
    closed = ledger.close_all()
    assert sorted(a.trace_id for a in closed) == sorted(h.trace for h in traces)
    assert {a.kind for a in closed} == {ORPHAN}
    assert ledger.stats().traces == 0 and ledger.close_all() == []


def test_observation_budget_closes_least_recent_traces_and_keeps_memory_flat() -> None:
    ledger = Ledger(
        lambda fact: parse_consistency("linearizable"), LedgerLimits(max_observations=100)
    )
    for t in range(50):
        h = H(format(t + 1, "032x"))
        for i in range(10):
            h.write("a", f"f/{i}", f"n:{t + 1}", (i, i + 1))
        for obs in h.observations:
            ledger.add_observation(obs)
            assert ledger.stats().observations <= 100
    stats = ledger.stats()
    assert stats.traces <= 10
    assert stats.evicted_traces >= 40
    ledger.close_all()
    assert ledger.stats().observations == 0


# ---------------------------------------------------------------- shortcuts change nothing


class _Unabridged(Ledger):
    """The ledger without its shortcuts: every trace's History built at once, and at close
    every detector over the whole trace. The real one must report exactly what this does."""

    def _state(self, trace_id: str, out: list[Anomaly]) -> TraceState:
        state = super()._state(trace_id, out)
        assert state.history is not None  # built now, not at the first observation
        return state

    def _close(self, trace_id: str) -> list[Anomaly]:
        state = self._traces.pop(trace_id)
        self._observations -= state.observations
        history = state.history
        out: list[Anomaly] = []
        for actor in list(state.pending):
            out.extend(self._flush_pending(state, actor, Severity.WARNING))
        late = detect_stale_reads(
            history, self._consistency_of, clock_skew_ms=self.limits.clock_skew_ms
        )
        for anomaly in self._fresh(state, late):
            acted = _acted_after(history, anomaly)
            out.append(anomaly.with_severity(Severity.ERROR if acted else Severity.WARNING))
        out.extend(self._fresh(state, detect_divergent_views(history)))
        out.extend(self._fresh(state, detect_lost_updates(history)))
        out.extend(self._fresh(state, detect_orphaned_mutations(history, closed=True)))
        return out


_AGENTS = ("scorer", "risk", "fraud")
_VERSIONS = ("n:1", "n:2", "n:3", "h:aa", "h:bb", "none")


@st.composite
def _events(draw: st.DrawFn) -> list[object]:
    """Scopes, observations and transaction ends of one trace, in a possibly scrambled
    arrival order (spans ending on other threads are handed over late)."""
    h = H()
    scopes = []
    for name in _AGENTS[: draw(st.integers(1, 3))]:
        start = draw(st.integers(0, 20))
        end = draw(st.one_of(st.none(), st.integers(start + 1, 80)))
        scopes.append(h.agent(name, (start, end), failed=draw(st.booleans())))
    for _ in range(draw(st.integers(0, 2))):
        index = draw(st.integers(0, len(scopes) - 1))
        start = draw(st.integers(0, 70))
        h.decision(_AGENTS[index], scopes[index], (start, start + draw(st.integers(1, 5))))
    txns = ("t1", "t2")
    for _ in range(draw(st.integers(1, 14))):
        index = draw(st.integers(0, len(scopes) - 1))
        agent, scope = _AGENTS[index], scopes[index]
        fact = draw(st.sampled_from(("a", "b", "c")))
        version = draw(st.sampled_from(_VERSIONS))
        start = draw(st.integers(0, 70))
        t = (start, start + draw(st.integers(0, 4)))
        process = draw(st.sampled_from(("p1", "p2")))
        kind = draw(st.sampled_from(("read", "write", "rmw")))
        if kind == "read":
            tier = draw(st.sampled_from(("primary", "cache", "replica")))
            h.read(agent, fact, version, t, tier=tier, scope=scope, process=process)
        elif kind == "write":
            txn = draw(st.one_of(st.none(), st.sampled_from(txns)))
            tier = draw(st.sampled_from(("primary", "cache")))
            h.write(agent, fact, version, t, tier=tier, scope=scope, txn=txn, process=process)
        else:
            h.read_write(agent, fact, version, draw(st.sampled_from(_VERSIONS)), t, scope=scope)
    for txn in txns:
        outcome = draw(st.sampled_from(("commit", "rollback", None)))
        if outcome is not None:
            h.txn_end(txn, outcome, draw(st.integers(0, 80)))
    timed: list[tuple[int, int, object]] = []
    for scope_ in h.scopes:
        timed.append((scope_.start_ns, 0, replace(scope_, end_ns=None)))
        if scope_.end_ns is not None:
            timed.append((scope_.end_ns, 2, scope_))
    timed.extend((obs.end_ns, 1, obs) for obs in h.observations)
    timed.extend((end.end_ns, 1, end) for end in h.txn_ends)
    order = [item for _, _, item in sorted(timed, key=lambda e: (e[0], e[1]))]
    for _ in range(draw(st.integers(0, 4))):  # late hand-overs: an event moved back
        i = draw(st.integers(0, len(order) - 1))
        j = draw(st.integers(i, len(order) - 1))
        order.insert(j, order.pop(i))
    return order


def _feed(ledger: Ledger, item: object) -> list[Anomaly]:
    if isinstance(item, Observation):
        return ledger.add_observation(item)
    if isinstance(item, TxnEnd):
        return ledger.add_txn_end(item)
    assert isinstance(item, Scope)
    return ledger.add_scope(item)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _events(),
    st.sampled_from(("linearizable", "session", "bounded:3")),
    st.sampled_from((0, 2)),
)
def test_shortcuts_report_exactly_what_the_unabridged_ledger_reports(
    events: list[object], consistency: str, skew: int
) -> None:
    model = parse_consistency(consistency)
    ledgers = [
        cls(lambda _fact: model, LedgerLimits(clock_skew_ms=skew), clock=lambda: 0.0)
        for cls in (Ledger, _Unabridged)
    ]
    for item in events:
        fast, full = (_feed(ledger, item) for ledger in ledgers)
        assert fast == full
    fast, full = (ledger.close_trace(TRACE) for ledger in ledgers)
    assert fast == full


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events())
def test_the_history_views_it_keeps_up_to_date_equal_views_built_from_scratch(
    events: list[object],
) -> None:
    history = History()
    seen: list[object] = []
    for item in events:
        if isinstance(item, Observation):
            history.add_observation(item)
        elif isinstance(item, TxnEnd):
            history.add_txn_end(item)
        else:
            assert isinstance(item, Scope)
            history.add_scope(item)
        seen.append(item)
        fresh = History.of(
            [o for o in seen if isinstance(o, Observation)],
            [s for s in seen if isinstance(s, Scope)],
            [e for e in seen if isinstance(e, TxnEnd)],
        )
        for fact in fresh.facts():
            assert history.writes(fact) == fresh.writes(fact)
            assert history.reads(fact) == fresh.reads(fact)


def test_traces_of_scopes_alone_build_no_history_and_report_nothing() -> None:
    ledger = _ledger()
    h = H()
    agent = h.agent("planner", (0, 10))
    h.decision("planner", agent, (2, 3))
    events = replay(ledger, h, close=False)
    assert reported(events) == []
    assert ledger._traces[TRACE].quiet
    assert ledger.decision_inputs(TRACE, h.scopes[1].span_id) == []
    assert ledger.latest_commits(TRACE, 5) == []
    assert ledger.stats().traces == 1  # counted, evicted and expired like any trace
    assert ledger.close_trace(TRACE) == []
    # A first observation builds the history with the scopes seen so far, in order.
    replay(ledger, h, close=False)
    h.read("planner", "f", "n:1", (4, 5), scope=agent)
    ledger.add_observation(h.observations[-1])
    history = ledger._traces[TRACE].history
    assert list(history.scopes) == [s.span_id for s in h.scopes]
    assert history.actors[agent].from_span and history.actors[agent].end_ns == 10 * MS


def _arrive(h: H, order: list[str], consistency: str = "linearizable") -> list[Anomaly]:
    """Feed `h`'s observations and transaction ends in the arrival `order` (span ids) to
    both ledgers; both must report the same. What the trace's close reported."""
    by_id: dict[str, object] = {o.span_id: o for o in h.observations}
    by_id.update({e.span_id: e for e in h.txn_ends})
    model = parse_consistency(consistency)
    ledgers = [cls(lambda _fact: model, clock=lambda: 0.0) for cls in (Ledger, _Unabridged)]
    for span_id in order:
        fast, full = (_feed(ledger, by_id[span_id]) for ledger in ledgers)
        assert fast == full == []
    fast, full = (ledger.close_trace(TRACE) for ledger in ledgers)
    assert fast == full
    return fast


def test_a_commit_arriving_after_the_read_is_rechecked_at_close() -> None:
    h = H()
    write = h.write("scorer", "f", "n:2", (1, 2), txn="t1")
    commit = h.commit("t1", 3)
    read = h.read("risk", "f", "n:1", (10, 11))
    [late] = _arrive(h, [write, read, commit])
    assert (late.kind, late.span_id, late.severity) == (STALE, read, WARNING)


def test_an_earlier_read_arriving_late_is_rechecked_at_close_under_session() -> None:
    h = H()
    newer = h.read("risk", "f", "n:2", (1, 2))
    older = h.read("risk", "f", "n:1", (5, 6))  # no write anywhere: monotonic reads only
    [late] = _arrive(h, [older, newer], "session")
    assert (late.kind, late.span_id, late.expected_version) == (STALE, older, "n:2")
    assert _arrive(h, [older, newer], "linearizable") == []


@pytest.mark.parametrize(
    ("versions", "needed"),
    [
        (("n:2", "n:1", "n:3"), False),  # ordinals of one kind: the writes alone decide
        (("t:20", "t:10", "t:30"), False),
        (("h:bb", "h:aa", "h:aa"), True),  # digests: reads help order the writes
        (("n:2", "none", "n:2"), True),  # `none` orders with nothing
        (("n:2", "t:10", "n:2"), True),  # mixed kinds: no order by value
    ],
)
def test_reads_matter_to_other_reads_only_where_versions_do_not_order_by_value(
    versions: tuple[str, str, str], needed: bool
) -> None:
    h = H()
    written, read, later = versions
    h.write("scorer", "f", written, (0, 1))
    h.read("risk", "f", read, (2, 3))
    h.read("risk", "f", later, (4, 5), tier="cache")
    assert h.history().verdicts_need_reads("f") is needed
    assert h.history().verdicts_need_reads("unknown") is False


def test_a_late_read_that_orders_digest_versions_is_rechecked_at_close() -> None:
    h = H()
    first = h.write("a", "f", "h:aa", (0, 5))
    second = h.write("b", "f", "h:bb", (3, 6))  # overlaps: real time orders neither
    seen = h.read("b", "f", "h:aa", (1, 2))  # b saw h:aa before writing: h:aa came first
    read = h.read("c", "f", "h:aa", (10, 11))
    [late] = _arrive(h, [first, second, read, seen])
    assert (late.kind, late.span_id, late.expected_version) == (STALE, read, "h:bb")


def test_reads_so_far_is_the_latest_version_per_fact_of_that_actor_only() -> None:
    ledger = _ledger()
    h = H()
    scorer = h.agent("scorer", (0, 50))
    risk = h.agent("risk", (0, 50))
    h.read("risk", "score/1", "n:1", (1, 2), scope=risk)
    h.read("risk", "limit/1", "n:7", (3, 4), scope=risk)
    h.read("risk", "score/1", "n:2", (5, 6), scope=risk)
    h.read("scorer", "score/1", "n:9", (5, 6), scope=scorer)
    h.read("planner", "plan/1", "n:1", (5, 6))
    replay(ledger, h, close=False)
    assert ledger.reads_so_far(TRACE, risk) == ["limit/1@n:7", "score/1@n:2"]
    assert ledger.reads_so_far(TRACE, scorer) == ["score/1@n:9"]
    assert ledger.reads_so_far(TRACE, "agent:planner") == ["plan/1@n:1"]
    assert ledger.reads_so_far(TRACE, "agent:nobody") == []
    assert ledger.reads_so_far("f" * 32, risk) == []


def _overlap_story(third: str) -> tuple[H, str, str]:
    """A written, then B; a third write (of `third`) begins; a read of A ends before it does."""
    h = H()
    h.write("w", "f", "h:aa", (0, 1))
    h.write("w", "f", "h:bb", (2, 3))
    in_flight = h.write("w", "f", third, (4, 8))
    read = h.read("r", "f", "h:aa", (5, 6))
    return h, in_flight, read


@pytest.mark.parametrize(("third", "stale"), [("h:aa", False), ("h:cc", True)])
def test_no_verdict_on_an_incomplete_window(third: str, stale: bool) -> None:
    """SPEC §5 "Overlap": the write in flight when the read ended may be the one it saw."""
    h, in_flight, read = _overlap_story(third)
    ledger = _ledger()
    first, second, third_write, the_read = h.observations
    assert ledger.add_observation(first) == []
    assert ledger.add_observation(second) == []
    ledger.begin(TRACE, in_flight, third_write.start_ns)
    ledger.begin(TRACE, read, the_read.start_ns)
    assert ledger.check_read(the_read) == []  # raise mode: a write of it is in flight
    assert ledger.add_observation(the_read) == []  # waits: nothing reported yet
    ledger.add_observation(third_write)
    found = ledger.close_trace(TRACE)
    assert [(a.kind, a.span_id) for a in found] == ([(STALE, read)] if stale else [])


def test_an_operation_that_ends_with_nothing_observed_releases_the_wait() -> None:
    h, _, read = _overlap_story("h:cc")
    ledger = _ledger()
    first, second, _, the_read = h.observations
    ledger.add_observation(first)
    ledger.add_observation(second)
    ledger.begin(TRACE, "00000000000000ff", the_read.start_ns - 1)  # e.g. a failed command
    ledger.add_observation(the_read)
    assert ledger._traces[TRACE].waiting  # the verdict waits for the open operation
    assert ledger.finished(TRACE, "00000000000000ff") == []  # judged: a warning, held
    assert not ledger._traces[TRACE].waiting
    assert [(a.kind, a.span_id) for a in ledger._traces[TRACE].pending["agent:r"]] == [
        (STALE, read)
    ]
    assert [(a.kind, a.span_id) for a in ledger.close_trace(TRACE)] == [(STALE, read)]
