"""Zero-config cache lineage (SPEC §5 "Copies", last sentence).

With no fact rule for a Redis key, a cache write whose value equals (by keyed digest) a row,
or one column of a row, that the same agent scope just read, and whose key contains that
row's primary key, links the key to the row's fact: the write is recorded as a cache-tier
write of the row's fact with `agentstate.link` saying what matched, and later reads and
writes of the key in this process are that fact's cache tier too. Both conditions, the value
and the key, are needed; the digests compare only what the two stores returned, never values.

Process-local and bounded: the rows each agent scope read last, and the links made.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from opentelemetry import trace

from .. import runtime
from ..core.config import Settings

_ROWS_PER_AGENT = 16
_MAX_AGENTS = 1_024
_MAX_LINKS = 10_000
_MAX_TEXT = 4_096  # longer column values are not matched (a cache of a blob is no score)
_MAX_COLUMNS = 32  # wider rows are not remembered (their digests would cost every read)

_lock = threading.Lock()
_rows: OrderedDict[str, deque[tuple[str, tuple[str, ...], dict[str, str]]]] = OrderedDict()
_links: OrderedDict[str, tuple[str, str]] = OrderedDict()
_enabled = 0  # cache instrumentations that consult the links (the SQL side remembers only then)


def enable(on: bool) -> None:
    global _enabled
    with _lock:
        _enabled = max(0, _enabled + (1 if on else -1))
        if not _enabled:
            _rows.clear()
            _links.clear()


def enabled() -> bool:
    return _enabled > 0


def agent_key() -> str | None:
    """The agent scope current work belongs to (its span id, else `agent:<name>`)."""
    found = runtime.enclosing_agent(trace.get_current_span())
    if found is None:
        return None
    name, scope = found
    return scope or f"agent:{name}"


def _string_forms(value: object) -> list[bytes]:
    """The bytes an application is likely to SET for a column value (redis-py's encoding of
    it, and its str())."""
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return [bytes(value)] if value is not None else []
    if isinstance(value, bool):
        return [str(value).encode(), str(int(value)).encode()]
    forms = [str(value).encode("utf-8", "surrogatepass")]
    if isinstance(value, (int, float)):
        forms.append(repr(value).encode())
    return [f for f in dict.fromkeys(forms) if len(f) <= _MAX_TEXT]


def _row_forms(values: Mapping[str, object]) -> list[bytes]:
    row = {name: values[name] for name in values}
    out = []
    for separators in ((", ", ": "), (",", ":")):
        with suppress(TypeError, ValueError):
            out.append(json.dumps(row, separators=separators, default=str).encode())
    return out


def remember_row(settings: Settings, fact: str, physical: str, values: Mapping[str, Any]) -> None:
    """A full row the current agent scope read (`physical`'s last segment is its key)."""
    if not values or len(values) > _MAX_COLUMNS:
        return
    key = agent_key()
    if key is None:
        return
    digests: dict[str, str] = {}
    for name, value in values.items():
        for form in _string_forms(value):
            digests.setdefault(settings.digest(b"s" + form), f"column {name}")
    for form in _row_forms(values):
        digests.setdefault(settings.digest(b"s" + form), "row")
    segment = physical.rsplit("/", 1)[-1]
    parts = tuple(p for p in segment.split(",") if p)
    with _lock:
        rows = _rows.get(key)
        if rows is None:
            rows = _rows[key] = deque(maxlen=_ROWS_PER_AGENT)
            while len(_rows) > _MAX_AGENTS:
                _rows.popitem(last=False)
        else:
            _rows.move_to_end(key)
        rows.appendleft((fact, parts, digests))


def _tokens(key: str) -> set[str]:
    return {t for t in re.split(r"[^0-9A-Za-z_\-.%]+", key) if t}


def match(physical_key: str, key_text: str, version: str) -> tuple[str, str] | None:
    """A cache write of `version` (a digest) under `key_text`: the row fact it copies and
    what matched, when the current agent scope just read such a row; the link is kept."""
    agent = agent_key()
    if agent is None:
        return None
    tokens = _tokens(key_text)
    with _lock:
        rows = _rows.get(agent)
        if not rows:
            return None
        for fact, parts, digests in rows:
            how = digests.get(version)
            if how is None or not parts or not all(part in tokens for part in parts):
                continue
            _links[physical_key] = (fact, how)
            _links.move_to_end(physical_key)
            while len(_links) > _MAX_LINKS:
                _links.popitem(last=False)
            return fact, how
    return None


def linked(physical_key: str) -> tuple[str, str] | None:
    """The row fact a key was linked to earlier (and what matched then), if any."""
    with _lock:
        return _links.get(physical_key)
