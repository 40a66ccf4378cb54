"""A multi-agent RAG memory on Qdrant (local mode, temp dir) with a stale memory retrieval.

A memory curator updates memory 1 ("customer prefers email" -> "prefers phone") in the
primary collection; a responder answers from the search index collection, which a sync job
copies from the primary. Without the sync the responder retrieves the superseded memory and
decides on it: otel-agent-state flags the stale read. With `--correct` the index is synced
before the responder reads: no finding.

    python examples/rag_memory_qdrant.py [--correct]
    opentelemetry-instrument --service_name rag python examples/rag_memory_qdrant.py

Vectors are hand-made (dimension 4): no embedding model, no network.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from qdrant_client import QdrantClient, models

from otel_agent_state import StateCoherenceSpanProcessor, agent, configure, decision, workflow
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

# The primary collection and its search index are one logical fact per memory id.
RULES = [
    {
        "name": "memory",
        "keys": [
            {"pattern": "qdrant:memories/{id}", "tier": "primary"},
            {"pattern": "qdrant:memories_index/{id}", "tier": "index"},
        ],
        "version": {"payload_field": "version"},
    }
]
MEMORIES = {
    1: ([0.9, 0.1, 0.0, 0.1], "customer prefers email"),
    2: ([0.1, 0.9, 0.1, 0.0], "customer is on the premium plan"),
    3: ([0.0, 0.1, 0.9, 0.2], "last ticket: password reset"),
}
CONTACT_QUERY = [0.8, 0.2, 0.0, 0.1]


class Findings(SpanProcessor):
    """Collects the anomaly spans the coherence processor emits, to print them."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("agentstate.anomaly"):
            self.spans.append(span)


def telemetry() -> tuple[TracerProvider, Findings]:
    provider: Any = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # plain `python`: no launcher set one up
        provider = TracerProvider(resource=Resource.create({"service.name": "rag-memory"}))
        provider.add_span_processor(StateCoherenceSpanProcessor(tracer_provider=provider))
        trace.set_tracer_provider(provider)
    findings = Findings()
    provider.add_span_processor(findings)
    configure(rules=RULES)
    instrumentor = QdrantInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:  # the launcher did it already
        instrumentor.instrument(tracer_provider=provider)
    return provider, findings


def point(memory_id: int, text: str, version: int) -> models.PointStruct:
    vector, _ = MEMORIES[memory_id]
    return models.PointStruct(
        id=memory_id, vector=vector, payload={"text": text, "version": version}
    )


def main(correct: bool) -> int:
    provider, findings = telemetry()
    with tempfile.TemporaryDirectory() as path:
        client = QdrantClient(path=path)
        for name in ("memories", "memories_index"):
            client.create_collection(
                name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
            )
            client.upsert(name, points=[point(i, text, 1) for i, (_, text) in MEMORIES.items()])

        with workflow("support-ticket"):
            with agent("memory-curator"):
                updated = point(1, "customer prefers phone calls", 2)
                client.upsert("memories", points=[updated])
            if correct:
                with agent("index-sync"):  # the sync job catches up before anyone reads
                    [current] = client.retrieve("memories", ids=[1])
                    client.upsert(
                        "memories_index",
                        points=[point(1, str((current.payload or {})["text"]), 2)],
                    )
            with agent("responder"), decision("contact-channel") as chosen:
                hits = client.query_points("memories_index", query=CONTACT_QUERY, limit=2).points
                memory = str((hits[0].payload or {})["text"])
                channel = "phone" if "phone" in memory else "email"
                chosen.outcome(channel)
                print(f"responder retrieved {memory!r} and contacts the customer by {channel}")
        client.close()
    provider.force_flush()
    for span in findings.spans:
        attrs = span.attributes or {}
        print(
            f"FINDING {attrs['agentstate.anomaly.kind']} {attrs['agentstate.anomaly.fact']} "
            f"observed={attrs['agentstate.anomaly.observed_version']} "
            f"expected={attrs['agentstate.anomaly.expected_version']} "
            f"agents={','.join(attrs['agentstate.anomaly.agents'])} "  # type: ignore[arg-type]
            f"severity={attrs['agentstate.anomaly.severity']}"
        )
        print(f"  {attrs['agentstate.anomaly.summary']}")
    if not findings.spans:
        print("no state anomalies")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--correct", action="store_true", help="sync the index before reading")
    raise SystemExit(main(parser.parse_args().correct))
