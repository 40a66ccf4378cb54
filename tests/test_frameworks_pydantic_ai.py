"""Pydantic AI, end to end and zero-code: two agents (`Agent.instrument_all()`, a scripted
`FunctionModel`) on real PostgreSQL and Redis under `opentelemetry-instrument`. Its
`invoke_agent` spans name the agents, its `execute_tool` spans are their decisions."""

from __future__ import annotations

from pathlib import Path

from .frameworks_support import STALE, require, run_example

EXAMPLE = "pydantic_ai_credit.py"


def test_stale_cache_read_and_lost_update_are_found_with_the_agents_names(
    tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    require("pydantic_ai")
    run = run_example(
        tmp_path, EXAMPLE, "stale", prefix="fwt_pyd", postgres_dsn=postgres_dsn, redis_url=redis_url
    )
    assert "risk saw score 680" in run.stdout
    assert run.online == STALE
    assert run.offline == STALE
    assert run.agents_of_observations() == {"scorer", "risk"}
    # Each tool span says what its agent had read when the call started.
    assert sorted(run.decision_inputs("execute_tool read_limit")) == [[], []]
    assert run.decision_inputs("execute_tool assess") == [["credit_limit/42@n:1"]]
    assert run.decision_inputs("execute_tool rescore") == [["credit_limit/42@n:1"]]


def test_correct_twin_has_no_finding(tmp_path: Path, postgres_dsn: str, redis_url: str) -> None:
    require("pydantic_ai")
    run = run_example(
        tmp_path,
        EXAMPLE,
        "correct",
        prefix="fwt_pyd",
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
    )
    assert "risk saw score 750" in run.stdout
    assert run.online == []
    assert run.offline == []
    assert run.agents_of_observations() == {"scorer", "risk"}
    # The risk agent read the limit again inside `assess`: the scorer's n:2.
    assert run.decision_inputs("execute_tool assess") == [["credit_limit/42@n:1"]]


def test_with_no_config_the_lost_update_is_found_and_the_cache_is_another_fact(
    tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    # No fact rule: row versions are digests, and the Redis key is a fact of its own, so the
    # stale cached score is not comparable with the row (README "Add it to an existing
    # stack"); both agents overwriting one limit read at the same digest still is.
    require("pydantic_ai")
    run = run_example(
        tmp_path,
        EXAMPLE,
        "stale",
        prefix="fwt_pyd",
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        rules=False,
    )
    expected = [("lost_update", "postgresql:test/fwt_pyd_limits/42", ("scorer", "risk"), "error")]
    assert run.online == expected
    assert run.offline == expected
