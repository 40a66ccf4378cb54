"""CrewAI, end to end and zero-code with no configuration: a crew of two agents whose tasks run
at the same time (a scripted LLM) on real PostgreSQL and Redis under
`opentelemetry-instrument`, traced by OpenLLMetry's CrewAI instrumentation. CrewAI needs
openai<3, which the OpenAI Agents SDK of the `frameworks` extra does not allow, so the
example runs in `.venv-crewai`, which scripts/setup.sh creates (`crewai` extra); `check`
runs in this environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import fail_or_skip
from .frameworks_support import ROOT, run_example, stale

PYTHON = ROOT / ".venv-crewai" / "bin" / "python"


@pytest.mark.parametrize("mode", ["stale", "correct"])
def test_crew_findings_and_agent_names(
    tmp_path: Path, postgres_dsn: str, redis_url: str, mode: str
) -> None:
    if not PYTHON.exists():
        fail_or_skip(f"{PYTHON} is missing: scripts/setup.sh creates it")
    run = run_example(
        tmp_path,
        "crewai_credit.py",
        mode,
        prefix="fwt_crew",
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        python=PYTHON,
        # No telemetry to CrewAI's servers; its own files (task outputs) under tmp_path.
        extra_env={
            "CREWAI_DISABLE_TELEMETRY": "true",
            "CREWAI_TRACING_ENABLED": "false",
            "CREWAI_STORAGE_DIR": str(tmp_path / "crewai"),
            "XDG_DATA_HOME": str(tmp_path / "data"),
        },
    )
    expected = stale("fwt_crew") if mode == "stale" else []
    assert f"risk saw score {680 if mode == 'stale' else 750}" in run.stdout
    assert run.online == expected
    assert run.offline == expected
    # CrewAI's own bookkeeping (its task-output store) runs outside the agents' spans.
    assert {"scorer", "risk"} <= run.agents_of_observations()
    agent_spans = [s["name"] for s in run.spans if s["name"].endswith(".agent")]
    assert sorted(set(agent_spans)) == ["risk.agent", "scorer.agent"]
