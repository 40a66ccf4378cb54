"""Shared fixtures: a real SDK TracerProvider and MeterProvider wired to in-memory exporters."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_agent_state import api
from otel_agent_state.core import config
from otel_agent_state.processor import StateCoherenceSpanProcessor

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES_DSN = os.environ.get(
    "AGENTSTATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AGENTSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
MYSQL_DSN = os.environ.get("AGENTSTATE_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")


def fail_or_skip(message: str) -> None:
    """What a test needs is missing: it fails in CI and skips elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def service_missing(what: str, reason: object) -> None:
    """A test that needs a real service fails in CI when it is down, and skips elsewhere."""
    fail_or_skip(f"{what} is not reachable ({reason}); .ci/run starts it")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the real PostgreSQL server (db `test`, trust auth)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as exc:
        service_missing("PostgreSQL at 127.0.0.1:5432", exc)
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def mysql_dsn() -> str:
    """DSN of the real MariaDB server (db `test`, root without a password)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 3306), timeout=2).close()
    except OSError as exc:
        service_missing("MariaDB at 127.0.0.1:3306", exc)
    return MYSQL_DSN


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server, without a db number (tests pick their own db)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as exc:
        service_missing("Redis at 127.0.0.1:6379", exc)
    return REDIS_URL


# --------------------------------------------------------------------------- Redis Cluster


def cluster_binaries_missing() -> None:
    """No redis-server / redis-cli to start a cluster with: fail in CI, skip elsewhere."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if not missing:
        return
    fail_or_skip(f"{' and '.join(missing)} not installed: the Redis Cluster tests start their own")


def redis_cli(port: int, *args: object) -> str:
    """One redis-cli command against the node on `port`; its output, stripped."""
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _cluster_ports() -> int:
    """A port free for a node and for its cluster bus (the port + 10000)."""
    for _ in range(100):
        port = random.randint(20_000, 29_999)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@dataclass
class ClusterNode:
    """A cluster-enabled redis-server of ours, in its own directory."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def node_id(self) -> str:
        return redis_cli(self.port, "cluster", "myid")

    def state_ok(self) -> bool:
        return "cluster_state:ok" in redis_cli(self.port, "cluster", "info")

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _answers(node: ClusterNode) -> bool:
    if node.process.poll() is not None:
        raise RuntimeError(f"redis-server on port {node.port} exited:\n{node.log()}")
    try:
        return redis_cli(node.port, "ping") == "PONG"
    except subprocess.CalledProcessError:
        return False


def start_cluster_node(directory: Path, *options: str) -> ClusterNode:
    """Start `redis-server` with cluster mode on, no persistence, on a free port (a port
    taken in the meantime: try another), and wait until it answers."""
    directory.mkdir(parents=True, exist_ok=True)
    failure: Exception | None = None
    for _ in range(5):
        port = _cluster_ports()
        command = ["redis-server", "--port", str(port), "--cluster-enabled", "yes"]
        command += ["--cluster-config-file", str(directory / f"nodes-{port}.conf")]
        command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
        command += ["--daemonize", "no", *options]
        with (directory / "server.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        node = ClusterNode(port, process, directory)
        try:
            wait_until(lambda node=node: _answers(node), f"redis-server on port {port}", 15)
            return node
        except (RuntimeError, TimeoutError) as exc:
            failure = exc
            node.stop()
    raise RuntimeError(f"could not start a Redis Cluster node: {failure}")


def wait_cluster_ok(*nodes: ClusterNode) -> None:
    """Wait until every node's `cluster info` says cluster_state:ok (a clear error if not)."""
    for node in nodes:
        try:
            wait_until(node.state_ok, f"cluster_state:ok on port {node.port}")
        except TimeoutError as exc:
            info = redis_cli(node.port, "cluster", "info")
            raise RuntimeError(f"{exc}; cluster info:\n{info}\nlog:\n{node.log()}") from exc


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNode]:
    """A real one-node Redis Cluster (all 16384 slots on one redis-server of ours), started
    for the session and stopped after it."""
    cluster_binaries_missing()
    node = start_cluster_node(tmp_path_factory.mktemp("redis-cluster"))
    try:
        redis_cli(node.port, "cluster", "addslotsrange", 0, 16383)
        wait_cluster_ok(node)
        yield node
    finally:
        node.stop()


@dataclass
class Telemetry:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    processor: StateCoherenceSpanProcessor

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def anomalies(self, kind: str | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.name.startswith("agentstate.anomaly")
            and (kind is None or (s.attributes or {}).get("agentstate.anomaly.kind") == kind)
        ]

    def span_named(self, name: str) -> ReadableSpan:
        matches = [s for s in self.spans() if s.name == name]
        names = [s.name for s in self.spans()]
        assert len(matches) == 1, f"expected one span {name!r}, got {names}"
        return matches[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """A provider with our processor first and an in-memory exporter after it."""
    config.set_settings(config.Settings())
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    processor = StateCoherenceSpanProcessor(tracer_provider=provider, meter_provider=meter_provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api.configure(tracer_provider=provider)
    yield Telemetry(provider, exporter, reader, processor)
    provider.shutdown()
    meter_provider.shutdown()
    api._tracer_provider = None
    config.set_settings(None)
