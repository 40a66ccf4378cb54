"""The credit workflow (credit_store.py) as a LangGraph graph whose two nodes run in one
superstep: each node is an agent.

    pip install "otel-agent-state[redis,postgres,langgraph]" opentelemetry-distro \
        openinference-instrumentation-langchain   # or OpenLLMetry's:
        # opentelemetry-instrumentation-langchain
    export OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none
    opentelemetry-instrument --service_name credit python langgraph_credit.py stale

Our LangGraph instrumentation (entry point `agentstate_langgraph`) makes each node run an
`invoke_agent <node>` span; OpenInference's node spans carry the node in their `metadata`,
OpenLLMetry's are `execute_task <node>` spans under a graph it calls the agent. Either way the
agents are the nodes, `scorer` and `risk`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TypedDict

import credit_store
from langgraph.graph import END, START, StateGraph
from opentelemetry import trace


class Review(TypedDict, total=False):
    scorer: str
    risk: str


def graph(flow: credit_store.Workflow) -> object:
    async def scorer(state: Review) -> Review:
        await flow.read_limit("scorer")
        return {"scorer": await flow.rescore()}

    async def risk(state: Review) -> Review:
        await flow.read_limit("risk")
        return {"risk": await flow.assess()}

    builder = StateGraph(Review)
    builder.add_node("scorer", scorer)
    builder.add_node("risk", risk)
    builder.add_edge(START, "scorer")
    builder.add_edge(START, "risk")  # both in the first superstep, at the same time
    builder.add_edge("scorer", END)
    builder.add_edge("risk", END)
    return builder.compile()


async def main(correct: bool) -> None:
    app = graph(credit_store.Workflow(correct))
    with trace.get_tracer("credit").start_as_current_span("credit-review"):
        await app.ainvoke({})  # type: ignore[attr-defined]


if __name__ == "__main__":
    credit_store.reset()
    asyncio.run(main(sys.argv[1:] == ["correct"]))
