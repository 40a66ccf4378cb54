"""Structure of the deployment files: collector configs, docker-compose, Grafana provisioning.

The collector configs may only use components of the collector-contrib distribution (the
explicit list in deploy_support, taken from its release manifest); every pipeline refers to
defined components and every defined component is used. The dashboard is checked against
Grafana's dashboard schema as published in grafana-foundation-sdk (models generated from
Grafana 11.6's schema, the version docker-compose.yml runs): it must survive a decode/encode
round trip through those models unchanged (an unknown or misplaced field is dropped and
reported), plus the structural rules Grafana applies when it loads a dashboard.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.alerting import Rule
from grafana_foundation_sdk.models.dashboard import Dashboard

from otel_agent_state.cli import _parser

from .deploy_support import (
    COLLECTOR_DIR,
    COMPOSE,
    CONTRIB_COMPONENTS,
    CONTRIB_VERSION,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    GRAFANA_ALERTS,
    PROM_DIR,
    REPO,
    compose_binary,
    dashboard_exprs,
    grafana_alert_exprs,
    load_yaml,
    prometheus_alert_rules,
)

COLLECTOR_CONFIGS = sorted(COLLECTOR_DIR.glob("*.yaml"))
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = {"traces", "metrics", "logs"}
# Which signals a component may consume (exporters, connector inputs) or produce (receivers,
# connector outputs), from each component's README in collector-contrib v0.136.0.
CONSUMES = {
    ("exporters", "otlp"): SIGNALS,
    ("exporters", "otlphttp"): SIGNALS,
    ("exporters", "prometheus"): {"metrics"},
    ("exporters", "loadbalancing"): SIGNALS,
    ("connectors", "spanmetrics"): {"traces"},
}
PRODUCES = {("receivers", "otlp"): SIGNALS, ("connectors", "spanmetrics"): {"metrics"}}


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _signal(pipeline_id: str) -> str:
    return pipeline_id.split("/", 1)[0]


# ----------------------------------------------------------------------- collector


def test_there_are_three_collector_configs() -> None:
    assert [p.name for p in COLLECTOR_CONFIGS] == [
        "otel-collector-loadbalancing.yaml",
        "otel-collector-serve-sidecar.yaml",
        "otel-collector.yaml",
    ]


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=lambda p: p.name)
def test_collector_config_uses_only_contrib_components_and_wires_them(path: Path) -> None:
    config = load_yaml(path)
    assert set(config) <= {*KINDS, "service"}, set(config)
    defined: dict[str, set[str]] = {}
    for kind in KINDS:
        section = config.get(kind) or {}
        assert isinstance(section, dict), kind
        for component_id in section:
            assert re.fullmatch(r"[a-z_]+(/[A-Za-z0-9_.-]+)?", component_id), component_id
            assert _type(component_id) in CONTRIB_COMPONENTS[kind], (
                f"{path.name}: {kind[:-1]} {component_id!r} is not in otelcol-contrib "
                f"{CONTRIB_VERSION}"
            )
        defined[kind] = set(section)

    service = config["service"]
    assert set(service) <= {"extensions", "pipelines", "telemetry"}
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    used["extensions"] = set(service.get("extensions", []))
    assert used["extensions"] <= defined["extensions"]
    connector_in: set[str] = set()
    connector_out: set[str] = set()
    for pipeline_id, pipeline in service["pipelines"].items():
        signal = _signal(pipeline_id)
        assert signal in SIGNALS, pipeline_id
        assert set(pipeline) <= {"receivers", "processors", "exporters"}, pipeline_id
        assert pipeline.get("receivers") and pipeline.get("exporters"), pipeline_id
        for receiver in pipeline["receivers"]:
            kind = "connectors" if receiver in defined["connectors"] else "receivers"
            assert receiver in defined[kind], f"{pipeline_id}: undefined receiver {receiver}"
            assert signal in PRODUCES[(kind, _type(receiver))], (pipeline_id, receiver)
            used[kind].add(receiver)
            if kind == "connectors":
                connector_out.add(receiver)
        processors = pipeline.get("processors", [])
        for processor in processors:
            assert processor in defined["processors"], f"{pipeline_id}: undefined {processor}"
            used["processors"].add(processor)
        if "memory_limiter" in processors:
            assert processors[0] == "memory_limiter", f"{pipeline_id}: memory_limiter first"
        assert "memory_limiter" in processors, f"{pipeline_id}: no memory_limiter"
        for exporter in pipeline["exporters"]:
            kind = "connectors" if exporter in defined["connectors"] else "exporters"
            assert exporter in defined[kind], f"{pipeline_id}: undefined exporter {exporter}"
            assert signal in CONSUMES[(kind, _type(exporter))], (pipeline_id, exporter)
            used[kind].add(exporter)
            if kind == "connectors":
                connector_in.add(exporter)
    assert connector_in == connector_out == defined["connectors"], "connectors need both ends"
    for kind in KINDS:
        assert used[kind] == defined[kind], f"{path.name}: unused {defined[kind] - used[kind]}"
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert "\t" not in line, f"{path.name}:{line_no}: tab"


def test_main_collector_receives_otlp_and_feeds_jaeger_spanmetrics_and_prometheus() -> None:
    config = load_yaml(COLLECTOR_DIR / "otel-collector.yaml")
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert {"otlp", "spanmetrics"} <= set(pipelines["metrics"]["receivers"])
    # Only anomaly spans reach spanmetrics: the pipeline that feeds it filters them first.
    (feeder,) = [p for p in pipelines.values() if "spanmetrics" in p["exporters"]]
    filters = [p for p in feeder["processors"] if _type(p) == "filter"]
    assert filters
    conditions = config["processors"][filters[0]]["traces"]["span"]
    assert conditions == ['attributes["agentstate.anomaly.kind"] == nil']
    dimensions = {d["name"] for d in config["connectors"]["spanmetrics"]["dimensions"]}
    assert "agentstate.anomaly.kind" in dimensions
    assert "agentstate.anomaly.fact" not in dimensions  # high cardinality, never a label


def test_loadbalancing_tier_routes_by_trace_id_to_serve_replicas() -> None:
    config = load_yaml(COLLECTOR_DIR / "otel-collector-loadbalancing.yaml")
    balancer = config["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    assert set(balancer["protocol"]) == {"otlp"}
    assert "endpoint" not in balancer["protocol"]["otlp"]  # the resolver sets it
    hostnames = balancer["resolver"]["static"]["hostnames"]
    assert len(hostnames) >= 2 and all(h.endswith(":4317") for h in hostnames)
    sidecar = load_yaml(COLLECTOR_DIR / "otel-collector-serve-sidecar.yaml")
    assert sidecar["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    (exporter,) = sidecar["exporters"]
    assert _type(exporter) == "otlphttp"  # serve receives OTLP/HTTP on /v1/traces
    # The default target is a replica started with serve's default address.
    serve = _parser().parse_args(["serve"])
    default = sidecar["exporters"][exporter]["endpoint"]
    assert default.endswith(f":-http://{serve.host}:{serve.port}}}"), default


# ----------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = load_yaml(COMPOSE)
    return compose


def _docker_compose(*args: str, compose_file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_binary(), "-f", str(compose_file), "--project-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO)},
    )


def test_docker_compose_validates_the_file() -> None:
    """Docker Compose itself (v2, offline: `config` needs no daemon) accepts the file."""
    result = _docker_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["name"] == "otel-agent-state"
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            assert volume["type"] == "bind" and volume["read_only"] is True, (name, volume)
            assert Path(volume["source"]).exists(), (name, volume["source"])
    build = model["services"]["demo"]["build"]
    assert (Path(build["context"]) / build["dockerfile"]).is_file()


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above is not vacuous: Compose reports an unknown service in depends_on."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text(encoding="utf-8")
    broken.write_text(text.replace("      - prometheus\n", "      - prometheuss\n", 1))
    result = _docker_compose("config", "--quiet", compose_file=broken)
    assert result.returncode != 0
    assert "prometheuss" in result.stderr


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of each bind mount, which must exist."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        assert source.startswith("./"), volume
        path = (COMPOSE.parent / source).resolve()
        assert path.exists(), f"bind mount {source} does not exist"
        out[target] = path
    return out


def test_compose_runs_the_whole_stack() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "demo",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
        "postgres",
        "redis",
    }
    for name, service in services.items():
        assert ("image" in service) != ("build" in service), name
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)
        _mounts(service)
    assert services["otel-collector"]["image"] == (
        f"otel/opentelemetry-collector-contrib:{CONTRIB_VERSION}"
    )
    assert services["grafana"]["image"] == "grafana/grafana:11.6.0"  # the schema we check
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]


def test_compose_collector_and_prometheus_are_wired_to_our_configs() -> None:
    services = _compose()["services"]
    collector = services["otel-collector"]
    mounts = _mounts(collector)
    (config_flag,) = collector["command"]
    target = config_flag.removeprefix("--config=")
    assert mounts[target] == COLLECTOR_DIR / "otel-collector.yaml"
    collector_config = load_yaml(COLLECTOR_DIR / "otel-collector.yaml")
    prom_port = collector_config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]

    prometheus = services["prometheus"]
    mounts = _mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == PROM_DIR / "prometheus.yml"
    prom_config = load_yaml(PROM_DIR / "prometheus.yml")
    for rule_file in prom_config["rule_files"]:
        directory, _, name = rule_file.rpartition("/")
        assert (mounts[directory] / name).is_file(), rule_file
    (scrape,) = prom_config["scrape_configs"]
    assert scrape["honor_labels"] is True  # keep job = service.name from the collector
    assert scrape["static_configs"][0]["targets"] == [f"otel-collector:{prom_port}"]


def test_compose_demo_runs_under_the_launcher_and_exports_to_the_collector() -> None:
    services = _compose()["services"]
    demo = services["demo"]
    dockerfile = REPO / demo["build"]["context"] / demo["build"]["dockerfile"]
    assert dockerfile.is_file()
    command = demo["command"]
    assert command[0] == "opentelemetry-instrument"
    assert command[1] == "otel-agent-state"
    args = _parser().parse_args(command[2:])  # the real CLI accepts the options
    assert args.command == "demo" and args.repeat == 0
    cmd_line = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(encoding="utf-8"), re.M)
    assert cmd_line is not None
    assert json.loads(cmd_line.group(1)) == command
    env = demo["environment"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_METRICS_EXPORTER"] == "otlp"
    host_port = env["OTEL_EXPORTER_OTLP_ENDPOINT"].removeprefix("http://")
    host, port = host_port.split(":")
    assert host in services
    collector_config = load_yaml(COLLECTOR_DIR / "otel-collector.yaml")
    protocol = env["OTEL_EXPORTER_OTLP_PROTOCOL"]
    endpoint = collector_config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
    assert endpoint.endswith(f":{port}")


def test_compose_grafana_mounts_provisioning_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DATASOURCES.parent.parent
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (dashboards_dir / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    services = _compose()["services"]
    for source in load_yaml(DATASOURCES)["datasources"]:
        host = source["url"].removeprefix("http://").split(":")[0]
        assert host in services, source["url"]


# ----------------------------------------------------------------------- Grafana


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _lost_fields(ours: Any, theirs: Any, path: str = "$") -> list[str]:
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: became {type(theirs).__name__}"]
        out: list[str] = []
        for key, value in ours.items():
            if key not in theirs:
                out.append(f"{path}.{key}: not in Grafana's schema")
            else:
                out += _lost_fields(value, theirs[key], f"{path}.{key}")
        return out
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: list changed"]
        return [
            e
            for i, pair in enumerate(zip(ours, theirs, strict=True))
            for e in _lost_fields(*pair, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


def _schema_round_trip(data: dict[str, Any]) -> list[str]:
    plugins.register_default_plugins()  # typed panel options and data queries
    model = Dashboard.from_json(data)
    return _lost_fields(data, json.loads(JSONEncoder().encode(model)))


def test_dashboard_matches_grafana_schema() -> None:
    assert _schema_round_trip(_dashboard()) == []


def test_schema_check_catches_unknown_fields() -> None:
    data = _dashboard()
    data["panels"][2]["options"]["legend"]["showLegendd"] = True
    data["panels"][2]["targets"][0]["exp"] = "up"
    data["templating"]["list"][0]["definition"] = "not part of the schema"
    lost = _schema_round_trip(data)
    assert len(lost) == 3, lost


def test_dashboard_structure_as_grafana_loads_it() -> None:
    data = _dashboard()
    assert isinstance(data["uid"], str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", data["uid"])
    assert isinstance(data["title"], str) and data["title"]
    assert data["schemaVersion"] == 41  # Grafana 11.6, no migration on load
    assert isinstance(data["editable"], bool) and data["graphTooltip"] in (0, 1, 2)
    sources = {s["uid"]: s["type"] for s in load_yaml(DATASOURCES)["datasources"]}
    ids: set[int] = set()
    occupied: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        assert isinstance(panel["id"], int) and panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert 1 <= grid["w"] <= 24 and grid["h"] >= 1 and 0 <= grid["x"] <= 24 - grid["w"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        source = panel["datasource"]
        assert sources[source["uid"]] == source["type"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert sources[target["datasource"]["uid"]] == target["datasource"]["type"]
            if target["datasource"]["type"] == "prometheus":
                assert target["expr"].strip()
            else:  # Jaeger search query (the SDK has no typed Jaeger query to check it)
                assert target["queryType"] == "search"
                assert target["service"] == "$job"
                assert target["tags"] == "agentstate.anomaly.kind=$kind"
    variables = {v["name"] for v in data["templating"]["list"]}
    for _, expr in dashboard_exprs(data):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name.startswith("__") or name in variables, name


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    data = _dashboard()
    by_title = {p["title"]: p for p in data["panels"]}
    exprs = dict(dashboard_exprs(data))
    assert "sum by (kind)" in exprs["Anomalies by kind"]
    assert "sum by (agent, kind)" in exprs["Anomalies by agent"]
    assert "sum by (fact_rule, kind)" in exprs["Anomalies by fact rule"]
    assert 'kind="orphaned_mutation"' in exprs["Orphaned mutations"]
    assert "sum by (store, tier, op)" in exprs["Observations by store and tier"]
    lag = [t["expr"] for t in by_title["Stale-read lag percentiles"]["targets"]]
    assert [re.search(r"histogram_quantile\(([\d.]+),", e).group(1) for e in lag] == [  # type: ignore[union-attr]
        "0.5",
        "0.9",
        "0.99",
    ]
    assert all("agentstate_stale_read_lag_milliseconds_bucket" in e for e in lag)
    # Panel and data links to the Jaeger search for anomaly spans.
    panel_links = [link["url"] for link in by_title["Anomalies by kind"]["links"]]
    data_links = [
        link["url"] for link in by_title["Anomalies by kind"]["fieldConfig"]["defaults"]["links"]
    ]
    for url in panel_links + data_links:
        assert url.startswith("${jaeger_url}/search?service=${job:percentencode}")
        assert "agentstate.anomaly.kind" in url
    assert "${__field.labels.kind}" in data_links[0]
    for url in panel_links + data_links + [link["url"] for link in data["links"]]:
        _assert_jaeger_search(url)
    assert by_title["Anomaly traces (Jaeger)"]["datasource"]["uid"] == "jaeger"


def _assert_jaeger_search(url: str) -> None:
    """Expanded as Grafana does, the link is a Jaeger UI search for anomaly spans."""
    expanded = (
        url.replace("${jaeger_url}", "http://localhost:16686")
        .replace("${job:percentencode}", "credit-demo")
        .replace("${kind:percentencode}", "stale_read")
        .replace("${__field.labels.kind}", "stale_read")
    )
    assert "$" not in expanded, expanded
    parsed = urllib.parse.urlsplit(expanded)
    assert (parsed.netloc, parsed.path) == ("localhost:16686", "/search")
    query = urllib.parse.parse_qs(parsed.query)
    assert query["service"] == ["credit-demo"]
    if "tags" in query:
        assert json.loads(query["tags"][0]) == {"agentstate.anomaly.kind": "stale_read"}
    else:
        assert query["operation"] == ["agentstate.anomaly stale_read"]


def test_grafana_alert_rules_mirror_the_prometheus_rules() -> None:
    provisioning = load_yaml(GRAFANA_ALERTS)
    assert provisioning["apiVersion"] == 1
    prometheus_rules = prometheus_alert_rules()
    assert grafana_alert_exprs() == {name: rule["expr"] for name, rule in prometheus_rules.items()}
    sources = {s["uid"] for s in load_yaml(DATASOURCES)["datasources"]} | {"__expr__"}
    uids: set[str] = set()
    for group in provisioning["groups"]:
        assert group["folder"] and re.fullmatch(r"\d+[smh]", group["interval"])
        for rule in group["rules"]:
            assert rule["uid"] not in uids and len(rule["uid"]) <= 40
            uids.add(rule["uid"])
            refs = [query["refId"] for query in rule["data"]]
            assert rule["condition"] in refs and len(set(refs)) == len(refs)
            for query in rule["data"]:
                assert query["datasourceUid"] in sources
                assert query["model"]["refId"] == query["refId"]
                if query["datasourceUid"] == "__expr__":
                    assert query["model"]["expression"] in refs
            assert rule["labels"] == prometheus_rules[rule["title"]]["labels"]
            assert rule["noDataState"] in {"OK", "NoData", "Alerting"}
            assert rule["execErrState"] in {"OK", "Error", "Alerting"}
            annotations = rule["annotations"]
            assert annotations["__dashboardUid__"] == _dashboard()["uid"]
            panel_ids = {str(p["id"]) for p in _dashboard()["panels"]}
            assert annotations["__panelId__"] in panel_ids
            assert "$value |" not in annotations["description"]  # Prometheus-only template


def test_grafana_alert_rules_match_grafanas_alert_rule_schema() -> None:
    """Each rule survives a round trip through the SDK's model of Grafana's alert rule."""
    for group in load_yaml(GRAFANA_ALERTS)["groups"]:
        # File provisioning names the group and its folder (the API uses folderUID).
        assert set(group) == {"orgId", "name", "folder", "interval", "rules"}
        for rule in group["rules"]:
            lost = _lost_fields(rule, json.loads(JSONEncoder().encode(Rule.from_json(rule))))
            assert lost == [], (rule["title"], lost)


def test_shell_quoting_of_compose_command_is_plain() -> None:
    """Every compose command item is one shell word: no hidden shell in the demo."""
    for item in _compose()["services"]["demo"]["command"]:
        assert shlex.split(item) == [item]
