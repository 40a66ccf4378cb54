"""How span attributes become observations, scopes and anomaly attributes: the one definition
shared by the live span processor and the offline checker (`check`, `report`, `serve`).

Pure: attributes come in as a plain mapping, so SDK spans and spans decoded from OTLP JSON
go through the same code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

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
TOOL_OPERATION = "execute_tool"
# How other instrumentations name agents and tools (SPEC §3; NOTES.md says who does what).
OPENINFERENCE_KIND = "openinference.span.kind"  # AGENT / TOOL, with `agent.name`
TRACELOOP_KIND = "traceloop.span.kind"  # OpenLLMetry: agent / tool, `traceloop.entity.name`
TRACELOOP_ENTITY = "traceloop.entity.name"
AGENTOPS_KIND = "agentops.span.kind"  # agent, with `agent.name`
AGENT_NAME = "agent.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
# LangGraph and similar frameworks name the node that runs; a hint when nothing else does.
# (OpenLLMetry copies LangChain's run metadata into association properties; OpenInference
# keeps it in one `metadata` JSON string, read only when it mentions the node.)
FRAMEWORK_AGENT_HINTS = (
    "langgraph.node",
    "graph.node.name",
    "traceloop.association.properties.langgraph_node",
)
METADATA = "metadata"
_METADATA_NODE = "langgraph_node"
# Every attribute that can make a span name an agent or open a scope of its own: a span with
# none of them inherits its parent's attribution unchanged (the processor's fast path).
NAMING_KEYS = (
    A.GEN_AI_AGENT_NAME,
    A.GEN_AI_AGENT_ID,
    A.GEN_AI_OPERATION_NAME,
    OPENINFERENCE_KIND,
    TRACELOOP_KIND,
    AGENTOPS_KIND,
    A.SCOPE,
    A.DECISION_INTENT,
)
HINT_KEYS = (*FRAMEWORK_AGENT_HINTS, METADATA)
# Every attribute attribution reads: what `check` keeps of a span (besides ours).
ATTRIBUTION_KEYS = (*NAMING_KEYS, *HINT_KEYS, AGENT_NAME, TRACELOOP_ENTITY, GEN_AI_PROVIDER)
# Versions repeat (n:3 is n:3 on every span): parse each spelling once. Versions are immutable.
_parse = lru_cache(maxsize=4096)(parse_version)
_SCOPE_KINDS = {kind.value: kind for kind in ScopeKind}
_OPS = {op.value: op for op in Op}
_TIERS = {tier.value: tier for tier in Tier}


def str_attr(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) and value else None


def _lower(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value.lower() if isinstance(value, str) else None


def is_graph_span(attrs: Mapping[str, Any]) -> bool:
    """OpenLLMetry's LangGraph graph spans (`invoke_agent <graph>`, `<graph>.workflow`): it
    names the graph as the agent, but a graph's agents are its nodes (as our own LangGraph
    instrumentation and OpenInference have it), so these name no agent."""
    return str_attr(attrs, GEN_AI_PROVIDER) == "langgraph" and (
        str_attr(attrs, A.GEN_AI_OPERATION_NAME) in AGENT_OPERATIONS
        or _lower(attrs, TRACELOOP_KIND) == "workflow"
    )


def convention_agent(attrs: Mapping[str, Any], span_name: str = "") -> str | None:
    """The agent a span is the agent span of, by the OpenInference, OpenLLMetry or AgentOps
    conventions; None when it is not one (or names nothing)."""
    if _lower(attrs, OPENINFERENCE_KIND) == "agent":
        # openai-agents sets `agent.name` only when the span ends; its span name is the
        # agent's name from the start (and the same name offline, where both are there).
        return str_attr(attrs, AGENT_NAME) or span_name or None
    if _lower(attrs, TRACELOOP_KIND) == "agent" and not is_graph_span(attrs):
        # OpenLLMetry names the span `<agent>.agent` from the start (CrewAI's sets the name
        # attributes just after the span started).
        return (
            str_attr(attrs, TRACELOOP_ENTITY)
            or str_attr(attrs, A.GEN_AI_AGENT_NAME)
            or span_name.removesuffix(".agent")
            or None
        )
    if _lower(attrs, AGENTOPS_KIND) == "agent":
        return str_attr(attrs, AGENT_NAME) or str_attr(attrs, A.GEN_AI_AGENT_NAME)
    return None


def is_tool(attrs: Mapping[str, Any]) -> bool:
    """A tool call (SPEC §3: the agent acts): GenAI `execute_tool`, OpenInference TOOL,
    OpenLLMetry tool spans."""
    return (
        str_attr(attrs, A.GEN_AI_OPERATION_NAME) == TOOL_OPERATION
        or _lower(attrs, OPENINFERENCE_KIND) == "tool"
        or _lower(attrs, TRACELOOP_KIND) == "tool"
    )


def scope_kind(attrs: Mapping[str, Any], span_name: str = "") -> ScopeKind | None:
    """The scope a span opens: declared by our API, an agent span by any convention SPEC §3
    lists, a decision (`agentstate.decision.intent`), or a tool call (a decision of its
    agent)."""
    if A.SCOPE not in attrs and A.GEN_AI_OPERATION_NAME not in attrs and A.STORE in attrs:
        return None  # an observation span (the common case), as the branches below decide
    declared = str_attr(attrs, A.SCOPE)
    if declared is not None and declared in _SCOPE_KINDS:
        return _SCOPE_KINDS[declared]
    if A.DECISION_INTENT in attrs:
        return ScopeKind.DECISION
    if A.STORE in attrs:
        return None
    if is_tool(attrs):
        return ScopeKind.DECISION
    if is_graph_span(attrs):
        return None
    operation = str_attr(attrs, A.GEN_AI_OPERATION_NAME)
    if operation in AGENT_OPERATIONS and (
        A.GEN_AI_AGENT_NAME in attrs or A.GEN_AI_AGENT_ID in attrs
    ):
        return ScopeKind.AGENT
    if convention_agent(attrs, span_name) is not None:
        return ScopeKind.AGENT
    if (
        operation is None
        and A.GEN_AI_AGENT_NAME in attrs
        and not any(key in attrs for key in (OPENINFERENCE_KIND, TRACELOOP_KIND, AGENTOPS_KIND))
    ):
        return ScopeKind.AGENT
    return None


def agent_name(attrs: Mapping[str, Any], span_name: str = "") -> str | None:
    """The agent a span names, by any convention: an agent span's name, or `gen_ai.agent.name`
    / `gen_ai.agent.id` on any span (`execute_tool`, `chat`, ...)."""
    if is_graph_span(attrs):
        return None
    return (
        convention_agent(attrs, span_name)
        or str_attr(attrs, A.GEN_AI_AGENT_NAME)
        or str_attr(attrs, A.GEN_AI_AGENT_ID)
    )


def framework_agent(attrs: Mapping[str, Any]) -> str | None:
    """A framework's hint at the agent (a LangGraph node name), when nothing names one."""
    hint = next(filter(None, (str_attr(attrs, k) for k in FRAMEWORK_AGENT_HINTS)), None)
    if hint is not None:
        return hint
    metadata = attrs.get(METADATA)
    if isinstance(metadata, str) and _METADATA_NODE in metadata:
        try:
            node = json.loads(metadata).get(_METADATA_NODE)
        except (ValueError, AttributeError):
            return None
        return node if isinstance(node, str) and node else None
    return None


class Attribution(NamedTuple):
    """What a span inherits: its agent and the scopes it sits in (SPEC §3)."""

    agent: str | None = None
    agent_scope: str | None = None  # span id of the agent span, if any
    decision: str | None = None
    mutation: str | None = None


NO_ATTRIBUTION = Attribution()


def attribute(
    parent: Attribution,
    attrs: Mapping[str, Any],
    span_name: str,
    span_id: str,
    kind: ScopeKind | None,
    baggage_agent: str | None = None,
) -> Attribution:
    """A span's attribution from its parent's (SPEC §3), first match wins: the nearest agent
    scope, explicit `agent()` or any convention's agent span, or span that names an agent →
    the `gen_ai.agent.name` baggage entry (live only) → a framework hint → None (the caller
    falls back to `service.name`). The one rule the live processor and `check` share."""
    agent, agent_scope, decision, mutation = parent
    if kind == ScopeKind.AGENT:
        agent = agent_name(attrs, span_name) or agent
        agent_scope, decision, mutation = span_id, None, None
    else:
        named = agent_name(attrs, span_name)
        if named is not None and named != agent:
            # A tool or model span of another agent than the one around it (ADK makes the
            # tool span current, not its agent span): that agent, with no agent span.
            agent, agent_scope = named, None
        if kind == ScopeKind.DECISION:
            decision = span_id
        elif kind == ScopeKind.MUTATION:
            mutation = span_id
    if agent is None:
        agent = baggage_agent or framework_agent(attrs)
    return Attribution(agent, agent_scope, decision, mutation)


def scope_name(attrs: Mapping[str, Any], span_name: str) -> str:
    return (
        str_attr(attrs, A.MUTATION_NAME)
        or str_attr(attrs, A.DECISION_INTENT)
        or (span_name if is_tool(attrs) else None)  # a tool call is named after its tool
        or agent_name(attrs, span_name)
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
    writes = pairs(write_facts, get(A.WRITE_VERSIONS), write_fields) if write_facts else ()
    consistency = get(A.CONSISTENCY)
    return Observation(
        span_id=span_id,
        trace_id=trace_id,
        agent=agent,
        op=op,
        start_ns=start_ns,
        end_ns=end_ns,
        reads=pairs(read_facts, get(A.READ_VERSIONS)) if read_facts else (),
        writes=writes,
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
        consistency=consistency if type(consistency) is str and consistency else None,
        copy_of=_copy_of(get(A.WRITE_COPY_OF), write_facts, len(writes)) if writes else (),
    )


def _copy_of(value: object, facts: object, kept: int) -> tuple[str, ...]:
    """`agentstate.write.copy_of` when it lines up with every write kept; else () (the core
    derives copies from the agent's reads then)."""
    items, fact_list = _array(value), _array(facts)
    if items is None or fact_list is None or not (len(items) == len(fact_list) == kept):
        return ()
    return tuple(item if type(item) is str else "" for item in items)


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
