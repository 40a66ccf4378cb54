"""The credit workflow (credit_store.py) as two Pydantic AI agents with a scripted model.

    pip install "otel-agent-state[redis,postgres]" opentelemetry-distro pydantic-ai-slim
    export OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none
    opentelemetry-instrument --service_name credit python pydantic_ai_credit.py stale

Pydantic AI's own instrumentation names the agents (`invoke_agent scorer`, and
`gen_ai.agent.name` on its `execute_tool` spans and in baggage): each tool call is a decision
of its agent. `correct` instead of `stale` runs the correct twin.
"""

from __future__ import annotations

import asyncio
import sys

import credit_store
from opentelemetry import trace
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

Agent.instrument_all()  # Pydantic AI's OpenTelemetry spans, on the global tracer provider


def scripted(*tools: str) -> FunctionModel:
    """A model that calls `tools` one after the other, then answers (no network)."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(isinstance(part, ToolReturnPart) for m in messages for part in m.parts)
        if done < len(tools):
            return ModelResponse(parts=[ToolCallPart(tools[done], {})])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


async def main(correct: bool) -> None:
    flow = credit_store.Workflow(correct)
    scorer = Agent(scripted("read_limit", "rescore"), name="scorer")
    risk = Agent(scripted("read_limit", "assess"), name="risk")

    @scorer.tool_plain(name="read_limit")
    async def scorer_reads() -> str:
        return await flow.read_limit("scorer")

    @risk.tool_plain(name="read_limit")
    async def risk_reads() -> str:
        return await flow.read_limit("risk")

    scorer.tool_plain(flow.rescore)
    risk.tool_plain(flow.assess)
    with trace.get_tracer("credit").start_as_current_span("credit-review"):
        await asyncio.gather(scorer.run("rescore customer 42"), risk.run("assess customer 42"))


if __name__ == "__main__":
    credit_store.reset()
    asyncio.run(main(sys.argv[1:] == ["correct"]))
