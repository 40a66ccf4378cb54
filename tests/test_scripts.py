"""The README's set-up scripts call only what exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script_uses_only_real_options() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    calls = re.findall(r"otel-agent-state demo([^\n]*)", script)
    assert calls, "demo.sh runs the demo"
    help_text = subprocess.run(
        [str(Path(sys.executable).with_name("otel-agent-state")), "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for extra in calls:
        for option in re.findall(r"--[\w-]+", extra):
            assert option in help_text, f"demo.sh passes {option}, which demo does not take"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in readme and "./scripts/demo.sh" in readme
    assert "\n./scripts/test.sh\n" in ci


def _plan(script: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """The steps (`demo.sh: ...`) and commands (`+ ...`) a script's --dry-run prints."""
    text = script.read_text()
    assert "--dry-run" in text, f"{script.name} has no --dry-run: running it would install"
    out = subprocess.run(
        ["bash", str(script), "--dry-run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    steps = [line for line in out.splitlines() if line.startswith("demo.sh: ")]
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    return steps, commands


def test_demo_script_on_a_fresh_clone_installs_only_the_package(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    script = clone / "scripts" / "demo.sh"
    script.write_text((ROOT / "scripts" / "demo.sh").read_text())
    steps, commands = _plan(script, clone)
    # No system packages (Chromium, Prometheus are for the tests), no test extras, no
    # silent pip: the user sees what is being done.
    code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "apt-get" in line or "setup.sh" in line]
    assert commands[0].endswith("-m venv .venv")
    installs = [c for c in commands if " pip install " in c]
    assert installs == [".venv/bin/python -m pip install --disable-pip-version-check -e ."]
    assert all("--quiet" not in c and " -q" not in c for c in commands)
    assert [c for c in commands if c.endswith("otel-agent-state demo")] == commands[2:]
    assert len(steps) == len(commands), "every command is announced by a step"


def test_demo_script_launcher_run_prints_no_unrelated_error() -> None:
    """The launcher line of demo.sh, run as the script runs it, in this (test) .venv, which
    holds contrib's sqlalchemy instrumentation next to SQLAlchemy 2.1."""
    _, commands = _plan(ROOT / "scripts" / "demo.sh", ROOT)
    launcher = commands[-1].split()
    assert launcher[0] == "env" and ".venv/bin/opentelemetry-instrument" in launcher
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTSTATE_"))}
    result = subprocess.run(
        launcher, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "=> 4 anomalies:" in result.stdout
    assert "nothing can be instrumented" not in result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_setup_script_installs_what_the_tests_drive() -> None:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "need+=(prometheus)" in text and "need+=(chromium)" in text
    assert 'pip install --disable-pip-version-check -e ".[dev]"' in text  # visible progress


def test_readme_install_lines_work_in_every_shell() -> None:
    """`pip install otel-agent-state[redis]` is a glob in zsh ("no matches found")."""
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install ([^\n`]*\[[^\n`]*)", readme)
    assert installs, "the README shows installs with extras"
    for words in installs:
        # each word with brackets opens with a quote ('pkg[extra]', "pkg[extra]", '.[extra]')
        bare = [w for w in words.split() if "[" in w and w[0] not in "'\""]
        assert not bare, f"unquoted: pip install {words}"


def test_readme_documents_every_observation_attribute() -> None:
    from otel_agent_state import attributes as A

    readme = (ROOT / "README.md").read_text()
    for name in (A.OP, A.READ_FACTS, A.WRITE_FACTS, A.TXN_OUTCOME, A.CONSISTENCY):
        assert f"`{name}`" in readme.split("## What goes on the spans")[1].split("\n## ")[0]


def test_readme_shows_the_check_pipe_and_its_robust_forms() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "opentelemetry-instrument python my_agents.py \\\n" in readme
    assert "| otel-agent-state check -" in readme
    for needle in ("OTEL_TRACES_EXPORTER=otlp", "--require-spans", "`file`"):
        assert needle in readme
