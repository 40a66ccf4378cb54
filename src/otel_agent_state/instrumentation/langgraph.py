"""LangGraph instrumentation: graph nodes as agents, checkpoint channels as facts (SPEC §3).

`LangGraphInstrumentor().instrument(tracer_provider=...)` makes every node run an agent span
(`invoke_agent <agent>`, `gen_ai.operation.name=invoke_agent`, `gen_ai.agent.name`,
`langgraph.node`), and, for graphs compiled with a checkpointer, records the thread's state:

- a fact per channel of a thread (and checkpoint namespace):
  `langgraph:<thread_id>/<channel>`, or `langgraph:<thread_id>/<checkpoint_ns>/<channel>`
  inside a subgraph (channel versions only order within one namespace);
- versions are the channel versions of the checkpoint as ordinals `n:<int>`: ints as they
  are, floats floored, strings by their leading integer (InMemorySaver / SqliteSaver write
  `"00000000000000000000000000000007.0.1234..."`, i.e. `n:7`); other values become
  equality-only digests;
- a node reads the channels it subscribes to at the versions of the checkpoint its superstep
  started from (recorded when it starts, checked by the read guard before it runs);
- its writes get the versions `apply_writes` gives them at the end of the superstep and
  belong to that superstep's transaction, which commits when the checkpointer's `put` of the
  checkpoint returns. A channel several nodes wrote in one superstep (a reducer merged them)
  is one write of the merge, not one per node;
- `update_state` / `bulk_update_state` are read-modify-writes of the caller (the channels it
  updates, at the versions of the checkpoint it loaded), committed when they return.

The agent of a node, first match wins (SPEC §3): an explicit `agent()` scope or a GenAI agent
span around the graph call → the node name (a framework hint) → `service.name`. Our own node
spans are hints, so nodes of a subgraph are named after themselves.

Seams (LangGraph has no tracing hooks of its own): `run_with_retry` / `arun_with_retry` as
the runner calls them (node runs, in the task's thread or asyncio task), `PregelLoop.tick`
(the tasks of a superstep and the checkpoint they read), `apply_writes` (new versions),
`_checkpointer_put_after_previous` (the put), the loops' exit, and `bulk_update_state`.
Nothing of ours raises into the graph except `StaleReadError` in raise mode.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__, runtime
from .. import attributes as A
from ..core.config import get_settings
from ..core.model import NONE_VERSION, Op
from ..errors import StaleReadError
from ._steps import CALL, Body, adrive, drive
from ._wrapping import Wrapped, unwrap_all

_log = logging.getLogger(__name__)

STORE = "langgraph"
_VERSION = __version__
_INSTRUMENTS = ("langgraph >= 1.0, < 2",)
_MAX_PLANS = 10_000

# Span attributes of ours (beyond the SPEC table), for people reading traces.
NODE = "langgraph.node"  # also a framework agent hint to the processor
THREAD_ID = "langgraph.thread_id"
CHECKPOINT_NS = "langgraph.checkpoint_ns"
STEP = "langgraph.step"
TASK_ID = "langgraph.task_id"
AS_NODE = "langgraph.as_node"

# Channels LangGraph keeps for itself (start, routing, joins, pushes): not state.
_INTERNAL_PREFIXES = ("__", "branch:", "join:")
_LEADING_INT = re.compile(r"\s*(\d+)")
_CONF = "configurable"


def is_state_channel(name: object) -> bool:
    return isinstance(name, str) and bool(name) and not name.startswith(_INTERNAL_PREFIXES)


def channel_fact(thread_id: str, checkpoint_ns: str, channel: str) -> str:
    """The physical fact key of a thread's channel (before fact rules)."""
    if checkpoint_ns:
        return f"{STORE}:{thread_id}/{checkpoint_ns}/{channel}"
    return f"{STORE}:{thread_id}/{channel}"


def ordinal(value: object) -> int | None:
    """The ordinal of a LangGraph channel version (int, float, or a string such as
    `"00000000000000000000000000000002.0.5891..."`), None when it has none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return math.floor(value) if math.isfinite(value) else None
    if isinstance(value, str):
        found = _LEADING_INT.match(value)
        return int(found.group(1)) if found else None
    return None


def version_text(value: object) -> str:
    """SPEC version of a channel version: `n:<ordinal>`, `none` (never written), else an
    equality-only keyed digest."""
    if value is None:
        return NONE_VERSION
    number = ordinal(value)
    if number is not None:
        return f"n:{number}"
    return get_settings().digest(repr(value).encode())


def _thread_of(config: Mapping[str, Any] | None) -> tuple[str, str] | None:
    conf = config.get(_CONF) if isinstance(config, Mapping) else None
    if not isinstance(conf, Mapping):
        return None
    thread = conf.get("thread_id")
    if thread is None:
        return None
    ns = conf.get("checkpoint_ns") or ""
    return str(thread), str(ns)


def _channel_names(channels: object) -> list[str]:
    if isinstance(channels, str):
        return [channels]
    if isinstance(channels, Mapping):
        return [str(c) for c in channels.values()]
    if isinstance(channels, Iterable):
        return [c for c in channels if isinstance(c, str)]
    return []


# --------------------------------------------------------------------------- bookkeeping


class _Frame(NamedTuple):
    """Our innermost node span in this context, and the explicit agent it ran under."""

    span_id: str
    explicit: str | None


_FRAME: ContextVar[_Frame | None] = ContextVar("agentstate_langgraph_frame", default=None)
_LOOP: ContextVar[Any] = ContextVar("agentstate_langgraph_loop", default=None)
_UPDATE: ContextVar[_Update | None] = ContextVar("agentstate_langgraph_update", default=None)


@dataclass
class _Txn:
    """The writes one superstep applied: committed by the put of its checkpoint."""

    txn_id: str
    step: int
    context: otel_context.Context
    thread_id: str
    checkpoint_ns: str


@dataclass
class _NodeRun:
    span: Span
    task_id: str
    node: str
    loop: _LoopState | None = None
    returned_ns: int | None = None


@dataclass
class _LoopState:
    thread_id: str
    checkpoint_ns: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    txns: list[_Txn] = field(default_factory=list)
    runs: dict[str, _NodeRun] = field(default_factory=dict)  # returned, writes not applied


@dataclass
class _Plan:
    """What a task of a superstep reads, prepared at `tick`."""

    loop: _LoopState
    step: int
    facts: list[str]
    versions: list[str]


@dataclass
class _Update:
    """Writes that `bulk_update_state` applies; committed when it returns."""

    start_ns: int
    thread_id: str
    checkpoint_ns: str
    as_nodes: list[str]
    versions: dict[str, object] = field(default_factory=dict)
    based_on: dict[str, object] = field(default_factory=dict)  # as loaded from the thread


def _span_hex(span: Span) -> str:
    return format(span.get_span_context().span_id, "016x")


class _Tracker:
    """State shared by the wrappers of one instrumentation."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._loops: weakref.WeakKeyDictionary[Any, _LoopState] = weakref.WeakKeyDictionary()
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loops

    def loop_state(self, loop: Any, create: bool = True) -> _LoopState | None:
        if getattr(loop, "checkpointer", None) is None:
            return None  # no checkpointer: the state lives and dies with the run
        with self._lock:
            state = self._loops.get(loop)
            if state is None and create:
                where = _thread_of(getattr(loop, "config", None))
                if where is None:
                    return None
                state = _LoopState(*where)
                self._loops[loop] = state
            return state

    def planned(self, loop: Any) -> None:
        """After `tick`: what each task of the superstep reads, at the checkpoint's versions."""
        state = self.loop_state(loop)
        if state is None:
            return
        checkpoint = loop.checkpoint
        versions: Mapping[str, object] = checkpoint.get("channel_versions") or {}
        nodes: Mapping[str, Any] = getattr(loop, "nodes", {}) or {}
        step = int(getattr(loop, "step", 0))
        settings = get_settings()
        plans: list[tuple[str, _Plan]] = []
        for task in list(loop.tasks.values()):
            if task.writes:
                continue  # replayed from pending writes: it does not run
            facts: list[str] = []
            texts: list[str] = []
            path = getattr(task, "path", ())
            node = nodes.get(task.name)
            if node is not None and path and path[0] == "__pregel_pull":
                for channel in dict.fromkeys(_channel_names(getattr(node, "channels", ()))):
                    if not is_state_channel(channel):
                        continue
                    fact = channel_fact(state.thread_id, state.checkpoint_ns, channel)
                    facts.append(settings.resolve(fact).key)
                    texts.append(version_text(versions.get(channel)))
            plans.append((task.id, _Plan(state, step, facts, texts)))
        with self._lock:
            for task_id, plan in plans:
                self._plans[task_id] = plan
                self._plans.move_to_end(task_id)
            while len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)

    def take_plan(self, task_id: str) -> _Plan | None:
        with self._lock:
            return self._plans.pop(task_id, None)

    # ------------------------------------------------------------------ graph runs

    def start_graph(self, graph: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Span:
        name = getattr(graph, "name", None) or "LangGraph"
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: "invoke_workflow",
            A.SCOPE: "workflow",
            "langgraph.graph": str(name),
        }
        where = _thread_of(args[1] if len(args) > 1 else kwargs.get("config"))
        if where is not None:
            attrs[THREAD_ID] = where[0]
            if where[1]:
                attrs[CHECKPOINT_NS] = where[1]
        return self.tracer.start_span(
            f"invoke_workflow {name}", kind=SpanKind.INTERNAL, attributes=attrs
        )

    @staticmethod
    def end_graph(span: Span, exc: BaseException | None) -> None:
        try:
            if exc is not None and not _is_bubble_up(exc):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            # A root graph span closes the trace's checks; let findings land on it first.
            runtime.before_scope_end(span, exc is not None and not _is_bubble_up(exc))
            span.end()
        except Exception:
            _log.debug("cannot end graph span", exc_info=True)

    # ------------------------------------------------------------------ node runs

    def start_node(self, task: Any) -> tuple[_NodeRun, _Plan | None, _Frame] | None:
        name = getattr(task, "name", None)
        if not isinstance(name, str) or name.startswith("__"):
            return None  # __start__ and other internal nodes are the framework, not agents
        task_id = str(getattr(task, "id", ""))
        plan = self.take_plan(task_id)
        explicit = self._explicit_agent()
        agent = explicit or name
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: "invoke_agent",
            A.GEN_AI_AGENT_NAME: agent,
            NODE: name,
            TASK_ID: task_id,
        }
        where = (
            (plan.loop.thread_id, plan.loop.checkpoint_ns)  # the graph's namespace, not the task's
            if plan is not None
            else _thread_of(getattr(task, "config", None))
        )
        if where is not None:
            attrs[THREAD_ID] = where[0]
            if where[1]:
                attrs[CHECKPOINT_NS] = where[1]
        if plan is not None:
            attrs[STEP] = plan.step
        span = self.tracer.start_span(
            f"invoke_agent {agent}", kind=SpanKind.INTERNAL, attributes=attrs
        )
        run = _NodeRun(span, task_id, name, plan.loop if plan is not None else None)
        return run, plan, _Frame(_span_hex(span), explicit)

    @staticmethod
    def _explicit_agent() -> str | None:
        """An agent() scope or GenAI agent span around this node (not one of our nodes)."""
        parent = trace.get_current_span()
        if not parent.is_recording():
            return None
        found = runtime.enclosing_agent(parent)
        if found is None:
            return None
        agent, scope = found
        frame = _FRAME.get()
        if scope is None:
            return None  # a framework hint above: the node's own name is nearer
        if frame is not None and scope == frame.span_id:
            return frame.explicit  # our enclosing node: keep what it ran under
        return agent

    def read(self, run: _NodeRun, plan: _Plan | None) -> None:
        """The node's read of its channels; in raise mode a stale one raises here."""
        if plan is None or not plan.facts:
            return
        try:
            span = self.tracer.start_span(
                f"agentstate.read {STORE}",
                context=trace.set_span_in_context(run.span),
                kind=SpanKind.CLIENT,
                attributes={
                    A.STORE: STORE,
                    A.TIER: "primary",
                    A.OP: Op.READ.value,
                    A.READ_FACTS: plan.facts,
                    A.READ_VERSIONS: plan.versions,
                    A.CONSISTENCY: get_settings().consistency_label(plan.facts),
                    NODE: run.node,
                    STEP: plan.step,
                },
            )
        except Exception:
            _log.debug("cannot record the read of node %s", run.node, exc_info=True)
            return
        try:
            runtime.guard_read(span)
        except StaleReadError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    def node_failed(self, run: _NodeRun, exc: BaseException) -> None:
        try:
            span = run.span
            if _is_bubble_up(exc):  # interrupt() / Command(graph=PARENT): control flow
                span.set_attribute("langgraph.interrupted", True)
            else:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
        except Exception:
            _log.debug("cannot end node span", exc_info=True)

    def node_returned(self, run: _NodeRun) -> None:
        """Keep the span open until the superstep applies its writes (they are its acts)."""
        try:
            run.returned_ns = time.time_ns()
            state = run.loop
            if state is not None:
                with state.lock:
                    state.runs[run.task_id] = run
                return
            run.span.end()
        except Exception:
            _log.debug("cannot end node span", exc_info=True)

    @staticmethod
    def _end_run(run: _NodeRun) -> None:
        run.span.end(end_time=run.returned_ns)  # when the node returned, not when applied

    # ------------------------------------------------------------------ writes and commits

    def applied(
        self, loop: Any, before: Mapping[str, object], checkpoint: Any, tasks: Sequence[Any]
    ) -> None:
        """After `apply_writes` in a loop: record each node's writes and end its span."""
        state = self.loop_state(loop)
        if state is None:
            return
        after: Mapping[str, object] = checkpoint.get("channel_versions") or {}
        changed = {c: v for c, v in after.items() if before.get(c) != v and is_state_channel(c)}
        writers: dict[str, list[Any]] = {}
        for task in tasks:
            for channel, _ in getattr(task, "writes", ()):
                if channel not in changed:
                    continue
                found = writers.setdefault(channel, [])
                if not any(other is task for other in found):
                    found.append(task)
        step = int(getattr(loop, "step", 0))
        txn = _Txn(
            f"{STORE}:{state.thread_id}/{state.checkpoint_ns}#{uuid.uuid4().hex}",
            step,
            otel_context.get_current(),
            state.thread_id,
            state.checkpoint_ns,
        )
        recorded = False
        left = dict(changed)
        for task in tasks:
            task_id = getattr(task, "id", None)
            with state.lock:
                run = state.runs.pop(task_id, None) if isinstance(task_id, str) else None
            if run is None:
                continue
            own = {c: changed[c] for c, ws in writers.items() if len(ws) == 1 and ws[0] is task}
            for channel in own:
                left.pop(channel, None)
            try:
                if own:
                    self._write(
                        state, txn, own, trace.set_span_in_context(run.span), run.node, step
                    )
                    recorded = True
            finally:
                self._end_run(run)
        if left:
            names = sorted({getattr(t, "name", "") for c in left for t in writers.get(c, ())})
            hint = "+".join(n for n in names if n and not n.startswith("__")) or None
            self._write(state, txn, left, None, hint, step)
            recorded = True
        if recorded:
            with state.lock:
                state.txns.append(txn)

    def _write(
        self,
        state: _LoopState,
        txn: _Txn,
        versions: Mapping[str, object],
        context: otel_context.Context | None,
        node: str | None,
        step: int,
    ) -> None:
        settings = get_settings()
        channels = sorted(versions)
        attrs: dict[str, Any] = {
            A.STORE: STORE,
            A.TIER: "primary",
            A.OP: Op.WRITE.value,
            A.WRITE_FACTS: [
                settings.resolve(channel_fact(state.thread_id, state.checkpoint_ns, c)).key
                for c in channels
            ],
            A.WRITE_VERSIONS: [version_text(versions[c]) for c in channels],
            A.TXN_ID: txn.txn_id,
            A.COMMITTED: False,
            THREAD_ID: state.thread_id,
            STEP: step,
        }
        if state.checkpoint_ns:
            attrs[CHECKPOINT_NS] = state.checkpoint_ns
        if node:
            attrs[NODE] = node
        self.tracer.start_span(
            f"agentstate.write {STORE}", context=context, kind=SpanKind.CLIENT, attributes=attrs
        ).end()

    def committed(self, loop: Any, metadata: Any, checkpoint: Any) -> None:
        """The put of a checkpoint returned: the supersteps it contains are committed."""
        state = self.loop_state(loop, create=False)
        if state is None:
            return
        step = metadata.get("step") if isinstance(metadata, Mapping) else None
        with state.lock:
            ready = [t for t in state.txns if not isinstance(step, int) or t.step <= step]
            state.txns = [t for t in state.txns if not isinstance(step, int) or t.step > step]
        checkpoint_id = checkpoint.get("id") if isinstance(checkpoint, Mapping) else None
        for txn in ready:
            self._end_txn(txn, "commit", checkpoint_id)

    def loop_exited(self, loop: Any) -> None:
        """Node runs whose writes were never applied end now; supersteps never saved roll back."""
        state = self.loop_state(loop, create=False)
        if state is None:
            return
        with self._lock:  # plans of tasks that never ran (interrupt_before, a failed step)
            for task_id in list(getattr(loop, "tasks", None) or ()):
                self._plans.pop(task_id, None)
        with state.lock:
            runs, state.runs = list(state.runs.values()), {}
            txns, state.txns = state.txns, []
        for run in runs:
            try:
                self._end_run(run)
            except Exception:
                _log.debug("cannot end node span", exc_info=True)
        for txn in txns:
            self._end_txn(txn, "rollback", None)

    def _end_txn(self, txn: _Txn, outcome: str, checkpoint_id: object) -> None:
        attrs: dict[str, Any] = {
            A.STORE: STORE,
            A.TXN_ID: txn.txn_id,
            A.TXN_OUTCOME: outcome,
            THREAD_ID: txn.thread_id,
            STEP: txn.step,
        }
        if txn.checkpoint_ns:
            attrs[CHECKPOINT_NS] = txn.checkpoint_ns
        if isinstance(checkpoint_id, str):
            attrs["langgraph.checkpoint_id"] = checkpoint_id
        self.tracer.start_span(
            f"agentstate.{outcome} {STORE}",
            context=txn.context,
            kind=SpanKind.CLIENT,
            attributes=attrs,
        ).end()

    # ------------------------------------------------------------------ update_state

    def update_started(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Update | None:
        config = args[0] if args else kwargs.get("config")
        where = _thread_of(config)
        if where is None:
            return None
        supersteps = args[1] if len(args) > 1 else kwargs.get("supersteps", ())
        as_nodes: list[str] = []
        for superstep in supersteps or ():
            for update in superstep:
                node = getattr(update, "as_node", None)
                if isinstance(node, str):
                    as_nodes.append(node)
        return _Update(time.time_ns(), where[0], where[1], as_nodes)

    def update_applied(
        self, update: _Update, before: Mapping[str, object], checkpoint: Any
    ) -> None:
        after: Mapping[str, object] = checkpoint.get("channel_versions") or {}
        for channel, value in after.items():
            if before.get(channel) != value and is_state_channel(channel):
                update.versions[channel] = value
                update.based_on.setdefault(channel, before.get(channel))

    def update_committed(self, update: _Update) -> None:
        """`bulk_update_state` returned, its checkpoint saved: an autocommit write of the caller."""
        if not update.versions:
            return
        settings = get_settings()
        channels = sorted(update.versions)
        facts = [
            settings.resolve(channel_fact(update.thread_id, update.checkpoint_ns, c)).key
            for c in channels
        ]
        # A read-modify-write: the update applies on top of the checkpoint it loaded.
        attrs: dict[str, Any] = {
            A.STORE: STORE,
            A.TIER: "primary",
            A.OP: Op.READ_WRITE.value,
            A.READ_FACTS: facts,
            A.READ_VERSIONS: [version_text(update.based_on.get(c)) for c in channels],
            A.CONSISTENCY: settings.consistency_label(facts),
            A.WRITE_FACTS: facts,
            A.WRITE_VERSIONS: [version_text(update.versions[c]) for c in channels],
            THREAD_ID: update.thread_id,
        }
        if update.checkpoint_ns:
            attrs[CHECKPOINT_NS] = update.checkpoint_ns
        if update.as_nodes:
            attrs[AS_NODE] = list(dict.fromkeys(update.as_nodes))
        self.tracer.start_span(
            f"agentstate.write {STORE}",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=update.start_ns,
        ).end()


_BUBBLE_UP: tuple[type[BaseException], ...] = ()


def _is_bubble_up(exc: BaseException) -> bool:
    return bool(_BUBBLE_UP) and isinstance(exc, _BUBBLE_UP)


def _safely(what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # never let our own bug reach the graph
        _log.debug("%s failed", what, exc_info=True)


# --------------------------------------------------------------------------- wrappers


def _wrappers(tracker: _Tracker) -> dict[str, Callable[..., Any]]:
    def enter_node(task: Any) -> tuple[_NodeRun, _Plan | None, _Frame] | None:
        if not is_instrumentation_enabled():
            return None
        try:
            return tracker.start_node(task)
        except Exception:
            _log.debug("cannot start the node span", exc_info=True)
            return None

    def node_body(started: tuple[_NodeRun, _Plan | None, _Frame]) -> Body:
        """The node's run under its span (one body for the sync and async runner: _steps)."""
        run, plan, frame = started
        token = otel_context.attach(trace.set_span_in_context(run.span))
        frame_token = _FRAME.set(frame)
        try:
            tracker.read(run, plan)
            result = yield CALL
        except BaseException as exc:
            tracker.node_failed(run, exc)
            raise
        finally:
            _FRAME.reset(frame_token)
            otel_context.detach(token)
        tracker.node_returned(run)
        return result

    def run_node(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        started = enter_node(args[0] if args else kwargs.get("task"))
        if started is None:
            return wrapped(*args, **kwargs)
        return drive(node_body(started), lambda: wrapped(*args, **kwargs))

    async def arun_node(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        started = enter_node(args[0] if args else kwargs.get("task"))
        if started is None:
            return await wrapped(*args, **kwargs)
        return await adrive(node_body(started), lambda: wrapped(*args, **kwargs))

    def tick(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        more = wrapped(*args, **kwargs)
        if more and is_instrumentation_enabled():
            _safely("planning the superstep", lambda: tracker.planned(instance))
        return more

    def in_loop(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        token = _LOOP.set(instance)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _LOOP.reset(token)

    def apply_writes(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        loop = _LOOP.get()
        update = _UPDATE.get()
        if loop is None and update is None:
            return wrapped(*args, **kwargs)  # e.g. get_state applying pending writes to a copy
        try:
            args = list(args)
            checkpoint = args[0] if args else kwargs["checkpoint"]
            if len(args) > 2:
                args[2] = tasks = list(args[2])
            else:
                kwargs["tasks"] = tasks = list(kwargs["tasks"])
            before = dict(checkpoint.get("channel_versions") or {})
        except Exception:
            _log.debug("unexpected apply_writes call", exc_info=True)
            return wrapped(*args, **kwargs)
        result = wrapped(*args, **kwargs)
        if loop is not None:
            _safely("recording writes", lambda: tracker.applied(loop, before, checkpoint, tasks))
        elif update is not None:
            _safely(
                "recording an update", lambda: tracker.update_applied(update, before, checkpoint)
            )
        return result

    def put(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        _safely("recording a commit", lambda: tracker.committed(instance, *_put_args(args, kwargs)))
        return result

    async def aput(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = await wrapped(*args, **kwargs)
        _safely("recording a commit", lambda: tracker.committed(instance, *_put_args(args, kwargs)))
        return result

    def loop_exit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:
            _safely("closing the loop", lambda: tracker.loop_exited(instance))

    async def aloop_exit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _safely("closing the loop", lambda: tracker.loop_exited(instance))

    def start_graph(instance: Any, args: Any, kwargs: Any) -> Span | None:
        if not is_instrumentation_enabled():
            return None
        try:
            return tracker.start_graph(instance, args, kwargs)
        except Exception:
            _log.debug("cannot start the graph span", exc_info=True)
            return None

    def stream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = start_graph(instance, args, kwargs)
        if span is None:
            return wrapped(*args, **kwargs)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                chunks = wrapped(*args, **kwargs)
        except BaseException as exc:
            tracker.end_graph(span, exc)
            raise
        return _traced_chunks(chunks, span, tracker)

    def astream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = start_graph(instance, args, kwargs)
        if span is None:
            return wrapped(*args, **kwargs)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                chunks = wrapped(*args, **kwargs)
        except BaseException as exc:
            tracker.end_graph(span, exc)
            raise
        return _atraced_chunks(chunks, span, tracker)

    def start_update(args: Any, kwargs: Any) -> _Update | None:
        if not is_instrumentation_enabled():
            return None
        try:
            return tracker.update_started(args, kwargs)
        except Exception:
            _log.debug("unexpected bulk_update_state call", exc_info=True)
            return None

    def bulk_update(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        update = start_update(args, kwargs)
        if update is None:
            return wrapped(*args, **kwargs)
        token = _UPDATE.set(update)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            _UPDATE.reset(token)
        _safely("recording an update", lambda: tracker.update_committed(update))
        return result

    async def abulk_update(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        update = start_update(args, kwargs)
        if update is None:
            return await wrapped(*args, **kwargs)
        token = _UPDATE.set(update)
        try:
            result = await wrapped(*args, **kwargs)
        finally:
            _UPDATE.reset(token)
        _safely("recording an update", lambda: tracker.update_committed(update))
        return result

    return {
        "stream": stream,
        "astream": astream,
        "run_node": run_node,
        "arun_node": arun_node,
        "tick": tick,
        "in_loop": in_loop,
        "apply_writes": apply_writes,
        "put": put,
        "aput": aput,
        "loop_exit": loop_exit,
        "aloop_exit": aloop_exit,
        "bulk_update": bulk_update,
        "abulk_update": abulk_update,
    }


def _traced_chunks(chunks: Any, span: Span, tracker: _Tracker) -> Any:
    """The graph's stream with its span current while the graph runs (between chunks the
    caller's context is back), ended when the stream ends, fails or is closed."""
    failed: BaseException | None = None
    try:
        while True:
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                otel_context.detach(token)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        failed = exc
        raise
    finally:
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # an early stop: the loop unwinds (and saves) under the graph span
        finally:
            otel_context.detach(token)
            tracker.end_graph(span, failed)


async def _atraced_chunks(chunks: Any, span: Span, tracker: _Tracker) -> Any:
    failed: BaseException | None = None
    try:
        while True:
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        failed = exc
        raise
    finally:
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            otel_context.detach(token)
            tracker.end_graph(span, failed)


def _put_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(metadata, checkpoint) of `_checkpointer_put_after_previous(prev, futs, config,
    checkpoint, metadata, new_versions)`."""
    checkpoint = args[3] if len(args) > 3 else kwargs.get("checkpoint")
    metadata = args[4] if len(args) > 4 else kwargs.get("metadata")
    return metadata, checkpoint


# (module, attribute path, wrapper key)
_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("langgraph.pregel.main", "Pregel.stream", "stream"),
    ("langgraph.pregel.main", "Pregel.astream", "astream"),
    ("langgraph.pregel._runner", "run_with_retry", "run_node"),
    ("langgraph.pregel._runner", "arun_with_retry", "arun_node"),
    ("langgraph.pregel._loop", "PregelLoop.tick", "tick"),
    ("langgraph.pregel._loop", "PregelLoop.after_tick", "in_loop"),
    ("langgraph.pregel._loop", "PregelLoop._first", "in_loop"),
    ("langgraph.pregel._loop", "apply_writes", "apply_writes"),
    ("langgraph.pregel.main", "apply_writes", "apply_writes"),
    ("langgraph.pregel._loop", "SyncPregelLoop._checkpointer_put_after_previous", "put"),
    ("langgraph.pregel._loop", "AsyncPregelLoop._checkpointer_put_after_previous", "aput"),
    ("langgraph.pregel._loop", "SyncPregelLoop.__exit__", "loop_exit"),
    ("langgraph.pregel._loop", "AsyncPregelLoop.__aexit__", "aloop_exit"),
    ("langgraph.pregel.main", "Pregel.bulk_update_state", "bulk_update"),
    ("langgraph.pregel.main", "Pregel.abulk_update_state", "abulk_update"),
)


class LangGraphInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Graph nodes as agent spans; checkpoint channel versions as facts (module docstring).

    The wrapping happens when `langgraph.pregel.main` is imported (at once if it already is),
    so a process that never uses LangGraph does not pay for importing it.
    """

    _wrapped: Wrapped
    _active: object | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(__name__, _VERSION, tracer_provider=kwargs.get("tracer_provider"))
        wrappers = _wrappers(_Tracker(tracer))
        self._wrapped = []
        generation = object()
        self._active = generation

        def on_import(module: Any) -> None:
            if self._active is generation and not self._wrapped:
                try:
                    self._wrap(wrappers)
                except Exception:  # an unknown LangGraph: leave it as it is
                    _log.debug("cannot instrument langgraph", exc_info=True)
                    self._unwrap()

        wrapt.register_post_import_hook(on_import, "langgraph.pregel.main")

    def _wrap(self, wrappers: Mapping[str, Callable[..., Any]]) -> None:
        global _BUBBLE_UP
        import importlib

        from langgraph.errors import GraphBubbleUp

        _BUBBLE_UP = (GraphBubbleUp,)
        for module_name, path, key in _TARGETS:
            module = importlib.import_module(module_name)
            owner_name, _, attribute = path.rpartition(".")
            owner = getattr(module, owner_name) if owner_name else module
            if not hasattr(owner, attribute):
                _log.debug("langgraph has no %s.%s: not wrapped", module_name, path)
                continue
            wrapt.wrap_function_wrapper(module, path, wrappers[key])
            self._wrapped.append((owner, attribute, wrappers[key]))

    def _unwrap(self) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []

    def _uninstrument(self, **kwargs: Any) -> None:
        self._active = None  # a hook still waiting for the import does nothing
        self._unwrap()


__all__ = ["LangGraphInstrumentor", "channel_fact", "is_state_channel", "ordinal", "version_text"]
