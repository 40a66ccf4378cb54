"""The labelled scenario corpus (tests/scenarios): each workflow, run on real stores, must
produce exactly the anomalies it is labelled with: precision and recall 1.0 per kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .scenarios import Env, Scenario, all_scenarios, environment, run_scenario

SCENARIOS = all_scenarios()


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with environment(request.param, tmp_path, request.getfixturevalue) as e:
        yield e


def test_the_corpus_is_big_enough_and_balanced() -> None:
    assert len(SCENARIOS) >= 20
    assert sum(1 for s in SCENARIOS if not s.expect) >= len(SCENARIOS) // 3  # correct twins
    for kind in ("stale_read", "divergent_view", "lost_update", "orphaned_mutation"):
        assert any(kind in s.expect for s in SCENARIOS), kind


def _param(s: Scenario) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=s.known_issue)] if s.known_issue else []
    return pytest.param(s, id=s.name, marks=marks)


@pytest.mark.parametrize("env", [_param(s) for s in SCENARIOS], indirect=True)
def test_scenario_finds_exactly_what_it_is_labelled_with(
    env: Env, request: pytest.FixtureRequest
) -> None:
    s: Scenario = request.node.callspec.params["env"]
    outcome = run_scenario(s, env)
    details = [
        {k: v for k, v in (a.attributes or {}).items() if k.startswith("agentstate.anomaly")}
        for a in outcome.anomalies()
    ]
    assert dict(outcome.found) == dict(s.expect), f"{s.description}: found {details}"
