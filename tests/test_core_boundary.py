"""The import-linter contract in pyproject.toml names every module outside `core/`, so a new
module cannot slip past it; and the contract itself holds (what `.ci/run` runs)."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import otel_agent_state

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _contract() -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    assert contract["source_modules"] == ["otel_agent_state.core"]
    return dict(contract)


def test_contract_forbids_every_module_outside_core() -> None:
    forbidden = set(_contract()["forbidden_modules"])  # type: ignore[call-overload]
    outside = {
        f"otel_agent_state.{info.name}"
        for info in pkgutil.iter_modules(otel_agent_state.__path__)
        if info.name != "core"
    }
    assert outside - forbidden == set(), "add these modules to the import-linter contract"
    assert {"opentelemetry", "wrapt"} <= forbidden


def test_core_contract_is_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is in the dev extra: scripts/setup.sh installs it"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout
