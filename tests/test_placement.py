"""What a digest can prove (SPEC §5): representations, copies, repeated values, the initial
state, and the models spans name. Hand-written histories on the pure core."""

from __future__ import annotations

from otel_agent_state.core.detectors import (
    detect_all,
    detect_divergent_views,
    detect_lost_updates,
    detect_stale_reads,
)
from otel_agent_state.core.model import Read
from otel_agent_state.core.placement import INITIAL, candidates, pinned

from .histories import DIVERGENT, LOST, STALE, H

F = "score/42"
ROW_680, ROW_750 = "h:a680", "h:a750"  # the row's digests
CACHED_680, CACHED_750 = "h:c680", "h:c750"  # the cache value's digests: another representation


def _kinds(h: H) -> list[tuple[object, str]]:
    return [(a.kind, a.span_id) for a in detect_all(h.history())]


def _cache_aside(*, invalidate: bool) -> tuple[H, str]:
    """Risk fills the cache from the row; the scorer updates the row (and, correctly, drops
    the cache, which risk refills); risk reads the cache hit. Digests only."""
    h = H()
    risk = h.agent("risk", (0, 100))
    scorer = h.agent("scorer", (20, 40))
    h.read("risk", F, "none", (1, 2), tier="cache", scope=risk, store="redis")
    h.read("risk", F, ROW_680, (3, 4), scope=risk, store="postgresql")
    h.write("risk", F, CACHED_680, (5, 6), tier="cache", scope=risk, store="redis")
    h.write("scorer", F, ROW_750, (21, 22), scope=scorer, store="postgresql")
    if invalidate:
        h.write("scorer", F, "none", (23, 24), tier="cache", scope=scorer, store="redis")
        h.read("risk", F, "none", (50, 51), tier="cache", scope=risk, store="redis")
        h.read("risk", F, ROW_750, (52, 53), scope=risk, store="postgresql")
        h.write("risk", F, CACHED_750, (54, 55), tier="cache", scope=risk, store="redis")
        hit = h.read("risk", F, CACHED_750, (60, 61), tier="cache", scope=risk, store="redis")
    else:
        hit = h.read("risk", F, CACHED_680, (60, 61), tier="cache", scope=risk, store="redis")
    return h, hit


def test_cache_aside_on_digests_flags_the_uninvalidated_cache_only() -> None:
    faulty, hit = _cache_aside(invalidate=False)
    [anomaly] = detect_stale_reads(faulty.history())
    assert (anomaly.span_id, anomaly.observed_version, anomaly.expected_version) == (
        hit,
        CACHED_680,
        ROW_750,
    )
    correct, _ = _cache_aside(invalidate=True)
    assert detect_all(correct.history()) == []


def test_a_fill_is_a_copy_of_the_version_its_agent_read() -> None:
    h, _ = _cache_aside(invalidate=True)
    history = h.history()
    fills = [w for w in history.all_writes(F) if w.obs.tier.value == "cache" and w.copy_of]
    assert [(w.version.text, w.copy_of.text if w.copy_of else "") for w in fills] == [
        (CACHED_680, ROW_680),
        (CACHED_750, ROW_750),
    ]
    assert [w.version.text for w in history.writes(F)] == [ROW_750]  # copies make no versions


def test_a_cache_digest_no_write_produced_proves_nothing() -> None:
    """The cache was filled before the trace: its digest is another representation's."""
    h = H()
    h.write("scorer", F, ROW_750, (1, 2), store="postgresql")
    h.read("risk", F, CACHED_680, (10, 11), tier="cache", store="redis")
    h.read("risk", F, CACHED_750, (12, 13), tier="cache", store="redis")
    assert detect_all(h.history()) == []


def test_equal_digest_text_in_another_tier_is_not_the_same_version() -> None:
    """Redis primary and cache keys hash one value alike, but they are two representations."""
    h = H()
    h.write("w", F, "h:500", (1, 2), store="redis")
    h.write("w", F, "h:900", (3, 4), store="redis")
    h.read("r", F, "h:500", (10, 11), tier="cache", store="redis")  # no fill in the trace
    assert detect_stale_reads(h.history()) == []


def test_a_copy_of_another_agents_scope_is_no_copy() -> None:
    """The copy rule needs the read in the same agent scope: a second scope's write is not
    placed (SPEC §5), so a fill from a read made in an earlier scope proves nothing."""
    h = H()
    first = h.agent("filler", (0, 5))
    h.read("filler", F, ROW_680, (1, 2), scope=first, store="postgresql")
    h.write("scorer", F, ROW_750, (6, 7), store="postgresql")
    second = h.agent("filler", (8, 20))
    h.write("filler", F, CACHED_680, (9, 10), tier="cache", scope=second, store="redis")
    h.read("risk", F, CACHED_680, (30, 31), tier="cache", store="redis")
    assert detect_stale_reads(h.history()) == []


def test_a_recorded_copy_of_wins_and_an_empty_one_is_an_original() -> None:
    h = H()
    h.write("scorer", F, ROW_680, (1, 2), store="postgresql")
    h.write("scorer", F, ROW_750, (3, 4), store="postgresql")
    # Recorded on the span (another process made the fill): a copy of the old row.
    h.write("filler", F, CACHED_680, (5, 6), tier="cache", store="redis", copy_of=ROW_680)
    hit = h.read("risk", F, CACHED_680, (10, 11), tier="cache", store="redis")
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.span_id == hit
    h2 = H()
    h2.write("scorer", F, ROW_750, (3, 4), store="postgresql")
    h2.read("filler", F, ROW_750, (4, 5), store="postgresql")
    h2.write("filler", F, CACHED_680, (5, 6), tier="cache", store="redis", copy_of="")
    h2.read("risk", F, CACHED_680, (10, 11), tier="cache", store="redis")
    assert detect_stale_reads(h2.history()) == []  # an original cache write places nothing


def test_repeated_values_pin_a_read_only_to_what_every_producer_allows() -> None:
    """A B A: a later read of A may have seen the second A: fresh. Two reads of A, one
    before and one after B, are not the same version: no lost update between them."""
    h = H()
    h.write("w", F, "h:aa", (1, 2))
    first = h.read("x", F, "h:aa", (3, 4))
    h.write("w", F, "h:bb", (5, 6))
    h.write("w", F, "h:aa", (7, 8))
    second = h.read("y", F, "h:aa", (9, 10))
    history = h.history()
    assert detect_stale_reads(history) == []
    one = pinned(
        candidates(
            history,
            Read(F, history.observations[first].reads[0].version, history.observations[first]),
        )
    )
    assert one is not None and not isinstance(one, str)
    two = candidates(
        history,
        Read(F, history.observations[second].reads[0].version, history.observations[second]),
    )
    assert two is not None and len(two) == 2  # either A: not pinned
    h.write("x", F, "h:c1", (11, 12))
    h.write("y", F, "h:c2", (13, 14))
    assert detect_lost_updates(h.history()) == []


def test_two_reads_pinned_to_one_write_then_two_writes_is_a_lost_update() -> None:
    h = H()
    h.write("w", F, "h:aa", (1, 2))
    h.read("x", F, "h:aa", (3, 4))
    h.read("y", F, "h:aa", (3, 5))
    h.write("x", F, "h:c1", (6, 7))
    second = h.write("y", F, "h:c2", (8, 9))
    [anomaly] = detect_lost_updates(h.history())
    assert (anomaly.kind, anomaly.span_id) == (LOST, second)


def test_initial_state_holds_within_its_representation_only() -> None:
    h = H()
    h.read("x", F, "h:00", (0, 1), store="redis")  # before any write: the initial state
    h.read("y", F, "h:00", (0, 1), store="redis")
    h.write("x", F, "h:c1", (2, 3), store="redis")
    h.write("y", F, "h:c2", (4, 5), store="redis")
    stale = h.read("z", F, "h:00", (10, 11), store="redis")
    found = _kinds(h)
    assert (STALE, stale) in found and sum(k == LOST for k, _ in found) == 1
    history = h.history()
    obs = history.observations[stale]
    assert candidates(history, Read(F, obs.reads[0].version, obs)) == (INITIAL,)
    # The same digest text from the cache: another representation, no initial state there.
    h.read("z", F, "h:00", (12, 13), store="redis", tier="cache")
    assert len([a for a in detect_stale_reads(h.history()) if a.kind == STALE]) == 1


def test_divergent_view_needs_the_order_proven() -> None:
    """Two agents overlap and act on different digests; the trace does not say which write
    came last (they overlap): no finding, where end times used to pick one."""
    h = H()
    a = h.agent("a", (0, 50))
    b = h.agent("b", (0, 50))
    h.write("w1", F, "h:01", (1, 10))
    h.write("w2", F, "h:02", (2, 11))  # concurrent with the first: order unknown
    h.read("a", F, "h:01", (20, 21), scope=a)
    h.read("b", F, "h:02", (22, 23), scope=b)
    h.decision("a", a, (30, 31))
    h.decision("b", b, (32, 33))
    assert detect_divergent_views(h.history()) == []
    h2 = H()
    a = h2.agent("a", (0, 50))
    b = h2.agent("b", (0, 50))
    h2.write("w1", F, "h:01", (1, 2))
    h2.write("w2", F, "h:02", (3, 4))  # after the first: proven newer
    older = h2.read("a", F, "h:01", (2, 3), scope=a)
    h2.read("b", F, "h:02", (22, 23), scope=b)
    h2.decision("a", a, (30, 31))
    h2.decision("b", b, (32, 33))
    [anomaly] = detect_divergent_views(h2.history())
    assert (anomaly.kind, anomaly.span_id) == (DIVERGENT, older)


def test_atomic_compare_and_set_reads_are_no_views() -> None:
    h = H()
    a = h.agent("a", (0, 50))
    b = h.agent("b", (0, 50))
    h.write("w", F, "h:01", (1, 2))
    h.read_write("a", F, "h:01", "h:02", (3, 4), scope=a)
    h.read_write("b", F, "h:02", "h:03", (5, 6), scope=b)
    assert detect_all(h.history()) == []


def test_the_model_a_span_names_is_the_one_its_read_is_judged_under() -> None:
    h = H()
    h.write("w", F, "n:2", (1, 2))
    h.read("r", F, "n:1", (10, 11), consistency="eventual")
    assert detect_stale_reads(h.history()) == []
    h.read("r", F, "n:1", (12, 13), consistency="bounded:5")
    h.read("r", F, "n:1", (14, 15), consistency="bounded:60000")
    h.read("r", F, "n:1", (16, 17), consistency="not-a-model")  # the configuration's
    assert [a.observed_version for a in detect_stale_reads(h.history())] == ["n:1", "n:1"]


def test_a_digest_copy_of_a_versioned_row_is_judged_by_the_rows_version() -> None:
    """A rule maps a cache key and a row with a version column; the cached text carries no
    version (a digest): the fill copies `n:1`, so the later hit is a read of `n:1`."""
    h = H()
    risk = h.agent("risk", (0, 100))
    h.read("risk", F, "n:1", (1, 2), scope=risk, store="postgresql")
    h.write("risk", F, "h:c680", (3, 4), tier="cache", scope=risk, store="redis")
    h.write("scorer", F, "n:2", (10, 11), store="postgresql")
    hit = h.read("risk", F, "h:c680", (20, 21), tier="cache", scope=risk, store="redis")
    [anomaly] = detect_stale_reads(h.history())
    assert (anomaly.span_id, anomaly.observed_version, anomaly.expected_version) == (
        hit,
        "h:c680",
        "n:2",
    )
    h.write("scorer", F, "none", (12, 13), tier="cache", store="redis")  # invalidated ...
    h.read("risk", F, "n:2", (14, 15), scope=risk, store="postgresql")  # ... and refilled
    h.write("risk", F, "h:c750", (16, 17), tier="cache", scope=risk, store="redis")
    h.read("risk", F, "h:c750", (22, 23), tier="cache", scope=risk, store="redis")
    assert [a.span_id for a in detect_stale_reads(h.history())] == [hit]
