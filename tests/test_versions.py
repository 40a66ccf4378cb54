"""Versions (SPEC §3): the four spellings, their order, and clear errors for anything else."""

from __future__ import annotations

import pytest

from otel_agent_state.core.config import Consistency, parse_consistency
from otel_agent_state.core.detectors import is_older
from otel_agent_state.core.model import NONE, VersionError, parse_version

from .histories import H

v = parse_version
NS = 1_000_000_000
NOON = 1_795_687_200  # 2026-11-26T10:00:00Z in epoch seconds


# ---------------------------------------------------------------- parsing


def test_ordinal_versions() -> None:
    seven = v("n:7")
    assert (seven.text, seven.kind, seven.ordinal) == ("n:7", "n", 7)
    assert v("n:0").ordinal == 0
    assert v("n:-3").ordinal == -3  # a store may count from below zero
    assert v("n:12345678901234567890").ordinal == 12345678901234567890
    assert str(seven) == "n:7"


def test_ordinal_text_is_canonical() -> None:
    # One ordinal, one spelling: "n:007" and "n:7" are the same version everywhere.
    assert v("n:007").text == "n:7"
    assert v("n:007") == v("n:7")
    assert v("n:-0").text == "n:0"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("t:2026-11-26T10:00:00Z", NOON * NS),
        ("t:2026-11-26t10:00:00z", NOON * NS),
        ("t:2026-11-26 10:00:00Z", NOON * NS),
        ("t:2026-11-26T10:00:00+00:00", NOON * NS),
        ("t:2026-11-26T11:00:00+01:00", NOON * NS),
        ("t:2026-11-26T07:30:00-02:30", NOON * NS),
        ("t:2026-11-26T10:00:00.5Z", NOON * NS + 500_000_000),
        ("t:2026-11-26T10:00:00.000001Z", NOON * NS + 1_000),
        ("t:2026-11-26T10:00:00.123456789-02:30", (NOON + 9000) * NS + 123_456_789),
        ("t:1795687200000000000", NOON * NS),
        ("t:0", 0),
    ],
)
def test_timestamp_versions_are_epoch_nanoseconds(text: str, ns: int) -> None:
    version = v(text)
    assert (version.kind, version.ordinal, version.text) == ("t", ns, text)


def test_digest_versions_compare_by_equality_only() -> None:
    digest = v("h:ABcd01")
    assert (digest.text, digest.kind, digest.ordinal) == ("h:abcd01", "h", None)
    assert v("h:abcd01") == digest
    assert not digest.orderable_with(v("h:ffff"))


def test_none_is_the_absent_version() -> None:
    assert v("none") is NONE
    assert (NONE.kind, NONE.ordinal, NONE.is_none) == ("none", None, True)
    assert not v("n:1").is_none


def test_orderable_only_within_one_numeric_kind() -> None:
    assert v("n:2").orderable_with(v("n:9"))
    assert v("t:5").orderable_with(v("t:2026-11-26T10:00:00Z"))
    assert not v("n:2").orderable_with(v("t:9"))
    assert not v("n:2").orderable_with(NONE)
    assert not NONE.orderable_with(NONE)


def test_one_instant_spelled_two_ways_is_one_version() -> None:
    utc, paris, epoch = (
        v("t:2026-11-26T10:00:00Z"),
        v("t:2026-11-26T11:00:00+01:00"),
        v(f"t:{NOON * NS}"),
    )
    assert utc.same_as(paris) and paris.same_as(epoch)
    assert not utc.same_as(v("t:2026-11-26T10:00:00.000000001Z"))
    assert not v("n:5").same_as(v(f"t:{5}"))  # same number, different kinds
    assert v("h:aa").same_as(v("h:AA"))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "n:",
        "n:x",
        "n:1.5",
        "n:1_000",  # int() would take these; a version column never spells them
        "n: 5",
        "n:+5",
        "n:\u0663",  # ARABIC-INDIC DIGIT THREE
        "n:5\n",
        "t:",
        "t:2026-11-26T10:00:00",  # naive: no order across processes
        "t:2026-11-26",
        "t:2026-02-30T10:00:00Z",
        "t:2026-11-26T10:00:00.1234567891Z",
        "t:soon",
        "t:-5",
        "t:\u00b2",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
        "h:",
        "h:xyz",
        "h:ab\n",
        "v2",
        "N:1",
        "none ",
        "None",
        "2",
    ],
)
def test_bad_versions_are_a_version_error_naming_text_and_forms(bad: str) -> None:
    with pytest.raises(VersionError) as caught:
        parse_version(bad)
    message = str(caught.value)
    assert message == (
        f"bad version {bad!r}: expected 'n:<int>', 't:<RFC3339 or epoch ns>', 'h:<hex>' or 'none'"
    )
    assert isinstance(caught.value, ValueError)


# ---------------------------------------------------------------- order


def test_numeric_versions_order_by_value_without_any_history() -> None:
    assert is_older(v("n:1"), v("n:2"), [])
    assert not is_older(v("n:2"), v("n:1"), [])
    assert not is_older(v("n:2"), v("n:2"), [])
    assert is_older(v("n:-1"), v("n:0"), [])
    assert is_older(v("t:2026-11-26T10:00:00Z"), v("t:2026-11-26T10:00:00.000000001Z"), [])
    assert not is_older(v("t:2026-11-26T11:00:00+01:00"), v("t:2026-11-26T10:00:00Z"), [])


def test_digest_order_comes_from_observed_committed_writes() -> None:
    h = H()
    h.write("w", "f", "h:aa", (1, 2))
    h.write("w", "f", "h:bb", (3, 4))
    writes = h.history().committed_writes("f")
    assert [w.version.text for w in writes] == ["h:aa", "h:bb"]
    assert is_older(v("h:aa"), v("h:bb"), writes)
    assert not is_older(v("h:bb"), v("h:aa"), writes)
    # A version no write produced is the initial state: older than every written one ...
    assert is_older(v("h:0f"), v("h:aa"), writes)
    assert is_older(NONE, v("h:aa"), writes)
    # ... but nothing is provably older than a version the trace never saw written.
    assert not is_older(v("h:aa"), v("h:0f"), writes)
    assert not is_older(v("h:0e"), v("h:0f"), writes)
    assert not is_older(v("h:aa"), v("h:bb"), [])


def test_digest_order_follows_commit_order_not_start_order() -> None:
    h = H()
    h.write("a", "f", "h:aa", (1, 2), txn="slow")  # started first, committed last
    h.write("b", "f", "h:bb", (3, 4))
    h.commit("slow", 10)
    writes = h.history().committed_writes("f")
    assert [w.version.text for w in writes] == ["h:bb", "h:aa"]
    assert is_older(v("h:bb"), v("h:aa"), writes)


def test_rewritten_digest_ranks_at_its_newest_write() -> None:
    h = H()
    for i, digest in enumerate(["h:aa", "h:bb", "h:aa"]):
        h.write("w", "f", digest, (2 * i, 2 * i + 1))
    writes = h.history().committed_writes("f")
    assert is_older(v("h:bb"), v("h:aa"), writes)  # A-B-A: aa is the latest state
    assert not is_older(v("h:aa"), v("h:bb"), writes)


def test_rolled_back_and_open_writes_give_no_order() -> None:
    h = H()
    h.write("w", "f", "h:aa", (1, 2))
    h.write("w", "f", "h:bb", (3, 4), txn="t1")
    h.rollback("t1", 5)
    h.write("w", "f", "h:cc", (6, 7), txn="t2")  # still open
    history = h.history()
    assert [w.version.text for w in history.committed_writes("f")] == ["h:aa"]
    assert [(w.version.text, w.rolled_back) for w in history.writes("f")] == [
        ("h:aa", False),
        ("h:bb", True),
        ("h:cc", False),
    ]
    committed = history.committed_writes("f")
    assert not is_older(v("h:aa"), v("h:bb"), committed)
    assert not is_older(v("h:aa"), v("h:cc"), committed)


# ---------------------------------------------------------------- consistency models


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linearizable", Consistency("linearizable")),
        ("session", Consistency("session")),
        ("eventual", Consistency("eventual")),
        ("bounded:500", Consistency("bounded", 500)),
        (" bounded:0 ", Consistency("bounded", 0)),
    ],
)
def test_parse_consistency(text: str, expected: Consistency) -> None:
    assert parse_consistency(text) == expected
    assert str(parse_consistency(text)) == text.strip()


@pytest.mark.parametrize("bad", ["", "strong", "bounded", "bounded:", "bounded:-1", "bounded:1s"])
def test_bad_consistency_names_the_accepted_models(bad: str) -> None:
    with pytest.raises(ValueError, match=r"unknown consistency model .*'bounded:<ms>'"):
        parse_consistency(bad)
