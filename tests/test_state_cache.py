"""The cache of recent value states by part digests (pure: no store, no OpenTelemetry)."""

from __future__ import annotations

from otel_agent_state.instrumentation._state_cache import StateCache

KEY = b"digest-key"


def test_a_partial_read_maps_to_the_newest_state_it_agrees_with() -> None:
    cache: StateCache[str] = StateCache(max_keys=4, depth=4)
    cache.add(KEY, "row/1", "h:v1", {"score": "d680", "name": "dAnn"})
    cache.add(KEY, "row/1", "h:v2", {"score": "d750", "name": "dAnn"})
    cache.add(KEY, "row/1", "h:v3", {"score": "d680", "name": "dBob"})
    assert cache.match(KEY, "row/1", {"score": "d750"}) == "h:v2"
    assert cache.match(KEY, "row/1", {"name": "dAnn"}) == "h:v2"  # newest of v1, v2
    assert cache.match(KEY, "row/1", {"score": "d680"}) == "h:v3"
    assert cache.match(KEY, "row/1", {"score": "d999"}) is None
    assert cache.match(KEY, "row/2", {"score": "d750"}) is None


def test_an_absent_part_matches_a_state_without_it() -> None:
    cache: StateCache[bytes] = StateCache(max_keys=4, depth=4)
    cache.add(KEY, "hash/1", "h:a", {b"f1": "x"})
    assert cache.match(KEY, "hash/1", {b"f1": "x", b"f2": None}) == "h:a"
    assert cache.match(KEY, "hash/1", {b"f1": None}) is None


def test_bounded_in_keys_least_recently_used_first_and_in_states_per_key() -> None:
    cache: StateCache[str] = StateCache(max_keys=2, depth=2)
    cache.add(KEY, "a", "h:a1", {"c": "1"})
    cache.add(KEY, "b", "h:b1", {"c": "1"})
    assert cache.match(KEY, "a", {"c": "1"}) == "h:a1"  # a used: b is now the oldest
    cache.add(KEY, "c", "h:c1", {"c": "1"})
    assert cache.match(KEY, "b", {"c": "1"}) is None
    assert cache.match(KEY, "a", {"c": "1"}) == "h:a1"
    for n in range(2, 5):
        cache.add(KEY, "a", f"h:a{n}", {"c": str(n)})
    assert cache.match(KEY, "a", {"c": "2"}) is None  # only the 2 newest states are kept
    assert [cache.match(KEY, "a", {"c": str(n)}) for n in (3, 4)] == ["h:a3", "h:a4"]


def test_a_repeated_state_is_kept_once() -> None:
    cache: StateCache[str] = StateCache(max_keys=2, depth=2)
    cache.add(KEY, "a", "h:a1", {"c": "1"})
    cache.add(KEY, "a", "h:a2", {"c": "2"})
    cache.add(KEY, "a", "h:a2", {"c": "2"})  # a re-read of the same state
    assert cache.match(KEY, "a", {"c": "1"}) == "h:a1"


def test_states_recorded_under_another_digest_key_never_match() -> None:
    cache: StateCache[str] = StateCache(max_keys=2, depth=2)
    cache.add(KEY, "a", "h:a1", {"c": "1"})
    assert cache.match(b"rotated", "a", {"c": "1"}) is None
    assert cache.match(KEY, "a", {"c": "1"}) is None  # dropped when the key changed
