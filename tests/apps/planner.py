"""Upstream "planner" service: commits a new credit score, then asks the agent service.

Imports nothing from otel-agent-state: run it under `opentelemetry-instrument` with
OTEL_PROPAGATORS=tracecontext,baggage,agentstate and the contrib requests/httpx
instrumentation carries the frontier header.

    python planner.py PRIMARY_DB URL requests|httpx
"""

from __future__ import annotations

import sqlite3
import sys

from opentelemetry import trace

tracer = trace.get_tracer("tests.apps.planner")


def main(db: str, url: str, client: str) -> None:
    with tracer.start_as_current_span(
        "invoke_agent planner",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"},
    ) as span:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(
            "UPDATE credit_scores SET score = 720, version = version + 1 WHERE customer_id = ?",
            (42,),
        )
        conn.close()
        if client == "httpx":
            import httpx

            body = httpx.get(url, timeout=60).text
        else:
            import requests

            body = requests.get(url, timeout=60).text
        print("trace", format(span.get_span_context().trace_id, "032x"), flush=True)
        print("agent service said", body, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
