"""`otel-agent-state demo --redis-url/--postgres-dsn`: the scenario on the real servers.

Run as a user runs it (the installed command, plainly and under `opentelemetry-instrument`).
Each test gets its own namespace (AGENTSTATE_DEMO_NAMESPACE), so its PostgreSQL schemas and
its Redis key (db 3) never meet another run's; the fixtures remove them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

BIN = Path(sys.executable).parent
CLI = BIN / "otel-agent-state"
LAUNCHER = BIN / "opentelemetry-instrument"
REDIS_DB = 3

FAULTY_TITLES = sorted(
    [
        ("STALE READ", "credit_score/42", "error"),
        ("STALE READ", "credit_score/42", "error"),
        ("DIVERGENT VIEW", "credit_score/42", "error"),
        ("ORPHANED MUTATION", "account/A", "error"),
    ]
)


@dataclass
class Servers:
    redis_url: str
    postgres_dsn: str
    namespace: str

    @property
    def redis_key(self) -> str:
        return f"{self.namespace}:credit_score:42"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "PYTHONPATH", "AGENTSTATE_"))
        }
        env["AGENTSTATE_DEMO_NAMESPACE"] = self.namespace
        env.update(extra)
        return env

    def pg(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres_dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def servers(redis_url: str, postgres_dsn: str) -> Iterator[Servers]:
    s = Servers(
        f"{redis_url}/{REDIS_DB}", postgres_dsn, f"agentstate_demo_t{uuid.uuid4().hex[:10]}"
    )
    yield s
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {s.namespace} CASCADE")
        conn.execute(f"DROP SCHEMA IF EXISTS {s.namespace}_replica CASCADE")
    client = redis.Redis.from_url(s.redis_url)
    client.delete(s.redis_key)
    client.close()


def _demo(
    servers: Servers, *args: str, launcher: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    command = [str(CLI), "demo", *args]
    if launcher:
        command = [str(LAUNCHER), "--service_name", "credit-demo", *command]
        env = {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            **env,
        }
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=servers.env(**env),
        timeout=180,
        check=False,
    )


def _sections(stdout: str) -> tuple[str, str, str]:
    head, _, rest = stdout.partition("faulty workflow:")
    faulty, _, correct = rest.partition("correct workflow:")
    return head, faulty, correct


def _titles(text: str) -> list[tuple[str, str, str]]:
    return sorted(re.findall(r"^\s+\d\. ([A-Z ]+) of (\S+) \[(\w+)\]$", text, re.MULTILINE))


def _store_args(servers: Servers, stores: str) -> list[str]:
    args = []
    if "redis" in stores:
        args += ["--redis-url", servers.redis_url]
    if "postgres" in stores:
        args += ["--postgres-dsn", servers.postgres_dsn]
    return args


def _assert_scenario(stdout: str, stores: str) -> None:
    """The embedded demo's findings, with the store each copy now lives in."""
    head, faulty, correct = _sections(stdout)
    cache = "redis" if "redis" in stores else "sqlite"
    database = "postgresql" if "postgres" in stores else "sqlite"
    assert "risk-assessor  read score 680 from the cache -> decline" in faulty
    assert "=> 4 anomalies:" in faulty
    assert _titles(faulty) == FAULTY_TITLES
    assert f"risk-assessor read credit_score/42 at n:1 from the cache ({cache})" in faulty
    assert f"limit-setter read credit_score/42 at n:1 from the replica ({database})" in faulty
    assert "credit-scorer had committed n:2" in faulty
    assert "limit-setter acted on credit_score/42 at n:1 while fraud-checker" in faulty
    assert "agent payments (autocommit writes, no transaction) failed after committing" in faulty
    assert "=> no anomalies" in correct
    assert "risk-assessor  read score 750 from the primary (cache miss)" in correct
    assert "limit-setter   read score 750 from the replica" in correct
    assert "rolled back" in correct
    if "redis" in stores:
        assert "score cache: Redis redis://" in head
    if "postgres" in stores:
        assert "primary + lagging replica: PostgreSQL postgresql://" in head


@pytest.mark.parametrize("stores", ["redis", "postgres", "redis+postgres"])
def test_demo_on_real_servers_flags_the_faulty_workflow_only(
    servers: Servers, stores: str, tmp_path: Path
) -> None:
    result = _demo(servers, "--workdir", str(tmp_path), *_store_args(servers, stores))
    assert result.returncode == 0, result.stderr
    _assert_scenario(result.stdout, stores)
    # The stores named on the command line were really used, the others stayed embedded.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "app.db")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert ("score_cache" in tables) == ("redis" not in stores)
    assert ("credit_scores" in tables) == ("postgres" not in stores)
    assert (tmp_path / "replica.db").exists() == ("postgres" not in stores)
    if "postgres" in stores:
        ns = servers.namespace
        # After the correct workflow: rescored, replicated, and the transfer rolled back.
        assert servers.pg(f"SELECT score, version FROM {ns}.credit_scores") == [(750, 2)]
        assert servers.pg(f"SELECT score, version FROM {ns}_replica.credit_scores") == [(750, 2)]
        assert servers.pg(f"SELECT account_id, balance FROM {ns}.accounts ORDER BY 1") == [
            ("A", 1000),
            ("B", 0),
        ]
    if "redis" in stores:  # the correct workflow invalidated the cache entry
        client = redis.Redis.from_url(servers.redis_url)
        assert client.exists(servers.redis_key) == 0
        client.close()


def test_faulty_run_leaves_the_servers_as_a_faulty_workflow_would(servers: Servers) -> None:
    result = _demo(servers, "--run", "faulty", *_store_args(servers, "redis+postgres"))
    assert result.returncode == 0, result.stderr
    assert "correct workflow:" not in result.stdout
    ns = servers.namespace
    assert servers.pg(f"SELECT score, version FROM {ns}.credit_scores") == [(750, 2)]
    assert servers.pg(f"SELECT score, version FROM {ns}_replica.credit_scores") == [(680, 1)]
    assert servers.pg(f"SELECT balance FROM {ns}.accounts WHERE account_id = 'A'") == [(900,)]
    client = redis.Redis.from_url(servers.redis_url)
    cached = client.get(servers.redis_key)
    client.close()
    assert cached is not None and json.loads(cached) == {"score": 680, "version": 1}
    # A second run starts again from the seeded state (the demo rows are reset).
    again = _demo(servers, "--run", "faulty", *_store_args(servers, "redis+postgres"))
    assert again.returncode == 0, again.stderr
    assert _titles(_sections(again.stdout)[1]) == FAULTY_TITLES


def _console_spans(stdout: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (start := stdout.find('{\n    "name"', index)) >= 0:
        span, index = decoder.raw_decode(stdout, start)
        spans.append(span)
    return spans


@pytest.mark.parametrize("stores", ["redis+postgres", "redis", "postgres"])
def test_demo_on_real_servers_under_the_launcher(servers: Servers, stores: str) -> None:
    result = _demo(servers, *_store_args(servers, stores), launcher=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    _assert_scenario(result.stdout, stores)
    spans = _console_spans(result.stdout)
    anomalies = [s["attributes"] for s in spans if s["name"].startswith("agentstate.anomaly")]
    got = sorted(
        (
            a["agentstate.anomaly.kind"],
            a["agentstate.anomaly.fact"],
            a["agentstate.anomaly.observed_version"],
            a["agentstate.anomaly.expected_version"],
            tuple(a["agentstate.anomaly.agents"]),
        )
        for a in anomalies
    )
    assert got == sorted(
        [
            ("stale_read", "credit_score/42", "n:1", "n:2", ("risk-assessor", "credit-scorer")),
            ("stale_read", "credit_score/42", "n:1", "n:2", ("limit-setter", "credit-scorer")),
            ("divergent_view", "credit_score/42", "n:1", "n:2", ("limit-setter", "fraud-checker")),
            ("orphaned_mutation", "account/A", "n:2", "none", ("payments",)),
        ]
    )
    # The client spans carry the versions the fact rules map onto credit_score/42.
    observed = {
        (
            a.get("agentstate.store"),
            a.get("agentstate.tier"),
            tuple(a.get("agentstate.read.versions", ())),
            tuple(a.get("agentstate.write.versions", ())),
        )
        for a in (s["attributes"] for s in spans)
        if "credit_score/42"
        in (*a.get("agentstate.read.facts", ()), *a.get("agentstate.write.facts", ()))
    }
    cache = "redis" if "redis" in stores else "sqlite"
    database = "postgresql" if "postgres" in stores else "sqlite"
    assert (cache, "cache", ("n:1",), ()) in observed  # the stale cache hit
    assert (cache, "cache", (), ("none",)) in observed  # the correct twin's invalidation
    assert (database, "primary", (), ("n:2",)) in observed  # the rescoring
    assert (database, "replica", ("n:1",), ()) in observed  # the lagging replica
    assert (database, "replica", ("n:2",), ()) in observed  # caught up in the correct run


def test_server_urls_default_from_the_compose_environment_variables(servers: Servers) -> None:
    """docker-compose.yml sets AGENTSTATE_REDIS_URL / AGENTSTATE_POSTGRES_DSN for the demo."""
    result = _demo(
        servers,
        "--run",
        "faulty",
        AGENTSTATE_REDIS_URL=servers.redis_url,
        AGENTSTATE_POSTGRES_DSN=servers.postgres_dsn,
    )
    assert result.returncode == 0, result.stderr
    head, faulty, _ = _sections(result.stdout)
    assert "score cache: Redis redis://" in head and "PostgreSQL postgresql://" in head
    assert "from the cache (redis)" in faulty and "from the replica (postgresql)" in faulty


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("launcher", [False, True])
def test_unreachable_redis_is_a_clear_error(servers: Servers, launcher: bool) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/{REDIS_DB}"
    result = _demo(servers, "--redis-url", url, launcher=launcher)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot connect to Redis at {url} (--redis-url / AGENTSTATE_REDIS_URL)" in (
        result.stderr
    )
    assert "Connection refused" in result.stderr
    assert "docker compose up -d redis" in result.stderr
    assert "faulty workflow:" not in result.stdout


@pytest.mark.parametrize("launcher", [False, True])
def test_unreachable_postgres_is_a_clear_error(servers: Servers, launcher: bool) -> None:
    dsn = f"postgresql://postgres:s3cret@127.0.0.1:{_closed_port()}/test"
    result = _demo(servers, "--postgres-dsn", dsn, launcher=launcher)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    shown = dsn.replace("s3cret", "***")
    assert f"cannot connect to PostgreSQL at {shown} (--postgres-dsn" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "docker compose up -d postgres" in result.stderr
    assert "faulty workflow:" not in result.stdout


def test_missing_database_and_bad_urls_are_clear_errors(servers: Servers) -> None:
    missing_db = servers.postgres_dsn.rsplit("/", 1)[0] + "/agentstate_demo_no_such_db"
    result = _demo(servers, "--postgres-dsn", missing_db)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert 'database "agentstate_demo_no_such_db" does not exist' in result.stderr
    result = _demo(servers, "--redis-url", "http://127.0.0.1:6379/3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot connect to Redis at http://127.0.0.1:6379/3" in result.stderr
    result = _demo(servers, "--redis-url", servers.redis_url, AGENTSTATE_DEMO_NAMESPACE="x; DROP")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "AGENTSTATE_DEMO_NAMESPACE" in result.stderr
