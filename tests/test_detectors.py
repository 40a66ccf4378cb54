"""The four detectors on hand-written histories (no SDK, no database): for each, the
anomaly with its evidence, and the correct twin that must produce nothing."""

from __future__ import annotations

import pytest

from otel_agent_state.config import Consistency, parse_consistency
from otel_agent_state.detectors import (
    detect_all,
    detect_divergent_views,
    detect_lost_updates,
    detect_orphaned_mutations,
    detect_stale_reads,
    is_older,
)
from otel_agent_state.model import AnomalyKind, Severity, VersionError, parse_version

from .histories import H


def model(text: str):  # type: ignore[no-untyped-def]
    consistency = parse_consistency(text)
    return lambda _fact: consistency


# ---------------------------------------------------------------- versions


def test_version_parsing_and_order() -> None:
    assert parse_version("n:7").ordinal == 7
    assert parse_version("t:2026-11-26T10:00:00Z").ordinal == 1795687200 * 10**9
    assert parse_version("t:2026-11-26T10:00:00.5+01:00").ordinal == (1795683600 * 10**9) + (
        500_000_000
    )
    assert parse_version("t:1795687200000000000").ordinal == 1795687200 * 10**9
    assert parse_version("t:2026-11-26T10:00:00.123456789-02:30").ordinal == (
        (1795687200 + 9000) * 10**9 + 123456789
    )
    assert parse_version("h:ABCD").text == "h:abcd"
    assert parse_version("none").is_none
    assert parse_version("n:2").orderable_with(parse_version("n:9"))
    assert not parse_version("n:2").orderable_with(parse_version("t:9"))
    assert not parse_version("h:aa").orderable_with(parse_version("h:bb"))


@pytest.mark.parametrize(
    "bad", ["", "n:", "n:x", "t:2026-11-26T10:00:00", "t:soon", "h:xyz", "v2", "N:1", "none "]
)
def test_bad_versions_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(VersionError, match=r"expected 'n:<int>', 't:<RFC3339 or epoch ns>'"):
        parse_version(bad)


def test_digest_order_comes_from_committed_writes() -> None:
    h = H()
    h.write("w", "f", "h:aa", (1, 2))
    h.write("w", "f", "h:bb", (3, 4))
    writes = h.history().committed_writes("f")
    v = parse_version
    assert is_older(v("h:aa"), v("h:bb"), writes)
    assert not is_older(v("h:bb"), v("h:aa"), writes)
    assert is_older(v("h:0f"), v("h:aa"), writes)  # never written: the initial state
    assert not is_older(v("h:aa"), v("h:0f"), writes)  # no order to go by
    assert is_older(v("n:1"), v("n:2"), []) and not is_older(v("n:3"), v("n:2"), [])


# ---------------------------------------------------------------- stale reads


def _cache_story(read_version: str, read_at: tuple[int, int], tier: str = "cache") -> H:
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    h.write("credit-scorer", "score/42", "n:2", (10, 12), scope=scorer)
    risk = h.agent("risk", (30, 60))
    h.read("risk", "score/42", read_version, read_at, tier=tier, scope=risk)
    return h


def test_linearizable_stale_read_with_evidence_and_lag() -> None:
    h = _cache_story("n:1", (40, 41))
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.kind == AnomalyKind.STALE_READ
    assert (anomaly.fact, anomaly.observed_version, anomaly.expected_version) == (
        "score/42",
        "n:1",
        "n:2",
    )
    assert anomaly.agents == ("risk", "credit-scorer")
    assert anomaly.span_id == h.observations[1].span_id
    assert anomaly.evidence_span_ids == (h.observations[0].span_id,)
    assert anomaly.lag_ms == 28.0  # read started at 40 ms, the write committed at 12 ms
    assert anomaly.severity == Severity.WARNING  # nothing depended on it yet
    assert anomaly.store == "unknown"


def test_linearizable_fresh_read_and_cache_miss_are_fine() -> None:
    assert detect_stale_reads(_cache_story("n:2", (40, 41)).history()) == []
    assert detect_stale_reads(_cache_story("none", (40, 41)).history()) == []
    assert detect_stale_reads(_cache_story("n:3", (40, 41)).history()) == []


def test_read_that_started_before_the_commit_is_not_stale() -> None:
    assert detect_stale_reads(_cache_story("n:1", (11, 14)).history()) == []


def test_replica_missing_an_insert_is_stale() -> None:
    h = _cache_story("none", (40, 41), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert (anomaly.observed_version, anomaly.expected_version) == ("none", "n:2")


def test_read_of_deleted_fact_is_stale() -> None:
    h = H()
    h.write("a", "doc", "n:1", (1, 2))
    h.write("a", "doc", "none", (3, 4))
    h.read("b", "doc", "n:1", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.expected_version == "none"


def test_stale_read_inside_decision_is_an_error() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2))
    h.read("r", "f", "n:1", (5, 6), decision="0000000000000099")
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.severity == Severity.ERROR


def test_transactional_write_counts_only_after_commit() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2), txn="t1")
    h.read("r", "f", "n:1", (5, 6))
    commit = h.txn_end("t1", "commit", 8)
    h.read("r", "f", "n:1", (10, 11))
    [anomaly] = detect_stale_reads(h.history())
    assert anomaly.span_id == h.observations[2].span_id
    assert anomaly.evidence_span_ids == (h.observations[0].span_id, commit)
    assert anomaly.lag_ms == 2.0


def test_rolled_back_and_failed_writes_never_count() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2), txn="t1")
    h.txn_end("t1", "rollback", 3)
    h.write("w", "f", "n:3", (4, 5), failed=True)
    h.read("r", "f", "n:1", (10, 11))
    assert detect_stale_reads(h.history()) == []


def test_digest_read_of_a_concurrent_write_is_not_stale() -> None:
    h = H()
    h.write("a", "f", "h:aa", (1, 2))
    h.write("b", "f", "h:bb", (5, 20))  # commits after the read started
    h.read("r", "f", "h:bb", (10, 11))  # saw it early: fine
    h.read("r", "f", "h:aa", (12, 13))  # the latest committed before it started
    assert detect_stale_reads(h.history()) == []


def test_digest_read_of_a_superseded_state_is_stale() -> None:
    h = H()
    h.write("a", "f", "h:aa", (1, 2))
    h.write("b", "f", "h:bb", (3, 4))
    h.read("r", "f", "h:aa", (10, 11))
    h.read("r", "f", "h:0c", (12, 13))  # never written in the trace: the initial state
    found = detect_stale_reads(h.history())
    assert [(a.observed_version, a.expected_version) for a in found] == [
        ("h:aa", "h:bb"),
        ("h:0c", "h:bb"),
    ]
    assert found[0].lag_ms == 6.0


def test_cache_writes_do_not_make_versions_when_the_fact_has_a_primary() -> None:
    h = H()
    h.write("w", "f", "n:2", (1, 2))
    h.write("w", "f", "none", (3, 4), tier="cache")  # invalidation
    h.read("r", "f", "n:2", (10, 11))
    assert detect_stale_reads(h.history()) == []


def test_bounded_staleness_counts_only_older_writes() -> None:
    recent = _cache_story("n:1", (40, 41), tier="replica")
    assert detect_stale_reads(recent.history(), model("bounded:50")) == []
    [anomaly] = detect_stale_reads(recent.history(), model("bounded:20"))
    assert anomaly.expected_version == "n:2"


def test_eventual_never_reports_stale_reads() -> None:
    assert detect_stale_reads(_cache_story("n:1", (40, 41)).history(), model("eventual")) == []


def test_session_read_your_writes() -> None:
    h = H()
    h.write("me", "f", "n:5", (1, 2))
    h.read("me", "f", "n:4", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert (anomaly.observed_version, anomaly.expected_version) == ("n:4", "n:5")
    assert anomaly.agents == ("me",)
    assert anomaly.evidence_span_ids == (h.observations[0].span_id,)


def test_session_monotonic_reads() -> None:
    h = H()
    h.read("me", "f", "n:5", (1, 2))
    h.read("me", "f", "n:4", (10, 11), tier="replica")
    [anomaly] = detect_stale_reads(h.history(), model("session"))
    assert anomaly.expected_version == "n:5"
    assert anomaly.lag_ms == 8.0


def test_session_ignores_other_agents_writes() -> None:
    h = _cache_story("n:1", (40, 41), tier="replica")
    assert detect_stale_reads(h.history(), model("session")) == []
    assert len(detect_stale_reads(h.history(), model("linearizable"))) == 1


def test_clock_skew_tolerance_applies_across_processes_only() -> None:
    h = H()
    h.write("w", "f", "n:2", (10, 12), process="p1")
    h.read("r", "f", "n:1", (15, 16), process="p2")
    assert len(detect_stale_reads(h.history())) == 1
    assert detect_stale_reads(h.history(), clock_skew_ms=5) == []
    same = H()
    same.write("w", "f", "n:2", (10, 12))
    same.read("r", "f", "n:1", (15, 16))
    assert len(detect_stale_reads(same.history(), clock_skew_ms=5)) == 1


# ---------------------------------------------------------------- divergent views


def _pair(v_a: str, v_b: str, b_span: tuple[int, int] = (5, 50), writer: str = "scorer") -> H:
    h = H()
    h.write(writer, "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", b_span)
    h.read("limit", "f", v_a, (10, 11), tier="replica", scope=a)
    h.read("fraud", "f", v_b, (12, 13), scope=b)
    h.decision("limit", a, (20, 21))
    h.decision("fraud", b, (b_span[0] + 10, b_span[0] + 11))
    return h


def test_divergent_view() -> None:
    h = _pair("n:1", "n:2")
    [anomaly] = detect_divergent_views(h.history())
    assert anomaly.kind == AnomalyKind.DIVERGENT_VIEW
    assert (anomaly.observed_version, anomaly.expected_version) == ("n:1", "n:2")
    assert anomaly.agents == ("limit", "fraud")
    assert anomaly.span_id == h.observations[1].span_id
    assert anomaly.evidence_span_ids == (h.observations[2].span_id,)
    assert anomaly.severity == Severity.ERROR


def test_same_view_or_no_overlap_is_not_divergent() -> None:
    assert detect_divergent_views(_pair("n:2", "n:2").history()) == []
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 30))
    b = h.agent("fraud", (40, 60))
    h.read("limit", "f", "n:1", (10, 11), scope=a)
    h.read("fraud", "f", "n:2", (42, 43), scope=b)
    h.decision("limit", a, (20, 21))
    h.decision("fraud", b, (50, 51))
    assert detect_divergent_views(h.history()) == []


def test_agent_that_never_acted_is_not_divergent() -> None:
    h = H()
    h.write("scorer", "f", "n:2", (1, 2))
    a = h.agent("limit", (3, 40))
    b = h.agent("fraud", (5, 50))
    h.read("limit", "f", "n:1", (10, 11), scope=a)
    h.read("fraud", "f", "n:2", (12, 13), scope=b)
    h.decision("fraud", b, (20, 21))
    assert detect_divergent_views(h.history()) == []


def test_read_modify_write_chain_is_not_divergent() -> None:
    h = H()
    a = h.agent("first", (0, 40))
    b = h.agent("second", (5, 50))
    h.read("first", "f", "n:1", (1, 2), scope=a)
    h.write("first", "f", "n:2", (3, 4), scope=a)  # first wrote the newer version
    h.read("second", "f", "n:2", (10, 11), scope=b)
    h.write("second", "f", "n:3", (12, 13), scope=b)
    assert detect_divergent_views(h.history()) == []


# ---------------------------------------------------------------- lost updates


def test_lost_update() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    ra = h.read("alice", "balance", "n:1", (1, 2), scope=a)
    rb = h.read("bob", "balance", "n:1", (3, 4), scope=b)
    wa = h.write("alice", "balance", "n:2", (5, 6), scope=a)
    wb = h.write("bob", "balance", "n:3", (7, 8), scope=b)
    [anomaly] = detect_lost_updates(h.history())
    assert anomaly.kind == AnomalyKind.LOST_UPDATE
    assert anomaly.span_id == wb
    assert (anomaly.observed_version, anomaly.expected_version) == ("n:1", "n:2")
    assert anomaly.agents == ("alice", "bob")
    assert anomaly.evidence_span_ids == (wa, ra, rb)


def test_read_after_write_is_not_a_lost_update() -> None:
    h = H()
    a = h.agent("alice", (0, 50))
    b = h.agent("bob", (0, 50))
    h.read("alice", "balance", "n:1", (1, 2), scope=a)
    h.write("alice", "balance", "n:2", (5, 6), scope=a)
    h.read("bob", "balance", "n:2", (7, 8), scope=b)
    h.write("bob", "balance", "n:3", (9, 10), scope=b)
    assert detect_lost_updates(h.history()) == []


def test_uncommitted_second_write_is_not_a_lost_update() -> None:
    h = H()
    h.read("alice", "x", "n:1", (1, 2))
    h.read("bob", "x", "n:1", (3, 4))
    h.write("alice", "x", "n:2", (5, 6))
    h.write("bob", "x", "n:3", (7, 8), txn="t")
    h.txn_end("t", "rollback", 9)
    assert detect_lost_updates(h.history()) == []


# ---------------------------------------------------------------- orphaned mutations


def test_autocommit_writes_in_a_failed_agent_are_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.read("payments", "account/A", "n:1", (1, 2), scope=pay)
    write = h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert anomaly.kind == AnomalyKind.ORPHANED_MUTATION
    assert (anomaly.fact, anomaly.observed_version, anomaly.expected_version) == (
        "account/A",
        "n:2",
        "n:1",
    )
    assert anomaly.span_id == write
    assert anomaly.evidence_span_ids == (pay, write)
    assert "agent payments (autocommit writes, no transaction) failed" in anomaly.summary


def test_failed_explicit_mutation_is_orphaned_and_compensation_restores() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))
    m = h.mutation("payments", pay, (1, 20), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, mutation=m)
    [anomaly] = detect_orphaned_mutations(h.history())
    assert anomaly.evidence_span_ids[0] == m
    assert anomaly.agent_scope == pay
    assert anomaly.expected_version == "none"  # the trace never showed the earlier state
    h.write("payments", "account/A", "n:3", (25, 26), scope=pay)  # a later write
    assert detect_orphaned_mutations(h.history()) == []


def test_compensation_must_restore_the_known_earlier_version() -> None:
    h = H()
    pay = h.agent("payments", (0, 50))
    h.read("payments", "account/A", "n:1", (0, 1), scope=pay)
    m = h.mutation("payments", pay, (1, 20), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, mutation=m)
    h.write("payments", "account/A", "n:3", (25, 26), scope=pay)  # not the earlier state
    assert len(detect_orphaned_mutations(h.history())) == 1
    h.write("payments", "account/A", "n:1", (27, 28), scope=pay)  # restores it
    assert detect_orphaned_mutations(h.history()) == []


def test_rolled_back_transaction_is_not_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, txn="t")
    h.txn_end("t", "rollback", 5)
    assert detect_orphaned_mutations(h.history()) == []


def test_committed_transaction_in_a_failed_agent_is_complete() -> None:
    h = H()
    pay = h.agent("payments", (0, 30), failed=True)
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay, txn="t")
    h.write("payments", "account/B", "n:2", (5, 6), scope=pay, txn="t")
    h.txn_end("t", "commit", 7)
    assert detect_orphaned_mutations(h.history()) == []


def test_never_ended_scope_counts_only_once_the_trace_closed() -> None:
    h = H()
    pay = h.agent("payments", (0, None))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    assert detect_orphaned_mutations(h.history(), closed=False) == []
    [anomaly] = detect_orphaned_mutations(h.history(), closed=True)
    assert "never ended" in anomaly.summary


def test_successful_scope_is_not_orphaned() -> None:
    h = H()
    pay = h.agent("payments", (0, 30))
    h.write("payments", "account/A", "n:2", (3, 4), scope=pay)
    assert detect_orphaned_mutations(h.history()) == []


# ---------------------------------------------------------------- whole workflows


def test_correct_credit_workflow_has_no_finding_under_any_model() -> None:
    h = H()
    scorer = h.agent("credit-scorer", (0, 20))
    h.read("credit-scorer", "score/42", "n:1", (1, 2), scope=scorer)
    h.write("credit-scorer", "score/42", "n:2", (3, 4), scope=scorer)
    h.write("credit-scorer", "score/42", "none", (5, 6), tier="cache", scope=scorer)
    risk = h.agent("risk", (30, 60))
    h.read("risk", "score/42", "none", (31, 32), tier="cache", scope=risk)
    h.read("risk", "score/42", "n:2", (33, 34), scope=risk)
    h.decision("risk", risk, (35, 40))
    for text in ("linearizable", "session", "bounded:1", "eventual"):
        assert detect_all(h.history(), model(text)) == [], text


def test_detect_all_finds_each_kind_once() -> None:
    h = _pair("n:1", "n:2")
    kinds = sorted(a.kind.value for a in detect_all(h.history()))
    assert kinds == ["divergent_view", "stale_read"]
    assert Consistency("bounded", 5).kind == "bounded"
