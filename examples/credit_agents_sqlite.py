"""A two-agent credit workflow on SQLite that imports nothing from otel-agent-state.

Run it under the launcher and the stale cache read is reported:

    export OTEL_AGENTSTATE_CONFIG=examples/credit_facts.toml OTEL_TRACES_EXPORTER=console
    opentelemetry-instrument --service_name agents \
        python examples/credit_agents_sqlite.py /tmp/app.db

Pass `correct` as a second argument to invalidate the cache after the write: no anomaly.
The agent spans follow the GenAI conventions, as agent frameworks emit them.
"""

from __future__ import annotations

import sqlite3
import sys

from opentelemetry import trace

tracer = trace.get_tracer("examples.credit_agents")


def agent_span(name: str) -> trace.Span:
    return tracer.start_as_current_span(  # type: ignore[return-value]
        "invoke_agent " + name,
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name},
    )


def main(path: str, correct: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        DROP TABLE IF EXISTS credit_scores;
        DROP TABLE IF EXISTS score_cache;
        CREATE TABLE credit_scores (customer_id INTEGER PRIMARY KEY, score, version);
        CREATE TABLE score_cache (customer_id INTEGER PRIMARY KEY, score, version);
        INSERT INTO credit_scores VALUES (42, 680, 1);
        INSERT INTO score_cache VALUES (42, 680, 1);
        """
    )
    with tracer.start_as_current_span("credit-approval"):
        with agent_span("credit-scorer"):
            conn.execute(
                "UPDATE credit_scores SET score = 750, version = version + 1 WHERE customer_id = ?",
                (42,),
            )
            if correct:
                conn.execute("DELETE FROM score_cache WHERE customer_id = ?", (42,))
        with agent_span("risk-assessor"):
            row = conn.execute(
                "SELECT score, version FROM score_cache WHERE customer_id = ?", (42,)
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT score, version FROM credit_scores WHERE customer_id = ?", (42,)
                ).fetchone()
            print("risk-assessor saw score", row[0], flush=True)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "agents.db", "correct" in sys.argv[2:])
