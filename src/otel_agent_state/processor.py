"""StateCoherenceSpanProcessor: adapts SDK spans to the pure ledger and reports anomalies.

It reads observations from span attributes (SPEC §3), attributes them to agents, feeds
the ledger, and reports each anomaly as a span, a span event and metrics (SPEC §4). It
never raises into the application and never blocks on I/O; our own anomaly spans are
never fed back into detection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import baggage, metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import adapter, genai_memory, runtime
from . import attributes as A
from .adapter import HINT_KEYS as _HINT_KEYS
from .adapter import NAMING_KEYS as _NAMING_KEYS
from .adapter import anomaly_attributes
from .core.config import Settings, get_settings
from .core.ledger import Ledger, LedgerLimits
from .core.model import (
    Anomaly,
    AnomalyKind,
    Observation,
    Scope,
    ScopeKind,
    Tier,
    TxnEnd,
    Write,
)
from .errors import StaleReadError

_log = logging.getLogger(__name__)

_MAX_OPEN_SPANS = 200_000
_MAX_COUNT_SERIES = 512
_SWEEP_EVERY_S = 1.0


@dataclass(slots=True)  # not frozen: built for every span, and frozen __init__ is slower
class _Ctx:
    """What a span inherits: its agent and the scopes it sits in (never changed once made;
    plain spans share their parent's)."""

    trace_id: str
    agent: str | None
    agent_scope: str | None
    decision: str | None
    mutation: str | None
    parent: str | None
    scope_kind: ScopeKind | None
    local_root: bool
    born: float = 0.0  # monotonic time of on_start, to forget spans that never end
    own_id: str | None = None  # the span this context was made for
    _children: _Ctx | None = None

    def for_children(self) -> _Ctx:
        """The context plain child spans share: same agent and scopes, neither root nor scope."""
        if self.scope_kind is None and not self.local_root:
            return self
        if self._children is None:
            self._children = _Ctx(
                trace_id=self.trace_id,
                agent=self.agent,
                agent_scope=self.agent_scope,
                decision=self.decision,
                mutation=self.mutation,
                parent=self.own_id,
                scope_kind=None,
                local_root=False,
                born=self.born,
                own_id=self.own_id,
            )
        return self._children


def _hex_span(value: int) -> str:
    return format(value, "016x")


def _hex_trace(value: int) -> str:
    return format(value, "032x")


def _context(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    if context is None:  # never for SDK spans; keeps the type honest
        return trace.INVALID_SPAN_CONTEXT
    return context


def _is_ours(span: ReadableSpan) -> bool:
    if not span.name.startswith(A.ANOMALY_SPAN_PREFIX):
        return False
    scope = span.instrumentation_scope
    return scope is not None and scope.name == A.SCOPE_NAME


def _after_fork(ref: weakref.ReferenceType[StateCoherenceSpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._reset_after_fork()


def _plain(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes for reading. `span.attributes` is a proxy over the SDK's
    BoundedAttributes, which takes a lock on every lookup: that was most of our per-span
    cost, so the backing dict is read directly (SDK pinned; test_processor checks this)."""
    backing = getattr(getattr(span, "_attributes", None), "_dict", None)
    if isinstance(backing, dict):
        return backing
    return dict(span.attributes or {})


def _baggage_agent(parent_context: Context | None) -> str | None:
    """The `gen_ai.agent.name` entry of the span's baggage (SPEC §3), if any."""
    value = baggage.get_baggage(A.GEN_AI_AGENT_NAME, parent_context)
    return value if isinstance(value, str) and value else None


def _str(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) and value else None


class StateCoherenceSpanProcessor(SpanProcessor):
    """Compares the state versions agents observed across one trace and reports anomalies.

    Add it to an SDK TracerProvider (`provider.add_span_processor(...)`); pass that provider
    as `tracer_provider` when it is not the global one, so anomaly spans go to its exporters.
    Metrics go through `meter_provider`, else the global MeterProvider.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._settings = settings
        s = self.settings
        self._ledger = Ledger(
            self._consistency_of,
            LedgerLimits(
                max_traces=s.max_traces,
                max_observations=s.max_observations,
                max_facts_per_trace=s.max_facts_per_trace,
                max_events_per_fact=s.max_events_per_fact,
                trace_ttl_ms=s.trace_ttl_ms,
                clock_skew_ms=s.clock_skew_ms,
            ),
        )
        self._tracer_provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        meter = (
            meter_provider.get_meter(A.SCOPE_NAME)
            if meter_provider is not None
            else metrics.get_meter(A.SCOPE_NAME)
        )
        self._anomalies = meter.create_counter(
            A.METRIC_ANOMALIES, unit="{anomaly}", description="State anomalies found"
        )
        self._lag = meter.create_histogram(
            A.METRIC_STALE_LAG,
            unit="ms",
            description="How long a newer version had been committed when a stale read missed it",
        )
        # Counted here and reported at collection time: a synchronous counter's add() per
        # observation cost about a sixth of the processor's time per observation span.
        self._observation_counts: dict[tuple[str, str, str], int] = {}
        self._counts_lock = threading.Lock()
        meter.create_observable_counter(
            A.METRIC_OBSERVATIONS,
            callbacks=[self._report_counts],
            unit="{observation}",
            description="State observations",
        )
        self._open: dict[int, _Ctx] = {}
        self._live: dict[int, Span] = {}  # scope spans and local roots, for span events
        self._early_closed: set[int] = set()
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        self._pid = str(os.getpid())
        self._shutdown = False
        runtime.register(self)
        if hasattr(os, "register_at_fork"):
            this = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork(this))

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> Settings:
        return self._settings if self._settings is not None else get_settings()

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def _consistency_of(self, fact: str) -> Any:
        return self.settings.consistency_for(fact)

    # ------------------------------------------------------------------ SpanProcessor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._on_start(span, parent_context)
        except Exception:
            _log.debug("on_start failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._on_end(span)
        except Exception:
            _log.debug("on_end failed", exc_info=True)

    def _reset_after_fork(self) -> None:
        """The child of a fork starts clean: new locks, no inherited spans or traces."""
        self._lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._observation_counts = {}  # the parent reports its own
        self._open = {}
        self._live = {}
        self._early_closed = set()
        self._pid = str(os.getpid())
        self._ledger.reset_after_fork()

    def close_all_traces(self) -> None:
        """Judge every live trace now, as at process exit (open scopes count as abandoned)."""
        try:
            self._emit(self._ledger.close_all())
        except Exception:
            _log.debug("closing live traces failed", exc_info=True)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self.close_all_traces()
        runtime.unregister(self)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # ------------------------------------------------------------------ attribution

    def _on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if _is_ours(span):
            return
        context = _context(span)
        attrs = _plain(span)
        parent = span.parent
        inherited = (
            self._open.get(parent.span_id) if parent is not None and not parent.is_remote else None
        )
        if (
            inherited is not None
            and A.STORE not in attrs
            and not any(key in attrs for key in _NAMING_KEYS)
            and (
                inherited.agent is not None
                or (
                    not any(key in attrs for key in _HINT_KEYS)
                    and self._ambient_agent(inherited.trace_id, parent) is None
                )
            )
        ):
            # The common case, a plain span inside tracked work: it inherits all there is.
            # One dict store is atomic under the GIL; the sweep iterates over a snapshot.
            if len(self._open) < _MAX_OPEN_SPANS:
                self._open[context.span_id] = inherited.for_children()
            return
        trace_id = _hex_trace(context.trace_id)
        span_id = _hex_span(context.span_id)
        scope_kind = self._scope_kind(attrs, span.name)
        base = (
            adapter.Attribution(
                inherited.agent, inherited.agent_scope, inherited.decision, inherited.mutation
            )
            if inherited is not None
            else adapter.NO_ATTRIBUTION
        )
        # Baggage (Pydantic AI puts the agent there; W3C baggage carries it across
        # processes) ranks after every span that names an agent: look only when none did.
        carried = _baggage_agent(parent_context) if base.agent is None else None
        found = adapter.attribute(base, attrs, span.name, span_id, scope_kind, carried)
        if found.agent is None:
            found = found._replace(agent=self._ambient_agent(trace_id, parent))
        agent = found.agent
        ctx = _Ctx(
            trace_id=trace_id,
            agent=agent,
            agent_scope=found.agent_scope,
            decision=found.decision,
            mutation=found.mutation,
            parent=_hex_span(parent.span_id) if parent is not None else None,
            scope_kind=scope_kind,
            local_root=parent is None or parent.is_remote,
            born=time.monotonic(),
            own_id=span_id,
        )
        with self._lock:
            if len(self._open) < _MAX_OPEN_SPANS:
                self._open[context.span_id] = ctx
                if scope_kind is not None or ctx.local_root:
                    self._live[context.span_id] = span
        if A.STORE in attrs:
            if A.GEN_AI_AGENT_NAME not in attrs:
                span.set_attribute(A.GEN_AI_AGENT_NAME, agent or self._service(span))
            # An operation that may write is in flight: reads ending meanwhile wait for it.
            self._emit(self._ledger.begin(trace_id, span_id, span.start_time or 0))
        if scope_kind is None:
            return
        if scope_kind == ScopeKind.DECISION:
            # SPEC §3: a tool call or decision records what its agent had read so far, so
            # every tool span is a decision trace with no code change.
            actor = found.agent_scope or f"agent:{agent or self._service(span)}"
            span.set_attribute(A.DECISION_INPUTS, self._ledger.reads_so_far(trace_id, actor))
        self._emit(self._ledger.add_scope(self._scope(span, ctx, scope_kind, agent, end_ns=None)))

    _scope_kind = staticmethod(adapter.scope_kind)

    def _ambient_agent(self, trace_id: str, parent: SpanContext | None) -> str | None:
        """The agent of the span current where this one started, when that is not its
        parent: a framework hint (SPEC §3). OpenLLMetry parents LangGraph's node spans on
        the graph's span, inside our own node span that names the node; its name only, as
        `check` reads it off the node's hint."""
        current = trace.get_current_span().get_span_context()
        if not current.is_valid or (parent is not None and current.span_id == parent.span_id):
            return None
        ctx = self._open.get(current.span_id)
        return ctx.agent if ctx is not None and ctx.trace_id == trace_id else None

    @staticmethod
    def _service(span: ReadableSpan) -> str:
        resource = span.resource
        name = resource.attributes.get("service.name") if resource is not None else None
        return str(name) if name else "unknown_service"

    def _process(self, span: ReadableSpan) -> str:
        resource = span.resource
        if resource is not None:
            instance = resource.attributes.get("service.instance.id")
            if instance:
                return str(instance)
        return f"{self._service(span)}/{self._pid}"

    def _scope(
        self,
        span: ReadableSpan,
        ctx: _Ctx,
        kind: ScopeKind,
        agent: str | None,
        end_ns: int | None,
        failed: bool = False,
    ) -> Scope:
        name = adapter.scope_name(_plain(span), span.name)
        parent_agent = ctx.agent_scope if kind != ScopeKind.AGENT else None
        return Scope(
            span_id=_hex_span(_context(span).span_id),
            trace_id=ctx.trace_id,
            kind=kind,
            agent=agent or self._service(span),
            start_ns=span.start_time or 0,
            end_ns=end_ns,
            failed=failed,
            parent_agent_scope=parent_agent,
            name=name,
        )

    # ------------------------------------------------------------------ ingestion

    def _on_end(self, span: ReadableSpan) -> None:
        if _is_ours(span):
            return
        context = _context(span)
        ctx = self._open.pop(context.span_id, None)
        attrs = _plain(span)
        if A.OP not in attrs and A.GEN_AI_OPERATION_NAME in attrs:  # another's memory span?
            attrs = genai_memory.observation_attributes(attrs) or attrs
        early = False
        if ctx is None:
            ctx = self._fallback_ctx(span)
        elif ctx.scope_kind is None and not ctx.local_root:
            if A.OP not in attrs and A.TXN_OUTCOME not in attrs:
                if A.STORE in attrs:  # begun in flight, ended with nothing observed
                    self._emit(self._ledger.finished(ctx.trace_id, _hex_span(context.span_id)))
                if any(key in attrs for key in _NAMING_KEYS):
                    self._late_decision(span, ctx, attrs)
                self._maybe_sweep()
                return  # a span with no state on it: nothing more to do
        else:
            with self._lock:
                self._live.pop(context.span_id, None)
                early = context.span_id in self._early_closed
                self._early_closed.discard(context.span_id)
        found: list[Anomaly] = []
        if A.OP in attrs:
            obs = self._observation(span, ctx, attrs=attrs)
            if obs is not None:
                self._count(obs)
                found.extend(self._ledger.add_observation(obs))
            elif A.STORE in attrs:
                found.extend(self._ledger.finished(ctx.trace_id, _hex_span(context.span_id)))
        elif A.STORE in attrs:
            found.extend(self._ledger.finished(ctx.trace_id, _hex_span(context.span_id)))
        ended_txn = adapter.txn_outcome(attrs) if A.TXN_OUTCOME in attrs else None
        if ended_txn is not None:
            txn_id, outcome = ended_txn
            found.extend(
                self._ledger.add_txn_end(
                    TxnEnd(
                        txn_id=txn_id,
                        span_id=_hex_span(context.span_id),
                        trace_id=ctx.trace_id,
                        outcome=outcome,  # type: ignore[arg-type]
                        end_ns=span.end_time or 0,
                        agent=ctx.agent or "",
                        start_ns=span.start_time,
                    )
                )
            )
        if ctx.scope_kind is not None and not early:
            found.extend(self._ledger.add_scope(self._ended_scope(span, ctx)))
        if ctx.local_root and not early:
            found.extend(self._ledger.close_trace(ctx.trace_id))
        self._emit(found)
        self._maybe_sweep()

    def _late_decision(self, span: ReadableSpan, ctx: _Ctx, attrs: Mapping[str, Any]) -> None:
        """A tool span that said so only when it ended (both LangChain instrumentations set
        their attributes then): its agent acted, as `check` sees it (SPEC §3). Reads inside
        it were not marked as the decision's; the act is what changes severity."""
        if self._scope_kind(attrs, span.name) != ScopeKind.DECISION:
            return
        named = adapter.agent_name(attrs, span.name)
        moved = named is not None and named != ctx.agent  # as adapter.attribute has it
        agent = named or ctx.agent or self._service(span)
        scope = Scope(
            span_id=_hex_span(_context(span).span_id),
            trace_id=ctx.trace_id,
            kind=ScopeKind.DECISION,
            agent=agent,
            start_ns=span.start_time or 0,
            end_ns=None,
            parent_agent_scope=None if moved else ctx.agent_scope,
            name=adapter.scope_name(attrs, span.name),
        )
        found = self._ledger.add_scope(scope)
        failed = adapter.scope_failed(
            attrs,
            span.status.status_code == StatusCode.ERROR,
            any(event.name == "exception" for event in span.events),
        )
        found.extend(
            self._ledger.add_scope(replace(scope, end_ns=span.end_time or 0, failed=failed))
        )
        self._emit(found)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            self._emit(self._ledger.close_expired())
            self._forget_stale_spans(now)

    def _forget_stale_spans(self, now: float) -> None:
        """Spans open longer than the trace TTL are never ending: stop tracking them."""
        horizon = now - self.settings.trace_ttl_ms / 1000
        with self._lock:
            stale = [key for key, ctx in list(self._open.items()) if ctx.born < horizon]
            for key in stale:
                self._open.pop(key, None)
                self._live.pop(key, None)
                self._early_closed.discard(key)

    def _ended_scope(self, span: ReadableSpan, ctx: _Ctx, end_ns: int | None = None) -> Scope:
        assert ctx.scope_kind is not None
        failed = adapter.scope_failed(
            _plain(span),
            span.status.status_code == StatusCode.ERROR,
            any(event.name == "exception" for event in span.events),
        )
        return self._scope(
            span,
            ctx,
            ctx.scope_kind,
            ctx.agent,
            end_ns=end_ns if end_ns is not None else span.end_time or 0,
            failed=failed,
        )

    def _fallback_ctx(self, span: ReadableSpan) -> _Ctx:
        """The context of a span we did not see start: what its own attributes say."""
        attrs = _plain(span)
        parent = span.parent
        kind = self._scope_kind(attrs, span.name)
        span_id = _hex_span(_context(span).span_id)
        found = adapter.attribute(adapter.NO_ATTRIBUTION, attrs, span.name, span_id, kind)
        return _Ctx(
            trace_id=_hex_trace(_context(span).trace_id),
            agent=found.agent,
            agent_scope=found.agent_scope,
            decision=found.decision,
            mutation=found.mutation,
            parent=_hex_span(parent.span_id) if parent is not None else None,
            scope_kind=kind,
            local_root=parent is None or parent.is_remote,
        )

    def _observation(
        self,
        span: ReadableSpan,
        ctx: _Ctx,
        end_ns: int | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> Observation | None:
        attrs = _plain(span) if attrs is None else attrs
        return adapter.observation(
            attrs,
            span_id=_hex_span(_context(span).span_id),
            trace_id=ctx.trace_id,
            agent=ctx.agent or _str(attrs, A.GEN_AI_AGENT_NAME) or self._service(span),
            start_ns=span.start_time or 0,
            end_ns=end_ns if end_ns is not None else span.end_time or 0,
            failed=span.status.status_code == StatusCode.ERROR if end_ns is None else False,
            process=self._process(span),
            agent_scope=ctx.agent_scope,
            decision=ctx.decision,
            mutation=ctx.mutation,
        )

    def _count(self, obs: Observation) -> None:
        key = (obs.op.value, obs.store, obs.tier.value)
        with self._counts_lock:
            counts = self._observation_counts
            if key not in counts and len(counts) >= _MAX_COUNT_SERIES:
                key = (key[0], "other", key[2])  # stores are free text: keep cardinality low
            counts[key] = counts.get(key, 0) + 1

    def _report_counts(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        with self._counts_lock:
            counts = list(self._observation_counts.items())
        return [
            metrics.Observation(n, {"op": op, "store": store, "tier": tier})
            for (op, store, tier), n in counts
        ]

    # ------------------------------------------------------------------ API hooks

    def before_scope_end(self, span: Any, failed: bool) -> None:
        """Called by our own scopes just before they end, while the span can still take events.

        Decisions record their inputs; local roots close the trace now, so anomalies found at
        close still have an open span to carry their events.
        """
        try:
            self._before_scope_end(span, failed)
        except Exception:
            _log.debug("before_scope_end failed", exc_info=True)

    def _before_scope_end(self, span: Span, failed: bool) -> None:
        span_id = _context(span).span_id
        with self._lock:
            ctx = self._open.get(span_id)
        if ctx is None or ctx.scope_kind is None:
            return
        if ctx.scope_kind == ScopeKind.DECISION:
            # What the agent had read when it started (set then), and what it read inside.
            before = _plain(span).get(A.DECISION_INPUTS)
            inputs = [*before] if isinstance(before, (list, tuple)) else []
            inputs += self._ledger.decision_inputs(ctx.trace_id, _hex_span(span_id))
            span.set_attribute(A.DECISION_INPUTS, list(dict.fromkeys(inputs)))
        now = time.time_ns()
        scope = self._ended_scope(span, ctx, end_ns=now)
        if failed:
            scope = replace(scope, failed=True)
        found = self._ledger.add_scope(scope)
        if ctx.local_root:
            found.extend(self._ledger.close_trace(ctx.trace_id))
        with self._lock:
            self._early_closed.add(span_id)
        self._emit(found)

    def attribute_agent(self, span: Any) -> None:
        """An open span that became an observation after it started (a contrib span we
        annotate): in flight from now, and named after its agent (`gen_ai.agent.name`)."""
        if not isinstance(span, Span) or not span.is_recording():
            return
        context = _context(span)
        with self._lock:
            ctx = self._open.get(context.span_id)
        if ctx is not None:  # now an operation that may write, in flight (SPEC §5 overlap)
            self._emit(
                self._ledger.begin(ctx.trace_id, _hex_span(context.span_id), span.start_time or 0)
            )
        if A.GEN_AI_AGENT_NAME in _plain(span):
            return
        agent = ctx.agent if ctx is not None else None
        span.set_attribute(A.GEN_AI_AGENT_NAME, agent or self._service(span))

    def enclosing_agent(self, span: Any) -> tuple[str, str | None] | None:
        """The agent of the open `span` (as its plain children inherit it) and the span id of
        its agent scope; None if this processor does not track `span` or no agent is known."""
        if not isinstance(span, Span):
            return None
        with self._lock:
            ctx = self._open.get(_context(span).span_id)
        if ctx is None or ctx.agent is None:
            return None
        return ctx.agent, ctx.agent_scope

    def guard_read(self, span: Any) -> None:
        """Raise mode: check the read on the still-open `span` before its value is returned."""
        if self.settings.on_anomaly != "raise" or not isinstance(span, Span):
            return
        attrs = _plain(span)
        if not attrs.get(A.READ_FACTS):
            return
        with self._lock:
            ctx = self._open.get(_context(span).span_id)
        if ctx is None:
            ctx = self._fallback_ctx(span)
        obs = self._observation(span, ctx, end_ns=time.time_ns())
        if obs is None:
            return
        found = [
            a
            for a in self._ledger.check_read(obs, around=self._ancestors(span))
            if a.kind == AnomalyKind.STALE_READ
        ]
        if not found:
            return
        self._emit(found)
        raise StaleReadError(found[0])

    def record_copies(self, span: Any) -> None:
        """SPEC §3 `agentstate.write.copy_of` on an open write span outside the primary tier:
        per written digest, the version its agent scope read of the fact from another tier
        (what the core derives at the span's end, made visible in the trace)."""
        if not isinstance(span, Span) or not span.is_recording():
            return
        attrs = _plain(span)
        facts, versions = attrs.get(A.WRITE_FACTS), attrs.get(A.WRITE_VERSIONS)
        tier = attrs.get(A.TIER)
        if not facts or not versions or tier in (None, "primary") or A.WRITE_COPY_OF in attrs:
            return
        with self._lock:
            ctx = self._open.get(_context(span).span_id)
        if ctx is None:
            return
        agent = ctx.agent or _str(attrs, A.GEN_AI_AGENT_NAME) or self._service(span)
        digests = [str(v).startswith("h:") for v in versions]
        if not any(digests):
            return
        try:
            tier_value = Tier(tier)
        except ValueError:
            return
        sources = self._ledger.copy_sources(
            ctx.trace_id,
            ctx.agent_scope or f"agent:{agent}",
            [str(f) for f in facts],
            str(attrs.get(A.STORE) or "unknown"),
            tier_value,
            span.start_time or 0,
        )
        sources = [src if digest else "" for src, digest in zip(sources, digests, strict=False)]
        if any(sources):
            span.set_attribute(A.WRITE_COPY_OF, sources)

    def _ancestors(self, span: Span) -> set[str]:
        """Span ids of the spans around `span` (an ORM's span around its driver's, a call's
        around its second tier's): operations that contain a read are not writes racing it.
        (Plain spans share their parent's context, so each step starts from a real parent.)"""
        out: set[str] = set()
        parent = span.parent
        key = parent.span_id if parent is not None and not parent.is_remote else None
        while key is not None and len(out) < 64:
            here = _hex_span(key)
            out.add(here)
            above = self._open.get(key)
            if above is None:
                break
            if above.own_id is not None and above.own_id != here:
                key = int(above.own_id, 16)  # a plain span: its context's owner is above it
            else:
                key = int(above.parent, 16) if above.parent is not None else None
        return out

    # ------------------------------------------------------------------ propagation

    def frontier(self, trace_id: str, limit: int) -> list[Write]:
        """The trace's latest committed write of each fact, most recent first (propagator)."""
        return self._ledger.latest_commits(trace_id, limit)

    def seed_frontier(self, writes: Sequence[Observation]) -> None:
        """Committed writes an upstream process made in this trace (propagator extract)."""
        try:
            self._emit(self._ledger.seed_writes(writes))
        except Exception:
            _log.debug("seeding the frontier failed", exc_info=True)

    # ------------------------------------------------------------------ reporting

    def _get_tracer(self) -> trace.Tracer:
        if self._tracer is None:
            provider = self._tracer_provider or trace.get_tracer_provider()
            self._tracer = provider.get_tracer(A.SCOPE_NAME)
        return self._tracer

    def _emit(self, anomalies: Sequence[Anomaly]) -> None:
        for anomaly in anomalies:
            try:
                self._report(anomaly)
            except Exception:
                _log.debug("reporting %s failed", anomaly.kind, exc_info=True)

    def _report(self, anomaly: Anomaly) -> None:
        attributes = anomaly_attributes(anomaly)
        trace_id = int(anomaly.trace_id, 16)
        parent = SpanContext(
            trace_id=trace_id,
            span_id=int(anomaly.span_id, 16),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        links = [
            Link(
                SpanContext(
                    trace_id=trace_id,
                    span_id=int(evidence, 16),
                    is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                ),
                {"agentstate.evidence": True},
            )
            for evidence in anomaly.evidence_span_ids
        ]
        anomaly_span = self._get_tracer().start_span(
            f"{A.ANOMALY_SPAN_PREFIX} {anomaly.kind.value}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        if anomaly.severity.value == "error":
            anomaly_span.set_status(Status(StatusCode.ERROR, anomaly.summary))
        anomaly_span.end()
        target = self._event_target(anomaly)
        if target is not None:
            target.add_event(A.ANOMALY_EVENT, attributes)
        labels = {
            "kind": anomaly.kind.value,
            "store": anomaly.store,
            "agent": anomaly.agents[0] if anomaly.agents else "unknown",
            "fact_rule": anomaly.fact_rule or self._rule_name(anomaly.fact),
        }
        self._anomalies.add(1, labels)
        if anomaly.kind == AnomalyKind.STALE_READ and anomaly.lag_ms is not None:
            self._lag.record(
                max(anomaly.lag_ms, 0.0), {"store": anomaly.store, "fact_rule": labels["fact_rule"]}
            )

    def _rule_name(self, fact: str) -> str:
        rule = self.settings.rule_for_fact(fact)
        return rule.name if rule is not None else "unmatched"

    def _event_target(self, anomaly: Anomaly) -> Span | None:
        """The still-open agent span, else the nearest open ancestor scope or local root."""
        with self._lock:
            if anomaly.agent_scope is not None:
                live = self._live.get(int(anomaly.agent_scope, 16))
                if live is not None and live.is_recording():
                    return live
            span_id: str | None = anomaly.agent_scope or anomaly.span_id
            for _ in range(64):
                if span_id is None:
                    break
                ctx = self._open.get(int(span_id, 16))
                if ctx is None:
                    break
                live = self._live.get(int(span_id, 16))
                if live is not None and live.is_recording():
                    return live
                span_id = ctx.parent
            for candidate in self._live.values():
                context = candidate.get_span_context()
                if (
                    _hex_trace(context.trace_id) == anomaly.trace_id
                    and candidate.is_recording()
                    and (candidate.parent is None or candidate.parent.is_remote)
                ):
                    return candidate
        return None


def active_processors() -> list[StateCoherenceSpanProcessor]:
    """The coherence processors of this process that are running (not shut down)."""
    return [
        hooks
        for hooks in tuple(runtime._registered)
        if isinstance(hooks, StateCoherenceSpanProcessor) and not hooks._shutdown
    ]


__all__ = ["StateCoherenceSpanProcessor", "active_processors", "anomaly_attributes"]
