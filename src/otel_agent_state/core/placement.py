"""Where a read's version came from: the writes of the fact's history it can have returned.

A version read is *placed* when the trace shows what produced it (SPEC §5, "A digest proves
only what the trace's writes prove"):

- **in its own representation** (one store and tier): digests compare only with digests of
  the same representation, since a cache value and a row hash differently. A write in that
  representation produced the version: that write, or, for a copy (a cache fill, an index
  sync), whatever produced the version the copy was made from, in its own representation;
- **the initial state** (Elle), only within the representation the fact's writes live in:
  `none` (absent) that no write produced, or a digest a read there returned before any write
  there began;
- **older than a delete**: a present value read after a committed delete, when no write of
  the fact began after the delete and before the read ended (absence is the same in every
  representation);
- otherwise it is **unplaced**: it proves nothing — never stale, never one side of a
  divergent view, never the base of a lost update.

Only writes that began before the read ended can be what it returned. When several did
(repeated values: ABA), the read is pinned only to what all of them allow: it is stale only
if every candidate is superseded, and it is "the same version" as another read only when
both are pinned to one candidate. `n:`/`t:` versions order by value and never come here.

Assumes what the whole checker assumes: every write of the fact that matters is in the
trace, and a copy holds the value the copying agent read.
"""

from __future__ import annotations

from .history import History, version_key
from .model import Read, Tier, Version, Write

Rep = tuple[str, Tier]

# The fact's state before the trace's first write (a marker, not a write).
INITIAL = "initial"


class BeforeDelete:
    """Some version older than `delete`: a present value read after a committed delete
    that no later write (in any representation) can have produced. Absence means the same
    in every representation, so this holds across them."""

    __slots__ = ("delete",)

    def __init__(self, delete: Write) -> None:
        self.delete = delete


Candidate = Write | str | BeforeDelete
Candidates = tuple[Candidate, ...]

_MAX_COPY_DEPTH = 4  # copies of copies followed this deep; deeper proves nothing
_MAX_MEMO = 4_096  # memoised answers per fact


def rep_of(read_or_write: Read | Write) -> Rep:
    obs = read_or_write.obs
    return (obs.store, obs.tier)


def candidates(history: History, read: Read) -> Candidates | None:
    """The logical writes (or INITIAL) `read` can have returned; None: unplaced."""
    memo = history.candidates_memo.setdefault(read.fact, {})
    if len(memo) > _MAX_MEMO:
        memo.clear()  # bounded: reads fall out of the fact's window, their entries with them
    slot = (read.obs.span_id, read.version.text)
    hit = memo.get(slot)
    if hit is not None:
        return hit[1]  # type: ignore[return-value]
    found, volatile = _candidates(history, read, 0)
    obs = read.obs
    memo[slot] = (version_key(read.version, obs.store, obs.tier), found, volatile)
    return found


def _candidates(history: History, read: Read, _depth: int) -> tuple[Candidates | None, bool]:
    """candidates(), and whether the answer depends on more than its version's producers."""
    version = read.version
    fact = read.fact
    here = rep_of(read)
    end = read.obs.end_ns
    out: dict[int, Candidate] = {}
    produced = False
    volatile = False
    txn = read.obs.txn_id
    digest = version.kind == "h"  # only digests are tied to a representation
    for write in history.producers(fact, version, read.obs.store, read.obs.tier):
        # Inside its own transaction a read sees the write before it commits.
        own_txn = txn is not None and write.obs.txn_id == txn
        begun = write.obs.start_ns if own_txn else write.start_ns
        if begun >= end:
            if write.obs.start_ns >= end:
                break  # in start order: none later can have begun before the read ended
            continue
        if write.obs.span_id == read.obs.span_id:
            continue  # an atomic op reads before it writes
        produced = True
        if history.is_logical(write):
            out[id(write)] = write
        elif write.copy_of is not None and _depth < _MAX_COPY_DEPTH:
            volatile = True
            source = write.source
            if source is None:  # recorded on the span; the read it copied is elsewhere
                inner = _copied_writes(history, write)
            else:
                inner, _ = _candidates(history, source, _depth + 1)
            if inner is None:
                return None, True
            for candidate in inner:
                out[id(candidate)] = candidate
        else:
            return None, True  # a cache write-through, a copy too deep: it places nothing
    if version.is_none or (not produced and digest and _initial_here(history, read, here)):
        out[id(INITIAL)] = INITIAL
        volatile = True
    elif not produced:
        deleted = _deleted_before(history, read)  # version is present here
        return (None if deleted is None else (BeforeDelete(deleted),)), True
    return tuple(out.values()), volatile


def _deleted_before(history: History, read: Read) -> Write | None:
    """The delete that committed before `read` began, after which no write of the fact began
    (anywhere) before the read ended: a present value read then predates the delete."""
    start, end = read.obs.start_ns, read.obs.end_ns
    last: Write | None = None
    for write in history.writes(read.fact):
        if write.version.is_none and write.commit_ns is not None and write.commit_ns < start:
            last = write
    if last is None:
        return None
    for write in history.all_writes(read.fact):
        if write is not last and not write.rolled_back and last.start_ns <= write.start_ns < end:
            return None
    return last


def copied_ordinal(history: History, read: Read) -> Version | None:
    """For a digest read of a copy of an `n:`/`t:` version (a cache fill of a row with a
    version column, whose cached text carries none): that version, when every write of the
    read's representation that can have produced it copied the same one."""
    if read.version.kind != "h":
        return None
    found: Version | None = None
    obs = read.obs
    for write in history.producers(read.fact, read.version, obs.store, obs.tier):
        if write.obs.start_ns >= obs.end_ns:
            break
        source = write.copy_of
        if source is None or source.ordinal is None:
            return None
        if found is not None and not found.same_as(source):
            return None
        found = source
    return found


def _copied_writes(history: History, copy: Write) -> Candidates | None:
    """For a copy whose read is not in the trace: the writes that produced the version it
    names and began before it (the copy names its source's own representation)."""
    assert copy.copy_of is not None
    found = tuple(
        w
        for w in history.writes(copy.fact)
        if w.version.same_as(copy.copy_of) and w.start_ns < copy.obs.start_ns
    )
    return found or None


def _initial_here(history: History, read: Read, here: Rep) -> bool:
    """A read of this representation returned the version before any write of it there
    began, in the representation the fact's own writes live in: the initial state."""
    writes = history.writes(read.fact)
    if not any(rep_of(w) == here for w in writes):
        return False
    first = min(w.obs.start_ns for w in history.all_writes(read.fact) if rep_of(w) == here)
    return any(
        earlier.obs.end_ns <= first
        and rep_of(earlier) == here
        and earlier.version.same_as(read.version)
        for earlier in history.reads(read.fact)
    )


def precedes(history: History, a: Candidate, b: Candidate, skew_ms: int = 0) -> bool:
    """Proven: candidate `a` comes before candidate `b` in the fact's version order."""
    if a is b or not isinstance(b, Write):
        return False
    order = history.order(b.fact, skew_ms)
    j = order.index(b)
    if j is None or not order.ordered(j):
        return False  # nothing is inferred through a contradiction
    if isinstance(a, str):
        return True  # the initial state precedes every write
    if isinstance(a, BeforeDelete):
        if a.delete is b:
            return True
        a = a.delete
    i = order.index(a)
    return i is not None and order.before(i, j)


def all_precede(history: History, older: Candidates, newer: Candidates, skew_ms: int = 0) -> bool:
    """Proven: whatever `older` stands for comes before whatever `newer` stands for."""
    return (
        bool(older)
        and bool(newer)
        and all(precedes(history, a, b, skew_ms) for a in older for b in newer)
    )


def pinned(found: Candidates | None) -> Candidate | None:
    """The one write (or INITIAL) a read returned, when the trace allows only one."""
    if found is None or len(found) != 1:
        return None
    return found[0]


def writers(found: Candidates) -> set[str]:
    """The agents whose writes a read's candidates are."""
    return {c.obs.agent for c in found if isinstance(c, Write)}
