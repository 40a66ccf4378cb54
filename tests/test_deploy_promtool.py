"""The Prometheus alert rules and config, checked and unit-tested by Debian's promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .deploy_support import (
    COMPOSE,
    PROM_DIR,
    RULE_TESTS,
    RULES,
    load_yaml,
    prometheus_alert_rules,
    require_tool,
)

KINDS = {"stale_read", "divergent_view", "orphaned_mutation", "lost_update"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROM_DIR,
    )


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(prometheus_alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    tested_firing: set[str] = set()
    tested_quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (tested_firing if check["exp_alerts"] else tested_quiet).add(check["alertname"])
    alerts = set(prometheus_alert_rules())
    assert alerts == tested_firing == tested_quiet


def test_alerts_cover_every_anomaly_kind_of_the_spec() -> None:
    rules = prometheus_alert_rules().values()
    assert {rule["labels"]["anomaly_kind"] for rule in rules} == KINDS
    for rule in rules:
        assert f'kind="{rule["labels"]["anomaly_kind"]}"' in rule["expr"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule with the wrong kind fails them."""
    broken = RULES.read_text(encoding="utf-8").replace(
        'kind="orphaned_mutation"', 'kind="orphaned_mutations"'
    )
    (tmp_path / RULES.name).write_text(broken, encoding="utf-8")
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text(encoding="utf-8"))
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "AgentStateOrphanedMutation" in result.stdout + result.stderr


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    """promtool check config on the compose Prometheus config, rule path made local."""
    config = (PROM_DIR / "prometheus.yml").read_text(encoding="utf-8")
    assert "/etc/prometheus/rules/agentstate-alerts.rules.yml" in config
    (tmp_path / RULES.name).write_text(RULES.read_text(encoding="utf-8"))
    local = tmp_path / "prometheus.yml"
    local.write_text(
        config.replace(
            "/etc/prometheus/rules/agentstate-alerts.rules.yml", str(tmp_path / RULES.name)
        ),
        encoding="utf-8",
    )
    result = _promtool("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_compose_prometheus_flags_exist() -> None:
    """Every flag the compose file passes to Prometheus is one Prometheus knows."""
    help_text = subprocess.run(
        [require_tool("prometheus"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    known = help_text.stdout + help_text.stderr
    command = load_yaml(COMPOSE)["services"]["prometheus"]["command"]
    assert command
    for argument in command:
        flag = argument.split("=", 1)[0]
        assert flag.startswith("--"), argument
        assert f"      {flag}=" in known or f"      {flag} " in known, flag
