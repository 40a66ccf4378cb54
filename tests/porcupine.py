"""Porcupine's Jepsen etcd register histories (tests/data/porcupine, labels from Porcupine's own
tests) as traces: outside evidence with known linearizability labels.

A history line is `INFO jepsen.util - <process> <:invoke|:ok|:fail|:info> <:read|:write|:cas>
<value>`; lines are in real-time order, so line number i becomes time i ms. Each completed
operation becomes one span from its invoke to its completion:

- `read` -> a read of the register (`nil`: `none`);
- `write v` -> a committed write of v;
- `cas [a b]` that succeeded -> one atomic read-modify-write (read a, wrote b);
- a failed `cas` or a timed-out read -> a store span with nothing observed (it was in flight);
- a timed-out (`:info`) write or cas, or one never answered -> a write that never committed
  (an open transaction): it may have taken effect at any time after its invoke.

Versions are keyed digests of the values (`h:`), so repeated values (ABA) are the norm. No
`n:` conversion: register values repeat (0-4), so no numbering of them orders versions; a
numbering by write order would itself need the linearization we are checking.

Agents: `operation` makes each operation its own agent; `process` names the agent after
the Jepsen process, with one agent scope per operation (Jepsen's register operations are
independent calls: a write does not depend on the process's previous read, which one scope
per process would claim).

`replay()` runs a history through a real SDK TracerProvider with our processor, ending spans
in history order with their history timestamps: the live path. The exported spans are what
`otel-agent-state check` reads (the offline path).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_agent_state import attributes as A
from otel_agent_state.processor import StateCoherenceSpanProcessor

DATA = Path(__file__).parent / "data" / "porcupine"
FACT = "etcd:jepsen/register"
MS = 1_000_000

Agents = Literal["operation", "process"]

_LINE = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)\s+(.*)$"
)
_CAS = re.compile(r"^\[(\d+)\s+(\d+)\]$")


@dataclass
class Operation:
    process: int
    kind: str  # read, write, cas
    start: int  # line number of the invoke
    end: int | None = None  # line number of the completion; None: never answered
    outcome: str = "info"  # ok, fail, info (unknown)
    value: int | None = None  # a read's result, a write's argument
    cas: tuple[int, int] | None = None


def labels() -> dict[str, bool]:
    doc = json.loads((DATA / "labels.json").read_text())
    return {name: bool(v) for name, v in doc["linearizable"].items()}


def parse(text: str) -> list[Operation]:
    """The operations of a history, in invoke order."""
    ops: list[Operation] = []
    open_by_process: dict[int, Operation] = {}
    for number, line in enumerate(text.splitlines()):
        found = _LINE.match(line.strip())
        if found is None:
            continue
        process, event, kind, arg = int(found[1]), found[2], found[3], found[4].strip()
        if event == "invoke":
            op = Operation(process, kind, number)
            if kind == "write":
                op.value = int(arg)
            elif kind == "cas":
                pair = _CAS.match(arg)
                assert pair is not None, line
                op.cas = (int(pair[1]), int(pair[2]))
            open_by_process[process] = op
            ops.append(op)
            continue
        op = open_by_process.pop(process)
        op.end, op.outcome = number, event
        if kind == "read" and event == "ok":
            op.value = None if arg == "nil" else int(arg)
    return ops


def digest(value: int | None) -> str:
    if value is None:
        return "none"
    return "h:" + hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest()


def histories() -> Iterator[tuple[str, bool]]:
    yield from sorted(labels().items())


@dataclass
class Replayed:
    spans: tuple[ReadableSpan, ...]  # everything exported (input for `check`)

    def live(self) -> list[tuple[str, str]]:
        """(kind, span id) of every anomaly the processor reported while it ran."""
        return sorted(
            (str((s.attributes or {}).get(A.ANOMALY_KIND)), format(s.parent.span_id, "016x"))
            for s in self.spans
            if s.name.startswith(A.ANOMALY_SPAN_PREFIX) and s.parent is not None
        )


def replay(text: str, agents: Agents) -> Replayed:
    """Run one history through the real SDK and our processor, in history order."""
    ops = parse(text)
    last = max((op.end or op.start for op in ops), default=0) + 1
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "porcupine"}))
    processor = StateCoherenceSpanProcessor(tracer_provider=provider)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("porcupine")
    root = tracer.start_span("invoke_workflow jepsen", start_time=0)
    root.set_attribute(A.SCOPE, "workflow")
    root_ctx = trace.set_span_in_context(root)
    # (time, order, action): starts and ends in line order; a line is one event.
    events: list[tuple[int, int, object]] = []
    for i, op in enumerate(ops):
        events.append((op.start, 0, ("start", i)))
        events.append((op.end if op.end is not None else last, 1, ("end", i)))
    events.sort(key=lambda e: (e[0], e[1]))
    open_spans: dict[int, tuple[trace.Span, trace.Span]] = {}
    for at, _, (action, i) in events:  # type: ignore[misc]
        op = ops[i]
        if action == "start":
            name = f"{op.process}" if agents == "process" else f"op-{i}"
            agent = tracer.start_span(
                f"invoke_agent {name}",
                context=root_ctx,
                start_time=at * MS,
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": name,
                    A.SCOPE: "agent",
                },
            )
            span = tracer.start_span(
                f"etcd {op.kind}",
                context=trace.set_span_in_context(agent),
                start_time=at * MS + 1,
                attributes={A.STORE: "etcd", A.TIER: "primary"},
            )
            open_spans[i] = (agent, span)
            continue
        agent, span = open_spans.pop(i)
        for key, value in _observed(op, i).items():
            span.set_attribute(key, value)
        span.end(end_time=at * MS - 1)
        agent.end(end_time=at * MS)
    root.end(end_time=last * MS)
    processor.close_all_traces()
    provider.shutdown()
    return Replayed(spans=tuple(exporter.get_finished_spans()))


def _observed(op: Operation, i: int) -> dict[str, object]:
    """The SPEC §3 attributes of one operation, set before its span ends."""
    if op.kind == "read":
        if op.outcome != "ok":
            return {}  # timed out: it observed nothing
        return {A.OP: "read", A.READ_FACTS: [FACT], A.READ_VERSIONS: [digest(op.value)]}
    if op.kind == "write":
        assert op.value is not None
        written = {A.OP: "write", A.WRITE_FACTS: [FACT], A.WRITE_VERSIONS: [digest(op.value)]}
        if op.outcome == "ok":
            return written
        return {**written, A.COMMITTED: False, A.TXN_ID: f"unknown-{i}"}  # may apply later
    assert op.cas is not None
    expected, new = op.cas
    if op.outcome == "ok":
        return {
            A.OP: "read_write",
            A.READ_FACTS: [FACT],
            A.READ_VERSIONS: [digest(expected)],
            A.WRITE_FACTS: [FACT],
            A.WRITE_VERSIONS: [digest(new)],
        }
    if op.outcome == "fail":
        return {}  # the register did not hold `expected`: we do not know what it held
    # Unknown: if it applied, it wrote `new`, at some time after its invoke.
    return {
        A.OP: "write",
        A.WRITE_FACTS: [FACT],
        A.WRITE_VERSIONS: [digest(new)],
        A.COMMITTED: False,
        A.TXN_ID: f"unknown-{i}",
    }
