"""A multi-agent LangGraph support desk whose shared memory is the thread's checkpoint.

    python examples/langgraph_support_memory.py            # faulty: a stale memory is flagged
    python examples/langgraph_support_memory.py --correct  # its correct twin: no findings

The graph (nodes are agents): `recall` reads the customer's memory from the thread state,
`researcher` and `compliance` work in parallel, then `responder` answers. The LLM calls go to
langchain-core's fake chat model, so nothing leaves the machine. State is saved by a real
SqliteSaver checkpointer in a temporary directory.

Faulty run: while the researcher works, the `memory-curator` agent learns the customer was
upgraded and commits `tier=premium` to the thread (`graph.update_state`). The running graph
keeps its own view of the thread, so the responder answers on `tier=standard`: it acted on
a channel version older than the one already committed. The LangGraph instrumentation reads
the checkpoint's channel versions and the processor reports a stale read of
`langgraph:customer-42/tier` naming both agents.

Correct twin: the curator commits the upgrade before the run starts; the run begins from the
latest checkpoint and every agent acts on `tier=premium`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_agent_state import StateCoherenceSpanProcessor, agent, configure, workflow
from otel_agent_state.instrumentation.langgraph import LangGraphInstrumentor

THREAD = "customer-42"


def _add(left: list[str], right: list[str]) -> list[str]:
    return left + right


class Ticket(TypedDict, total=False):
    question: str
    tier: str  # the customer's memory the curator maintains
    recalled: str
    findings: Annotated[list[str], _add]
    answer: str


def llm(reply: str) -> str:
    """One call to a fake chat model (no network)."""
    model = GenericFakeChatModel(messages=iter([AIMessage(content=reply)]))
    return str(model.invoke(reply).content)


def build_graph(saver: SqliteSaver, researching: threading.Event, go_on: threading.Event) -> Any:
    def recall(state: Ticket) -> Ticket:
        return {"recalled": llm(f"customer is {state.get('tier', 'unknown')}")}

    def researcher(state: Ticket) -> Ticket:
        researching.set()
        go_on.wait(10)  # the curator may commit meanwhile (faulty run)
        return {"findings": [llm("refund window is 30 days")]}

    def compliance(state: Ticket) -> Ticket:
        return {"findings": [llm("no policy blocks a refund")]}

    def responder(state: Ticket) -> Ticket:
        fee = "no fee" if state.get("tier") == "premium" else "a 15 EUR fee"
        return {"answer": llm(f"refund approved with {fee} ({state.get('tier')} customer)")}

    graph = StateGraph(Ticket)
    graph.add_node("recall", recall)
    graph.add_node("researcher", researcher)
    graph.add_node("compliance", compliance)
    graph.add_node("responder", responder)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "researcher")
    graph.add_edge("recall", "compliance")
    graph.add_edge(["researcher", "compliance"], "responder")
    graph.add_edge("responder", END)
    return graph.compile(checkpointer=saver)


def run(correct: bool, workdir: Path) -> int:
    provider = TracerProvider(resource=Resource.create({"service.name": "support-desk"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(StateCoherenceSpanProcessor(tracer_provider=provider))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configure(tracer_provider=provider)
    instrumentor = LangGraphInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    conn = sqlite3.connect(workdir / "checkpoints.db", check_same_thread=False)
    researching, go_on = threading.Event(), threading.Event()
    app = build_graph(SqliteSaver(conn), researching, go_on)
    cfg: Any = {"configurable": {"thread_id": THREAD}}
    print(f"{'correct' if correct else 'faulty'} workflow:")
    try:
        # Yesterday's conversation left the customer's memory in the thread.
        app.update_state(cfg, {"tier": "standard"}, as_node="responder")
        with workflow("refund-request"):

            def upgrade() -> None:
                with agent("memory-curator"):
                    app.update_state(cfg, {"tier": "premium"}, as_node="responder")
                print("  memory-curator  committed tier=premium to the thread")

            if correct:
                upgrade()
                go_on.set()
                result = app.invoke({"question": "refund?"}, cfg, durability="sync")
            else:
                ctx = otel_context.get_current()

                def curator() -> None:
                    token = otel_context.attach(ctx)
                    try:
                        researching.wait(10)
                        upgrade()
                    finally:
                        go_on.set()
                        otel_context.detach(token)

                thread = threading.Thread(target=curator)
                thread.start()
                # durability="sync": each superstep is saved before the next one starts
                result = app.invoke({"question": "refund?"}, cfg, durability="sync")
                thread.join()
        print(f"  responder       {result['answer']}")
    finally:
        provider.shutdown()
        instrumentor.uninstrument()
        conn.close()

    anomalies = [
        span for span in exporter.get_finished_spans() if span.name.startswith("agentstate.anomaly")
    ]
    if not anomalies:
        print("  => no anomalies: every agent acted on the latest committed memory")
        return 0
    print(f"  => {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}:")
    for number, span in enumerate(anomalies, 1):
        attrs = dict(span.attributes or {})
        kind = str(attrs["agentstate.anomaly.kind"]).replace("_", " ").upper()
        print(
            f"  {number}. {kind} of {attrs['agentstate.anomaly.fact']} "
            f"[{attrs['agentstate.anomaly.severity']}]"
        )
        print(
            f"     observed {attrs['agentstate.anomaly.observed_version']}, expected "
            f"{attrs['agentstate.anomaly.expected_version']}; agents: "
            f"{', '.join(attrs['agentstate.anomaly.agents'])}"  # type: ignore[arg-type]
        )
        print(f"     {attrs['agentstate.anomaly.summary']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--correct", action="store_true", help="run the correct twin")
    parser.add_argument("--workdir", type=Path, help="where the checkpoint database goes")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args.correct, args.workdir)
    with tempfile.TemporaryDirectory(prefix="langgraph-memory-") as tmp:
        return run(args.correct, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
