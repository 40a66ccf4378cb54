"""The pure Redis command mapping: which keys a command reads and writes, and the versions
its values give (no server; JSON module commands included, which the test server lacks)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_agent_state.core import config
from otel_agent_state.core.model import parse_version
from otel_agent_state.instrumentation import _redis_commands as rc
from otel_agent_state.instrumentation._redis_commands import (
    ABSENT,
    UNKNOWN,
    Effect,
    Value,
    Versions,
    effects,
    key_text,
)

SETTINGS = config.Settings(
    digest_key=b"k" * 32,
    rules=config.rules_from_dicts(
        [
            {
                "name": "credit_score",
                "keys": ["redis:*/credit_score:{id}", "sqlite:*/credit_scores/{id}"],
                "version": {"json_field": "version", "hash_field": "version", "column": "version"},
            },
            {"name": "doc", "keys": ["redis:*/doc:{id}"], "version": {"json_field": "$.meta.v"}},
        ]
    ),
)


def fx(args: tuple[Any, ...], response: Any) -> list[tuple[str, Any, Value]]:
    return [(e.op, e.key, e.value) for e in effects(rc.command_name(args), args, response)]


def version(key: str, value: Value) -> str | None:
    physical = f"redis:1/{key}"
    return Versions(SETTINGS).version(physical, SETTINGS.resolve(physical).rule, value)


# --------------------------------------------------------------------------- commands


def test_string_commands() -> None:
    assert fx(("GET", "a"), b"1") == [("r", "a", Value("str", b"1"))]
    assert fx(("GET", "a"), None) == [("r", "a", ABSENT)]
    assert fx(("GETEX", "a", "EX", 5), b"1") == [("r", "a", Value("str", b"1"))]
    assert fx(("MGET", "a", "b"), [b"1", None]) == [
        ("r", "a", Value("str", b"1")),
        ("r", "b", ABSENT),
    ]
    assert fx(("SET", "a", "v"), True) == [("w", "a", Value("str", "v"))]
    assert fx(("SET", "a", "v", "NX"), None) == []  # not set: nothing written
    assert fx(("SET", "a", "v", "EX", 10, "GET"), b"old") == [
        ("r", "a", Value("str", b"old")),
        ("w", "a", Value("str", "v")),
    ]
    assert fx(("SET", "a", "v", "NX", "GET"), b"old") == [("r", "a", Value("str", b"old"))]
    assert fx(("SETNX", "a", "v"), True) == [("w", "a", Value("str", "v"))]
    assert fx(("SETNX", "a", "v"), False) == []
    assert fx(("SETEX", "a", 10, "v"), True) == [("w", "a", Value("str", "v"))]
    assert fx(("MSET", "a", 1, "b", 2), True) == [
        ("w", "a", Value("str", 1)),
        ("w", "b", Value("str", 2)),
    ]
    assert fx(("MSETNX", "a", 1, "b", 2), False) == []
    assert fx(("GETDEL", "a"), b"1") == [("r", "a", Value("str", b"1")), ("w", "a", ABSENT)]
    assert fx(("GETDEL", "a"), None) == [("r", "a", ABSENT)]
    assert fx(("GETSET", "a", "n"), None) == [("r", "a", ABSENT), ("w", "a", Value("str", "n"))]


def test_invalidations() -> None:
    assert fx(("DEL", "a", "b"), 1) == [("w", "a", ABSENT), ("w", "b", ABSENT)]
    assert fx(("UNLINK", "a"), 0) == [("w", "a", ABSENT)]
    # A TTL that is not positive deletes at once; a positive one leaves the value readable.
    assert fx(("EXPIRE", "a", 0), True) == [("w", "a", ABSENT)]
    assert fx(("PEXPIRE", "a", -5), True) == [("w", "a", ABSENT)]
    assert fx(("EXPIRE", "a", 100), True) == []
    assert fx(("EXPIRE", "a", 0), False) == []  # no such key


def test_counters_read_their_basis_and_write_the_result() -> None:
    assert fx(("INCRBY", "c", 1), 6) == [
        ("r", "c", Value("str", b"5")),
        ("w", "c", Value("str", b"6")),
    ]
    assert fx(("DECRBY", "c", 3), 4) == [
        ("r", "c", Value("str", b"7")),
        ("w", "c", Value("str", b"4")),
    ]
    assert fx(("INCR", "c"), 1) == [("w", "c", Value("str", b"1"))]  # basis 0 or absent: unknown
    assert fx(("DECR", "c"), -1) == [("w", "c", Value("str", b"-1"))]
    # The written version is the one a later GET of the same counter shows.
    assert version("c", fx(("INCRBY", "c", 1), 6)[1][2]) == version("c", Value("str", b"6"))


def test_hash_commands() -> None:
    assert fx(("HGET", "h", "f"), b"1") == [("r", "h", Value("hash_part", {"f": b"1"}))]
    assert fx(("HMGET", "h", "f", "g"), [b"1", None]) == [
        ("r", "h", Value("hash_part", {"f": b"1", "g": None}))
    ]
    assert fx(("HGETALL", "h"), {b"f": b"1"}) == [("r", "h", Value("hash", {b"f": b"1"}))]
    assert fx(("HGETALL", "h"), {}) == [("r", "h", ABSENT)]
    assert fx(("HSET", "h", "f", 1, "g", 2), 2) == [("w", "h", Value("hash_set", {"f": 1, "g": 2}))]
    assert fx(("HSETNX", "h", "f", 1), 0) == []
    assert fx(("HDEL", "h", "f"), 1) == [("w", "h", Value("refetch_hash"))]
    assert fx(("HDEL", "h", "f"), 0) == []


def test_hash_writes_merge_the_fields_they_name() -> None:
    """HSET/HSETNX/HDEL change the fields they name and keep the others (the server's
    read-modify-write); every other write replaces the whole value."""
    assert [e.fields for e in effects("HSET", ("HSET", "h", "f", 1, "g", 2), 2)] == [("f", "g")]
    assert [e.fields for e in effects("HMSET", ("HMSET", "h", "f", 1), True)] == [("f",)]
    assert [e.fields for e in effects("HSETNX", ("HSETNX", "h", "f", 1), 1)] == [("f",)]
    assert [e.fields for e in effects("HDEL", ("HDEL", "h", "f", "g"), 2)] == [("f", "g")]
    for args, response in [
        (("SET", "k", "v"), True),
        (("DEL", "h"), 1),
        (("INCR", "n"), 2),
        (("JSON.SET", "j", "$.a", "1"), True),  # a path may overlap another: whole
    ]:
        assert all(e.fields is None for e in effects(str(args[0]), args, response)), args


def test_set_get_through_execute_command_gets_a_bool_from_redis_py() -> None:
    """`execute_command("SET", k, v, "GET")` runs redis-py's SET callback without its `get`
    option: the old value comes back as `old == "OK"`. False hides it: no read."""
    args = ("SET", "k", "new", "GET")
    assert fx(args, False) == [("w", "k", Value("str", "new"))]
    assert fx(args, True) == [("r", "k", Value("str", b"OK")), ("w", "k", Value("str", "new"))]
    assert fx(args, b"") == [("r", "k", Value("str", b"")), ("w", "k", Value("str", "new"))]
    assert fx(args, None) == [("r", "k", ABSENT), ("w", "k", Value("str", "new"))]
    assert fx(("SET", "k", "new", "NX", "GET"), False) == []  # it existed: NX did not set


def test_written_keys_of_a_command_whose_outcome_is_unknown() -> None:
    assert rc.written_keys("SET", ("SET", "k", "v", "NX")) == ["k"]
    assert rc.written_keys("DEL", ("DEL", "a", "b")) == ["a", "b"]
    assert rc.written_keys("MSET", ("MSET", "a", 1, "b", 2)) == ["a", "b"]
    assert rc.written_keys("HSET", ("HSET", "h", "f", 1)) == ["h"]
    assert rc.written_keys("GET", ("GET", "k")) == []
    assert rc.written_keys("LPUSH", ("LPUSH", "l", 1)) == []  # not one of ours


def test_json_commands_mapped_without_the_module() -> None:
    doc = {"score": 700, "version": 3}
    assert fx(("JSON.GET", "credit_score:1", "."), doc) == [
        ("r", "credit_score:1", Value("json", doc))
    ]
    assert fx(("JSON.GET", "credit_score:1"), doc) == [("r", "credit_score:1", Value("json", doc))]
    assert fx(("JSON.GET", "credit_score:1", "$"), [doc]) == [
        ("r", "credit_score:1", Value("json", doc))
    ]
    assert fx(("JSON.GET", "credit_score:1", "$.version"), [3]) == [
        ("r", "credit_score:1", Value("json_part", 3, "$.version"))
    ]
    assert fx(("JSON.GET", "k", "."), None) == [("r", "k", ABSENT)]
    assert fx(("JSON.GET", "k", ".a", ".b"), {".a": 1, ".b": 2}) == []  # several paths
    assert fx(("JSON.SET", "credit_score:1", "$", json.dumps(doc)), True) == [
        ("w", "credit_score:1", Value("json", doc))
    ]
    assert fx(("JSON.SET", "k", "$.score", "5"), True) == [("w", "k", Value("refetch_json"))]
    assert fx(("JSON.SET", "k", ".", "{}", "NX"), None) == []
    assert fx(("JSON.DEL", "k"), 1) == [("w", "k", ABSENT)]
    assert fx(("JSON.DEL", "k", "$.a"), 1) == [("w", "k", Value("refetch_json"))]
    assert fx(("JSON.MGET", "a", "b", "$"), [[doc], None]) == [
        ("r", "a", Value("json", doc)),
        ("r", "b", ABSENT),
    ]
    # Versions: the configured json_field, from a whole document or the field's own path.
    assert version("credit_score:1", Value("json", doc)) == "n:3"
    assert version("credit_score:1", Value("json_part", 3, "$.version")) == "n:3"
    assert version("credit_score:1", Value("json_part", 700, "$.score")) is None
    assert version("doc:1", Value("json", {"meta": {"v": "2026-01-02T03:04:05Z"}})).startswith("t:")
    # No field: a digest of the canonical document (key order does not matter).
    assert version("x", Value("json", {"a": 1, "b": 2})) == version(
        "x", Value("json", {"b": 2, "a": 1})
    )


def test_unknown_commands_and_errors_have_no_effects() -> None:
    assert fx(("PING",), True) == []
    assert fx(("EVALSHA", "abc", 1, "k"), 1) == []
    assert fx(("GET", "a"), ValueError("WRONGTYPE")) == []
    assert fx(("GET",), None) == []  # malformed: no key
    assert fx(("HSET", "h", "f"), 1) == []


def test_unknown_responses_keep_only_what_the_arguments_show() -> None:
    assert fx(("SET", "a", "v"), UNKNOWN) == [("w", "a", Value("str", "v"))]
    assert fx(("SET", "a", "v", "NX"), UNKNOWN) == []
    assert fx(("GET", "a"), UNKNOWN) == []
    assert fx(("DEL", "a"), UNKNOWN) == [("w", "a", ABSENT)]
    assert fx(("INCRBY", "a", 1), UNKNOWN) == []


# --------------------------------------------------------------------------- versions


def test_set_and_get_of_the_same_bytes_give_the_same_digest() -> None:
    v = Versions(SETTINGS)
    for sent, stored in [("x", b"x"), (5, b"5"), (1.5, b"1.5"), ("é", "é".encode())]:
        assert v.version("redis:1/k", None, Value("str", sent)) == v.version(
            "redis:1/k", None, Value("str", stored)
        )
    assert v.version("redis:1/k", None, Value("str", b"a")) != v.version(
        "redis:1/k", None, Value("str", b"b")
    )
    assert parse_version(v.version("redis:1/k", None, Value("str", b"a")) or "").kind == "h"
    assert v.version("redis:1/k", None, ABSENT) == "none"


def test_json_field_of_string_values() -> None:
    assert version("credit_score:1", Value("str", b'{"score": 1, "version": 7}')) == "n:7"
    assert version("credit_score:1", Value("str", '{"version": "12"}')) == "n:12"
    # Not JSON, or no field: the digest of the bytes.
    assert version("credit_score:1", Value("str", b"{nope")) == version(
        "other", Value("str", b"{nope")
    )
    assert str(version("credit_score:1", Value("str", b'{"v": 1}'))).startswith("h:")


def test_hash_versions_and_partial_reads() -> None:
    rc.hash_states.clear()
    full = {b"score": b"700", b"version": b"4"}
    assert version("credit_score:9", Value("hash", full)) == "n:4"
    assert version("credit_score:9", Value("hash_part", {"version": b"4"})) == "n:4"
    assert version("credit_score:9", Value("hash_set", {"version": 5, "score": 1})) == "n:5"
    # Without the field a write does not show the whole hash: it must be read again.
    assert version("credit_score:9", Value("hash_set", {"score": 1})) is None
    # A partial read maps to the last whole state seen with those fields, else unknown.
    digest = version("plain", Value("hash", {b"a": b"1", b"b": b"2"}))
    assert digest is not None and digest.startswith("h:")
    assert version("plain", Value("hash_part", {"a": b"1"})) == digest
    assert version("plain", Value("hash_part", {"a": b"9"})) is None
    assert version("plain", Value("hash_part", {"zz": None})) == digest


def test_field_versions() -> None:
    s = SETTINGS
    assert rc.field_version(s, 3) == "n:3"
    assert rc.field_version(s, b"42") == "n:42"
    assert rc.field_version(s, " -2 ") == "n:-2"
    assert rc.field_version(s, 5.0) == "n:5"
    assert rc.field_version(s, "2026-11-26T10:00:00Z") == "t:2026-11-26T10:00:00Z"
    assert rc.field_version(s, "abc").startswith("h:")
    assert rc.field_version(s, b"\xff").startswith("h:")
    assert rc.field_version(s, {"a": 1}).startswith("h:")


# --------------------------------------------------------------------------- keys


def test_key_text() -> None:
    assert key_text(b"credit_score:42") == "credit_score:42"
    assert key_text("users/7 é".encode()) == "users/7 é"
    assert key_text(b"\xff\x00a") == "%FF%00a"
    assert key_text(b"50%") == "50%25"
    assert key_text(b"a\nb") == "a%0Ab"
    long = key_text(b"k" * 100_000)
    assert len(long) <= rc.MAX_KEY_CHARS and long.startswith("k" * 100)
    assert key_text(b"k" * 100_000) != key_text(b"k" * 100_001)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=32),
            st.integers(),
            st.floats(allow_nan=False),
            st.none(),
            st.dictionaries(st.binary(max_size=8), st.binary(max_size=8), max_size=3),
            st.lists(st.binary(max_size=8), max_size=3),
        ),
        max_size=6,
    ),
    st.sampled_from([*sorted(rc.COMMANDS), "PING", "XADD"]),
    st.one_of(
        st.none(),
        st.binary(max_size=16),
        st.integers(),
        st.booleans(),
        st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=4),
        st.dictionaries(st.binary(max_size=8), st.binary(max_size=8), max_size=3),
        st.just(UNKNOWN),
    ),
)
def test_arbitrary_commands_never_raise(args: list[Any], name: str, response: Any) -> None:
    found = effects(name, [name, *args], response)
    v = Versions(SETTINGS)
    for effect in found:
        assert isinstance(effect, Effect)
        text = key_text(v.raw(effect.key))
        assert len(text) <= rc.MAX_KEY_CHARS
        result = v.version(f"redis:1/{text}", None, effect.value)
        if result is not None:
            parse_version(result)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_client_encoding_decides_the_bytes(encoding: str) -> None:
    v = Versions(SETTINGS, encoding)
    assert v.raw("é") == "é".encode(encoding)


# --------------------------------------------------------------------------- cache tier (core)


def _obs(span: str, agent: str, at: int, tier: str, *, read: str = "", write: str = "") -> Any:
    from otel_agent_state.core.model import FactVersion, Observation, Op, Tier

    return Observation(
        span_id=span,
        trace_id="t" * 32,
        agent=agent,
        op=Op.WRITE if write else Op.READ,
        start_ns=at,
        end_ns=at + 1,
        reads=(FactVersion("f", parse_version(read)),) if read else (),
        writes=(FactVersion("f", parse_version(write)),) if write else (),
        store="redis" if tier == "cache" else "postgresql",
        tier=Tier(tier),
    )


def test_cache_writes_never_bound_a_fact_that_is_read_outside_the_cache() -> None:
    """History change made for Redis: a fact read from a primary lives outside the cache, so
    cache fills and invalidations are copies, not versions (no primary write needed)."""
    from otel_agent_state.core.detectors import detect_all
    from otel_agent_state.core.history import History

    history = History.of(
        [
            _obs("1", "a", 10, "primary", read="n:5"),
            _obs("2", "a", 20, "cache", write="h:aa"),  # fill, digest of the cached text
            _obs("3", "b", 30, "primary", read="n:5"),
            _obs("4", "b", 40, "cache", write="none"),  # invalidation
            _obs("5", "c", 50, "primary", read="n:5"),
            _obs("6", "c", 60, "cache", read="h:aa"),
        ]
    )
    assert detect_all(history) == []
    # A cache-only fact keeps its cache writes as its history: a stale hit is still found.
    cache_only = History.of(
        [
            _obs("1", "a", 10, "cache", write="h:aa"),
            _obs("2", "a", 20, "cache", write="h:bb"),
            _obs("3", "b", 30, "cache", read="h:aa"),
        ]
    )
    assert [a.kind.value for a in detect_all(cache_only)] == ["stale_read"]
