"""Pydantic AI, end to end and zero-code, with no configuration: two agents
(`Agent.instrument_all()`, a scripted `FunctionModel`) on real PostgreSQL and Redis under
`opentelemetry-instrument`. Its `invoke_agent` spans name the agents, its `execute_tool`
spans are their decisions; the risk agent's cache-aside fill links the Redis key to the row."""

from __future__ import annotations

from pathlib import Path

from .frameworks_support import RULED, require, run_example, stale

EXAMPLE = "pydantic_ai_credit.py"
PREFIX = "fwt_pyd"
LIMIT, SCORE = f"postgresql:test/{PREFIX}_limits/42", f"postgresql:test/{PREFIX}_scores/42"
CACHED = f"redis:0/{PREFIX}:credit_score:42"


def test_stale_cache_read_and_lost_update_are_found_with_the_agents_names(
    tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    require("pydantic_ai")
    run = run_example(
        tmp_path, EXAMPLE, "stale", prefix=PREFIX, postgres_dsn=postgres_dsn, redis_url=redis_url
    )
    assert "risk saw score 680" in run.stdout
    assert run.online == stale(PREFIX)
    assert run.offline == stale(PREFIX)
    assert run.agents_of_observations() == {"scorer", "risk"}
    # Each tool span says what its agent had read when the call started: the risk agent's
    # cache miss, the row it cached and the limit, when it assessed.
    assert sorted(run.decision_inputs("execute_tool read_limit")) == [[], []]
    assert run.decision_inputs("execute_tool assess") == [[LIMIT, CACHED, SCORE]]
    assert run.decision_inputs("execute_tool rescore") == [[LIMIT]]
    (fill,) = [s for s in run.spans if s["name"] == "SET"]
    assert fill["attributes"]["agentstate.write.facts"] == [SCORE]
    assert fill["attributes"]["agentstate.link"][0].startswith(SCORE)


def test_correct_twin_has_no_finding(tmp_path: Path, postgres_dsn: str, redis_url: str) -> None:
    require("pydantic_ai")
    run = run_example(
        tmp_path, EXAMPLE, "correct", prefix=PREFIX, postgres_dsn=postgres_dsn, redis_url=redis_url
    )
    assert "risk saw score 750" in run.stdout
    assert run.online == []
    assert run.offline == []
    assert run.agents_of_observations() == {"scorer", "risk"}


def test_with_the_fact_rules_the_same_findings_by_rule_name(
    tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    require("pydantic_ai")
    run = run_example(
        tmp_path,
        EXAMPLE,
        "stale",
        prefix=PREFIX,
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        rules=True,
    )
    assert run.online == RULED
    assert run.offline == RULED
