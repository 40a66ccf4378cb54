"""The OpenAI Agents SDK, end to end and zero-code: two agents with a scripted `Model` on
real PostgreSQL and Redis under `opentelemetry-instrument`, traced through OpenInference's
and through OpenLLMetry's openai-agents instrumentation (one at a time: both register the
entry point `openai_agents`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .frameworks_support import STALE, require, run_example

EXAMPLE = "openai_agents_credit.py"
INSTRUMENTATIONS = {
    # (the instrumentor, the name its tool spans get)
    "openinference": ("openinference.instrumentation.openai_agents:OpenAIAgentsInstrumentor", ""),
    "openllmetry": (
        "opentelemetry.instrumentation.openai_agents:OpenAIAgentsInstrumentor",
        ".tool",
    ),
}


@pytest.mark.parametrize("mode", ["stale", "correct"])
@pytest.mark.parametrize("instrumentation", sorted(INSTRUMENTATIONS))
def test_findings_and_agent_names(
    tmp_path: Path, postgres_dsn: str, redis_url: str, instrumentation: str, mode: str
) -> None:
    require("agents", INSTRUMENTATIONS[instrumentation][0].partition(":")[0])
    instrumentor, tool_suffix = INSTRUMENTATIONS[instrumentation]
    run = run_example(
        tmp_path,
        EXAMPLE,
        mode,
        prefix=f"fwt_oai_{instrumentation[:5]}",
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        instrumentor=instrumentor,
        disabled="openai_agents,langchain",
    )
    expected = STALE if mode == "stale" else []
    assert f"risk saw score {680 if mode == 'stale' else 750}" in run.stdout
    assert run.online == expected
    assert run.offline == expected
    assert run.agents_of_observations() == {"scorer", "risk"}
    assert run.decision_inputs(f"assess{tool_suffix}") == [["credit_limit/42@n:1"]]
    assert sorted(run.decision_inputs(f"read_limit{tool_suffix}")) == [[], []]
