"""AgentStatePropagator: carries a trace's state frontier across process boundaries.

Enable it next to the W3C propagators:

    OTEL_PROPAGATORS=tracecontext,baggage,agentstate

On inject (an outgoing request inside a trace) it writes the header `agentstate-frontier`
with the latest committed version of each fact the trace wrote in this process, most
recent commit first. On extract (an incoming request) it seeds this process's coherence
ledger for that trace with those writes, as committed writes of the upstream agent at
their upstream commit times, so a local read of an older version is a stale read found in
real time (and evidence links point at the upstream write span, in the same trace).

Header value (ASCII, see docs/across-processes.md):

    <trace-id 32 hex>,<entry>,<entry>,...
    entry = <fact>=<version>;<commit unix ns>;<write span id 16 hex>;<agent>;<process>

fact, version, agent and process are percent-encoded. Only fact keys, versions (ordinals,
timestamps or keyed digests), times, span ids and agent/service names leave the process:
never values. Size is bounded on both sides (MAX_FACTS entries, MAX_BYTES bytes); what
does not fit is left out, oldest commits first. A header that is malformed, oversized, or
for another trace is ignored: extract and inject never raise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from .core.model import FactVersion, Observation, Op, Tier, VersionError, parse_version

if TYPE_CHECKING:
    from .core.model import Write
    from .processor import StateCoherenceSpanProcessor

_log = logging.getLogger(__name__)

HEADER = "agentstate-frontier"
# Limits of what one request carries: the most recently committed facts first.
MAX_FACTS = 32
MAX_BYTES = 4096
# A header longer than this is not parsed at all (a sender with other limits, or garbage).
MAX_EXTRACT_BYTES = 8192
MAX_FIELD = 512  # longest fact key / version / agent / process accepted
# Store and tier of a seeded write in the local ledger (it came over the wire).
PROPAGATED_STORE = "propagated"

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_NS = re.compile(r"^[0-9]{1,19}$")
_SAFE = ":/*{}@!$'()+"  # kept readable; ',', ';', '=' and '%' are always encoded


def _enc(text: str) -> str:
    return quote(text, safe=_SAFE)


def encode_entry(
    fact: str, version: str, commit_ns: int, span_id: str, agent: str, process: str
) -> str:
    return f"{_enc(fact)}={_enc(version)};{commit_ns};{span_id};{_enc(agent)};{_enc(process)}"


def _trace_hex(context: Context | None) -> str | None:
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")


def _processors() -> list[StateCoherenceSpanProcessor]:
    # Imported late: the SDK-side processor module is not needed to parse a header.
    from .processor import active_processors

    return active_processors()


class AgentStatePropagator(TextMapPropagator):
    """`agentstate` in OTEL_PROPAGATORS (entry point group `opentelemetry_propagator`)."""

    def __init__(self, max_facts: int = MAX_FACTS, max_bytes: int = MAX_BYTES) -> None:
        self.max_facts = max(0, max_facts)
        self.max_bytes = max(0, max_bytes)

    @property
    def fields(self) -> set[str]:
        return {HEADER}

    # ------------------------------------------------------------------ inject

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        try:
            value = self.header_value(context)
            if value is not None:
                setter.set(carrier, HEADER, value)
        except Exception:
            _log.debug("agentstate inject failed", exc_info=True)

    def header_value(self, context: Context | None = None) -> str | None:
        """The header for the trace of `context` (None: no trace, or nothing written)."""
        trace_id = _trace_hex(context)
        if trace_id is None or self.max_facts == 0:
            return None
        writes: list[Write] = []
        for processor in _processors():
            writes.extend(processor.frontier(trace_id, self.max_facts))
        if not writes:
            return None
        writes.sort(key=lambda w: w.commit_ns or 0, reverse=True)
        parts = [trace_id]
        size = len(trace_id)
        seen: set[str] = set()
        for write in writes:
            if write.fact in seen or write.commit_ns is None:
                continue
            entry = encode_entry(
                write.fact,
                write.version.text,
                write.commit_ns,
                write.obs.span_id,
                write.obs.agent,
                write.obs.process,
            )
            if size + 1 + len(entry) > self.max_bytes:
                continue  # an older, shorter entry may still fit
            seen.add(write.fact)
            parts.append(entry)
            size += 1 + len(entry)
            if len(seen) >= self.max_facts:
                break
        return ",".join(parts) if len(parts) > 1 else None

    # ------------------------------------------------------------------ extract

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        try:
            values = getter.get(carrier, HEADER)
            if values:
                writes = parse_header(
                    values[0], _trace_hex(context), max_facts=max(self.max_facts, MAX_FACTS)
                )
                if writes:
                    for processor in _processors():
                        processor.seed_frontier(writes)
        except Exception:
            _log.debug("agentstate extract failed", exc_info=True)
        return context


def parse_header(
    value: object, expected_trace: str | None, *, max_facts: int = MAX_FACTS
) -> list[Observation]:
    """The committed writes a header carries, as observations for the local ledger.

    `expected_trace` is the trace the request continues (from traceparent); a header for
    another trace is ignored. With no trace in the context (agentstate listed before
    tracecontext), the header's own trace id is used. Bad entries are skipped one by one;
    a header that is not a string, is oversized or has a bad trace id gives nothing.
    """
    if not isinstance(value, str) or len(value) > MAX_EXTRACT_BYTES or not value.isascii():
        return []
    head, _, rest = value.partition(",")
    trace_id = head.strip().lower()
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        return []
    if expected_trace is not None and expected_trace != trace_id:
        return []
    out: list[Observation] = []
    seen: set[str] = set()
    for raw in _entries(rest):
        obs = _entry(raw, trace_id)
        if obs is None or obs.span_id in seen:
            continue
        seen.add(obs.span_id)
        out.append(obs)
        if len(out) >= max_facts:
            break
    return out


def _entries(rest: str) -> Iterable[str]:
    return (part.strip() for part in rest.split(",") if part.strip())


def _entry(raw: str, trace_id: str) -> Observation | None:
    fields = raw.split(";")
    if len(fields) != 5:
        return None
    pair, commit, span_id, agent, process = fields
    fact_enc, sep, version_enc = pair.partition("=")
    if not sep or not _NS.fullmatch(commit) or not _SPAN_ID.fullmatch(span_id):
        return None
    commit_ns = int(commit)
    if commit_ns <= 0 or commit_ns >= 1 << 63 or span_id == "0" * 16:
        return None
    try:
        fact, version_text, agent_name, origin = (
            unquote(text, errors="strict") for text in (fact_enc, version_enc, agent, process)
        )
    except UnicodeDecodeError:
        return None
    if not fact or any(len(x) > MAX_FIELD for x in (fact, version_text, agent_name, origin)):
        return None
    if not fact.isprintable() or not agent_name.isprintable() or not origin.isprintable():
        return None
    try:
        version = parse_version(version_text)
    except VersionError:
        return None
    return Observation(
        span_id=span_id,
        trace_id=trace_id,
        agent=agent_name or "upstream",
        op=Op.DELETE if version.is_none else Op.WRITE,
        start_ns=commit_ns,
        end_ns=commit_ns,
        writes=(FactVersion(fact, version),),
        store=PROPAGATED_STORE,
        tier=Tier.PRIMARY,
        committed=True,
        process=origin or f"upstream:{agent_name}",
    )


__all__ = ["HEADER", "MAX_BYTES", "MAX_FACTS", "AgentStatePropagator", "parse_header"]
