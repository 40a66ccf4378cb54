"""The credit workflow (credit_store.py) as two OpenAI Agents SDK agents with a scripted
model (no network, no API key).

    pip install "otel-agent-state[redis,postgres]" opentelemetry-distro openai-agents \
        openinference-instrumentation-openai-agents   # or OpenLLMetry's:
        # opentelemetry-instrumentation-openai-agents
    export OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none
    opentelemetry-instrument --service_name credit python openai_agents_credit.py stale

The SDK's spans reach OpenTelemetry through either instrumentation: OpenInference names the
agents (`openinference.span.kind = AGENT`) and tools (`TOOL`), OpenLLMetry does with
`traceloop.span.kind` and the GenAI `invoke_agent` / `execute_tool` operations.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import credit_store
from agents import Agent, Runner, function_tool
from agents.items import ModelResponse, TResponseStreamEvent
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from opentelemetry import trace


class Scripted(Model):
    """A model that calls `tools` one after the other, then answers."""

    def __init__(self, *tools: str) -> None:
        self.tools = tools

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        items = args[1] if len(args) > 1 else kwargs.get("input", [])
        done = (
            sum(
                1
                for item in items
                if isinstance(item, dict) and item.get("type") == "function_call_output"
            )
            if isinstance(items, list)
            else 0
        )
        if done < len(self.tools):
            call = ResponseFunctionToolCall(
                type="function_call", call_id=f"call-{done}", name=self.tools[done], arguments="{}"
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        text = ResponseOutputText(type="output_text", text="done", annotations=[])
        message = ResponseOutputMessage(
            id="msg", type="message", role="assistant", status="completed", content=[text]
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the example does not stream")


async def main(correct: bool) -> None:
    flow = credit_store.Workflow(correct)

    @function_tool(name_override="read_limit")
    async def scorer_reads() -> str:
        """Read the customer's credit limit."""
        return await flow.read_limit("scorer")

    @function_tool(name_override="read_limit")
    async def risk_reads() -> str:
        """Read the customer's credit limit."""
        return await flow.read_limit("risk")

    @function_tool
    async def rescore() -> str:
        """Write the new score and limit."""
        return await flow.rescore()

    @function_tool
    async def assess() -> str:
        """Assess the risk from the cached score."""
        return await flow.assess()

    scorer = Agent(
        name="scorer", tools=[scorer_reads, rescore], model=Scripted("read_limit", "rescore")
    )
    risk = Agent(name="risk", tools=[risk_reads, assess], model=Scripted("read_limit", "assess"))
    with trace.get_tracer("credit").start_as_current_span("credit-review"):
        await asyncio.gather(Runner.run(scorer, "rescore 42"), Runner.run(risk, "assess 42"))


if __name__ == "__main__":
    credit_store.reset()
    asyncio.run(main(sys.argv[1:] == ["correct"]))
