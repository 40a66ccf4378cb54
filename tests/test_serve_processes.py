"""`otel-agent-state serve` end to end: real processes export with the real OTLP exporter
(protobuf, and OTLP/JSON gzipped) to a `serve` subprocess, which judges the whole trace
across them and re-exports the anomaly span and metrics to a second OTLP receiver (the
test's sink)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.otlp_sink import Sink, attrs

APPS = Path(__file__).resolve().parent / "apps"
COMMAND = Path(sys.executable).with_name("otel-agent-state")  # the installed console script


@pytest.fixture
def sink() -> Iterator[Sink]:
    one = Sink()
    yield one
    one.close()


class Serve:
    def __init__(self, sink: Sink, *args: str, env: dict[str, str] | None = None) -> None:
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        run_env.update(env or {})
        self.proc = subprocess.Popen(
            [
                str(COMMAND),
                "serve",
                "--port",
                "0",
                "--grpc-port",
                "0",
                "--otlp-endpoint",
                sink.endpoint,
                "--metric-interval-ms",
                "200",
                *args,
            ],
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "listening on " in line:
                self.endpoint = (
                    line.split("listening on ")[1].split(" ")[0].removesuffix("/v1/traces")
                )
                self.grpc = "http://" + line.split("OTLP/gRPC on ")[1].split(";")[0]
                return
        self.proc.wait(timeout=30)
        pytest.fail("serve did not start: " + "".join(self.log))

    def stop(self, how: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(how)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, "".join(self.log) + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _client(*args: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(APPS / "otlp_client.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def _workflow(endpoint: str, read_version: str, planner: str, analyst: str) -> dict[str, str]:
    """The planner process commits n:2, then the analyst process (same trace) reads."""
    up = _client("planner", planner, endpoint)
    down = _client("analyst", analyst, endpoint, up["traceparent"], read_version)
    return {**up, **down}


@pytest.mark.parametrize(("planner", "analyst"), [("protobuf", "json"), ("json", "protobuf")])
def test_serve_flags_a_stale_read_across_two_exporting_processes(
    sink: Sink, planner: str, analyst: str
) -> None:
    serve = Serve(sink, "--trace-idle-ms", "300")
    try:
        ids = _workflow(serve.endpoint, "n:1", planner, analyst)
        found = sink.wait_for(sink.anomaly_spans)
        code, _, log = serve.stop()
    finally:
        serve.kill()
    assert code == 0, log
    assert len(found) == 1, log
    [anomaly] = found
    assert anomaly.name == "agentstate.anomaly stale_read"
    assert anomaly.trace_id.hex() == ids["trace"]
    assert anomaly.parent_span_id.hex() == ids["read"]
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in anomaly.links] == [
        (ids["trace"], ids["write"])
    ]
    a = attrs(anomaly.attributes)
    assert a["agentstate.anomaly.kind"] == "stale_read"
    assert a["agentstate.anomaly.fact"] == "credit_score/42"
    assert a["agentstate.anomaly.observed_version"] == "n:1"
    assert a["agentstate.anomaly.expected_version"] == "n:2"
    assert a["agentstate.anomaly.agents"] == ["analyst", "planner"]
    assert a["agentstate.anomaly.severity"] == "warning"
    assert a["agentstate.anomaly.lag_ms"] > 0
    assert "analyst read credit_score/42 at n:1" in a["agentstate.anomaly.summary"]
    [(resource, scope, _)] = [s for s in sink.spans() if s[2].name == anomaly.name]
    assert (resource["service.name"], scope) == ("otel-agent-state-serve", "otel_agent_state")

    metrics = sink.metrics()  # cumulative, exported every 200 ms: the last point counts
    count = metrics["agentstate.anomalies"][-1]
    assert attrs(count.attributes) == {
        "kind": "stale_read",
        "store": "postgresql",
        "agent": "analyst",
        "fact_rule": "unmatched",
    }
    assert count.as_int == 1
    assert metrics["agentstate.stale_read.lag"][-1].count == 1
    observed = {
        (attrs(p.attributes)["op"], attrs(p.attributes)["tier"]): p.as_int
        for p in metrics["agentstate.observations"]
    }
    assert observed == {("write", "primary"): 1, ("read", "replica"): 1}


def _ops(sink: Sink) -> set[str]:
    return {attrs(p.attributes)["op"] for p in sink.metrics().get("agentstate.observations", ())}


def test_serve_correct_twin_yields_no_anomaly(sink: Sink) -> None:
    serve = Serve(sink, "--trace-idle-ms", "300")
    try:
        _workflow(serve.endpoint, "n:2", "protobuf", "json")
        # The trace was judged: its observations were counted and exported.
        sink.wait_for(lambda: len(_ops(sink)) == 2)
        judged = sink.metrics()["agentstate.observations"]
        code, _, log = serve.stop()
    finally:
        serve.kill()
    assert code == 0, log
    assert {attrs(p.attributes)["op"]: p.as_int for p in judged} == {"write": 1, "read": 1}
    assert sink.anomaly_spans() == []
    assert "agentstate.anomalies" not in sink.metrics()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_judges_pending_traces_and_flushes(sink: Sink, how: signal.Signals) -> None:
    serve = Serve(sink, "--trace-idle-ms", "600000", "--print")
    try:
        ids = _workflow(serve.endpoint, "n:1", "protobuf", "protobuf")
        assert sink.anomaly_spans() == []  # far from idle: nothing judged yet
        code, out, log = serve.stop(how)
    finally:
        serve.kill()
    assert code == 0, log
    [anomaly] = sink.anomaly_spans()
    assert anomaly.parent_span_id.hex() == ids["read"]
    assert '"kind": "stale_read"' in out  # --print: the check report's JSON, one line each
    assert "1 anomaly reported" in log


def test_serve_refuses_to_start_without_an_endpoint() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-m", "otel_agent_state.serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--otlp-endpoint" in result.stderr


def test_serve_help_describes_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_agent_state.serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--otlp-endpoint", "--trace-idle-ms", "--max-traces", "loadbalancing"):
        assert option in result.stdout


def test_serve_finds_the_zero_code_two_process_stale_read(sink: Sink, tmp_path: Path) -> None:
    """The propagator tests' planner and agent service, launched with opentelemetry-instrument
    and exporting over OTLP/HTTP to `serve` (only the W3C propagators: no live frontier),
    so the stale read is found by `serve` alone, from the whole trace."""
    from .test_propagator_processes import APPS as PROPAGATOR_APPS
    from .test_propagator_processes import _run_pair

    rules = str(PROPAGATOR_APPS / "frontier_facts.toml")
    serve = Serve(sink, "--trace-idle-ms", "300", env={"OTEL_AGENTSTATE_CONFIG": rules})
    try:
        export = {
            "OTEL_PROPAGATORS": "tracecontext,baggage",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": serve.endpoint + "/v1/traces",
        }
        _, _, trace_id = _run_pair(
            tmp_path, read_from="replica", service_env=export, planner_env=export
        )
        found = sink.wait_for(sink.anomaly_spans)
        code, _, log = serve.stop()
    finally:
        serve.kill()
    assert code == 0, log
    [anomaly] = found
    assert anomaly.trace_id.hex() == trace_id
    a = attrs(anomaly.attributes)
    assert (a["agentstate.anomaly.fact"], a["agentstate.anomaly.observed_version"]) == (
        "credit_score/42",
        "n:1",
    )
    assert a["agentstate.anomaly.agents"] == ["analyst", "planner"]


def test_serve_takes_otlp_grpc_from_the_sdk_exporter_in_other_processes(
    sink: Sink, tmp_path: Path
) -> None:
    """The SDK's OTLP exporter speaks gRPC by default: with only the endpoint set (as
    `serve --help` says) the zero-code planner and agent service export to serve's gRPC
    port, and serve finds the stale read across them."""
    from .test_propagator_processes import APPS as PROPAGATOR_APPS
    from .test_propagator_processes import _run_pair

    rules = str(PROPAGATOR_APPS / "frontier_facts.toml")
    serve = Serve(sink, "--trace-idle-ms", "300", env={"OTEL_AGENTSTATE_CONFIG": rules})
    try:
        export = {
            "OTEL_PROPAGATORS": "tracecontext,baggage",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": serve.grpc,  # no protocol: grpc
        }
        _, _, trace_id = _run_pair(
            tmp_path, read_from="replica", service_env=export, planner_env=export
        )
        found = sink.wait_for(sink.anomaly_spans)
        code, _, log = serve.stop()
    finally:
        serve.kill()
    assert code == 0, log
    [anomaly] = found
    assert anomaly.trace_id.hex() == trace_id
    a = attrs(anomaly.attributes)
    assert (a["agentstate.anomaly.kind"], a["agentstate.anomaly.fact"]) == (
        "stale_read",
        "credit_score/42",
    )
    assert "OTLP/gRPC on 127.0.0.1:" in log


def test_serve_print_says_when_the_application_already_reported_its_findings(
    sink: Sink, tmp_path: Path
) -> None:
    """A single-process application under the launcher finds its stale read itself and
    exports the anomaly span; serve --print prints nothing for it, and says why at start
    and in its periodic and final summaries."""
    root = Path(__file__).resolve().parent.parent
    serve = Serve(sink, "--trace-idle-ms", "200", "--print", "--summary-interval-s", "1")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTSTATE_"))}
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=serve.grpc,
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlalchemy",
            OTEL_AGENTSTATE_CONFIG=str(root / "examples" / "credit_facts.toml"),
        )
        app = subprocess.run(
            [
                str(COMMAND.with_name("opentelemetry-instrument")),
                "--service_name",
                "agents",
                sys.executable,
                str(root / "examples" / "credit_agents_sqlite.py"),
                str(tmp_path / "app.db"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert app.returncode == 0, app.stderr
        assert serve.proc.stderr is not None
        for line in serve.proc.stderr:  # the periodic summary, once the trace was judged
            serve.log.append(line)
            if "already reported live" in line:
                break
        code, out, log = serve.stop()
    finally:
        serve.kill()
    assert code == 0, log
    assert out == ""  # nothing new to print ...
    assert "--print: anomalies that need spans of several processes are printed" in log
    periodic, stopped = [line for line in log.splitlines() if "already reported live" in line]
    for line in (periodic, stopped):
        assert "0 anomalies reported" in line
        assert "1 anomaly found that the exporting application's own otel-agent-state " in line
        assert "(not printed again)" in line
    assert "stopped: " in stopped and "stopped: " not in periodic


def test_a_busy_port_is_one_clear_line() -> None:
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

    def serve(*ports: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(COMMAND), "serve", "--print", *ports],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc = serve("--port", "0", "--grpc-port", str(port))
        http = serve("--port", str(port), "--grpc-port", "0")
    assert grpc.returncode == 2
    assert grpc.stderr == (
        f"otel-agent-state serve: cannot listen for OTLP/gRPC on 127.0.0.1:{port} (in use?); "
        "choose other ports with --port / --grpc-port (or --no-grpc)\n"
    )
    assert http.returncode == 2
    assert http.stderr.startswith(
        f"otel-agent-state serve: cannot listen for OTLP/HTTP on 127.0.0.1:{port}: "
    )
    assert len(http.stderr.splitlines()) == 1


def test_the_default_grpc_port_taken_leaves_serve_on_otlp_http(sink: Sink) -> None:
    """A sidecar Collector on 4317 forwarding to serve over OTLP/HTTP (collector-config/):
    serve still starts, on OTLP/HTTP alone, and says so."""
    import socket

    holder: socket.socket | None = socket.socket()
    try:
        holder.bind(("127.0.0.1", 4317))
        holder.listen()
    except OSError:  # taken already: the situation under test all the same
        holder.close()
        holder = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen(
        [
            str(COMMAND),
            "serve",
            "--port",
            "0",
            "--otlp-endpoint",
            sink.endpoint,
            "--trace-idle-ms",
            "300",
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        log = []
        for line in proc.stderr:
            log.append(line)
            if "listening on " in line:
                break
        assert "OTLP/gRPC" not in log[-1], log
        endpoint = log[-1].split("listening on ")[1].split(" ")[0].removesuffix("/v1/traces")
        assert (
            "cannot listen for OTLP/gRPC on 127.0.0.1:4317 (in use?): OTLP/HTTP only "
            "(--grpc-port chooses another gRPC port)" in "".join(log)
        )
        ids = _workflow(endpoint, "n:1", "protobuf", "json")
        [anomaly] = sink.wait_for(sink.anomaly_spans)
        assert anomaly.parent_span_id.hex() == ids["read"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        if holder is not None:
            holder.close()
    assert proc.returncode == 0
