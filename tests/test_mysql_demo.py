"""`otel-agent-state demo --mysql-dsn`: the credit-scoring scenario with its primary and
lagging replica on the real MariaDB server, run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mysql_support import sql

CLI = Path(sys.executable).parent / "otel-agent-state"


@pytest.fixture
def namespace(mysql_dsn: str) -> Iterator[str]:
    name = f"myi_demo_{uuid.uuid4().hex[:8]}"
    yield name
    sql(mysql_dsn, f"DROP DATABASE IF EXISTS {name}", f"DROP DATABASE IF EXISTS {name}_replica")


def _demo(*args: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTSTATE_"))}
    env["AGENTSTATE_DEMO_NAMESPACE"] = namespace
    return subprocess.run(
        [str(CLI), "demo", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_demo_on_mariadb_flags_each_failure_and_not_the_correct_workflow(
    mysql_dsn: str, namespace: str
) -> None:
    result = _demo("--mysql-dsn", mysql_dsn, namespace=namespace)
    assert result.returncode == 0, result.stderr
    faulty, _, correct = result.stdout.partition("correct workflow:")
    assert f"(databases {namespace}, {namespace}_replica)" in result.stdout
    titles = re.findall(r"^\s+\d\. ([A-Z ]+) of (\S+) \[(\w+)\]$", faulty, re.MULTILINE)
    assert sorted(titles) == sorted(
        [
            ("STALE READ", "credit_score/42", "error"),
            ("STALE READ", "credit_score/42", "error"),
            ("DIVERGENT VIEW", "credit_score/42", "error"),
            ("ORPHANED MUTATION", "account/A", "error"),
        ]
    )
    assert "limit-setter read credit_score/42 at n:1 from the replica (mysql)" in faulty
    assert "=> no anomalies" in correct
    assert sql(mysql_dsn, f"SELECT balance FROM {namespace}.accounts WHERE account_id = 'B'") == [
        (0,)
    ]


def test_demo_says_what_to_do_when_the_server_is_down(namespace: str) -> None:
    result = _demo("--mysql-dsn", "mysql://root@127.0.0.1:1/test", namespace=namespace)
    assert result.returncode == 2
    assert "cannot connect to MySQL/MariaDB at mysql://root@127.0.0.1:1/test" in result.stderr
    assert "leave the option out to run on embedded SQLite" in result.stderr


def test_one_primary_only(mysql_dsn: str, namespace: str) -> None:
    result = _demo(
        "--mysql-dsn",
        mysql_dsn,
        "--postgres-dsn",
        "postgresql://x@127.0.0.1/x",
        namespace=namespace,
    )
    assert result.returncode == 2
    assert "pass one" in result.stderr
