"""End to end: the demo exports its metrics, a real Prometheus scrapes them and alerts fire.

The demo runs as a user runs it, under `opentelemetry-instrument` with the Prometheus metric
exporter on a loopback port, repeating its workflows. Debian's Prometheus scrapes it every
second with our alert rules loaded. Everything is asserted through Prometheus' HTTP API:
the SPEC §4 series exist with their labels, the alerts for the anomalies the demo makes fire
(and the lost-update alert, which it does not make, stays quiet), and every PromQL
expression of the Grafana dashboard and of the Grafana alert rules is accepted by Prometheus
and returns data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .deploy_support import (
    DASHBOARD,
    RULES,
    PrometheusServer,
    dashboard_exprs,
    expand_grafana_variables,
    free_port,
    grafana_alert_exprs,
    http_get,
    prometheus_server,
    require_tool,
    wait_until,
)

BIN = Path(sys.executable).parent
JOB = "credit-demo"
DEMO_KINDS = {"stale_read", "divergent_view", "orphaned_mutation"}
DEMO_ALERTS = {"AgentStateStaleRead", "AgentStateDivergentView", "AgentStateOrphanedMutation"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("deploy-e2e")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(
        OTEL_SERVICE_NAME=JOB,
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
    )
    demo_log = tmp / "demo.log"
    with demo_log.open("wb") as sink:
        demo = subprocess.Popen(
            [
                str(BIN / "opentelemetry-instrument"),
                str(BIN / "otel-agent-state"),
                "demo",
                "--repeat",
                "0",
                "--interval",
                "1",
                "--workdir",
                str(tmp / "stores"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def exporting() -> bool:
            if demo.poll() is not None:
                raise AssertionError(f"demo exited: {demo_log.read_text(errors='replace')}")
            status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            return status == 200 and b"agentstate_anomalies_total{" in body

        wait_until(exporting, 90, "the demo's Prometheus endpoint to show anomalies")
        with prometheus_server(tmp, [f"127.0.0.1:{port}"], JOB, [RULES]) as server:
            yield server
    finally:
        demo.terminate()
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)


def _scraped(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    return wait_until(lambda: server.query(expr), 60, f"Prometheus to return {expr}")


def test_spec_metrics_arrive_with_their_labels(stack: PrometheusServer) -> None:
    anomalies = _scraped(stack, f'agentstate_anomalies_total{{job="{JOB}"}}')
    kinds = {series["metric"]["kind"] for series in anomalies}
    assert kinds == DEMO_KINDS
    for series in anomalies:
        labels = series["metric"]
        assert {"kind", "store", "agent", "fact_rule"} <= set(labels)
        assert labels["store"] == "sqlite"
        assert labels["fact_rule"] in {"credit_score", "account"}
        assert "/" not in labels["fact_rule"]  # never the full fact key
    agents = {s["metric"]["agent"] for s in anomalies if s["metric"]["kind"] == "stale_read"}
    assert agents == {"risk-assessor", "limit-setter"}
    lag = _scraped(stack, f'agentstate_stale_read_lag_milliseconds_bucket{{job="{JOB}",le="+Inf"}}')
    assert {series["metric"]["fact_rule"] for series in lag} == {"credit_score"}
    observations = _scraped(stack, f'agentstate_observations_total{{job="{JOB}"}}')
    tiers = {(s["metric"]["store"], s["metric"]["tier"]) for s in observations}
    assert {("sqlite", "primary"), ("sqlite", "cache"), ("sqlite", "replica")} <= tiers
    assert {s["metric"]["op"] for s in observations} >= {"read", "write"}


def test_alerts_fire_for_the_demo_anomalies(stack: PrometheusServer) -> None:
    def firing() -> dict[str, list[dict[str, Any]]]:
        alerts: dict[str, list[dict[str, Any]]] = {}
        for alert in stack.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert)
        return alerts if set(alerts) >= DEMO_ALERTS else {}

    alerts = wait_until(firing, 90, "the stale-read, divergent-view and orphan alerts to fire")
    assert "AgentStateLostUpdate" not in alerts  # the demo makes no lost update
    stale_agents = {a["labels"]["agent"] for a in alerts["AgentStateStaleRead"]}
    assert stale_agents == {"risk-assessor", "limit-setter"}
    (orphan,) = alerts["AgentStateOrphanedMutation"]
    assert orphan["labels"]["agent"] == "payments"
    assert orphan["labels"]["fact_rule"] == "account"
    assert orphan["labels"]["severity"] == "critical"
    assert "payments" in orphan["annotations"]["description"]
    for group in stack.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule


def test_every_dashboard_query_runs_on_prometheus_and_returns_data(
    stack: PrometheusServer,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # Let a few scrapes accumulate so rate() and increase() over 1m have two samples.
    _scraped(stack, f'count_over_time(agentstate_observations_total{{job="{JOB}"}}[1m]) > 3')
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 9
    for title, expr in exprs:
        expanded = expand_grafana_variables(expr)
        result = stack.query(expanded)  # a parse or evaluation error raises here
        if "agentstate_spans_calls_total" in expr:
            continue  # made by the collector's spanmetrics connector: no collector here
        assert result, f"panel {title!r}: {expanded} returned no data"
        grouping = expr.partition("sum by (")[2].partition(")")[0]
        for label in filter(None, (name.strip() for name in grouping.split(","))):
            if label != "le":
                assert all(label in series["metric"] for series in result), (title, label)


def test_dashboard_variable_finds_the_service(stack: PrometheusServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (job_var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
    query = job_var["query"]["query"]
    assert query.startswith("label_values(") and query.endswith(", job)")
    metric = query.removeprefix("label_values(").removesuffix(", job)")
    values = stack.api("label/job/values", **{"match[]": metric})
    assert values == [JOB]


def test_grafana_alert_queries_run_on_prometheus(stack: PrometheusServer) -> None:
    exprs = grafana_alert_exprs()
    assert set(exprs) == DEMO_ALERTS | {"AgentStateLostUpdate"}
    for title, expr in exprs.items():
        result = stack.query(expand_grafana_variables(expr))
        # Grafana's threshold (B > 0) sees a series exactly when this alert should fire.
        assert bool(result) == (title in DEMO_ALERTS), (title, result)


def test_demo_repeat_runs_each_round_with_the_same_findings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    result = subprocess.run(
        [str(BIN / "otel-agent-state"), "demo", "--repeat", "3", "--interval", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("faulty workflow:") == 3
    assert result.stdout.count("=> 4 anomalies:") == 3
    assert result.stdout.count("=> no anomalies") == 3
    assert "round 3:" in result.stdout and "round 4:" not in result.stdout
