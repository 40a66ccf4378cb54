"""A trace's history of observations, scopes and transaction ends, with the derived views
the detectors need (committed writes in commit order, reads per fact, agents' intervals).

Pure: no OpenTelemetry imports. The ledger keeps one History per live trace; the offline
checker builds one per trace from files; tests write them by hand.

Everything is bounded: reads and writes per fact (oldest fall off first), observations
kept by span id, and per agent only its interval and its last act. Views are maintained
as events arrive, so each check costs the size of one fact's log, not of the trace.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain

from .model import (
    NONE,
    Observation,
    Op,
    Read,
    Scope,
    ScopeKind,
    Tier,
    TxnEnd,
    Version,
    VersionError,
    Write,
    parse_version,
)
from .order import VersionOrder

# Observations kept by span id per trace (for evidence look-ups); older ones are forgotten.
MAX_OBSERVATIONS = 65_536


@dataclass
class Actor:
    """An agent scope (its agent span, else all observations of one agent name): its
    interval and the time of its last act (a write, or the end of a decision)."""

    key: str
    agent: str
    start_ns: int
    end_ns: int | None
    last_act: int | None = None
    from_span: bool = False


def version_key(version: Version, store: str, tier: Tier) -> str:
    """What makes two versions the same one: a digest only in its own store and tier."""
    if version.kind == "h":
        return f"{store}\x00{tier.value}\x00{version.text}"
    return version.identity


def actor_key(obs: Observation) -> str:
    return obs.agent_scope or f"agent:{obs.agent}"


def decision_actor_key(decision: Scope) -> str:
    """The actor a decision belongs to: its agent span, else its agent's name."""
    return decision.parent_agent_scope or f"agent:{decision.agent}"


def is_act(obs: Observation) -> bool:
    """A write that happened: what "went on to write" means for the detectors."""
    return bool(obs.writes) and obs.op != Op.READ and not obs.writes_void


@dataclass
class _FactLog:
    writes: deque[Observation]
    reads: deque[Observation]


@dataclass
class History:
    """Everything one trace told us, bounded as described in the module docstring."""

    trace_id: str = ""
    max_events_per_fact: int = 256
    observations: OrderedDict[str, Observation] = field(default_factory=OrderedDict)
    scopes: dict[str, Scope] = field(default_factory=dict)
    txn_ends: dict[str, TxnEnd] = field(default_factory=dict)
    actors: dict[str, Actor] = field(default_factory=dict)
    _facts: dict[str, _FactLog] = field(default_factory=dict)
    _writes_cache: dict[str, list[Write]] = field(default_factory=dict)
    _all_writes_cache: dict[str, list[Write]] = field(default_factory=dict)
    # Per fact: writes by the version they produced (see producers()), and the ids of the
    # fact's own (non-copy) writes; both follow _all_writes_cache.
    _producers_cache: dict[str, dict[str, list[Write]]] = field(default_factory=dict)
    _logical_ids_cache: dict[str, set[int]] = field(default_factory=dict)
    # placement.candidates() per fact and read: (version key, result, volatile). Volatile
    # results (unplaced, the initial state, before a delete, through a copy) depend on more
    # than the producers of their own version, so any new event of the fact drops them.
    candidates_memo: dict[str, dict[tuple[str, str], tuple[object, object, bool]]] = field(
        default_factory=dict
    )
    # Facts written outside the primary tier: a read of them can make a later write a copy.
    _copy_tier_facts: set[str] = field(default_factory=set)
    _order_cache: dict[str, dict[int, VersionOrder]] = field(default_factory=dict)
    _reads_cache: dict[str, list[Read]] = field(default_factory=dict)
    _txn_facts: dict[str, set[str]] = field(default_factory=dict)
    _decision_inputs: dict[str, dict[str, None]] = field(default_factory=dict)
    _counted_decisions: set[str] = field(default_factory=set)
    _unacted_reads: dict[str, dict[str, None]] = field(default_factory=dict)
    # Per actor, the version it last read of each fact (tool spans' decision inputs).
    _actor_reads: dict[str, dict[str, str]] = field(default_factory=dict)

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
        return iter(list(self._facts))

    def fact_count(self) -> int:
        return len(self._facts)

    def knows_fact(self, fact: str) -> bool:
        return fact in self._facts

    def add_observation(self, obs: Observation) -> None:
        if not self.trace_id:
            self.trace_id = obs.trace_id
        observations = self.observations
        held = len(observations)
        observations[obs.span_id] = obs
        if len(observations) == held:  # seen before: now the most recent
            observations.move_to_end(obs.span_id)
        elif held >= MAX_OBSERVATIONS:
            observations.popitem(last=False)
        if self._order_cache:  # the orders of the facts it read or wrote (nodes, read edges)
            for item in obs.reads:
                self._order_cache.pop(item.fact, None)
            for item in obs.writes:
                self._order_cache.pop(item.fact, None)
        key = actor_key(obs)
        if obs.reads:
            unacted = self._unacted_reads.get(key)
            if unacted is None:
                unacted = self._unacted_reads[key] = {}
            seen = self._actor_reads.get(key)
            if seen is None:
                seen = self._actor_reads[key] = {}
            for item in obs.reads:
                seen.pop(item.fact, None)  # most recent last
                seen[item.fact] = item.version.text
                self._log(item.fact).reads.append(obs)
                self._reads_cache.pop(item.fact, None)
                unacted[item.fact] = None
                if item.fact in self._copy_tier_facts:  # may make a write a copy
                    self._all_writes_cache.pop(item.fact, None)
                    self._writes_cache.pop(item.fact, None)
                    self.candidates_memo.pop(item.fact, None)
                elif obs.tier != Tier.CACHE:  # the fact lives outside the cache: see writes()
                    cached = self._writes_cache.get(item.fact)
                    # Already known (a write outside the cache leads the list): no change.
                    if cached is not None and not (cached and cached[0].obs.tier != Tier.CACHE):
                        del self._writes_cache[item.fact]
                        self.candidates_memo.pop(item.fact, None)
                self._forget_candidates(item.fact, None)
        for item in obs.writes:
            log = self._log(item.fact)
            if not log.writes or log.writes[-1] is not obs:  # a fact twice in one op
                log.writes.append(obs)
            self._writes_cache.pop(item.fact, None)
            self._all_writes_cache.pop(item.fact, None)
            self._forget_candidates(item.fact, version_key(item.version, obs.store, obs.tier))
            if obs.tier != Tier.PRIMARY:
                self._copy_tier_facts.add(item.fact)
            if obs.txn_id is not None:
                self._txn_facts.setdefault(obs.txn_id, set()).add(item.fact)
        if obs.decision is not None and obs.reads:
            inputs = self._decision_inputs.setdefault(obs.decision, {})
            for item in obs.reads:
                inputs[f"{item.fact}@{item.version.text}"] = None
        self._track_actor(obs, key)

    def _track_actor(self, obs: Observation, key: str) -> None:
        actor = self.actors.get(key)
        if actor is None:
            actor = Actor(key, obs.agent, obs.start_ns, obs.end_ns)
            self.actors[key] = actor
        elif not actor.from_span:
            actor.start_ns = min(actor.start_ns, obs.start_ns)
            actor.end_ns = max(actor.end_ns or 0, obs.end_ns)
        if is_act(obs):
            self._acted(actor, obs.end_ns)

    @staticmethod
    def _acted(actor: Actor, at: int) -> None:
        if actor.last_act is None or at > actor.last_act:
            actor.last_act = at

    def _log(self, fact: str) -> _FactLog:
        log = self._facts.get(fact)
        if log is None:
            size = self.max_events_per_fact
            log = _FactLog(deque(maxlen=size), deque(maxlen=size))
            self._facts[fact] = log
        return log

    def add_scope(self, scope: Scope) -> None:
        self.scopes[scope.span_id] = scope
        if scope.kind == ScopeKind.AGENT:
            actor = self.actors.get(scope.span_id)
            if actor is None:
                actor = Actor(scope.span_id, scope.agent, scope.start_ns, scope.end_ns)
                self.actors[scope.span_id] = actor
            actor.agent, actor.start_ns, actor.end_ns = scope.agent, scope.start_ns, scope.end_ns
            actor.from_span = True
        elif scope.kind == ScopeKind.DECISION and scope.end_ns is not None:
            if scope.span_id in self._counted_decisions:
                return
            self._counted_decisions.add(scope.span_id)
            key = decision_actor_key(scope)
            actor = self.actors.get(key)
            if actor is None:
                actor = Actor(key, scope.agent, scope.start_ns, scope.end_ns)
                self.actors[key] = actor
            self._acted(actor, scope.end_ns)

    def add_txn_end(self, end: TxnEnd) -> None:
        self.txn_ends[end.txn_id] = end
        for fact in self._txn_facts.get(end.txn_id, ()):
            self._order_cache.pop(fact, None)
        for fact in self._txn_facts.get(end.txn_id, ()):
            self._writes_cache.pop(fact, None)
            self._all_writes_cache.pop(fact, None)
            self.candidates_memo.pop(fact, None)

    def _forget_candidates(self, fact: str, produced: str | None) -> None:
        """Drop the memo entries a new event of `fact` may change: volatile ones, and (for a
        write) those of the version it produced."""
        memo = self.candidates_memo.get(fact)
        if not memo:
            return
        stale = [k for k, (key, _, volatile) in memo.items() if volatile or key == produced]
        for k in stale:
            del memo[k]

    def take_unacted_reads(self, actor: str) -> list[str]:
        """Facts `actor` read since this was last asked: the views its new act may change."""
        return list(self._unacted_reads.pop(actor, {}))

    def txn_facts(self, txn_id: str) -> set[str]:
        return set(self._txn_facts.get(txn_id, ()))

    # ------------------------------------------------------------------ views

    def reads_so_far(self, actor: str) -> list[str]:
        """`fact@version` of the version `actor` last read of each fact, least recent first."""
        return [f"{fact}@{version}" for fact, version in self._actor_reads.get(actor, {}).items()]

    def decision_inputs(self, decision_span_id: str) -> list[str]:
        """`fact@version` of every read made inside the decision, in order."""
        return list(self._decision_inputs.get(decision_span_id, {}))

    def writes(self, fact: str) -> list[Write]:
        """The writes that made `fact`'s versions, with commit times, in commit order
        (uncommitted last): every write but copies.

        A copy (cache fill, index sync, replica copy: see all_writes) reproduces a version
        rather than makes one. When the fact also lives outside the cache, every cache write
        (fill or invalidation) is left out too. Callers must not change the list.
        """
        cached = self._writes_cache.get(fact)
        if cached is not None:
            return cached
        self._logical_ids_cache.pop(fact, None)
        log = self._facts.get(fact)
        if log is None:
            return []
        every = self.all_writes(fact)
        out = [w for w in every if w.copy_of is None]
        # Read or written outside the cache: cache fills and invalidations are copies.
        if any(w.obs.tier != Tier.CACHE for w in every) or any(
            o.tier != Tier.CACHE for o in log.reads
        ):
            out = [w for w in out if w.obs.tier != Tier.CACHE]
        self._writes_cache[fact] = out
        return out

    def producers(self, fact: str, version: Version, store: str, tier: Tier) -> list[Write]:
        """The writes (copies too) that produced `version`, in start order, never rolled back
        or void: a digest only in its own store and tier, other versions anywhere."""
        every = self.all_writes(fact)
        table = self._producers_cache.get(fact)
        if table is None:
            table = {}
            for write in sorted(every, key=lambda w: w.obs.start_ns):
                if write.rolled_back or write.obs.writes_void:
                    continue
                key = version_key(write.version, write.obs.store, write.obs.tier)
                table.setdefault(key, []).append(write)
            self._producers_cache[fact] = table
        return table.get(version_key(version, store, tier), [])

    def is_logical(self, write: Write) -> bool:
        """Whether `write` is one of writes(): it made a version rather than copied one."""
        ids = self._logical_ids_cache.get(write.fact)
        if ids is None:
            ids = self._logical_ids_cache[write.fact] = {id(w) for w in self.writes(write.fact)}
        return id(write) in ids

    def all_writes(self, fact: str) -> list[Write]:
        """Every write of `fact` in every representation, copies included, in commit order.

        A cache-, index- or replica-tier write (of a digest) is a copy when the same actor
        read the fact from another representation earlier, with no write of it by that actor
        in between (SPEC §5 "Copies"): it carries that read's version as `copy_of`. A recorded
        `agentstate.write.copy_of` wins over the derivation. Callers must not change the list.
        """
        cached = self._all_writes_cache.get(fact)
        if cached is not None:
            return cached
        self._producers_cache.pop(fact, None)
        self._logical_ids_cache.pop(fact, None)
        log = self._facts.get(fact)
        if log is None:
            return []
        out: list[Write] = []
        for obs in log.writes:
            for i, item in enumerate(obs.writes):
                if item.fact == fact:
                    write = self._write(fact, item.version, obs, item.fields)
                    if obs.tier != Tier.PRIMARY:
                        self._place_copy(write, obs.copy_of[i] if i < len(obs.copy_of) else None)
                    out.append(write)
        out.sort(key=lambda w: (w.commit_ns is None, w.commit_ns or w.obs.end_ns))
        self._all_writes_cache[fact] = out
        return out

    def _place_copy(self, write: Write, recorded: str | None) -> None:
        """Set `copy_of`/`source` on a non-primary write that copies a version it read."""
        if recorded is not None:  # the span said it: "" is an original write
            if recorded:
                try:
                    write.copy_of = parse_version(recorded)
                except VersionError:
                    return
                write.source = self._copied_read(write, write.copy_of)
            return
        if write.version.ordinal is not None or write.version.is_none:
            return  # ordinals order by value; a delete copies nothing
        write.source = self._copied_read(write, None)
        if write.source is not None:
            write.copy_of = write.source.version

    def copy_source(self, fact: str, actor: str, store: str, tier: Tier, start_ns: int) -> str:
        """For a write about to be recorded (a digest, outside the primary tier): the version
        it copies, as all_writes() would derive it, or "" (SPEC §3 `agentstate.write.copy_of`)."""
        if tier == Tier.PRIMARY or fact not in self._facts:
            return ""
        probe = Observation("", self.trace_id, "", Op.WRITE, start_ns, start_ns, store=store)
        probe.tier, probe.agent_scope = tier, actor if not actor.startswith("agent:") else None
        if actor.startswith("agent:"):
            probe.agent = actor[len("agent:") :]
        read = self._copied_read(Write(fact, NONE, probe, None, None), None)
        return read.version.text if read is not None else ""

    def _copied_read(self, write: Write, version: Version | None) -> Read | None:
        """The actor's latest read of the fact from another representation before `write`
        began (of `version`, if given), with no write of the fact by the actor in between."""
        obs = write.obs
        key = actor_key(obs)
        own_writes = [
            o.end_ns
            for o in self._facts[write.fact].writes
            if o is not obs and actor_key(o) == key and o.end_ns <= obs.start_ns
        ]
        last_own = max(own_writes, default=-1)
        found: Read | None = None
        for read in self.reads(write.fact):
            if read.obs.end_ns > obs.start_ns:
                break
            if (
                actor_key(read.obs) != key
                or read.obs.end_ns < last_own
                or (read.obs.store, read.obs.tier) == (obs.store, obs.tier)
                or read.version.is_none
            ):
                continue
            if version is None or read.version.same_as(version):
                found = read
        return found

    def order(self, fact: str, skew_ms: int = 0) -> VersionOrder:
        """The version order of `fact`'s writes the trace proves (see order.py)."""
        per_skew = self._order_cache.get(fact)
        if per_skew is None:
            per_skew = self._order_cache[fact] = {}
        cached = per_skew.get(skew_ms)
        if cached is None:
            cached = VersionOrder(self.writes(fact), self.reads(fact), skew_ms * 1_000_000)
            per_skew[skew_ms] = cached
        return cached

    def committed_writes(self, fact: str) -> list[Write]:
        return [w for w in self.writes(fact) if w.committed]

    def _write(
        self, fact: str, version: Version, obs: Observation, fields: frozenset[str] | None
    ) -> Write:
        # A failed operation applied nothing, unless its span says the store applied its
        # writes (explicit `agentstate.committed=true`: a pipeline whose later command failed).
        if obs.writes_void:
            return Write(fact, version, obs, None, None, fields=fields)
        if obs.committed or obs.txn_id is None:
            return Write(fact, version, obs, obs.end_ns, None, fields=fields)
        end = self.txn_ends.get(obs.txn_id)
        if end is None:
            return Write(fact, version, obs, None, None, fields=fields)
        if end.outcome == "commit":
            commit_ns = max(end.end_ns, obs.end_ns)
            begun = end.start_ns if end.start_ns is not None else end.end_ns
            effective = min(max(begun, obs.start_ns), commit_ns)
            return Write(
                fact, version, obs, commit_ns, end.span_id, effective_ns=effective, fields=fields
            )
        return Write(fact, version, obs, None, None, rolled_back=True, fields=fields)

    def reads(self, fact: str) -> list[Read]:
        """Every read of `fact`, in the order the reads ended. Callers must not change it."""
        cached = self._reads_cache.get(fact)
        if cached is not None:
            return cached
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
        self._reads_cache[fact] = out
        return out

    def verdicts_need_reads(self, fact: str) -> bool:
        """Whether a read of `fact` can change the stale-read verdict on another of its reads
        under a real-time model. Not when every version read or written is an `n:` or `t:`
        of one kind: versions then order by value, from the writes alone. (A read outside
        the cache can still drop cache writes from writes(), but fewer writes never make a
        read stale.)"""
        log = self._facts.get(fact)
        if log is None:
            return False
        kinds = set()
        for items in chain((o.writes for o in log.writes), (o.reads for o in log.reads)):
            for item in items:
                if item.fact == fact:
                    if item.version.ordinal is None:
                        return True
                    kinds.add(item.version.kind)
        return len(kinds) > 1

    def all_reads(self) -> Iterator[Read]:
        for fact in self.facts():
            yield from self.reads(fact)
