"""The four detectors of SPEC §5, as pure functions over a History.

Each returns Anomaly values with the evidence (span ids) that proves them, and each is sound
on the evidence alone: when the trace does not show a version to be older, it is not.
Version order: `n:` and `t:` versions compare by value within a kind; otherwise the order
is the partial order order.py infers from the trace (Elle's inference for registers: real-time
order, writes-follow-reads, unique writes, initial state). Unknown order: no finding.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

from .config import Consistency, parse_consistency
from .history import Actor, History, actor_key
from .model import (
    NONE_VERSION,
    Anomaly,
    AnomalyKind,
    Observation,
    Op,
    Read,
    Scope,
    ScopeKind,
    Severity,
    Tier,
    Version,
    Write,
)
from .order import VersionOrder
from .placement import (
    BeforeDelete,
    Candidate,
    Candidates,
    all_precede,
    candidates,
    copied_ordinal,
    pinned,
    writers,
)

ConsistencyOf = Callable[[str], Consistency]


def _linearizable(_: str) -> Consistency:
    return Consistency("linearizable")


# ---------------------------------------------------------------- version order


def is_older(version: Version, than: Version, writes: Sequence[Write]) -> bool:
    """True only if `writes` prove `version` older than `than` (see order.py)."""
    if version.orderable_with(than) or version.same_as(than):
        return VersionOrder(()).is_older(version, than)
    return VersionOrder(writes).is_older(version, than)


def _ms(ns: int) -> float:
    return round(ns / 1_000_000, 3)


# ---------------------------------------------------------------- stale reads


def detect_stale_reads(
    history: History,
    consistency_of: ConsistencyOf = _linearizable,
    *,
    clock_skew_ms: int = 0,
    only: Iterable[Observation] | None = None,
) -> list[Anomaly]:
    """Reads that returned a version older than the model allows (SPEC §5).

    `only` limits the check to those observations (the processor passes the read that just
    ended); by default every read in the history is checked.
    """
    reads: Iterable[Read]
    if only is None:
        reads = history.all_reads()
    else:
        reads = [Read(item.fact, item.version, obs) for obs in only for item in obs.reads]
    found: list[Anomaly] = []
    for read in reads:
        if read.version.is_none and read.obs.tier == Tier.CACHE:
            continue  # a cache miss sends the agent to the primary
        model = _span_model(read.obs.consistency) or consistency_of(read.fact)
        if model.kind == "eventual":
            continue
        if model.kind == "session":
            anomaly = _session_violation(history, read, model, clock_skew_ms)
        else:
            anomaly = _realtime_violation(history, read, model, clock_skew_ms)
        if anomaly is not None:
            found.append(anomaly)
    return found


@lru_cache(maxsize=64)
def _span_model(text: str | None) -> Consistency | None:
    """The model a span names in `agentstate.consistency` (offline equals online); None when
    absent or not a model we know (the configuration's model applies then)."""
    if not text:
        return None
    try:
        return parse_consistency(text)
    except ValueError:
        return None


def _realtime_violation(
    history: History, read: Read, model: Consistency, skew_ms: int
) -> Anomaly | None:
    writes = history.writes(read.fact)
    if not writes:
        return None
    bound_ns = model.bound_ms * 1_000_000 if model.kind == "bounded" else 0
    horizon = read.obs.start_ns - bound_ns
    skew_ns = skew_ms * 1_000_000
    process, own = read.obs.process, read.obs.span_id
    before = [
        w
        for w in writes
        if w.commit_ns is not None
        and w.commit_ns < horizon - (skew_ns if w.obs.process != process else 0)
        and w.obs.span_id != own
    ]
    if not before:
        return None
    latest = before[-1]
    version = copied_ordinal(history, read) or read.version
    if version.orderable_with(latest.version):
        if version.same_as(latest.version):
            return None
        if (version.ordinal or 0) > (latest.version.ordinal or 0):
            return None
        missed = [
            w
            for w in before
            if version.orderable_with(w.version)
            and (version.ordinal or 0) < (w.version.ordinal or 0)
        ]
    else:
        # Equality-only versions (digests, `none`): stale only if a write committed before R
        # comes after everything R can have returned (placement.py); unplaced: nothing.
        found = candidates(history, read)
        if found is None:
            return None
        missed = _superseding(history, found, before, skew_ms)
    if not missed:
        return None
    latest = max(missed, key=lambda w: w.commit_ns or 0)
    first = missed[0]
    assert first.commit_ns is not None and latest.commit_ns is not None
    lag_ms = _ms(read.obs.start_ns - first.commit_ns)
    evidence = [latest.obs.span_id]
    if latest.commit_span_id:
        evidence.append(latest.commit_span_id)
    agents = _unique([read.obs.agent, latest.obs.agent])
    copied = f" (a copy of {version.text})" if version is not read.version else ""
    model_text = str(model)
    return Anomaly(
        kind=AnomalyKind.STALE_READ,
        trace_id=read.obs.trace_id,
        span_id=read.obs.span_id,
        fact=read.fact,
        observed_version=read.version.text,
        expected_version=latest.version.text,
        agents=agents,
        evidence_span_ids=tuple(evidence),
        summary=(
            f"{read.obs.agent} read {read.fact} at {read.version.text}{copied} from the "
            f"{read.obs.tier.value} ({read.obs.store}), but {latest.obs.agent} had committed "
            f"{latest.version.text} {lag_ms:g} ms before the read ({model_text})"
        ),
        severity=_read_severity(read.obs),
        lag_ms=lag_ms,
        store=read.obs.store,
        agent_scope=read.obs.agent_scope,
        key=(AnomalyKind.STALE_READ, read.obs.span_id, read.fact),
    )


def _superseding(
    history: History, found: Candidates, before: list[Write], skew_ms: int
) -> list[Write]:
    """The writes of `before` that come after every candidate (bitmasks of the order)."""
    if not before:
        return []
    order = history.order(before[0].fact, skew_ms)
    need = 0
    deletes: list[int] = []
    for c in found:
        if isinstance(c, str):
            continue  # the initial state precedes every write
        target = c.delete if isinstance(c, BeforeDelete) else c
        i = order.index(target)
        if i is None:
            return []  # not in the order: nothing is proven after it
        if isinstance(c, BeforeDelete):
            deletes.append(i)
        else:
            need |= 1 << i
    out = []
    for w in before:
        j = order.index(w)
        if j is None or (need >> j) & 1 or not order.after_all(need, j):
            continue
        if all(d == j or order.before(d, j) for d in deletes):
            out.append(w)
    return out


def _session_violation(
    history: History, read: Read, model: Consistency, skew_ms: int = 0
) -> Anomaly | None:
    """Read-your-writes and monotonic reads for the reading agent (Terry et al. 1994)."""
    agent = read.obs.agent
    start = read.obs.start_ns
    bounds: list[tuple[Version, Observation, str, Candidates | None]] = []
    for write in history.committed_writes(
        read.fact
    ):  # a write counts once committed (SPEC §5): not failed, open, rolled back
        if write.obs.agent == agent and write.commit_ns is not None and write.commit_ns <= start:
            bounds.append((write.version, write.obs, "its own write", (write,)))
    for earlier in history.reads(read.fact):
        if (
            earlier.obs.agent == agent
            and earlier.obs.end_ns <= start
            and earlier.obs.span_id != read.obs.span_id
            and not (earlier.obs.tier == Tier.CACHE and earlier.version.is_none)
        ):
            bounds.append((earlier.version, earlier.obs, "an earlier read", None))
    mine: Candidates | None = None
    for bound, source, what, bound_found in bounds:
        if read.version.orderable_with(bound):
            if not (read.version.ordinal or 0) < (bound.ordinal or 0):
                continue
        elif _unrelated(read.version, bound):
            continue
        else:
            if mine is None:
                mine = candidates(history, read)
                if mine is None:
                    return None  # unplaced: proves nothing
            if bound_found is None:
                bound_found = candidates(history, Read(read.fact, bound, source))
            if bound_found is None or not all_precede(history, mine, bound_found, skew_ms):
                continue
        return Anomaly(
            kind=AnomalyKind.STALE_READ,
            trace_id=read.obs.trace_id,
            span_id=read.obs.span_id,
            fact=read.fact,
            observed_version=read.version.text,
            expected_version=bound.text,
            agents=(agent,),
            evidence_span_ids=(source.span_id,),
            summary=(
                f"{agent} read {read.fact} at {read.version.text} after {what} had shown "
                f"it {bound.text} ({model}: read-your-writes / monotonic reads)"
            ),
            severity=_read_severity(read.obs),
            lag_ms=_ms(start - source.end_ns),
            store=read.obs.store,
            agent_scope=read.obs.agent_scope,
            key=(AnomalyKind.STALE_READ, read.obs.span_id, read.fact),
        )
    return None


def _unrelated(a: Version, b: Version) -> bool:
    """An ordinal and a digest, or ordinals of two kinds: nothing orders them."""
    if a.is_none or b.is_none:
        return False  # absence is the initial state, or a delete: placed like any write
    return a.ordinal is not None or b.ordinal is not None


def _read_severity(obs: Observation) -> Severity:
    """At read time only a read-modify-write op or an open decision proves dependence."""
    if obs.op == Op.READ_WRITE or obs.writes or obs.decision is not None:
        return Severity.ERROR
    return Severity.WARNING


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------- divergent views


def _overlap(a: Actor, b: Actor) -> bool:
    a_end = a.end_ns if a.end_ns is not None else 1 << 62
    b_end = b.end_ns if b.end_ns is not None else 1 << 62
    return a.start_ns < b_end and b.start_ns < a_end


def _is_miss(read: Read) -> bool:
    return read.obs.tier == Tier.CACHE and read.version.is_none


def _atomic(read: Read) -> bool:
    """The read of an atomic read-modify-write of the fact (INCR, CAS, UPDATE ... RETURNING):
    the store applied the write to the version it read, so it is no view acted on later."""
    return read.obs.op == Op.READ_WRITE and any(w.fact == read.fact for w in read.obs.writes)


def _acted_on(history: History, fact: str) -> dict[str, Read]:
    """Per actor, its last read of `fact` that a later decision or write of its followed."""
    views: dict[str, Read] = {}
    for read in history.reads(fact):
        if _is_miss(read) or _atomic(read):
            continue
        actor = history.actors.get(actor_key(read.obs))
        if actor is None or actor.last_act is None or read.obs.end_ns > actor.last_act:
            continue
        views[actor.key] = read
    return views


def detect_divergent_views(
    history: History,
    *,
    only_actors: Iterable[str] | None = None,
    facts: Iterable[str] | None = None,
) -> list[Anomaly]:
    """Concurrent agents that acted on different versions of one fact (SPEC §5).

    Not a divergence when the newer version was written by one of the two agents: a
    read-modify-write chain knows the version it wrote. `only_actors` keeps the pairs that
    involve those actors, `facts` the facts to look at (default: all).
    """
    focus = set(only_actors) if only_actors is not None else None
    found: list[Anomaly] = []
    for fact in history.facts() if facts is None else facts:
        views = _acted_on(history, fact)
        if len(views) < 2 or (focus is not None and not focus & views.keys()):
            continue
        keys = sorted(views)
        for i, key_a in enumerate(keys):
            for key_b in keys[i + 1 :]:
                if focus is not None and key_a not in focus and key_b not in focus:
                    continue
                a, b = history.actors[key_a], history.actors[key_b]
                if a.agent == b.agent or not _overlap(a, b):
                    continue
                anomaly = _divergence(history, fact, views[key_a], views[key_b], a, b)
                if anomaly is not None:
                    found.append(anomaly)
    return found


def _divergence(
    history: History, fact: str, read_a: Read, read_b: Read, a: Actor, b: Actor
) -> Anomaly | None:
    """A divergence only when the trace proves which version is newer (SPEC §5)."""
    va, vb = read_a.version, read_b.version
    if va.orderable_with(vb):
        if va.same_as(vb):
            return None
        older, newer = (
            (read_a, read_b) if (va.ordinal or 0) < (vb.ordinal or 0) else (read_b, read_a)
        )
        newer_writers = {
            w.obs.agent for w in history.writes(fact) if w.version.same_as(newer.version)
        }
    elif _unrelated(va, vb):
        return None
    else:
        found_a, found_b = candidates(history, read_a), candidates(history, read_b)
        if found_a is None or found_b is None:
            return None  # an unplaced digest is never one side of a divergence
        if all_precede(history, found_a, found_b):
            older, newer, newer_found = read_a, read_b, found_b
        elif all_precede(history, found_b, found_a):
            older, newer, newer_found = read_b, read_a, found_a
        else:
            return None  # the same version, or an order the trace does not prove
        newer_writers = writers(newer_found)
    if newer_writers & {a.agent, b.agent}:
        return None  # a read-modify-write chain: the writer knows the version it wrote
    agents = _unique([older.obs.agent, newer.obs.agent])
    return Anomaly(
        kind=AnomalyKind.DIVERGENT_VIEW,
        trace_id=older.obs.trace_id,
        span_id=older.obs.span_id,
        fact=fact,
        observed_version=older.version.text,
        expected_version=newer.version.text,
        agents=agents,
        evidence_span_ids=(newer.obs.span_id,),
        summary=(
            f"{older.obs.agent} acted on {fact} at {older.version.text} while "
            f"{newer.obs.agent}, working at the same time, acted on {newer.version.text}"
        ),
        severity=Severity.ERROR,
        store=older.obs.store,
        agent_scope=older.obs.agent_scope,
        key=(AnomalyKind.DIVERGENT_VIEW, fact, frozenset((a.key, b.key))),
    )


# ---------------------------------------------------------------- lost updates


def _based_writes(history: History, fact: str) -> dict[str, list[tuple[Write, Read]]]:
    """Committed writes of `fact` grouped by the version their writer last read before them."""
    reads: dict[str, list[Read]] = {}
    for read in history.reads(fact):
        if not _is_miss(read):
            reads.setdefault(actor_key(read.obs), []).append(read)
    if len(reads) < 2:
        return {}  # a lost update needs two writers that both read the fact
    ends = {key: [r.obs.end_ns for r in rs] for key, rs in reads.items()}
    groups: dict[str, list[tuple[Write, Read]]] = {}
    pins: dict[int, Candidate | None] = {}
    for write in history.committed_writes(fact):
        key = actor_key(write.obs)
        if key not in reads:
            continue
        # An atomic read-modify-write (INCR, UPDATE ... RETURNING) is based on its own read.
        own = [r for r in reads[key] if r.obs.span_id == write.obs.span_id]
        index = bisect_right(ends[key], write.obs.start_ns) - 1
        basis = own[-1] if own else reads[key][index] if index >= 0 else None
        if basis is None:
            continue
        if basis.version.ordinal is not None:
            group = basis.version.identity
        else:  # a digest is one version only when the trace pins it to one write
            memo = id(basis.obs)
            if memo not in pins:
                pins[memo] = pinned(candidates(history, basis))
            one = pins[memo]
            if one is None:
                continue
            if not isinstance(one, Write | str):
                continue  # "some version before a delete" is no one version
            group = "initial" if isinstance(one, str) else f"write:{one.obs.span_id}"
        groups.setdefault(group, []).append((write, basis))
    return groups


def detect_lost_updates(history: History, *, facts: Iterable[str] | None = None) -> list[Anomaly]:
    """Two committed writes of a fact whose writers both last read the same version (Elle).

    A merge write (HSET of some fields, Qdrant set_payload of some keys) is a read-modify-write
    the server applies to the stored value: it keeps every field it does not set. So two
    merges overwrite each other only where their fields meet; a whole-value write overwrites
    everything. Merges of disjoint fields lose nothing.
    """
    found: list[Anomaly] = []
    for fact in history.facts() if facts is None else facts:
        for based in _based_writes(history, fact).values():
            for i, (first, first_read) in enumerate(based):
                for second, second_read in based[i + 1 :]:
                    if actor_key(first.obs) == actor_key(second.obs):
                        continue
                    if first.version.same_as(first_read.version):
                        continue  # the first write changed nothing: nothing was lost
                    if not overwrites(second, first):
                        continue  # disjoint merges: both survive on the server
                    found.append(_lost_update(fact, first, first_read, second, second_read))
    return found


def overwrites(later: Write, earlier: Write) -> bool:
    """Whether `later` can overwrite what `earlier` wrote: not when both merged fields into
    the stored value and no field is common to both."""
    if later.fields is None or earlier.fields is None:
        return True
    return not later.fields.isdisjoint(earlier.fields)


def _lost_update(
    fact: str, first: Write, first_read: Read, second: Write, second_read: Read
) -> Anomaly:
    return Anomaly(
        kind=AnomalyKind.LOST_UPDATE,
        trace_id=second.obs.trace_id,
        span_id=second.obs.span_id,
        fact=fact,
        observed_version=second_read.version.text,
        expected_version=first.version.text,
        agents=_unique([first.obs.agent, second.obs.agent]),
        evidence_span_ids=(first.obs.span_id, first_read.obs.span_id, second_read.obs.span_id),
        summary=(
            f"{second.obs.agent} wrote {fact} based on {second_read.version.text}, "
            f"overwriting {first.version.text} that {first.obs.agent} had written from the "
            f"same {first_read.version.text}: that update is lost"
        ),
        severity=Severity.ERROR,
        store=second.obs.store,
        agent_scope=second.obs.agent_scope,
        key=(AnomalyKind.LOST_UPDATE, fact, first.obs.span_id, second.obs.span_id),
    )


# ---------------------------------------------------------------- orphaned mutations


def detect_orphaned_mutations(history: History, *, closed: bool = True) -> list[Anomaly]:
    """Mutation scopes that changed state and then failed or never ended, unrestored.

    The scope of a write is its innermost explicit mutation(), else its agent span for
    autocommit writes (a committed database transaction is complete by itself). `closed`:
    the trace is over, so scopes that never ended count as abandoned.
    """
    found: list[Anomaly] = []
    by_scope: dict[str, list[Write]] = {}
    for fact in list(history.facts()):
        for write in history.committed_writes(fact):
            scope_id = write.obs.mutation
            if scope_id is None and write.obs.txn_id is None:
                scope_id = write.obs.agent_scope
            if scope_id is not None:
                by_scope.setdefault(scope_id, []).append(write)
    for scope_id, writes in by_scope.items():
        scope = history.scopes.get(scope_id)
        if scope is None:
            continue
        abandoned = scope.end_ns is None and closed
        if not (scope.failed or abandoned):
            continue
        unrestored = [w for w in _last_per_fact(writes) if not _restored(history, w, writes)]
        if not unrestored:
            continue
        last = max(unrestored, key=lambda w: w.commit_ns or 0)
        how = "failed" if scope.failed else "never ended"
        facts = ", ".join(f"{w.fact}={w.version.text}" for w in unrestored)
        found.append(
            Anomaly(
                kind=AnomalyKind.ORPHANED_MUTATION,
                trace_id=last.obs.trace_id,
                span_id=last.obs.span_id,
                fact=last.fact,
                observed_version=last.version.text,
                expected_version=_before_text(history, last.fact, writes),
                agents=(scope.agent,),
                evidence_span_ids=_unique([scope.span_id, *(w.obs.span_id for w in unrestored)]),
                summary=(
                    f"{_scope_label(scope)} {how} after committing {facts}; "
                    "nothing restored the earlier state"
                ),
                severity=Severity.ERROR,
                store=last.obs.store,
                agent_scope=scope.parent_agent_scope
                if scope.kind == ScopeKind.MUTATION
                else scope.span_id,
                key=(AnomalyKind.ORPHANED_MUTATION, scope_id),
            )
        )
    return found


def _scope_label(scope: Scope) -> str:
    if scope.kind == ScopeKind.AGENT:
        return f"agent {scope.agent} (autocommit writes, no transaction)"
    return f"{scope.kind.value} {scope.name!r} of {scope.agent}"


def _last_per_fact(writes: list[Write]) -> list[Write]:
    last: dict[str, Write] = {}
    for write in writes:
        last[write.fact] = write
    return list(last.values())


def _before_text(history: History, fact: str, scope_writes: list[Write]) -> str:
    before = _before(history, fact, scope_writes)
    return NONE_VERSION if before is None else before.text


def _before(history: History, fact: str, scope_writes: list[Write]) -> Version | None:
    """The version `fact` had before the scope's first write of it, if the trace shows it."""
    mine = [w for w in scope_writes if w.fact == fact]
    first = min(mine, key=lambda w: w.commit_ns or 0)
    earlier = [
        w
        for w in history.committed_writes(fact)
        if w not in mine and (w.commit_ns or 0) < (first.commit_ns or 0)
    ]
    if earlier:
        return earlier[-1].version
    seen = [
        r for r in history.reads(fact) if r.obs.end_ns <= first.obs.start_ns and not _is_miss(r)
    ]
    if seen:
        return seen[-1].version
    return None


def _restored(history: History, last: Write, scope_writes: list[Write]) -> bool:
    """The scope's own last write, or a later committed write (by anyone), put back the
    version from before the scope."""
    before = _before(history, last.fact, scope_writes)
    if before is not None and last.version.same_as(before):
        return True  # compensated inside the scope itself
    after = [
        w
        for w in history.committed_writes(last.fact)
        if w not in scope_writes and (w.commit_ns or 0) > (last.commit_ns or 0)
    ]
    if not after:
        return False
    if before is None:
        return True  # the earlier state is unknown: a later write may have restored it
    return any(w.version.same_as(before) for w in after)


def detect_all(
    history: History,
    consistency_of: ConsistencyOf = _linearizable,
    *,
    clock_skew_ms: int = 0,
    closed: bool = True,
) -> list[Anomaly]:
    """Every detector over the whole history: what `check` runs on a finished trace."""
    return [
        *detect_stale_reads(history, consistency_of, clock_skew_ms=clock_skew_ms),
        *detect_divergent_views(history),
        *detect_lost_updates(history),
        *detect_orphaned_mutations(history, closed=closed),
    ]
