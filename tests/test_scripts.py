"""The README's set-up scripts call only what exists."""

from __future__ import annotations

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
