"""Zero-code use on MariaDB (SPEC §2): `opentelemetry-instrument` loads our PyMySQL and
mysqlclient instrumentors and contrib's from their entry points; an application that imports
nothing of ours gets one database span per statement with our attributes, and the stale
replica read is found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .mysql_support import params, sql, unique_prefix

LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")

APP = """
import sys
import {module}

from opentelemetry import trace

tracer = trace.get_tracer("app")
args = dict(host={host!r}, port={port}, user={user!r}, {db}={database!r}, autocommit=True)
with tracer.start_as_current_span("workflow"):
    with tracer.start_as_current_span("scorer", attributes={{"gen_ai.agent.name": "scorer"}}):
        conn = {module}.connect(**args)
        conn.cursor().execute("UPDATE {table} SET score = 750, version = 2 WHERE id = %s", (42,))
        conn.close()
    with tracer.start_as_current_span("assessor", attributes={{"gen_ai.agent.name": "assessor"}}):
        conn = {module}.connect(**args)
        cursor = conn.cursor()
        cursor.execute("SELECT score, version FROM {replica} WHERE id = %s", (42,))
        print("assessor saw", cursor.fetchone())
        conn.close()
"""


def _spans(stdout: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while True:
        start = stdout.find("{", index)
        if start < 0:
            return spans
        try:
            obj, index = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            spans.append(obj)


@pytest.mark.parametrize("module", ["pymysql", "MySQLdb"])
def test_launcher_traces_mysql_with_contrib_and_finds_the_stale_read(
    tmp_path: Path, mysql_dsn: str, module: str
) -> None:
    p = unique_prefix()
    table, replica = f"{p}scores", f"{p}replica"
    sql(
        mysql_dsn,
        f"CREATE TABLE {table} (id int PRIMARY KEY, score int, version int)",
        f"CREATE TABLE {replica} (id int PRIMARY KEY, score int, version int)",
        f"INSERT INTO {table} VALUES (42, 680, 1)",
        f"INSERT INTO {replica} VALUES (42, 680, 1)",
    )
    rules = tmp_path / "facts.toml"
    rules.write_text(
        textwrap.dedent(
            f"""
            [[facts]]
            name = "credit_score"
            keys = [
                "mysql:*/{table}/{{id}}",
                {{ pattern = "mysql:*/{replica}/{{id}}", tier = "replica" }},
            ]
            version = {{ column = "version" }}
            """
        )
    )
    conn = params(mysql_dsn)
    app = tmp_path / "app.py"
    app.write_text(
        APP.format(
            module=module,
            db="database" if module == "pymysql" else "db",
            table=table,
            replica=replica,
            **conn,
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env.update(
        OTEL_AGENTSTATE_CONFIG=str(rules),
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    try:
        result = subprocess.run(
            [str(LAUNCHER), "--service_name", "agents", sys.executable, str(app)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        sql(mysql_dsn, f"DROP TABLE IF EXISTS {table}, {replica}")
    assert result.returncode == 0, result.stderr
    assert "assessor saw (680, 1)" in result.stdout
    spans = _spans(result.stdout)
    statements = [s for s in spans if s["name"].startswith(("UPDATE", "SELECT"))]
    # one database span per statement: contrib's, carrying our attributes
    assert len(statements) == 2, [s["name"] for s in spans]
    for span in statements:  # contrib's attributes (old conventions) and ours on one span
        assert span["attributes"]["db.system"] == "mysql"
        assert "agentstate.store" in span["attributes"]
    [update] = [s for s in statements if s["name"].startswith("UPDATE")]
    assert update["attributes"]["agentstate.write.facts"] == ["credit_score/42"]
    [stale] = [s for s in spans if s["name"] == "agentstate.anomaly stale_read"]
    assert stale["attributes"]["agentstate.anomaly.observed_version"] == "n:1"
    assert stale["attributes"]["agentstate.anomaly.expected_version"] == "n:2"
