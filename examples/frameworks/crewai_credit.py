"""The credit workflow (credit_store.py) as a CrewAI crew of two agents whose tasks run at
the same time, with a scripted LLM (no network, no API key).

    pip install "otel-agent-state[redis,postgres]" opentelemetry-distro crewai \
        opentelemetry-instrumentation-crewai                          # OpenLLMetry's
    export OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none
    export CREWAI_DISABLE_TELEMETRY=true
    opentelemetry-instrument --service_name credit python crewai_credit.py stale

OpenLLMetry's CrewAI spans (`<role>.agent`, `traceloop.span.kind = agent`) name the agents by
their role. CrewAI 1.15 needs `openai<3`, the OpenAI Agents SDK `openai>=3`: use an environment
of its own.
"""

from __future__ import annotations

import sys
from typing import Any

import credit_store
from crewai import Agent, Crew, Process, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from opentelemetry import trace
from pydantic import Field, PrivateAttr


class Scripted(BaseLLM):
    """An LLM that asks for `steps` (tool names) one after the other, then answers, in
    CrewAI's ReAct text format."""

    steps: list[str] = Field(default_factory=list)
    _calls: int = PrivateAttr(default=0)

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        step, self._calls = self._calls, self._calls + 1
        if step < len(self.steps):
            return f"Thought: I need the tool\nAction: {self.steps[step]}\nAction Input: {{}}"
        return "Thought: I now know the final answer\nFinal Answer: done"

    def supports_function_calling(self) -> bool:
        return False


def main(correct: bool) -> None:
    flow = credit_store.Workflow(correct)

    @tool("read_limit")
    def scorer_reads() -> str:
        """Read the customer's credit limit."""
        return flow.read_limit_now("scorer")

    @tool("read_limit")
    def risk_reads() -> str:
        """Read the customer's credit limit."""
        return flow.read_limit_now("risk")

    @tool("rescore")
    def rescore() -> str:
        """Write the new score and limit."""
        return flow.rescore_now()

    @tool("assess")
    def assess() -> str:
        """Assess the risk from the cached score."""
        return flow.assess_now()

    def member(role: str, *tools: Any) -> Agent:
        llm = Scripted(model="scripted", steps=[t.name for t in tools])
        return Agent(
            role=role, goal=f"{role} customer 42", backstory=role, llm=llm, tools=list(tools)
        )

    scorer, risk = member("scorer", scorer_reads, rescore), member("risk", risk_reads, assess)
    tasks = [
        Task(description="rescore", expected_output="a score", agent=scorer, async_execution=True),
        Task(description="assess", expected_output="a limit", agent=risk, async_execution=True),
    ]
    # A crew cannot end on tasks still running: the scorer sums up once both are done.
    tasks.append(Task(description="sum up", expected_output="a note", agent=scorer, context=tasks))
    crew = Crew(agents=[scorer, risk], tasks=tasks, process=Process.sequential)
    with trace.get_tracer("credit").start_as_current_span("credit-review"):
        crew.kickoff()


if __name__ == "__main__":
    credit_store.reset()
    main(sys.argv[1:] == ["correct"])
