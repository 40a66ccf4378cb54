"""Version order for digests, inferred as Jepsen Elle does for registers (order.py), on
hand-written histories: what the evidence proves is used, nothing more."""

from __future__ import annotations

from otel_agent_state.core.config import parse_consistency
from otel_agent_state.core.detectors import (
    detect_all,
    detect_divergent_views,
    detect_stale_reads,
)
from otel_agent_state.core.model import Version, parse_version
from otel_agent_state.core.order import VersionOrder

from .histories import DIVERGENT, STALE, H

F = "score/1"
A1, A2, B1 = "h:a1", "h:a2", "h:b1"


def v(text: str) -> Version:
    return parse_version(text)


def _stale(h: H, *, skew_ms: int = 0, model: str = "linearizable") -> list[tuple[str, str, str]]:
    found = detect_stale_reads(
        h.history(),
        lambda _: parse_consistency(model),
        clock_skew_ms=skew_ms,
    )
    return [(a.span_id, a.observed_version, a.expected_version) for a in found]


def _order(h: H, skew_ms: int = 0) -> VersionOrder:
    return h.history().order(F, skew_ms)


# ---------------------------------------------------------------- real-time order


def test_realtime_order_sequential_writes() -> None:
    h = H()
    h.write("w", F, A1, (0, 1))
    h.write("w", F, A2, (2, 3))
    r = h.read("r", F, A1, (5, 6))
    order = _order(h)
    assert order.is_older(v(A1), v(A2)) and not order.is_older(v(A2), v(A1))
    assert _stale(h) == [(r, A1, A2)]


def test_overlapping_writes_have_no_order_so_either_value_is_fine() -> None:
    """W(a1) spans 0-10 and W(a2) 5-8: either may have taken effect last. The old
    commit-order rule called a1 the latest and a read of a2 stale: unsound."""
    h = H()
    h.write("x", F, A1, (0, 10))
    h.write("y", F, A2, (5, 8))
    h.read("r", F, A1, (20, 21))
    h.read("r2", F, A2, (22, 23))
    order = _order(h)
    assert not order.is_older(v(A1), v(A2)) and not order.is_older(v(A2), v(A1))
    assert _stale(h) == []


def test_a_write_after_both_overlapping_ones_supersedes_them() -> None:
    h = H()
    h.write("x", F, A1, (0, 10))
    h.write("y", F, A2, (5, 8))
    h.write("z", F, B1, (12, 13))
    r1 = h.read("r", F, A1, (20, 21))
    r2 = h.read("r", F, A2, (22, 23))
    assert _stale(h) == [(r1, A1, B1), (r2, A2, B1)]


def test_realtime_order_across_processes_needs_the_skew_margin() -> None:
    h = H()
    h.write("w", F, A1, (0, 1), process="p1")
    h.write("w2", F, A2, (4, 5), process="p2")
    r = h.read("r", F, A1, (30, 31), process="p1")
    assert _stale(h) == [(r, A1, A2)]
    # With 10 ms of tolerated skew, A2 may have been written before A1 took effect.
    assert _stale(h, skew_ms=10) == []


def test_a_transactional_write_takes_effect_at_its_commit() -> None:
    h = H()
    h.write("slow", F, A1, (1, 2), txn="t")  # statement first ...
    h.write("fast", F, A2, (3, 4))
    h.commit("t", 10)  # ... visible only at commit, after A2
    r = h.read("r", F, A2, (20, 21))
    assert _order(h).is_older(v(A2), v(A1))
    assert _stale(h) == [(r, A2, A1)]


# ---------------------------------------------------------------- writes-follow-reads


def test_writes_follow_reads_orders_writes_across_unsynchronised_clocks() -> None:
    """Process p2's clock is far behind: real time cannot order its write after p1's, but
    its agent read A1 and then wrote A2, so A1 < A2 on p2's own clock."""
    h = H()
    h.write("planner", F, A1, (100, 101), process="p1")
    h.read("scorer", F, A1, (40, 41), process="p2")
    h.write("scorer", F, A2, (42, 43), process="p2")
    r = h.read("planner", F, A1, (200, 201), process="p1")
    assert _order(h, 100).is_older(v(A1), v(A2))
    assert _stale(h, skew_ms=100) == [(r, A1, A2)]


def test_atomic_read_modify_write_follows_what_it_read() -> None:
    h = H()
    h.write("a", F, A1, (100, 101), process="p1")
    h.read_write("b", F, A1, A2, (10, 11))  # p1 by default: same clock, yet p2 below
    order = _order(h)
    # Real time says A2 (ended at 11) came before A1 (started at 100); the read-modify-write
    # says A1 came first: the evidence contradicts itself, so neither order is used.
    assert not order.is_older(v(A1), v(A2)) and not order.is_older(v(A2), v(A1))
    assert len(order.contradicted()) == 2


def test_writes_follow_reads_needs_a_unique_write_of_what_was_read() -> None:
    h = H()
    h.write("p", F, A1, (100, 101), process="p1")
    h.write("q", F, A1, (300, 301), process="p3")  # A1 written twice: which did p2 see?
    h.read("s", F, A1, (40, 41), process="p2")
    h.write("s", F, A2, (42, 43), process="p2")
    h.read("p", F, A1, (500, 501), process="p1")
    assert not _order(h, 50).is_older(v(A1), v(A2))
    assert _stale(h, skew_ms=50) == []


def test_a_read_inside_the_writers_open_transaction_orders_nothing() -> None:
    h = H()
    h.write("a", F, A1, (0, 1), txn="t")
    h.read("b", F, A1, (2, 3))  # a dirty read (or the writer's own): not committed yet
    h.write("b", F, A2, (4, 5))
    h.commit("t", 9)
    order = _order(h)
    # Real time: A2 committed at 5 before A1's commit at 9: A2 < A1, not the other way.
    assert order.is_older(v(A2), v(A1)) and not order.is_older(v(A1), v(A2))


def test_a_cache_miss_orders_nothing() -> None:
    h = H()
    h.write("a", F, "none", (0, 1), process="p1")  # a delete
    h.write("a", F, A1, (100, 101), process="p1")
    h.read("b", F, "none", (10, 11), tier="cache", process="p2")
    h.write("b", F, A2, (12, 13), process="p2")
    assert not _order(h, 500).is_older(v("none"), v(A2))
    assert not _order(h, 500).is_older(v(A1), v(A2))


# ---------------------------------------------------------------- initial state


def test_an_unwritten_version_is_the_initial_state() -> None:
    h = H()
    before = h.read("r", F, B1, (0, 1))
    h.write("w", F, A1, (2, 3))
    after = h.read("r", F, B1, (5, 6))
    assert _stale(h) == [(after, B1, A1)]
    assert before != after


def test_the_initial_state_restored_by_a_write_is_that_write() -> None:
    h = H()
    h.write("w", F, A1, (2, 3))
    h.write("w", F, B1, (4, 5))  # B1: the initial value again (a compensation)
    h.read("r", F, B1, (7, 8))
    assert _stale(h) == []


def test_a_version_only_an_open_transaction_wrote_is_not_stale() -> None:
    h = H()
    h.write("w", F, A1, (0, 1))
    h.write("x", F, A2, (2, 3), txn="open")  # never committed
    h.read("x", F, A2, (4, 5))
    assert _stale(h) == []


# ---------------------------------------------------------------- contradictions


def test_a_cycle_of_evidence_gives_no_finding_and_no_crash() -> None:
    """p2 read A1 before writing A2 (A1 < A2), yet real time says A2 committed before A1
    started (A2 < A1): a cycle. Nothing on it supports a finding."""
    h = H()
    h.read("s", F, A1, (0, 1), process="p2")
    h.write("s", F, A2, (2, 3), process="p2")
    h.write("p", F, A1, (10, 11), process="p1")
    h.read("p", F, A2, (20, 21), process="p1")
    h.read("q", F, A1, (22, 23), process="p1")
    order = _order(h)
    assert {w.version.text for w in order.contradicted()} == {A1, A2}
    assert not order.is_older(v(A1), v(A2)) and not order.is_older(v(A2), v(A1))
    assert [a for a in detect_all(h.history()) if a.kind == STALE] == []


def test_a_longer_cycle_leaves_writes_outside_it_ordered() -> None:
    h = H()
    h.write("o", F, B1, (0, 1), process="p0")
    h.read("s", F, A1, (10, 11), process="p2")
    h.write("s", F, A2, (12, 13), process="p2")
    h.write("p", F, A1, (20, 21), process="p1")
    h.read("q", F, "h:00", (0, 0), process="p0")  # seen before any write: the initial state
    r = h.read("p", F, "h:00", (30, 31), process="p1")
    order = _order(h)
    assert {w.version.text for w in order.contradicted()} == {A1, A2}
    # B1 is before everything by real time; the cycle does not change that.
    assert order.is_older(v("h:00"), v(B1))
    # The read of the initial state is stale against B1 at least.
    [(span, observed, expected)] = _stale(h)
    assert (span, observed) == (r, "h:00") and expected == B1


def test_self_contradictory_histories_never_crash_any_detector() -> None:
    h = H()
    for i in range(30):
        process = f"p{i % 3}"
        h.read(
            f"a{i % 4}", F, f"h:{(i * 7) % 5:02x}", (i * 3 % 17, i * 3 % 17 + 1), process=process
        )
        h.write(
            f"a{i % 4}", F, f"h:{(i * 5) % 5:02x}", (i * 2 % 13, i * 2 % 13 + 1), process=process
        )
    history = h.history()
    detect_all(history, clock_skew_ms=1)
    order = history.order(F)
    for a in ("h:00", "h:01", "h:02", "h:03", "h:04"):
        for b in ("h:00", "h:01", "h:02", "h:03", "h:04"):
            assert not (order.is_older(v(a), v(b)) and order.is_older(v(b), v(a)))


# ---------------------------------------------------------------- detectors use it


def test_session_monotonic_reads_of_digests_ordered_by_writes_follow_reads() -> None:
    h = H()
    h.write("p", F, A1, (100, 101), process="p1")
    h.read("s", F, A1, (40, 41), process="p2")
    h.write("s", F, A2, (42, 43), process="p2")
    h.read("p", F, A2, (200, 201), process="p1")
    r = h.read("p", F, A1, (202, 203), process="p1")
    assert _stale(h, model="session", skew_ms=100) == [(r, A1, A2)]


def test_divergent_view_names_the_newer_version_by_the_inferred_order() -> None:
    h = H()
    a = h.agent("a", (0, 100))
    b = h.agent("b", (0, 100))
    h.write("w", F, A1, (1, 2))
    h.write("w", F, A2, (3, 4))
    h.read("b", F, A2, (5, 6), scope=b)
    h.read("a", F, A1, (7, 8), scope=a)
    h.decision("a", a, (9, 10))
    h.decision("b", b, (9, 10))
    [found] = detect_divergent_views(h.history())
    assert found.kind == DIVERGENT
    assert (found.observed_version, found.expected_version) == (A1, A2)


def test_nothing_is_inferred_through_a_contradiction() -> None:
    """B1 < A1 and A2 < C1 are evidenced; A1 and A2 contradict each other. B1 < C1 would
    follow only through the contradiction, so it is not inferred (clocks are too far apart
    for real time to order anything)."""
    h = H()
    h.write("o", F, B1, (0, 1), process="p0")
    h.read("a", F, B1, (1, 2), process="p1")
    h.read("a", F, A2, (2, 3), process="p1")
    h.write("a", F, A1, (4, 5), process="p1")
    h.read("b", F, A1, (0, 1), process="p2")
    h.write("b", F, A2, (2, 3), process="p2")
    h.read("b", F, A2, (10, 11), process="p2")
    h.write("b", F, "h:c1", (12, 13), process="p2")
    order = _order(h, 1000)
    assert {w.version.text for w in order.contradicted()} == {A1, A2}
    assert not order.is_older(v(B1), v("h:c1"))
    assert not order.is_older(v("h:c1"), v(B1))
