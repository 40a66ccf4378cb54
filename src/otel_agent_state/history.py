"""A trace's history of observations, scopes and transaction ends, with the derived views
the detectors need (committed writes in commit order, reads per fact, scopes by id).

Pure: no OpenTelemetry imports. The ledger keeps one History per live trace; the offline
checker builds one per trace from files; tests write them by hand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .model import Observation, Scope, Tier, TxnEnd, Version


@dataclass(frozen=True, slots=True)
class Write:
    """One write of one fact, with when (and whether) it committed."""

    fact: str
    version: Version
    obs: Observation
    commit_ns: int | None  # None: not committed (open transaction, or rolled back)
    commit_span_id: str | None  # the COMMIT span for transactional writes
    rolled_back: bool = False

    @property
    def committed(self) -> bool:
        return self.commit_ns is not None


@dataclass(frozen=True, slots=True)
class Read:
    fact: str
    version: Version
    obs: Observation


@dataclass
class _FactLog:
    writes: deque[Observation]
    reads: deque[Observation]


@dataclass
class History:
    """Everything one trace told us, bounded per fact (oldest events fall off first)."""

    trace_id: str = ""
    max_events_per_fact: int = 256
    observations: dict[str, Observation] = field(default_factory=dict)
    scopes: dict[str, Scope] = field(default_factory=dict)
    txn_ends: dict[str, TxnEnd] = field(default_factory=dict)
    _facts: dict[str, _FactLog] = field(default_factory=dict)

    # ------------------------------------------------------------------ building

    @classmethod
    def of(
        cls,
        observations: Iterable[Observation] = (),
        scopes: Iterable[Scope] = (),
        txn_ends: Iterable[TxnEnd] = (),
    ) -> History:
        history = cls()
        for scope in scopes:
            history.add_scope(scope)
        for end in txn_ends:
            history.add_txn_end(end)
        for obs in observations:
            history.add_observation(obs)
        return history

    def facts(self) -> Iterator[str]:
        return iter(self._facts)

    def knows_fact(self, fact: str) -> bool:
        return fact in self._facts

    def add_observation(self, obs: Observation) -> None:
        if not self.trace_id:
            self.trace_id = obs.trace_id
        self.observations[obs.span_id] = obs
        for item in obs.reads:
            self._log(item.fact).reads.append(obs)
        for item in obs.writes:
            log = self._log(item.fact)
            if obs not in log.writes:
                log.writes.append(obs)

    def _log(self, fact: str) -> _FactLog:
        log = self._facts.get(fact)
        if log is None:
            size = self.max_events_per_fact
            log = _FactLog(deque(maxlen=size), deque(maxlen=size))
            self._facts[fact] = log
        return log

    def add_scope(self, scope: Scope) -> None:
        self.scopes[scope.span_id] = scope

    def add_txn_end(self, end: TxnEnd) -> None:
        self.txn_ends[end.txn_id] = end

    # ------------------------------------------------------------------ views

    def writes(self, fact: str) -> list[Write]:
        """Every write of `fact` with its commit time, in commit order (uncommitted last).

        When the fact also lives in a non-cache tier, cache writes (fills, invalidations)
        copy or drop versions rather than make them, so they are left out of its history.
        """
        log = self._facts.get(fact)
        if log is None:
            return []
        out: list[Write] = []
        for obs in log.writes:
            for item in obs.writes:
                if item.fact == fact:
                    out.append(self._write(fact, item.version, obs))
        if any(w.obs.tier != Tier.CACHE for w in out):
            out = [w for w in out if w.obs.tier != Tier.CACHE]
        out.sort(key=lambda w: (w.commit_ns is None, w.commit_ns or w.obs.end_ns))
        return out

    def committed_writes(self, fact: str) -> list[Write]:
        return [w for w in self.writes(fact) if w.committed]

    def _write(self, fact: str, version: Version, obs: Observation) -> Write:
        if obs.failed:
            return Write(fact, version, obs, None, None)
        if obs.committed or obs.txn_id is None:
            return Write(fact, version, obs, obs.end_ns, None)
        end = self.txn_ends.get(obs.txn_id)
        if end is None:
            return Write(fact, version, obs, None, None)
        if end.outcome == "commit":
            return Write(fact, version, obs, max(end.end_ns, obs.end_ns), end.span_id)
        return Write(fact, version, obs, None, None, rolled_back=True)

    def reads(self, fact: str) -> list[Read]:
        log = self._facts.get(fact)
        if log is None:
            return []
        out = [
            Read(fact, item.version, obs)
            for obs in log.reads
            for item in obs.reads
            if item.fact == fact
        ]
        out.sort(key=lambda r: r.obs.end_ns)
        return out

    def all_reads(self) -> Iterator[Read]:
        for fact in self._facts:
            yield from self.reads(fact)
