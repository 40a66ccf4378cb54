"""Version order of one fact's writes, inferred the way Jepsen Elle does for registers.

Digests (`h:`) say only whether two versions are equal; which one is newer has to come from
the evidence in the trace. The order is a partial order over the fact's writes, built from:

- **real-time order**: write A committed before write B started, so A precedes B. Across
  processes the clock-skew tolerance must separate them as well;
- **writes-follow-reads** (and, more generally, a read that saw A on the clock of the process
  that then began B): a read returned A's version, and B started after that read ended in
  the same process (or in the same atomic read-modify-write), so A precedes B. Only when
  one write produced that version (Elle's *unique writes*), and never from a read inside
  A's own still-open transaction;
- **initial state**: a version no write in the trace produced is the state before the
  trace, older than every written version;
- **process order** is covered by the two above: one process's operations share a clock.

Transitive closure over these edges gives the order. Evidence can contradict itself (a
cycle: clocks beyond the tolerance, a digest collision, a hand-written history): writes on
a cycle are left unordered, so they never support a finding. When the order between two
versions is unknown, detectors report nothing.

`n:` and `t:` versions are ordered by value and never need this module. Pure and bounded:
writes and reads per fact are bounded by the History; cost is O(W log W + R log W) plus the
closure when read evidence adds edges.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from .model import Read, Version, Write

_INF = 1 << 62


class VersionOrder:
    """The partial order over one fact's writes (committed or still pending; never rolled
    back or failed ones). Writes are nodes; `before(a, b)` asks for a proven edge a -> b."""

    __slots__ = ("_by_version", "_cyclic", "_index", "_pred", "_writes")

    def __init__(self, writes: Sequence[Write], reads: Sequence[Read] = (), skew_ns: int = 0):
        nodes = [w for w in writes if not w.rolled_back and not w.obs.writes_void]
        self._writes = nodes
        self._index = {id(w): i for i, w in enumerate(nodes)}
        self._by_version: dict[str, list[int]] = {}
        for i, w in enumerate(nodes):
            self._by_version.setdefault(w.version.identity, []).append(i)
        self._pred = _realtime_preds(nodes, skew_ns)
        extra = _read_edges(nodes, reads, self._by_version)
        cyclic = 0
        if extra:
            for target, mask in extra.items():
                self._pred[target] |= mask
            direct = list(self._pred)
            cyclic = _close(self._pred)
            if cyclic:
                # Nothing is inferred through a contradiction: close again without it.
                self._pred = [mask & ~cyclic for mask in direct]
                _close(self._pred)
        self._cyclic = cyclic

    # ------------------------------------------------------------------ queries

    @property
    def writes(self) -> list[Write]:
        return list(self._writes)

    def index(self, write: Write) -> int | None:
        return self._index.get(id(write))

    def before(self, a: int, b: int) -> bool:
        """Proven: write `a` precedes write `b` (never for writes on a contradiction)."""
        if (self._cyclic >> a) & 1 or (self._cyclic >> b) & 1:
            return False
        return bool((self._pred[b] >> a) & 1)

    def after_all(self, need: int, j: int) -> bool:
        """Proven: every write in the bitmask `need` precedes write `j` (none on a cycle)."""
        if (self._cyclic >> j) & 1 or need & self._cyclic:
            return False
        return self._pred[j] & need == need

    def ordered(self, i: int) -> bool:
        """Write `i` is not on a contradiction (those support no finding at all)."""
        return not (self._cyclic >> i) & 1

    def sources(self, version: Version) -> list[int]:
        """The writes that produced `version` (empty: the initial state, or not in the trace)."""
        return self._by_version.get(version.identity, [])

    def supersedes(self, write: Write, version: Version) -> bool:
        """Proven: `write` comes after every write that could have produced `version`
        (after the initial state, when no write in the trace produced it)."""
        if write.version.same_as(version):
            return False
        target = self._index.get(id(write))
        if target is None or not write.committed or (self._cyclic >> target) & 1:
            return False
        return all(self.before(source, target) for source in self.sources(version))

    def is_older(self, version: Version, than: Version) -> bool:
        """Proven: `version` is older than `than`. `n:`/`t:` versions compare by value."""
        if version.same_as(than):
            return False
        if version.orderable_with(than):
            assert version.ordinal is not None and than.ordinal is not None
            return version.ordinal < than.ordinal
        return any(self.supersedes(self._writes[i], version) for i in self.sources(than))

    def contradicted(self) -> list[Write]:
        """Writes whose evidence contradicts itself (on a cycle): left unordered."""
        return [w for i, w in enumerate(self._writes) if (self._cyclic >> i) & 1]


def _realtime_preds(nodes: Sequence[Write], skew_ns: int) -> list[int]:
    """Per write, the bitmask of writes that committed before it started (with the skew
    tolerance between processes). An interval order: already transitive."""
    by_process: dict[str, list[tuple[int, int]]] = {}
    for i, w in enumerate(nodes):
        commit = w.commit_ns if w.commit_ns is not None else _INF
        by_process.setdefault(w.obs.process, []).append((commit, i))
    prefix: dict[str, tuple[list[int], list[int]]] = {}
    for process, items in by_process.items():
        items.sort()
        masks = [0]
        for _, i in items:
            masks.append(masks[-1] | (1 << i))
        prefix[process] = ([c for c, _ in items], masks)
    preds = []
    for w in nodes:
        mask = 0
        for process, (commits, masks) in prefix.items():
            margin = 0 if process == w.obs.process else skew_ns
            mask |= masks[bisect_left(commits, w.start_ns - margin)]
        preds.append(mask)
    return preds


def _read_edges(
    nodes: Sequence[Write], reads: Sequence[Read], by_version: dict[str, list[int]]
) -> dict[int, int]:
    """Edges source -> write from reads: the read saw the (unique) source's version, and the
    write began after the read ended on the same clock, or in the same atomic operation."""
    if not reads or not nodes:
        return {}
    starts: dict[str, tuple[list[int], list[int]]] = {}
    grouped: dict[str, list[tuple[int, int]]] = {}
    for i, w in enumerate(nodes):
        grouped.setdefault(w.obs.process, []).append((w.start_ns, i))
    for process, items in grouped.items():
        items.sort()
        suffix = [0] * (len(items) + 1)
        for k in range(len(items) - 1, -1, -1):
            suffix[k] = suffix[k + 1] | (1 << items[k][1])
        starts[process] = ([s for s, _ in items], suffix)
    by_span = {w.obs.span_id: i for i, w in enumerate(nodes)}
    edges: dict[int, int] = {}
    for read in reads:
        if read.version.is_none and read.obs.tier.value == "cache":
            continue  # a cache miss saw no write
        found = by_version.get(read.version.identity)
        if found is None or len(found) != 1:
            continue  # initial state (already oldest) or not a unique write
        source = nodes[found[0]]
        if source.commit_ns is None:
            continue  # a pending write seen inside its own transaction orders nothing
        if source.obs.txn_id is not None and (
            read.obs.txn_id == source.obs.txn_id
            or (source.obs.process == read.obs.process and source.start_ns >= read.obs.end_ns)
        ):
            continue  # seen inside its transaction, before the commit: a dirty read
        later = 0
        entry = starts.get(read.obs.process)
        if entry is not None:
            begun, suffix = entry
            later = suffix[bisect_left(begun, read.obs.end_ns)]
        same = by_span.get(read.obs.span_id)
        if same is not None and not nodes[same].version.same_as(read.version):
            later |= 1 << same  # an atomic read-modify-write builds on what it read
        later &= ~(1 << found[0])
        while later:
            low = later & -later
            target = low.bit_length() - 1
            edges[target] = edges.get(target, 0) | (1 << found[0])
            later ^= low
    return edges


def _close(preds: list[int]) -> int:
    """Transitive closure of `preds` in place; returns the bitmask of writes on a cycle."""
    changed = True
    rounds = 0
    while changed and rounds <= len(preds):
        changed = False
        rounds += 1
        for j, mask in enumerate(preds):
            acc = mask
            rest = mask
            while rest:
                low = rest & -rest
                acc |= preds[low.bit_length() - 1]
                rest ^= low
            if acc != mask:
                preds[j] = acc
                changed = True
    cyclic = 0
    for j, mask in enumerate(preds):
        if (mask >> j) & 1:
            cyclic |= 1 << j
    return cyclic
