"""The OpenAI Agents SDK, end to end and zero-code with no configuration: two agents with a
scripted `Model` on real PostgreSQL and Redis under `opentelemetry-instrument`, traced
through OpenInference's and through OpenLLMetry's openai-agents instrumentation (one at a
time: both register the entry point `openai_agents`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .frameworks_support import require, run_example, stale

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
    prefix = f"fwt_oai_{instrumentation[:5]}"
    run = run_example(
        tmp_path,
        EXAMPLE,
        mode,
        prefix=prefix,
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        instrumentor=instrumentor,
        disabled="openai_agents,langchain",
    )
    expected = stale(prefix) if mode == "stale" else []
    assert f"risk saw score {680 if mode == 'stale' else 750}" in run.stdout
    assert run.online == expected
    assert run.offline == expected
    assert run.agents_of_observations() == {"scorer", "risk"}
    cached, limit = f"redis:0/{prefix}:credit_score:42", f"postgresql:test/{prefix}_limits/42"
    score = f"postgresql:test/{prefix}_scores/42"
    assert run.decision_inputs(f"assess{tool_suffix}") == [[limit, cached, score]]
    assert sorted(run.decision_inputs(f"read_limit{tool_suffix}")) == [[], []]
