"""The pure data model: versions, observations, scopes and anomalies.

No OpenTelemetry or client-library imports here: detectors and the `check` command
work on these types alone, so they can be tested on hand-written histories.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Literal, NamedTuple

NONE_VERSION = "none"

VersionKind = Literal["n", "t", "h", "none"]


class Op(str, Enum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    READ_WRITE = "read_write"


class Tier(str, Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    CACHE = "cache"
    INDEX = "index"


class AnomalyKind(str, Enum):
    STALE_READ = "stale_read"
    DIVERGENT_VIEW = "divergent_view"
    ORPHANED_MUTATION = "orphaned_mutation"
    LOST_UPDATE = "lost_update"


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


class ScopeKind(str, Enum):
    AGENT = "agent"
    DECISION = "decision"
    MUTATION = "mutation"
    WORKFLOW = "workflow"


class VersionError(ValueError):
    """A version string that is not `n:<int>`, `t:<time>`, `h:<hex>` or `none`."""


_HEX = re.compile(r"^[0-9a-fA-F]+$")
_INT = re.compile(r"^-?[0-9]+$")


@dataclass(frozen=True, slots=True)
class Version:
    """A version as SPEC §3 spells it. `ordinal` orders `n:` and `t:` versions of one kind."""

    text: str
    kind: VersionKind
    ordinal: int | None

    @property
    def is_none(self) -> bool:
        return self.kind == "none"

    def orderable_with(self, other: Version) -> bool:
        return self.ordinal is not None and other.ordinal is not None and self.kind == other.kind

    @property
    def identity(self) -> str:
        """What makes two versions the same: `t:` spellings of one instant are one version."""
        return self.text if self.ordinal is None else f"{self.kind}:{self.ordinal}"

    def same_as(self, other: Version) -> bool:
        # identity without building its strings: n:/t: always carry an ordinal, h:/none never.
        if self.ordinal is not None:
            return self.ordinal == other.ordinal and self.kind == other.kind
        return other.ordinal is None and self.text == other.text

    def __str__(self) -> str:
        return self.text


NONE = Version(NONE_VERSION, "none", None)


def parse_version(text: str) -> Version:
    """Parse `n:<int>`, `t:<RFC3339 or epoch ns>`, `h:<hex>` or `none`.

    Raises VersionError naming the bad text and the accepted forms.
    """
    if text == NONE_VERSION:
        return NONE
    prefix, sep, body = text.partition(":")
    if sep and body:
        if prefix == "n" and _INT.fullmatch(body):
            value = int(body)
            return Version(f"n:{value}", "n", value)  # one spelling per ordinal
        elif prefix == "t":
            ns = _time_ns(body)
            if ns is not None:
                return Version(text, "t", ns)
        elif prefix == "h" and _HEX.fullmatch(body):
            return Version(text.lower(), "h", None)
    raise VersionError(
        f"bad version {text!r}: expected 'n:<int>', 't:<RFC3339 or epoch ns>', 'h:<hex>' or 'none'"
    )


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)


def _time_ns(body: str) -> int | None:
    """Epoch nanoseconds from digits or RFC 3339 (nanosecond fractions kept; a zone is
    required, since a naive timestamp has no order across processes)."""
    if body.isascii() and body.isdigit():
        return int(body)
    found = _RFC3339.fullmatch(body)
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    zone = found.group(8)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    offset = 0 if zone in ("Z", "z") else (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
    seconds = calendar.timegm(moment.timetuple()) - (offset if zone[0] == "+" else -offset)
    fraction = (found.group(7) or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction or 0)


def ordinal_version(value: int) -> Version:
    return Version(f"n:{value}", "n", value)


# FactVersion, Observation, Scope and TxnEnd are made once per span by the processor and
# by `check` (millions per run): they are never changed after construction (use replace()),
# but not frozen, since a frozen dataclass's __init__ costs about 5x (a setattr per field).


@dataclass(slots=True)
class FactVersion:
    fact: str
    version: Version
    # For a write: the fields (hash fields, payload keys) it merged into the stored value on
    # the server, an atomic read-modify-write that keeps every other field. None: the write
    # replaced (or deleted) the whole value.
    fields: frozenset[str] | None = None


@dataclass(slots=True)
class Observation:
    """One read or write of facts by an agent, as recorded on one span (SPEC §3)."""

    span_id: str
    trace_id: str
    agent: str
    op: Op
    start_ns: int
    end_ns: int
    reads: tuple[FactVersion, ...] = ()
    writes: tuple[FactVersion, ...] = ()
    store: str = "unknown"
    tier: Tier = Tier.PRIMARY
    agent_scope: str | None = None  # span id of the agent span it belongs to
    decision: str | None = None  # span id of the enclosing decision span
    mutation: str | None = None  # span id of the innermost explicit mutation scope
    txn_id: str | None = None
    committed: bool = True
    failed: bool = False  # the operation itself ended in error
    # `agentstate.committed=true` said explicitly: the store applied the writes, even if the
    # operation then failed (a non-transactional pipeline whose later command errored).
    applied: bool = False
    process: str = ""  # where the span was made; clock skew applies across processes
    fact_rules: tuple[str, ...] = ()  # rule name per fact (reads then writes), for metrics
    # `agentstate.consistency` on the span: the model its reads are judged under (SPEC §5
    # "offline equals online"); None: the configuration's model for the fact.
    consistency: str | None = None
    # `agentstate.write.copy_of`, parallel to `writes`: the version of the same logical fact a
    # copy (cache fill, index sync) came from; "" for an original write. Empty: not recorded
    # (the history derives copies from the agent's own reads, see History.all_writes).
    copy_of: tuple[str, ...] = ()

    @property
    def writes_void(self) -> bool:
        """Its writes never took effect: the operation failed and nothing says the store
        applied them."""
        return self.failed and not self.applied


@dataclass(slots=True)
class Scope:
    """An agent, decision, mutation or workflow span: the intervals detectors reason about."""

    span_id: str
    trace_id: str
    kind: ScopeKind
    agent: str
    start_ns: int
    end_ns: int | None = None  # None: still open (or never ended)
    failed: bool = False
    parent_agent_scope: str | None = None
    name: str = ""
    rolled_back: bool = False


@dataclass(slots=True)
class TxnEnd:
    """The span that ended a transaction (`agentstate.txn.outcome`)."""

    txn_id: str
    span_id: str
    trace_id: str
    outcome: Literal["commit", "rollback"]
    end_ns: int
    agent: str = ""
    start_ns: int | None = None  # when the COMMIT/ROLLBACK began (None: unknown)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A finding with the evidence that proves it (span ids of the spans involved)."""

    kind: AnomalyKind
    trace_id: str
    span_id: str  # the offending observation span: parent of the anomaly span
    fact: str
    observed_version: str
    expected_version: str
    agents: tuple[str, ...]
    evidence_span_ids: tuple[str, ...]
    summary: str
    severity: Severity = Severity.ERROR
    lag_ms: float | None = None
    store: str = "unknown"
    fact_rule: str = ""
    agent_scope: str | None = None  # where the span event goes
    key: tuple[object, ...] = field(default=(), compare=False)  # identity for dedup

    def with_severity(self, severity: Severity) -> Anomaly:
        return replace(self, severity=severity)


@dataclass(slots=True)  # never changed; not frozen: made per write per check (see model.py)
class Write:
    """One write of one fact, with when (and whether) it committed."""

    fact: str
    version: Version
    obs: Observation
    commit_ns: int | None  # None: not committed (open transaction, or rolled back)
    commit_span_id: str | None  # the COMMIT span for transactional writes
    rolled_back: bool = False
    # The earliest moment the write can have taken effect: a transactional write becomes
    # visible at its COMMIT, not when its statement ran (None: the statement's start).
    effective_ns: int | None = None
    # The fields it merged into the stored value (None: it replaced the whole value).
    fields: frozenset[str] | None = None
    # A copy (cache fill, index sync, replica copy) of `copy_of`, a version of the same
    # logical fact from another representation; `source` is the read it copied, when known.
    copy_of: Version | None = None
    source: Read | None = None

    @property
    def committed(self) -> bool:
        return self.commit_ns is not None

    @property
    def start_ns(self) -> int:
        return self.obs.start_ns if self.effective_ns is None else self.effective_ns


class Read(NamedTuple):  # made by the thousand per check: a tuple is cheapest
    fact: str
    version: Version
    obs: Observation
