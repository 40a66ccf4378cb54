"""Downstream "agent service": a WSGI app behind contrib's OpenTelemetryMiddleware whose
analyst agent reads the credit score from a SQLite database (a lagging replica, or the
primary). Imports nothing from otel-agent-state.

    python agent_service.py DB PORT_FILE REQUESTS

Binds a free loopback port, writes it to PORT_FILE, serves REQUESTS requests and exits
normally (so the SDK flushes its spans).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

tracer = trace.get_tracer("tests.apps.agent_service")


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(db: str) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with tracer.start_as_current_span(
            "invoke_agent analyst",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "analyst"},
        ):
            conn = sqlite3.connect(db, isolation_level=None)
            score, version = conn.execute(
                "SELECT score, version FROM credit_scores WHERE customer_id = ?", (42,)
            ).fetchone()
            conn.close()
        body = json.dumps({"score": score, "version": version}).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def main(db: str, port_file: str, count: int) -> None:
    server = make_server(
        "127.0.0.1", 0, OpenTelemetryMiddleware(make_app(db)), handler_class=QuietHandler
    )
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_port))
    os.replace(tmp, port_file)
    for _ in range(count):
        server.handle_request()
    server.server_close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
