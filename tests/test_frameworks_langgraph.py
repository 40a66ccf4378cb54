"""LangGraph, end to end and zero-code with no configuration: a graph whose two nodes (the
agents) run in one superstep on real PostgreSQL and Redis under `opentelemetry-instrument`,
with our own LangGraph instrumentation and OpenInference's or OpenLLMetry's LangChain
instrumentation (one at a time: both register the entry point `langchain`). The agents are
the nodes, each with one agent span (OpenLLMetry's graph spans, which it names an agent, are
not one)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from otel_agent_state import adapter
from otel_agent_state.core.model import ScopeKind

from .frameworks_support import Run, require, run_example, stale

EXAMPLE = "langgraph_credit.py"
INSTRUMENTATIONS: dict[str, str | None] = {
    "ours-only": None,  # no LangChain instrumentation: our node spans alone
    "openinference": "openinference.instrumentation.langchain:LangChainInstrumentor",
    "openllmetry": "opentelemetry.instrumentation.langchain:LangchainInstrumentor",
}


def _agent_spans(run: Run) -> Counter[str]:
    """Agent spans of the workflow's trace by agent name, as the processor and check see them."""
    (root,) = run.named("credit-review")
    names: Counter[str] = Counter()
    for span in run.spans:
        attrs, name = span["attributes"], span["name"]
        if span["context"]["trace_id"] != root["context"]["trace_id"]:
            continue
        if adapter.scope_kind(attrs, name) == ScopeKind.AGENT:
            names[adapter.agent_name(attrs, name) or "?"] += 1
    return names


@pytest.mark.parametrize("mode", ["stale", "correct"])
@pytest.mark.parametrize("instrumentation", sorted(INSTRUMENTATIONS))
def test_node_agents_findings(
    tmp_path: Path, postgres_dsn: str, redis_url: str, instrumentation: str, mode: str
) -> None:
    instrumentor = INSTRUMENTATIONS[instrumentation]
    require("langgraph", *([instrumentor.partition(":")[0]] if instrumentor else []))
    prefix = f"fwt_lg_{instrumentation[:5].replace('-', '')}"
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
    assert _agent_spans(run) == {"scorer": 1, "risk": 1}
    if instrumentation == "openllmetry":  # its graph spans are there, and name no agent
        assert run.named("invoke_agent LangGraph")
        assert [s["name"] for s in run.spans if s["name"].startswith("execute_task ")]
