"""Recent states of stored values by the digests of their parts, so that a read which sees
only some parts (the columns of a projection, some fields of a hash) maps to the version of
the whole value. Shared by the SQL and the Redis instrumentations; no OpenTelemetry or client
imports here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

Part = TypeVar("Part", bound=Hashable)  # a part's name: a column (str), a hash field (bytes)

_State = tuple[str, dict[Part, str | None]]  # (version, keyed digest per part; None: absent)


class StateCache(Generic[Part]):
    """Per key (a physical fact), its latest `depth` states, for the `max_keys` keys used
    most recently. Holds keyed digests, never values; states recorded under another digest
    key never match, so all are dropped when the key changes."""

    def __init__(self, max_keys: int, depth: int) -> None:
        self._max = max_keys
        self._depth = depth
        self._lock = threading.Lock()
        self._data: OrderedDict[str, deque[_State[Part]]] = OrderedDict()
        self._digest_key: bytes | None = None

    def add(
        self, digest_key: bytes, key: str, version: str, parts: Mapping[Part, str | None]
    ) -> None:
        """`key` is at `version`, and these are the digests of its parts there."""
        state = (version, dict(parts))
        with self._lock:
            states = self._touch(digest_key, key, create=True)
            assert states is not None
            if not states or states[-1] != state:
                states.append(state)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def match(self, digest_key: bytes, key: str, parts: Mapping[Part, str | None]) -> str | None:
        """The version of the newest known state of `key` whose parts have these digests."""
        with self._lock:
            for version, known in reversed(self._touch(digest_key, key) or ()):
                if all(known.get(name) == digest for name, digest in parts.items()):
                    return version
            return None

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _touch(
        self, digest_key: bytes, key: str, create: bool = False
    ) -> deque[_State[Part]] | None:
        if self._digest_key != digest_key:
            self._data.clear()
            self._digest_key = digest_key
        states = self._data.get(key)
        if states is None:
            if not create:
                return None
            states = self._data[key] = deque(maxlen=self._depth)
        self._data.move_to_end(key)
        return states
