"""How span attributes become observations, scopes and anomaly attributes: the one definition
shared by the live span processor and the offline checker (`check`, `report`, `serve`).

Pure: attributes come in as a plain mapping, so SDK spans and spans decoded from OTLP JSON
go through the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from . import attributes as A
from .core.model import (
    Anomaly,
    FactVersion,
    Observation,
    Op,
    ScopeKind,
    Tier,
    VersionError,
    parse_version,
)

_log = logging.getLogger(__name__)

# Spans that open an agent scope when they carry gen_ai.agent.* (GenAI conventions).
AGENT_OPERATIONS = ("invoke_agent", "create_agent")
# LangGraph and similar frameworks name the node that runs; a hint when nothing else does.
FRAMEWORK_AGENT_HINTS = ("langgraph.node", "graph.node.name")
# Versions repeat (n:3 is n:3 on every span): parse each spelling once. Versions are immutable.
_parse = lru_cache(maxsize=4096)(parse_version)
_SCOPE_KINDS = {kind.value: kind for kind in ScopeKind}
_OPS = {op.value: op for op in Op}
_TIERS = {tier.value: tier for tier in Tier}


def str_attr(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) and value else None


def scope_kind(attrs: Mapping[str, Any]) -> ScopeKind | None:
    """The scope a span opens: declared by our API, or an agent span by GenAI conventions."""
    if A.SCOPE not in attrs and A.GEN_AI_OPERATION_NAME not in attrs and A.STORE in attrs:
        return None  # an observation span (the common case), as the branches below decide
    declared = str_attr(attrs, A.SCOPE)
    if declared is not None and declared in _SCOPE_KINDS:
        return _SCOPE_KINDS[declared]
    operation = str_attr(attrs, A.GEN_AI_OPERATION_NAME)
    if operation in AGENT_OPERATIONS and (
        A.GEN_AI_AGENT_NAME in attrs or A.GEN_AI_AGENT_ID in attrs
    ):
        return ScopeKind.AGENT
    if operation is None and A.STORE not in attrs and A.GEN_AI_AGENT_NAME in attrs:
        return ScopeKind.AGENT
    return None


def agent_name(attrs: Mapping[str, Any]) -> str | None:
    return str_attr(attrs, A.GEN_AI_AGENT_NAME) or str_attr(attrs, A.GEN_AI_AGENT_ID)


def framework_agent(attrs: Mapping[str, Any]) -> str | None:
    return next(filter(None, (str_attr(attrs, k) for k in FRAMEWORK_AGENT_HINTS)), None)


def scope_name(attrs: Mapping[str, Any], span_name: str) -> str:
    return (
        str_attr(attrs, A.MUTATION_NAME)
        or str_attr(attrs, A.DECISION_INTENT)
        or agent_name(attrs)
        or span_name
    )


def scope_failed(attrs: Mapping[str, Any], status_error: bool, exception_event: bool) -> bool:
    """A scope failed: error status, an exception event, or an explicit rollback outcome."""
    return status_error or exception_event or str_attr(attrs, A.MUTATION_OUTCOME) == "rollback"


def txn_outcome(attrs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(txn id, outcome) when the span ends a transaction."""
    outcome = str_attr(attrs, A.TXN_OUTCOME)
    txn_id = str_attr(attrs, A.TXN_ID)
    if outcome in ("commit", "rollback") and txn_id:
        return txn_id, outcome
    return None


def observation(
    attrs: Mapping[str, Any],
    *,
    span_id: str,
    trace_id: str,
    agent: str,
    start_ns: int,
    end_ns: int,
    failed: bool,
    process: str,
    agent_scope: str | None = None,
    decision: str | None = None,
    mutation: str | None = None,
) -> Observation | None:
    """The observation a span's SPEC §3 attributes describe; None when `agentstate.op` is
    missing or unknown. Bad versions are dropped one by one (never the whole span)."""
    get = attrs.get
    raw_op = get(A.OP)
    op = _OPS.get(raw_op) if type(raw_op) is str else None
    if op is None:
        if raw_op is not None:
            _log.debug("span %s has an unknown %s", span_id, A.OP)
        return None
    raw_tier = get(A.TIER)
    tier = _TIERS.get(raw_tier, Tier.PRIMARY) if type(raw_tier) is str else Tier.PRIMARY
    committed = get(A.COMMITTED)
    store = get(A.STORE)
    txn_id = get(A.TXN_ID)
    read_facts = get(A.READ_FACTS)
    write_facts = get(A.WRITE_FACTS)
    write_fields = get(A.WRITE_FIELDS) if write_facts else None
    return Observation(
        span_id=span_id,
        trace_id=trace_id,
        agent=agent,
        op=op,
        start_ns=start_ns,
        end_ns=end_ns,
        reads=pairs(read_facts, get(A.READ_VERSIONS)) if read_facts else (),
        writes=pairs(write_facts, get(A.WRITE_VERSIONS), write_fields) if write_facts else (),
        store=store if type(store) is str and store else "unknown",
        tier=tier,
        agent_scope=agent_scope,
        decision=decision,
        mutation=mutation,
        txn_id=txn_id if type(txn_id) is str and txn_id else None,
        committed=committed if isinstance(committed, bool) else True,
        failed=failed,
        applied=committed is True,
        process=process,
    )


def pairs(facts: object, versions: object, fields: object = None) -> tuple[FactVersion, ...]:
    """Parallel `facts` / `versions` (and for writes `agentstate.write.fields`) arrays as
    (fact, version, fields) triples. Fields that do not line up are ignored: whole writes."""
    fact_list, version_list = _array(facts), _array(versions)
    if fact_list is None or version_list is None:
        return ()
    merged = _array(fields) if fields is not None else None
    if merged is not None and len(merged) != len(fact_list):
        merged = None
    out = []
    for index, (fact, version) in enumerate(zip(fact_list, version_list, strict=False)):
        pair = _pair(fact, version, decode_fields(merged[index]) if merged else None)
        if pair is not None:
            out.append(pair)
    return tuple(out)


def _array(value: object) -> Sequence[object] | None:
    """A span attribute array (list or tuple from the SDK and OTLP, or another non-text
    sequence) as a sequence; None for anything else."""
    if type(value) is list or type(value) is tuple:
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return value
    return None


def _pair(
    fact: object, version: object, fields: frozenset[str] | None = None
) -> FactVersion | None:
    """One fact and the version it was read or written at; None (logged) when either is
    not text or the version is malformed: that pair is dropped, never the span."""
    if not isinstance(fact, str) or not isinstance(version, str):
        return None
    try:
        return FactVersion(fact, _parse(version), fields)
    except VersionError:
        _log.debug("ignoring bad version %r of %s", version, fact)
        return None


# Bounds of one `agentstate.write.fields` element; beyond them the write counts as whole.
MAX_FIELDS = 64
MAX_FIELDS_CHARS = 2_048


def encode_fields(names: object) -> str:
    """One `agentstate.write.fields` element: the field names a merge write set, sorted,
    comma-separated, `%` and `,` percent-encoded. "" (a whole-value write) when there are
    none, too many, or a name is empty or not text."""
    if not isinstance(names, (set, frozenset, list, tuple)) or not names:
        return ""
    if len(names) > MAX_FIELDS:
        return ""
    parts = []
    for name in names:
        if not isinstance(name, str) or not name:
            return ""
        parts.append(name.replace("%", "%25").replace(",", "%2C"))
    text = ",".join(sorted(set(parts)))
    return text if len(text) <= MAX_FIELDS_CHARS else ""


def decode_fields(value: object) -> frozenset[str] | None:
    """The fields of one `agentstate.write.fields` element (None: the whole value). The
    names stay encoded: they are only compared with each other."""
    if not isinstance(value, str) or not value:
        return None
    return frozenset(value.split(","))


def anomaly_attributes(anomaly: Anomaly) -> dict[str, Any]:
    """The SPEC §4 attributes shared by the anomaly span and the span event."""
    attrs: dict[str, Any] = {
        A.ANOMALY_KIND: anomaly.kind.value,
        A.ANOMALY_FACT: anomaly.fact,
        A.ANOMALY_OBSERVED: anomaly.observed_version,
        A.ANOMALY_EXPECTED: anomaly.expected_version,
        A.ANOMALY_AGENTS: list(anomaly.agents),
        A.ANOMALY_SEVERITY: anomaly.severity.value,
        A.ANOMALY_SUMMARY: anomaly.summary,
    }
    if anomaly.lag_ms is not None:
        attrs[A.ANOMALY_LAG_MS] = anomaly.lag_ms
    return attrs
