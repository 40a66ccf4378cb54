"""The per-trace ledger: bounded histories of live traces, and when to run which detector.

Pure (no OpenTelemetry imports). The processor feeds it observations, scopes and
transaction ends as spans end, and emits what it returns. Memory is bounded three ways:
at most `max_traces` live traces (least recently active closed first), at most
`max_observations` observations across all live traces (least recently active traces
closed first, so memory stays flat however many traces are open), at most
`max_facts_per_trace` facts per trace (further facts are counted and dropped), at most
`max_events_per_fact` reads and writes per fact, and traces idle past the TTL are closed.

Timing (SPEC §5): a stale read is found when the read ends, and reported once the
agent acts on it (decision or write: severity error) or its agent scope ends (warning).
Divergent views and lost updates are found when an agent acts or a write commits.
Orphaned mutations are judged when the trace closes, since a later compensating
write can still restore the state.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from .config import Consistency
from .detectors import (
    detect_divergent_views,
    detect_lost_updates,
    detect_orphaned_mutations,
    detect_stale_reads,
)
from .history import History, actor_key, decision_actor_key, is_act
from .model import (
    Anomaly,
    AnomalyKind,
    Observation,
    Scope,
    ScopeKind,
    Severity,
    Tier,
    TxnEnd,
    Write,
)

_MAX_IN_FLIGHT = 4_096  # open operations tracked per trace; more are not waited for


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    max_traces: int = 10_000
    max_observations: int = 200_000
    max_facts_per_trace: int = 1_000
    max_events_per_fact: int = 256
    trace_ttl_ms: int = 300_000
    clock_skew_ms: int = 0


class TraceState:
    """One live trace. Most traces never carry state (only agent spans and other scopes):
    their scopes wait in `_scopes` and the History is built when the first observation,
    transaction end or seeded write arrives, replaying them in order. Until then nothing
    can be found, so such traces cost a list append per scope and nothing at close."""

    __slots__ = (
        "_history",
        "_max_events",
        "_scopes",
        "checked",
        "dropped_facts",
        "in_flight",
        "observations",
        "pending",
        "recheck_reads",
        "recheck_writes",
        "reported",
        "touched",
        "trace_id",
        "waiting",
        "wrote",
    )

    def __init__(self, trace_id: str, touched: float, max_events_per_fact: int) -> None:
        self.trace_id = trace_id
        self.touched = touched
        self._max_events = max_events_per_fact
        self._history: History | None = None
        self._scopes: list[Scope] = []
        self.reported: set[tuple[object, ...]] = set()
        self.pending: dict[str, list[Anomaly]] = {}  # by actor key
        self.dropped_facts = 0
        self.observations = 0
        # For the close-time stale-read re-check (see Ledger._late_stale_reads): facts with a
        # read already checked, and those that a later write or read may have changed.
        self.checked: set[str] = set()
        self.recheck_writes: set[str] = set()
        self.recheck_reads: set[str] = set()
        self.wrote = False  # any write observation (or seeded write) at all
        # Overlap (SPEC §5): operations begun and not yet ended (span id -> start), and stale
        # verdicts waiting for the operations that began before their read ended.
        self.in_flight: dict[str, int] = {}
        self.waiting: list[tuple[Observation, set[str]]] = []

    @property
    def quiet(self) -> bool:
        """No observation, transaction end or seeded write yet: only scopes."""
        return self._history is None

    @property
    def history(self) -> History:
        history = self._history
        if history is None:
            history = History(trace_id=self.trace_id, max_events_per_fact=self._max_events)
            for scope in self._scopes:
                history.add_scope(scope)
            self._scopes = []
            self._history = history
        return history

    def add_scope(self, scope: Scope) -> None:
        if self._history is None:
            self._scopes.append(scope)
        else:
            self._history.add_scope(scope)

    def touch_facts(self, obs: Observation) -> None:
        """Note which already-checked reads `obs` may change the verdict on."""
        checked = self.checked
        if obs.writes:
            self.wrote = True
            if checked:
                for item in obs.writes:
                    if item.fact in checked:
                        self.recheck_writes.add(item.fact)
        if checked:
            for item in obs.reads:
                if item.fact in checked:
                    self.recheck_reads.add(item.fact)


@dataclass(frozen=True, slots=True)
class LedgerStats:
    traces: int
    dropped_facts: int
    evicted_traces: int
    observations: int = 0


class Ledger:
    """Thread-safe. Every method returns the anomalies to report now, in final form."""

    def __init__(
        self,
        consistency_of: Callable[[str], Consistency],
        limits: LedgerLimits = LedgerLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consistency_of = consistency_of
        self.limits = limits
        self._clock = clock
        self._traces: OrderedDict[str, TraceState] = OrderedDict()
        self._lock = threading.RLock()
        self._dropped_facts = 0
        self._evicted = 0
        self._observations = 0  # held by live traces

    # ------------------------------------------------------------------ bookkeeping

    def reset_after_fork(self) -> None:
        """In a forked child: fresh lock (the parent's may have been held by a thread that
        does not exist here) and no traces (the parent judges its own)."""
        self._lock = threading.RLock()
        self._traces = OrderedDict()
        self._observations = 0

    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(
                len(self._traces), self._dropped_facts, self._evicted, self._observations
            )

    def _state(self, trace_id: str, out: list[Anomaly]) -> TraceState:
        state = self._traces.get(trace_id)
        now = self._clock()
        if state is None:
            while len(self._traces) >= self.limits.max_traces:
                oldest = next(iter(self._traces))
                self._evicted += 1
                out.extend(self._close(oldest))
            state = TraceState(trace_id, now, self.limits.max_events_per_fact)
            self._traces[trace_id] = state
        else:
            state.touched = now
            self._traces.move_to_end(trace_id)
        return state

    def _bounded(self, state: TraceState, obs: Observation) -> Observation:
        history = state.history
        room = self.limits.max_facts_per_trace
        known = history.fact_count()
        if known + len(obs.reads) + len(obs.writes) <= room:
            return obs
        kept_facts: set[str] = set()

        def keep(fact: str) -> bool:
            nonlocal known
            if history.knows_fact(fact) or fact in kept_facts:
                return True
            if known < room:
                known += 1
                kept_facts.add(fact)
                return True
            state.dropped_facts += 1
            self._dropped_facts += 1
            return False

        return replace(
            obs,
            reads=tuple(r for r in obs.reads if keep(r.fact)),
            writes=tuple(w for w in obs.writes if keep(w.fact)),
        )

    def _fresh(self, state: TraceState, found: list[Anomaly]) -> list[Anomaly]:
        fresh = []
        for anomaly in found:
            if anomaly.key not in state.reported:
                state.reported.add(anomaly.key)
                fresh.append(anomaly)
        return fresh

    # ------------------------------------------------------------------ events

    def add_scope(self, scope: Scope) -> list[Anomaly]:
        """A scope started (end_ns None) or ended; an ended decision is an act of its agent."""
        out: list[Anomaly] = []
        with self._lock:
            state = self._state(scope.trace_id, out)
            state.add_scope(scope)
            if scope.end_ns is None or state.quiet:
                # Quiet: no pending finding, no read to act on, so an end changes nothing.
                return out
            if scope.kind == ScopeKind.DECISION:
                out.extend(self._acted(state, decision_actor_key(scope)))
            elif scope.kind == ScopeKind.AGENT:
                out.extend(self._flush_pending(state, scope.span_id, Severity.WARNING))
        return out

    def add_observation(self, obs: Observation) -> list[Anomaly]:
        out: list[Anomaly] = []
        with self._lock:
            state = self._state(obs.trace_id, out)
            obs = self._bounded(state, obs)
            history = state.history
            state.touch_facts(obs)
            history.add_observation(obs)
            state.observations += 1
            self._observations += 1
            self._within_budget(state, out)
            state.in_flight.pop(obs.span_id, None)
            if obs.reads:
                checked = state.checked
                for item in obs.reads:
                    checked.add(item.fact)
                blockers = {span for span, begun in state.in_flight.items() if begun < obs.end_ns}
                if blockers:
                    # An operation that began before the read ended may be the write it saw:
                    # no verdict on an incomplete window (it comes when they have ended).
                    state.waiting.append((obs, blockers))
                else:
                    self._judge_read(state, obs, out)
            if state.waiting:
                self._unblock(state, obs.span_id, out)
            if is_act(obs):
                out.extend(self._acted(state, actor_key(obs)))
                if obs.committed and _two_acted(history):
                    written = {item.fact for item in obs.writes}
                    out.extend(
                        self._fresh(state, detect_lost_updates(state.history, facts=written))
                    )
        return out

    def begin(self, trace_id: str, span_id: str, start_ns: int) -> list[Anomaly]:
        """An operation that may write began (a store span started): reads that end before
        it ends wait for it before their verdict (SPEC §5 "Overlap")."""
        out: list[Anomaly] = []
        with self._lock:
            state = self._state(trace_id, out)
            if len(state.in_flight) < _MAX_IN_FLIGHT:
                state.in_flight[span_id] = start_ns
        return out

    def finished(self, trace_id: str, span_id: str) -> list[Anomaly]:
        """An operation begun with begin() ended without an observation."""
        out: list[Anomaly] = []
        with self._lock:
            state = self._traces.get(trace_id)
            if state is None or state.in_flight.pop(span_id, None) is None:
                return out
            if state.waiting:
                self._unblock(state, span_id, out)
        return out

    def add_txn_end(self, end: TxnEnd) -> list[Anomaly]:
        out: list[Anomaly] = []
        with self._lock:
            state = self._state(end.trace_id, out)
            history = state.history
            history.add_txn_end(end)
            written = history.txn_facts(end.txn_id)
            # Its writes' commit times changed: reads of them checked earlier may be stale.
            state.recheck_writes.update(written & state.checked)
            if end.outcome == "commit" and _two_acted(history):
                out.extend(self._fresh(state, detect_lost_updates(history, facts=written)))
        return out

    def check_read(self, obs: Observation, around: Collection[str] = ()) -> list[Anomaly]:
        """Stale-read findings for a read still in progress (raise mode), reported now.
        None while another operation is in flight (it may be the write the read returns),
        except the ones `around` the read (spans that contain it, such as an ORM's)."""
        out: list[Anomaly] = []
        with self._lock:
            state = self._state(obs.trace_id, out)
            if any(span != obs.span_id and span not in around for span in state.in_flight):
                return out  # a write in flight may be what it returns: judged at its end
            stale = detect_stale_reads(
                _with(state.history, obs),
                self._consistency_of,
                clock_skew_ms=self.limits.clock_skew_ms,
                only=[obs],
            )
            out.extend(self._fresh(state, stale))
        return out

    def decision_inputs(self, trace_id: str, decision_span_id: str) -> list[str]:
        """`fact@version` for every read made inside the decision, in order."""
        with self._lock:
            state = self._traces.get(trace_id)
            if state is None or state.quiet:
                return []
            return state.history.decision_inputs(decision_span_id)

    def reads_so_far(self, trace_id: str, actor: str) -> list[str]:
        """`fact@version` of what `actor` (an agent span id, or `agent:<name>`: see
        history.actor_key) has read in the trace so far, latest version per fact: the inputs
        a tool call or decision starting now depends on."""
        with self._lock:
            state = self._traces.get(trace_id)
            if state is None or state.quiet:
                return []
            return state.history.reads_so_far(actor)

    def copy_sources(
        self, trace_id: str, actor: str, facts: Sequence[str], store: str, tier: Tier, start_ns: int
    ) -> list[str]:
        """Per fact of a write being recorded, the version it copies ("" for an original)."""
        with self._lock:
            state = self._traces.get(trace_id)
            if state is None or state.quiet:
                return [""] * len(facts)
            history = state.history
            return [history.copy_source(f, actor, store, tier, start_ns) for f in facts]

    def latest_commits(self, trace_id: str, limit: int) -> list[Write]:
        """The latest committed write of each fact of the trace, most recent commit first
        (at most `limit`): the frontier the propagator sends downstream."""
        with self._lock:
            state = self._traces.get(trace_id)
            if state is None or state.quiet or limit <= 0:
                return []
            latest: list[Write] = []
            for fact in state.history.facts():
                committed = state.history.committed_writes(fact)
                if committed:
                    latest.append(committed[-1])
        latest.sort(key=lambda w: w.commit_ns or 0, reverse=True)
        return latest[:limit]

    def seed_writes(self, writes: Sequence[Observation]) -> list[Anomaly]:
        """Committed writes made elsewhere (another process, told by the propagator) that the
        trace's reads here must respect; a write whose span is already known is skipped."""
        out: list[Anomaly] = []
        with self._lock:
            for obs in writes:
                state = self._state(obs.trace_id, out)
                if obs.span_id in state.history.observations:
                    continue
                obs = self._bounded(state, obs)
                state.touch_facts(obs)
                state.history.add_observation(obs)
                # Never checked on arrival: the close-time re-check must look at its reads.
                state.checked.update(item.fact for item in obs.reads)
                state.recheck_writes.update(item.fact for item in obs.reads)
        return out

    def close_trace(self, trace_id: str) -> list[Anomaly]:
        with self._lock:
            if trace_id not in self._traces:
                return []
            return self._close(trace_id)

    def close_expired(self) -> list[Anomaly]:
        """Close traces idle past the TTL (their open scopes count as never ended)."""
        out: list[Anomaly] = []
        with self._lock:
            deadline = self._clock() - self.limits.trace_ttl_ms / 1000
            while self._traces:
                trace_id, state = next(iter(self._traces.items()))
                if state.touched > deadline:
                    break
                self._evicted += 1
                out.extend(self._close(trace_id))
        return out

    def close_all(self) -> list[Anomaly]:
        out: list[Anomaly] = []
        with self._lock:
            for trace_id in list(self._traces):
                out.extend(self._close(trace_id))
        return out

    # ------------------------------------------------------------------ internals

    def _within_budget(self, current: TraceState, out: list[Anomaly]) -> None:
        """Close least recently active traces (judging them) while over the budget."""
        while self._observations > self.limits.max_observations and len(self._traces) > 1:
            trace_id, state = next(iter(self._traces.items()))
            if state is current:  # the trace being fed is the most recent: never first
                break
            self._evicted += 1
            out.extend(self._close(trace_id))

    def _judge_read(self, state: TraceState, obs: Observation, out: list[Anomaly]) -> None:
        """The stale-read verdict on a read whose window is complete."""
        stale = detect_stale_reads(
            state.history,
            self._consistency_of,
            clock_skew_ms=self.limits.clock_skew_ms,
            only=[obs],
        )
        for anomaly in stale:
            if anomaly.key in state.reported:
                continue
            if anomaly.severity == Severity.ERROR or _acted_after(state.history, anomaly):
                state.reported.add(anomaly.key)
                out.append(anomaly.with_severity(Severity.ERROR))
            else:
                state.pending.setdefault(actor_key(obs), []).append(anomaly)

    def _unblock(self, state: TraceState, ended: str, out: list[Anomaly]) -> None:
        """`ended` ended: judge the reads that waited for it and nothing else."""
        still: list[tuple[Observation, set[str]]] = []
        ready: list[Observation] = []
        for read, blockers in state.waiting:
            blockers.discard(ended)
            if blockers:
                still.append((read, blockers))
            else:
                ready.append(read)
        state.waiting = still
        for read in ready:
            self._judge_read(state, read, out)

    def _acted(self, state: TraceState, actor: str) -> list[Anomaly]:
        out = self._flush_pending(state, actor, Severity.ERROR)
        facts = state.history.take_unacted_reads(actor)
        if facts and _two_acted(state.history):
            divergent = detect_divergent_views(state.history, only_actors=[actor], facts=facts)
            out.extend(self._fresh(state, divergent))
        return out

    def _flush_pending(self, state: TraceState, actor: str, severity: Severity) -> list[Anomaly]:
        pending = state.pending.pop(actor, [])
        return [anomaly.with_severity(severity) for anomaly in self._fresh(state, pending)]

    def _close(self, trace_id: str) -> list[Anomaly]:
        state = self._traces.pop(trace_id)
        self._observations -= state.observations
        out: list[Anomaly] = []
        if state.quiet:
            return out  # scopes alone: every detector needs observations
        history = state.history
        # The trace closed: the wait is over (operations that never ended never will).
        waiting, state.waiting = state.waiting, []
        state.in_flight.clear()
        for read, _ in waiting:
            self._judge_read(state, read, out)
        for actor in list(state.pending):
            out.extend(self._flush_pending(state, actor, Severity.WARNING))
        # Reads whose newer write ended on another thread just after them are caught here.
        for anomaly in self._fresh(state, self._late_stale_reads(state)):
            acted = _acted_after(history, anomaly)
            out.append(anomaly.with_severity(Severity.ERROR if acted else Severity.WARNING))
        # Divergent views and lost updates need two actors that acted (decided or wrote);
        # orphaned mutations need a write. Most traces have neither: skip the walk over
        # every fact.
        if _two_acted(history):
            out.extend(self._fresh(state, detect_divergent_views(history)))
            if state.wrote:
                out.extend(self._fresh(state, detect_lost_updates(history)))
        if state.wrote:
            out.extend(self._fresh(state, detect_orphaned_mutations(history, closed=True)))
        return out

    def _late_stale_reads(self, state: TraceState) -> list[Anomaly]:
        """What re-checking every read of the trace now would find beyond its check on
        arrival, in the same order (facts in order, each fact's reads in end order).

        A read's verdict is a function of its fact's writes, reads and their transactions'
        ends (and the fact's consistency model). Facts untouched since their reads were
        checked cannot give anything new, so only these are re-checked: facts with a write,
        transaction end or seeded write after a checked read; and facts with a later read,
        when that read can matter: the fact has writes whose order reads help prove (see
        History.verdicts_need_reads), or the model is session, where an agent's earlier
        reads bound its later ones.
        """
        recheck = state.recheck_writes
        if state.recheck_reads:
            history = state.history
            recheck = recheck | {
                fact
                for fact in state.recheck_reads
                if self._consistency_of(fact).kind == "session"
                or (history.writes(fact) and history.verdicts_need_reads(fact))
            }
        if not recheck:
            return []
        history = state.history
        found: list[Anomaly] = []
        for fact in history.facts():
            if fact not in recheck:
                continue
            observations = {id(read.obs): read.obs for read in history.reads(fact)}
            for anomaly in detect_stale_reads(
                history,
                self._consistency_of,
                clock_skew_ms=self.limits.clock_skew_ms,
                only=observations.values(),
            ):
                if anomaly.fact == fact:
                    found.append(anomaly)
        return found


def _two_acted(history: History) -> bool:
    """At least two actors acted (a write, or a decision's end): what a divergent view (two
    agents that each acted) and a lost update (two writers) both need."""
    acted = 0
    for actor in history.actors.values():
        if actor.last_act is not None:
            acted += 1
            if acted == 2:
                return True
    return False


def _with(history: History, obs: Observation) -> History:
    """A view of `history` plus one in-progress observation (left out of the ledger)."""
    copy = History(trace_id=history.trace_id, max_events_per_fact=history.max_events_per_fact)
    copy.scopes = history.scopes
    copy.txn_ends = history.txn_ends
    # The writes (every model) and the earlier reads (session: monotonic reads) of its facts.
    earlier: dict[str, Observation] = {}
    for fact in {item.fact for item in obs.reads}:
        for write in history.writes(fact):
            earlier[write.obs.span_id] = write.obs
        for read in history.reads(fact):
            earlier[read.obs.span_id] = read.obs
    for seen in earlier.values():
        copy.add_observation(seen)
    copy.add_observation(obs)
    return copy


def _acted_after(history: History, anomaly: Anomaly) -> bool:
    read = history.observations.get(anomaly.span_id)
    if read is None:
        return False
    actor = history.actors.get(actor_key(read))
    return actor is not None and actor.last_act is not None and actor.last_act >= read.end_ns


__all__ = ["AnomalyKind", "Ledger", "LedgerLimits", "LedgerStats"]
