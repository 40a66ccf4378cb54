"""The four detectors of SPEC §5 on hand-written histories (no SDK, no client, no database).

Jepsen Elle style: small histories, the anomaly named precisely, assertions on its evidence;
and for each anomaly the correct twin of the workflow, which must produce nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otel_agent_state import adapter
from otel_agent_state import attributes as A
from otel_agent_state.core.config import Consistency, parse_consistency
from otel_agent_state.core.detectors import (
    detect_all,
    detect_divergent_views,
    detect_lost_updates,
    detect_orphaned_mutations,
    detect_stale_reads,
)
from otel_agent_state.core.history import History
from otel_agent_state.core.model import Anomaly, Observation

from .histories import DIVERGENT, ERROR, LOST, ORPHAN, STALE, TRACE, WARNING, H

MODELS = ("linearizable", "session", "bounded:1", "eventual")


def model(text: str) -> Callable[[str], Consistency]:
    consistency = parse_consistency(text)
    return lambda _fact: consistency


def shape(a: Anomaly) -> tuple[object, ...]:
    """Everything a finding asserts, in one comparable tuple."""
    return (
        a.kind,
        a.span_id,
        a.fact,
        a.observed_version,
        a.expected_version,
        a.agents,
        a.evidence_span_ids,
        a.severity,
        a.lag_ms,
    )


# ================================================================ stale reads


def _cache_story(read_version: str, read_at: tuple[int, int], tier: str = "cache") -> H:
    """The seed: the scorer commits n:2 at 12 ms; risk later reads the fact from a cache."""
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    h.write("credit-scorer", "score/42", "n:2", (10, 12), scope=scorer, store="postgresql")
    risk = h.agent("risk", (30, 60))
    h.read("risk", "score/42", read_version, read_at, tier=tier, scope=risk, store="redis")
    return h


def test_linearizable_stale_cache_read() -> None:
    h = _cache_story("n:1", (40, 41))
    write, read = (o.span_id for o in h.observations)
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (
        STALE,
        read,
        "score/42",
        "n:1",
        "n:2",
        ("risk", "credit-scorer"),
        (write,),
        WARNING,  # nothing depended on it yet: the ledger raises it once the agent acts
        28.0,  # the read started at 40 ms, the write committed at 12 ms
    )
    assert (anomaly.trace_id, anomaly.store, anomaly.agent_scope) == (
        TRACE,
        "redis",
        h.scopes[1].span_id,
    )
    assert anomaly.summary == (
        "risk read score/42 at n:1 from the cache (redis), but credit-scorer had committed "
        "n:2 28 ms before the read (linearizable)"
    )


@pytest.mark.parametrize(
    ("version", "read_at", "why"),
    [
        ("n:2", (40, 41), "the latest version"),
        ("n:3", (40, 41), "newer than any committed write (a concurrent one)"),
        ("none", (40, 41), "a cache miss sends the agent to the primary"),
        ("n:1", (11, 14), "the read started before the write committed"),
        ("n:1", (12, 14), "the read started the instant the write committed"),
        ("n:1", (5, 9), "the read ended before the write"),
    ],
)
def test_linearizable_correct_reads(version: str, read_at: tuple[int, int], why: str) -> None:
    assert detect_stale_reads(_cache_story(version, read_at).history()) == [], why


def test_cache_miss_is_never_stale_under_any_model() -> None:
    for text in MODELS:
        h = _cache_story("none", (40, 41))
        h.read("risk", "score/42", "n:2", (2, 3), scope=h.scopes[1].span_id)  # saw n:2 before
        assert detect_stale_reads(h.history(), model(text)) == [], text


def test_the_expected_version_is_the_latest_and_lag_counts_from_the_first_missed() -> None:
    h = H()
    h.write("w", "f", "n:2", (10, 12))
    newest = h.write("w", "f", "n:3", (20, 22))
    read = h.read("r", "f", "n:1", (30, 31), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (STALE, read, "f", "n:1", "n:3", ("r", "w"), (newest,), WARNING, 18.0)


def test_reading_the_middle_version_lags_from_the_newest() -> None:
    h = H()
    h.write("w", "f", "n:2", (10, 12))
    newest = h.write("w", "f", "n:3", (20, 22))
    read = h.read("r", "f", "n:2", (30, 31), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (STALE, read, "f", "n:2", "n:3", ("r", "w"), (newest,), WARNING, 8.0)


def test_own_stale_read_names_the_agent_once() -> None:
    h = H()
    write = h.write("me", "f", "n:2", (1, 2))
    read = h.read("me", "f", "n:1", (5, 6), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (STALE, read, "f", "n:1", "n:2", ("me",), (write,), WARNING, 3.0)


def test_stale_read_inside_a_decision_or_a_read_modify_write_is_an_error() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2))
    in_decision = h.read("r", "f", "n:1", (5, 6), decision="00000000000000dd")
    rmw = h.read_write("r", "f", "n:1", "n:9", (7, 8))
    found = {a.span_id: a.severity for a in detect_stale_reads(h.history())}
    assert found == {in_decision: ERROR, rmw: ERROR}


def test_replica_missing_an_insert_is_stale() -> None:
    h = _cache_story("none", (40, 41), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert (anomaly.observed_version, anomaly.expected_version, anomaly.lag_ms) == (
        "none",
        "n:2",
        28.0,
    )


def test_replica_still_showing_a_deleted_fact_is_stale() -> None:
    h = H()
    h.write("a", "doc", "n:1", (1, 2))
    delete = h.write("a", "doc", "none", (3, 4))
    read = h.read("b", "doc", "n:1", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (
        STALE,
        read,
        "doc",
        "n:1",
        "none",
        ("b", "a"),
        (delete,),
        WARNING,
        6.0,
    )
    h.read("b", "doc", "none", (12, 13), tier="replica")  # caught up: the deletion
    assert [a.span_id for a in detect_stale_reads(h.history())] == [read]


# ---------------------------------------------------------------- transactions


def test_transactional_write_counts_only_after_its_commit() -> None:
    h = H()
    write = h.write("w", "f", "n:2", (1, 2), txn="t1")
    before = h.read("r", "f", "n:1", (5, 6))  # the transaction is still open: correct
    commit = h.commit("t1", 8)
    after = h.read("r", "f", "n:1", (10, 11))
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.span_id == after != before
    assert shape(anomaly) == (
        STALE,
        after,
        "f",
        "n:1",
        "n:2",
        ("r", "w"),
        (write, commit),  # the write and the COMMIT that published it
        WARNING,
        2.0,  # from the commit at 8 ms, not the write at 2 ms
    )


def test_open_rolled_back_and_failed_writes_never_count() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2), txn="rolled")
    h.rollback("rolled", 3)
    h.write("w", "f", "n:3", (4, 5), failed=True)
    h.write("w", "f", "n:4", (6, 7), txn="open")  # never ended
    h.read("r", "f", "n:1", (10, 11))
    for text in MODELS:
        assert detect_stale_reads(h.history(), model(text)) == [], text


# ---------------------------------------------------------------- digests


def test_digest_read_of_a_concurrent_write_is_not_stale() -> None:
    h = H()
    h.write("a", "f", "h:aa", (1, 2))
    h.write("b", "f", "h:bb", (5, 20))  # committed after both reads started
    h.read("r", "f", "h:bb", (10, 11))  # saw it before its commit ended: fine
    h.read("r", "f", "h:aa", (12, 13))  # the latest committed before it started
    assert detect_stale_reads(h.history()) == []


def test_digest_read_of_a_superseded_or_initial_state_is_stale() -> None:
    h = H()
    h.write("a", "f", "h:aa", (1, 2))
    newest = h.write("b", "f", "h:bb", (3, 4))
    superseded = h.read("r", "f", "h:aa", (10, 11))
    h.read("r", "f", "h:0c", (12, 13))  # never written, never seen before a write: unplaced
    assert [shape(a) for a in detect_stale_reads(h.history())] == [
        (STALE, superseded, "f", "h:aa", "h:bb", ("r", "b"), (newest,), WARNING, 6.0),
    ]
    # Seen before any write of this representation: the initial state (Elle), then stale.
    h.read("r", "f", "h:0c", (0, 1))
    initial = h.observations[-2].span_id
    assert [shape(a)[:5] for a in detect_stale_reads(h.history())] == [
        (STALE, superseded, "f", "h:aa", "h:bb"),
        (STALE, initial, "f", "h:0c", "h:bb"),
    ]


def test_digest_a_b_a_reading_the_restored_state_is_fresh() -> None:
    h = H()
    h.write("w", "f", "h:aa", (1, 2))
    h.write("w", "f", "h:bb", (3, 4))
    h.write("w", "f", "h:aa", (5, 6))
    h.read("r", "f", "h:aa", (10, 11))
    assert detect_stale_reads(h.history()) == []
    stale = h.read("r", "f", "h:bb", (12, 13))
    [anomaly] = detect_stale_reads(h.history())
    assert (anomaly.span_id, anomaly.expected_version, anomaly.lag_ms) == (stale, "h:aa", 6.0)


def test_one_instant_spelled_differently_is_not_stale() -> None:
    h = H()
    h.write("w", "f", "t:2026-11-26T10:00:00Z", (1, 2))
    h.read("r", "f", "t:2026-11-26T11:00:00+01:00", (5, 6), tier="cache")
    h.read("r", "f", "t:1795687200000000000", (7, 8), tier="cache")
    assert detect_stale_reads(h.history()) == []
    older = h.read("r", "f", "t:2026-11-26T09:59:59Z", (9, 10), tier="cache")
    assert [a.span_id for a in detect_stale_reads(h.history())] == [older]


# ---------------------------------------------------------------- other models


def test_bounded_staleness_counts_only_writes_older_than_the_bound() -> None:
    h = _cache_story("n:1", (40, 41), tier="replica")  # committed 28 ms before the read
    write, read = (o.span_id for o in h.observations)
    for fresh_enough in ("bounded:50", "bounded:29", "bounded:28"):
        assert detect_stale_reads(h.history(), model(fresh_enough)) == [], fresh_enough
    [anomaly] = detect_stale_reads(h.history(), model("bounded:27"))
    assert shape(anomaly) == (
        STALE,
        read,
        "score/42",
        "n:1",
        "n:2",
        ("risk", "credit-scorer"),
        (write,),
        WARNING,
        28.0,
    )
    assert anomaly.summary.endswith("(bounded:27)")
    assert len(detect_stale_reads(h.history(), model("bounded:0"))) == 1


def test_eventual_never_reports_stale_reads() -> None:
    h = _cache_story("n:1", (40, 41))
    h.read("credit-scorer", "score/42", "n:1", (15, 16), scope=h.scopes[0].span_id)
    assert len(detect_stale_reads(h.history())) == 2
    assert detect_stale_reads(h.history(), model("eventual")) == []


def test_session_read_your_writes() -> None:
    h = H()
    write = h.write("me", "f", "n:5", (1, 2))
    read = h.read("me", "f", "n:4", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert shape(anomaly) == (STALE, read, "f", "n:4", "n:5", ("me",), (write,), WARNING, 8.0)
    assert "read-your-writes" in anomaly.summary


def test_session_own_write_that_ended_as_the_read_started_binds_it() -> None:
    h = H()
    write = h.write("me", "f", "n:5", (1, 10))
    read = h.read("me", "f", "n:4", (10, 11), tier="replica")  # next step of the same agent
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert shape(anomaly) == (STALE, read, "f", "n:4", "n:5", ("me",), (write,), WARNING, 0.0)


def test_session_monotonic_reads() -> None:
    h = H()
    first = h.read("me", "f", "n:5", (1, 2))
    later = h.read("me", "f", "n:4", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert shape(anomaly) == (STALE, later, "f", "n:4", "n:5", ("me",), (first,), WARNING, 8.0)


def test_session_monotonic_reads_of_digests_follow_the_write_order() -> None:
    h = H()
    h.write("w", "f", "h:aa", (1, 2))
    h.write("w", "f", "h:bb", (3, 4))
    first = h.read("me", "f", "h:bb", (5, 6))
    later = h.read("me", "f", "h:aa", (7, 8))
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert shape(anomaly) == (STALE, later, "f", "h:aa", "h:bb", ("me",), (first,), WARNING, 1.0)
    # A replica's digest is another representation: it proves nothing about the primary's.
    h2 = H()
    h2.write("w", "f", "h:aa", (1, 2))
    h2.write("w", "f", "h:bb", (3, 4))
    h2.read("me", "f", "h:bb", (5, 6))
    h2.read("me", "f", "h:aa", (7, 8), tier="replica")
    assert detect_stale_reads(h2.history(), model("session")) == []


def test_session_another_agents_newer_write_does_not_make_a_read_stale() -> None:
    h = _cache_story("n:1", (40, 41), tier="replica")
    assert detect_stale_reads(h.history(), model("session")) == []
    assert len(detect_stale_reads(h.history(), model("linearizable"))) == 1


def test_session_reads_that_only_go_forward_are_fine() -> None:
    h = H()
    h.write("me", "f", "n:5", (1, 2))
    h.read("me", "f", "n:5", (3, 4))
    h.read("me", "f", "n:6", (5, 6))
    h.read("me", "f", "none", (7, 8), tier="cache")  # a miss bounds nothing ...
    h.read("me", "f", "n:6", (9, 10))  # ... and is no bound for what follows
    assert detect_stale_reads(h.history(), model("session")) == []


@pytest.mark.parametrize("how", ["failed", "rolled back", "open", "commits after the read"])
def test_session_own_write_bounds_reads_only_once_committed(how: str) -> None:
    h = H()
    if how == "failed":
        h.write("me", "f", "n:5", (1, 2), failed=True)
    elif how == "rolled back":
        h.write("me", "f", "n:5", (1, 2), txn="t")
        h.rollback("t", 3)
    elif how == "open":
        h.write("me", "f", "n:5", (1, 2), txn="t")
    else:
        h.write("me", "f", "n:5", (1, 2), txn="t")
        h.commit("t", 20)
    h.read("me", "f", "n:4", (10, 11))  # another connection: the write is not visible yet
    assert detect_stale_reads(h.history(), model("session")) == []


def test_session_own_transactional_write_bounds_reads_after_its_commit() -> None:
    h = H()
    write = h.write("me", "f", "n:5", (1, 2), txn="t")
    h.commit("t", 3)
    read = h.read("me", "f", "n:4", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert shape(anomaly) == (STALE, read, "f", "n:4", "n:5", ("me",), (write,), WARNING, 8.0)


# ---------------------------------------------------------------- clock skew


def test_clock_skew_tolerance_applies_across_processes_only() -> None:
    h = H()
    write = h.write("w", "f", "n:2", (10, 12), process="scorer-host")
    read = h.read("r", "f", "n:1", (15, 16), process="risk-host")  # 3 ms after, by its clock
    [anomaly] = detect_stale_reads(h.history())
    assert shape(anomaly) == (STALE, read, "f", "n:1", "n:2", ("r", "w"), (write,), WARNING, 3.0)
    assert len(detect_stale_reads(h.history(), clock_skew_ms=2)) == 1  # 3 ms > 2 ms skew
    assert detect_stale_reads(h.history(), clock_skew_ms=3) == []  # within the skew
    assert detect_stale_reads(h.history(), clock_skew_ms=5) == []

    same = H()
    same.write("w", "f", "n:2", (10, 12))
    same.read("r", "f", "n:1", (15, 16))  # one process, one clock: no tolerance
    assert len(detect_stale_reads(same.history(), clock_skew_ms=5)) == 1


def test_clock_skew_applies_per_write() -> None:
    h = H()
    local = h.write("w", "f", "n:2", (1, 2), process="p1")
    h.write("x", "f", "n:3", (10, 12), process="p2")  # too close to judge across processes
    read = h.read("r", "f", "n:1", (15, 16), process="p1")
    [anomaly] = detect_stale_reads(h.history(), clock_skew_ms=5)
    assert shape(anomaly) == (STALE, read, "f", "n:1", "n:2", ("r", "w"), (local,), WARNING, 13.0)


# ================================================================ divergent views


def _pair(v_a: str, v_b: str, b_span: tuple[int, int] = (5, 50), writer: str = "scorer") -> H:
    """limit and fraud work at the same time, read score/42 and each decide."""
    h = H()
    h.write(writer, "score/42", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", b_span)
    h.read("limit", "score/42", v_a, (10, 11), tier="replica", scope=a)
    h.read("fraud", "score/42", v_b, (b_span[0] + 7, b_span[0] + 8), scope=b)
    h.decision("limit", a, (20, 21))
    h.decision("fraud", b, (b_span[0] + 10, b_span[0] + 11))
    return h


def test_divergent_view() -> None:
    h = _pair("n:1", "n:2")
    _, older, newer = (o.span_id for o in h.observations)
    [anomaly] = detect_divergent_views(h.history())
    assert shape(anomaly) == (
        DIVERGENT,
        older,  # the offending observation: the read of the older version
        "score/42",
        "n:1",
        "n:2",
        ("limit", "fraud"),
        (newer,),  # the other agent's read
        ERROR,
        None,
    )
    assert anomaly.agent_scope == h.scopes[0].span_id
    assert anomaly.summary == (
        "limit acted on score/42 at n:1 while fraud, working at the same time, acted on n:2"
    )


def test_divergent_view_when_the_acts_are_writes() -> None:
    h = H()
    h.write("scorer", "score/42", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    older = h.read("limit", "score/42", "n:1", (10, 11), tier="replica", scope=a)
    newer = h.read("fraud", "score/42", "n:2", (12, 13), scope=b)
    h.write("limit", "limit/42", "n:1", (20, 21), scope=a)
    h.write("fraud", "flag/42", "n:1", (22, 23), scope=b)
    [anomaly] = detect_divergent_views(h.history())
    assert shape(anomaly) == (
        DIVERGENT,
        older,
        "score/42",
        "n:1",
        "n:2",
        ("limit", "fraud"),
        (newer,),
        ERROR,
        None,
    )


def test_divergent_view_orders_versions_not_reads() -> None:
    h = _pair("n:2", "n:1")  # the later read got the older version
    _, newer, older = (o.span_id for o in h.observations)
    [anomaly] = detect_divergent_views(h.history())
    assert (anomaly.span_id, anomaly.evidence_span_ids, anomaly.agents) == (
        older,
        (newer,),
        ("fraud", "limit"),
    )
    assert (anomaly.observed_version, anomaly.expected_version) == ("n:1", "n:2")


def test_same_version_is_not_divergent() -> None:
    assert detect_divergent_views(_pair("n:2", "n:2").history()) == []


def test_same_instant_spelled_differently_is_not_divergent() -> None:
    h = _pair("t:2026-11-26T10:00:00Z", "t:2026-11-26T11:00:00+01:00")
    assert detect_divergent_views(h.history()) == []


def test_agents_that_did_not_overlap_are_not_divergent() -> None:
    assert detect_divergent_views(_pair("n:1", "n:2", b_span=(40, 60)).history()) == []
    assert len(detect_divergent_views(_pair("n:1", "n:2", b_span=(39, 60)).history())) == 1


def test_agent_that_never_acted_is_not_divergent() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    h.read("limit", "f", "n:1", (10, 11), scope=a)
    h.read("fraud", "f", "n:2", (12, 13), scope=b)
    h.decision("fraud", b, (20, 21))
    h.write("limit", "f", "n:3", (30, 31), scope=a, failed=True)  # a failed write is no act
    assert detect_divergent_views(h.history()) == []


def test_read_after_the_last_act_is_not_what_the_agent_acted_on() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    h.read("limit", "f", "n:2", (6, 7), scope=a)
    h.decision("limit", a, (8, 9))
    h.read("limit", "f", "n:1", (10, 11), tier="replica", scope=a)  # nothing acted on it
    h.read("fraud", "f", "n:2", (12, 13), scope=b)
    h.decision("fraud", b, (20, 21))
    assert detect_divergent_views(h.history()) == []


def test_read_modify_write_chain_of_two_agents_is_not_divergent() -> None:
    h = H()
    a = h.agent("first", (0, 40))
    b = h.agent("second", (5, 50))
    h.read("first", "f", "n:1", (1, 2), scope=a)
    h.write("first", "f", "n:2", (3, 4), scope=a)  # first wrote the newer version itself
    h.read("second", "f", "n:2", (10, 11), scope=b)
    h.write("second", "f", "n:3", (12, 13), scope=b)
    assert detect_divergent_views(h.history()) == []


def test_cache_miss_is_not_a_view() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    h.read("limit", "f", "n:2", (10, 11), scope=a)
    h.read("fraud", "f", "none", (12, 13), tier="cache", scope=b)
    h.decision("limit", a, (20, 21))
    h.decision("fraud", b, (22, 23))
    assert detect_divergent_views(h.history()) == []
    h.read("fraud", "f", "none", (14, 15), tier="replica", scope=b)  # absent: a real view
    [anomaly] = detect_divergent_views(h.history())
    assert (anomaly.observed_version, anomaly.expected_version) == ("none", "n:2")


def test_one_agent_twice_is_not_divergent_with_itself() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a1 = h.agent("risk", (3, 40))
    a2 = h.agent("risk", (5, 50))
    h.read("risk", "f", "n:1", (10, 11), scope=a1)
    h.read("risk", "f", "n:2", (12, 13), scope=a2)
    h.decision("risk", a1, (20, 21))
    h.decision("risk", a2, (22, 23))
    assert detect_divergent_views(h.history()) == []


# ================================================================ lost updates


def test_lost_update() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    ra = h.read("alice", "balance", "n:1", (1, 2), scope=a)
    rb = h.read("bob", "balance", "n:1", (3, 4), scope=b)
    wa = h.write("alice", "balance", "n:2", (5, 6), scope=a)
    wb = h.write("bob", "balance", "n:3", (7, 8), scope=b)
    h.read("bob", "balance", "n:3", (9, 10), scope=b)  # after the write: not its basis
    [anomaly] = detect_lost_updates(h.history())
    assert shape(anomaly) == (
        LOST,
        wb,  # the overwriting write
        "balance",
        "n:1",  # the version bob based his write on
        "n:2",  # the update he overwrote
        ("alice", "bob"),
        (wa, ra, rb),
        ERROR,
        None,
    )
    assert anomaly.agent_scope == b
    assert anomaly.summary == (
        "bob wrote balance based on n:1, overwriting n:2 that alice had written from the "
        "same n:1: that update is lost"
    )


def test_lost_update_with_transactions_counts_at_commit() -> None:
    h = H()
    ra = h.read("alice", "x", "h:aa", (1, 2))
    rb = h.read("bob", "x", "h:aa", (3, 4))
    wb = h.write("bob", "x", "h:cc", (5, 6), txn="tb")  # bob wrote first ...
    wa = h.write("alice", "x", "h:bb", (7, 8))
    h.commit("tb", 20)  # ... but committed last: alice's update is the lost one
    [anomaly] = detect_lost_updates(h.history())
    assert shape(anomaly) == (
        LOST,
        wb,
        "x",
        "h:aa",
        "h:bb",
        ("alice", "bob"),
        (wa, ra, rb),
        ERROR,
        None,
    )


def test_sequential_read_after_write_is_not_a_lost_update() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    h.read("alice", "balance", "n:1", (1, 2), scope=a)
    h.write("alice", "balance", "n:2", (5, 6), scope=a)
    h.read("bob", "balance", "n:1", (3, 4), scope=b)  # an old read, superseded ...
    h.read("bob", "balance", "n:2", (7, 8), scope=b)  # ... by the one the write is based on
    h.write("bob", "balance", "n:3", (9, 10), scope=b)
    assert detect_lost_updates(h.history()) == []


def test_atomic_increments_are_not_lost_updates() -> None:
    h = H()
    h.read("alice", "counter", "n:1", (1, 2))
    h.read("bob", "counter", "n:1", (3, 4))
    h.read_write("alice", "counter", "n:1", "n:2", (5, 6))  # INCR: based on what it read
    h.read_write("bob", "counter", "n:2", "n:3", (7, 8))
    assert detect_lost_updates(h.history()) == []


def test_atomic_writes_based_on_one_version_are_a_lost_update() -> None:
    h = H()
    ra = h.read_write("alice", "counter", "n:1", "n:2", (1, 2))
    rb = h.read_write("bob", "counter", "n:1", "n:2", (3, 4))  # a replica's compare-and-set
    [anomaly] = detect_lost_updates(h.history())
    assert shape(anomaly) == (
        LOST,
        rb,
        "counter",
        "n:1",
        "n:2",
        ("alice", "bob"),
        (ra, ra, rb),
        ERROR,
        None,
    )


def test_one_agents_successive_writes_are_not_a_lost_update() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    h.read("alice", "x", "n:1", (1, 2), scope=a)
    h.write("alice", "x", "n:2", (3, 4), scope=a)
    h.write("alice", "x", "n:3", (5, 6), scope=a)  # its own process order: nothing lost
    h.read("bob", "x", "n:3", (7, 8))
    assert detect_lost_updates(h.history()) == []


def test_rolled_back_second_write_is_not_a_lost_update() -> None:
    h = H()
    h.read("alice", "x", "n:1", (1, 2))
    h.read("bob", "x", "n:1", (3, 4))
    h.write("alice", "x", "n:2", (5, 6))
    h.write("bob", "x", "n:3", (7, 8), txn="t")
    h.rollback("t", 9)
    assert detect_lost_updates(h.history()) == []


def test_blind_write_and_no_op_write_are_not_lost_updates() -> None:
    blind = H()
    blind.read("alice", "x", "n:1", (1, 2))
    blind.write("alice", "x", "n:2", (5, 6))
    blind.write("bob", "x", "n:3", (7, 8))  # bob never read x: nothing to base it on
    assert detect_lost_updates(blind.history()) == []

    noop = H()
    noop.read("alice", "x", "n:1", (1, 2))
    noop.read("bob", "x", "n:1", (3, 4))
    noop.write("alice", "x", "n:1", (5, 6))  # wrote back what it read: nothing to lose
    noop.write("bob", "x", "n:2", (7, 8))
    assert detect_lost_updates(noop.history()) == []


def _merges(alice: tuple[str, ...] | None, bob: tuple[str, ...] | None) -> tuple[H, str, str]:
    """Alice and Bob read prefs/7 at h:aa; then each writes it (`fields`: a merge write of
    those fields, kept apart from the rest by the server; None: a whole-value write)."""
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    h.read("alice", "prefs/7", "h:aa", (1, 2), scope=a)
    h.read("bob", "prefs/7", "h:aa", (3, 4), scope=b)
    wa = h.write("alice", "prefs/7", "h:bb", (5, 6), scope=a, fields=alice)
    wb = h.write("bob", "prefs/7", "h:cc", (7, 8), scope=b, fields=bob)
    return h, wa, wb


def test_merges_of_different_fields_lose_nothing() -> None:
    h, _, _ = _merges(("tone",), ("language",))  # HSET prefs:7 tone / HSET prefs:7 language
    assert detect_lost_updates(h.history()) == []
    assert detect_all(h.history()) == []


@pytest.mark.parametrize(
    ("alice", "bob"),
    [
        (("tone",), ("tone",)),  # both set the same field: bob's overwrote alice's
        (("tone", "theme"), ("language", "tone")),  # one common field is enough
        (None, ("language",)),  # a whole-value write's fields are unknown: may meet
        (("tone",), None),  # a whole-value write replaces alice's field too
    ],
)
def test_merges_whose_fields_meet_lose_an_update(
    alice: tuple[str, ...] | None, bob: tuple[str, ...] | None
) -> None:
    h, wa, wb = _merges(alice, bob)
    [anomaly] = detect_lost_updates(h.history())
    assert (anomaly.kind, anomaly.span_id, anomaly.expected_version) == (LOST, wb, "h:bb")
    assert anomaly.evidence_span_ids[0] == wa


def test_merge_based_on_a_different_version_is_no_lost_update() -> None:
    h = H()
    h.read("alice", "prefs/7", "h:aa", (1, 2))
    h.write("alice", "prefs/7", "h:bb", (3, 4), fields=("tone",))
    h.read("bob", "prefs/7", "h:bb", (5, 6))  # bob saw alice's tone
    h.write("bob", "prefs/7", "h:cc", (7, 8), fields=("tone",))
    assert detect_lost_updates(h.history()) == []


def test_three_merges_only_the_pair_that_shares_a_field_is_reported() -> None:
    h = H()
    for name, at in (("alice", 1), ("bob", 3), ("carol", 5)):
        h.read(name, "prefs/7", "h:aa", (at, at + 1))
    h.write("alice", "prefs/7", "h:bb", (10, 11), fields=("tone",))
    h.write("bob", "prefs/7", "h:cc", (12, 13), fields=("language",))
    carol = h.write("carol", "prefs/7", "h:dd", (14, 15), fields=("tone", "theme"))
    [anomaly] = detect_lost_updates(h.history())
    assert (anomaly.span_id, anomaly.agents, anomaly.expected_version) == (
        carol,
        ("alice", "carol"),
        "h:bb",
    )


# ================================================================ orphaned mutations


def test_autocommit_writes_in_a_failed_agent_are_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    write = h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert shape(anomaly) == (
        ORPHAN,
        write,
        "account/A",
        "n:2",  # the state it left
        "n:1",  # the state before it
        ("payments",),
        (pay, write),
        ERROR,
        None,
    )
    assert anomaly.agent_scope == pay
    assert anomaly.summary == (
        "agent payments (autocommit writes, no transaction) failed after committing "
        "account/A=n:2; nothing restored the earlier state"
    )


def test_failed_explicit_mutation_after_committing_is_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))  # the agent itself carried on fine
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    h.read("payments", "account/B", "n:7", (1, 2), scope=pay)
    m = h.mutation("payments", pay, (3, 20), failed=True, name="transfer")
    debit = h.write("payments", "account/A", "n:2", (4, 5), scope=pay, mutation=m, txn="t1")
    h.commit("t1", 6)  # the debit committed; the credit never happened
    [anomaly] = detect_orphaned_mutations(h.history())
    assert shape(anomaly) == (
        ORPHAN,
        debit,
        "account/A",
        "n:2",
        "n:1",
        ("payments",),
        (m, debit),
        ERROR,
        None,
    )
    assert anomaly.agent_scope == pay
    assert anomaly.summary == (
        "mutation 'transfer' of payments failed after committing account/A=n:2; "
        "nothing restored the earlier state"
    )


def test_applied_writes_of_a_failed_pipeline_are_orphaned() -> None:
    """A non-transactional pipeline: its SET ran, a later command failed and redis-py raised.
    The span failed but says the store applied the SET (explicit committed=true)."""
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "wallet/A", "h:aa", (1, 2), scope=pay)
    pipe = h.write("payments", "wallet/A", "h:bb", (3, 4), scope=pay, failed=True, applied=True)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert shape(anomaly) == (
        ORPHAN,
        pipe,
        "wallet/A",
        "h:bb",
        "h:aa",
        ("payments",),
        (pay, pipe),
        ERROR,
        None,
    )
    # ... and it is a committed write for the other detectors too: a later read is stale.
    late = h.read("audit", "wallet/A", "h:aa", (40, 41))
    [stale] = detect_stale_reads(h.history())
    assert (stale.span_id, stale.expected_version) == (late, "h:bb")


def test_a_failed_statement_without_applied_writes_is_no_orphan() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, failed=True)  # UPDATE failed
    h.read("audit", "account/A", "n:1", (40, 41))
    assert detect_all(h.history()) == []


def test_orphan_evidence_lists_every_unrestored_write() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    a = h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    b = h.write("payments", "account/B", "n:5", (5, 6), scope=pay)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert (anomaly.span_id, anomaly.fact, anomaly.evidence_span_ids) == (
        b,
        "account/B",
        (pay, a, b),
    )
    assert anomaly.expected_version == "none"  # the trace never showed account/B before
    assert "account/A=n:2, account/B=n:5" in anomaly.summary


def test_compensating_write_that_restores_the_earlier_version() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))
    h.read("payments", "account/A", "n:1", (0, 1), scope=pay)
    m = h.mutation("payments", pay, (1, 20), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, mutation=m)
    wrong = h.write("payments", "account/A", "n:3", (25, 26), scope=pay)  # not the earlier state
    [anomaly] = detect_orphaned_mutations(h.history())
    assert anomaly.expected_version == "n:1"
    assert wrong not in anomaly.evidence_span_ids
    h.write("payments", "account/A", "n:1", (27, 28), scope=pay)  # restores it
    assert detect_orphaned_mutations(h.history()) == []


def test_compensation_inside_the_failing_scope_restores() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "h:aa", (1, 2), scope=pay)
    h.write("payments", "account/A", "h:bb", (3, 4), scope=pay)
    h.write("payments", "account/A", "h:aa", (5, 6), scope=pay)  # the except: handler undid it
    assert detect_orphaned_mutations(h.history()) == []


def test_a_cache_miss_is_not_the_earlier_state() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "h:aa", (1, 2), scope=pay)
    h.read("payments", "account/A", "none", (2, 3), scope=pay, tier="cache")
    h.write("payments", "account/A", "h:bb", (4, 5), scope=pay)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert anomaly.expected_version == "h:aa"
    h.write("ops", "account/A", "h:aa", (40, 41))  # an operator puts it back
    assert detect_orphaned_mutations(h.history()) == []


def test_unknown_earlier_state_any_later_write_may_have_restored_it() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))
    m = h.mutation("payments", pay, (1, 20), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, mutation=m)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert (anomaly.evidence_span_ids, anomaly.expected_version) == ((m, anomaly.span_id), "none")
    h.write("payments", "account/A", "n:3", (25, 26), scope=pay)
    assert detect_orphaned_mutations(h.history()) == []


def test_rolled_back_transaction_is_not_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    m = h.mutation("payments", pay, (1, 20), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, txn="t", mutation=m)
    h.write("payments", "account/B", "n:2", (5, 6), scope=pay, txn="t", mutation=m)
    h.rollback("t", 7)
    assert detect_orphaned_mutations(h.history()) == []


def test_committed_transaction_in_a_failed_agent_is_complete() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, txn="t")
    h.write("payments", "account/B", "n:2", (5, 6), scope=pay, txn="t")
    h.commit("t", 7)
    assert detect_orphaned_mutations(h.history()) == []


def test_failed_writes_change_nothing() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, failed=True)
    assert detect_orphaned_mutations(h.history()) == []


def test_never_ended_scope_is_abandoned_only_once_the_trace_closed() -> None:
    h = H()
    pay = h.agent("payments", (0, None))
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    write = h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    assert detect_orphaned_mutations(h.history(), closed=False) == []
    [anomaly] = detect_orphaned_mutations(h.history(), closed=True)
    assert shape(anomaly) == (
        ORPHAN,
        write,
        "account/A",
        "n:2",
        "n:1",
        ("payments",),
        (pay, write),
        ERROR,
        None,
    )
    assert "payments (autocommit writes, no transaction) never ended" in anomaly.summary


def test_never_ended_mutation_scope() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))
    m = h.mutation("payments", pay, (1, None))
    write = h.write("payments", "account/A", "n:2", (3, 4), scope=pay, mutation=m)
    assert detect_orphaned_mutations(h.history(), closed=False) == []
    [anomaly] = detect_orphaned_mutations(h.history())
    assert (anomaly.evidence_span_ids, anomaly.agent_scope) == ((m, write), pay)


def test_successful_scopes_are_not_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30))
    m = h.mutation("payments", pay, (1, 10))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    h.write("payments", "account/B", "n:2", (5, 6), scope=pay, mutation=m)
    assert detect_orphaned_mutations(h.history()) == []


# ================================================================ whole workflows


def test_correct_credit_workflow_has_no_finding_under_any_model() -> None:
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    h.read("credit-scorer", "score/42", "n:1", (1, 2), scope=scorer)
    h.write("credit-scorer", "score/42", "n:2", (3, 4), scope=scorer, txn="t")
    h.commit("t", 5)
    h.write("credit-scorer", "score/42", "none", (6, 7), tier="cache", scope=scorer)
    risk = h.agent("risk", (30, 60))
    limit = h.agent("limit", (30, 60))
    h.read("risk", "score/42", "none", (31, 32), tier="cache", scope=risk)
    h.read("risk", "score/42", "n:2", (33, 34), scope=risk)
    h.write("risk", "score/42", "n:2", (35, 36), tier="cache", scope=risk)  # cache fill
    h.read("limit", "score/42", "n:2", (37, 38), tier="cache", scope=limit)
    h.decision("risk", risk, (39, 40))
    h.decision("limit", limit, (41, 42))
    for text in MODELS:
        assert detect_all(h.history(), model(text)) == [], text


def test_seed_scenario_finds_the_stale_read_and_the_divergence() -> None:
    h = _pair("n:1", "n:2")
    found = detect_all(h.history())
    assert sorted((a.kind.value, a.span_id) for a in found) == [
        ("divergent_view", h.observations[1].span_id),
        ("stale_read", h.observations[1].span_id),
    ]
    assert [a.kind for a in detect_all(h.history(), model("eventual"))] == [DIVERGENT]


# ================================================================ span attributes they read


def _observation(attrs: dict[str, object], *, failed: bool = False) -> Observation:
    obs = adapter.observation(
        attrs,
        span_id="1" * 16,
        trace_id=TRACE,
        agent="a",
        start_ns=1,
        end_ns=2,
        failed=failed,
        process="p",
    )
    assert obs is not None
    return obs


def test_write_fields_attribute_round_trip() -> None:
    encoded = [adapter.encode_fields({"tone", "a,b", "50%"}), "", adapter.encode_fields(())]
    assert encoded == ["50%25,a%2Cb,tone", "", ""]
    obs = _observation(
        {
            A.OP: "write",
            A.WRITE_FACTS: ["prefs/7", "prefs/8", "prefs/9"],
            A.WRITE_VERSIONS: ["h:aa", "bad version", "h:cc"],
            A.WRITE_FIELDS: ["tone,lang", "x", ""],
        }
    )
    # The bad version drops its write only; fields stay with their own fact.
    assert [(w.fact, w.fields) for w in obs.writes] == [
        ("prefs/7", frozenset({"tone", "lang"})),
        ("prefs/9", None),
    ]
    # Fields that do not line up with the facts are ignored: whole-value writes.
    misaligned = _observation(
        {A.OP: "write", A.WRITE_FACTS: ["f"], A.WRITE_VERSIONS: ["n:1"], A.WRITE_FIELDS: []}
    )
    assert misaligned.writes[0].fields is None
    assert adapter.encode_fields(["x"] * (adapter.MAX_FIELDS + 1)) == adapter.encode_fields(
        ["a" * (adapter.MAX_FIELDS_CHARS + 1)]
    )


@pytest.mark.parametrize(
    ("committed", "failed", "counts"),
    [
        (None, False, True),  # autocommit: absent means committed
        (None, True, False),  # a failed statement applied nothing
        (True, True, True),  # the store says it applied the writes: they count
        (True, False, True),
    ],
)
def test_explicit_committed_decides_whether_a_failed_span_wrote(
    committed: bool | None, failed: bool, counts: bool
) -> None:
    attrs: dict[str, object] = {A.OP: "write", A.WRITE_FACTS: ["f"], A.WRITE_VERSIONS: ["n:2"]}
    if committed is not None:
        attrs[A.COMMITTED] = committed
    obs = _observation(attrs, failed=failed)
    assert (obs.failed, obs.applied, obs.writes_void) == (failed, committed is True, not counts)
    [write] = History.of([obs]).writes("f")
    assert write.committed is counts
