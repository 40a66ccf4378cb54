"""A service that exports its spans to `otel-agent-state serve` with the real OTLP exporter.

    python otlp_client.py planner protobuf|json ENDPOINT
    python otlp_client.py analyst protobuf|json ENDPOINT TRACEPARENT VERSION

planner: an agent span that commits credit_score/42 = n:2; prints `traceparent <value>`
(of its agent span, for the next service) and `write <span id>`.
analyst: continues TRACEPARENT as a server span; its agent reads credit_score/42 at
VERSION; prints `read <span id>`.
protobuf: the SDK's OTLPSpanExporter (application/x-protobuf). json: the same spans
encoded by the OTLP exporter's encoder, turned into OTLP/JSON (hex ids) and POSTed gzipped.
Spans carry the SPEC §3 attributes as an instrumented client library would set them.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import urllib.request
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

FACT = "credit_score/42"


def _hex_ids(node: Any) -> Any:
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants hex ids."""
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                out[key] = base64.b64decode(value).hex()
            else:
                out[key] = _hex_ids(value)
        return out
    return node


def post_json(endpoint: str, spans: Any) -> None:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = _hex_ids(MessageToDict(encode_spans(spans)))
    request = urllib.request.Request(
        endpoint + "/v1/traces",
        data=gzip.compress(json.dumps(doc).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status
        print("response", response.read().decode(), flush=True)


def main(role: str, mode: str, endpoint: str, *rest: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": role}))
    memory = InMemorySpanExporter()
    if mode == "protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces"))
        )
    else:
        provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.apps.otlp_client")
    agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": role}
    if role == "planner":
        with tracer.start_as_current_span("invoke_agent planner", attributes=agent) as span:
            with tracer.start_as_current_span(
                "UPDATE credit_scores",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "agentstate.op": "write",
                    "agentstate.store": "postgresql",
                    "agentstate.tier": "primary",
                    "agentstate.write.facts": [FACT],
                    "agentstate.write.versions": ["n:2"],
                    "agentstate.committed": True,
                },
            ) as write:
                pass
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            print("traceparent", carrier["traceparent"], flush=True)
            print("write", format(write.get_span_context().span_id, "016x"), flush=True)
            print("trace", format(span.get_span_context().trace_id, "032x"), flush=True)
    else:
        traceparent, version = rest
        ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        with (
            tracer.start_as_current_span("GET /score/42", context=ctx, kind=trace.SpanKind.SERVER),
            tracer.start_as_current_span("invoke_agent analyst", attributes=agent),
        ):
            with tracer.start_as_current_span(
                "SELECT credit_scores",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "agentstate.op": "read",
                    "agentstate.store": "postgresql",
                    "agentstate.tier": "replica",
                    "agentstate.read.facts": [FACT],
                    "agentstate.read.versions": [version],
                },
            ) as read:
                pass
            print("read", format(read.get_span_context().span_id, "016x"), flush=True)
    if mode == "json":
        post_json(endpoint, memory.get_finished_spans())
    provider.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
