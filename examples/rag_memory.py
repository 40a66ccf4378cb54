"""A multi-agent RAG memory on Qdrant, Chroma or LanceDB with a stale memory retrieval.

A memory curator updates memory 1 ("customer prefers email" -> "prefers phone calls") in the
primary collection; a responder answers from the search index collection, which a sync job
copies from the primary. Without the sync the responder retrieves the superseded memory and
decides on it: otel-agent-state flags the stale read. With `--correct` the index is synced
before the responder reads: no finding.

    python examples/rag_memory.py --store qdrant [--correct]
    opentelemetry-instrument --service_name rag python examples/rag_memory.py --store chroma

Every store runs embedded in a temporary directory (Qdrant local mode, Chroma
PersistentClient, LanceDB) with hand-made 4-dimensional vectors, always passed: no embedding
model, no network. Only the chosen store's client library is imported. The store adapters
below are all that differs between the stores; the workflow in `main` is the same for each.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any, ClassVar

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_agent_state import StateCoherenceSpanProcessor, agent, configure, decision, workflow

PRIMARY, INDEX = "memories", "memories_index"
MEMORIES = {
    1: ([0.9, 0.1, 0.0, 0.1], "customer prefers email"),
    2: ([0.1, 0.9, 0.1, 0.0], "customer is on the premium plan"),
    3: ([0.0, 0.1, 0.9, 0.2], "last ticket: password reset"),
}
CONTACT_QUERY = [0.8, 0.2, 0.0, 0.1]


class MemoryStore:
    """What the workflow does to a store: the primary and its index, seeded at version 1."""

    key: ClassVar[str]  # the fact-key pattern of one memory in a collection/table
    version: ClassVar[dict[str, str]]  # where the memory's version is read from

    def __init__(self, path: str) -> None:
        """Creates the primary and the index under `path`."""

    @staticmethod
    def instrumentor() -> BaseInstrumentor:
        raise NotImplementedError

    def update(self, memory_id: int, text: str, version: int) -> None:
        """Writes a new version of a memory to the primary."""
        raise NotImplementedError

    def sync(self, memory_id: int) -> None:
        """Reads a memory from the primary and copies it into the index."""
        raise NotImplementedError

    def search(self, query: list[float]) -> str:
        """The text of the index's nearest memory."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class QdrantMemory(MemoryStore):
    """Qdrant local mode: points with text and version in the payload."""

    key = "qdrant:{collection}/{{id}}"
    version: ClassVar[dict[str, str]] = {"payload_field": "version"}

    @staticmethod
    def instrumentor() -> BaseInstrumentor:
        from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

        return QdrantInstrumentor()

    def __init__(self, path: str) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=path)
        for name in (PRIMARY, INDEX):
            params = models.VectorParams(size=4, distance=models.Distance.COSINE)
            self.client.create_collection(name, vectors_config=params)
            self.client.upsert(
                name, points=[self.point(i, text, 1) for i, (_, text) in MEMORIES.items()]
            )

    def point(self, memory_id: int, text: str, version: int) -> Any:
        vector, _ = MEMORIES[memory_id]
        payload = {"text": text, "version": version}
        return self.models.PointStruct(id=memory_id, vector=vector, payload=payload)

    def update(self, memory_id: int, text: str, version: int) -> None:
        self.client.upsert(PRIMARY, points=[self.point(memory_id, text, version)])

    def sync(self, memory_id: int) -> None:
        [current] = self.client.retrieve(PRIMARY, ids=[memory_id])
        payload = current.payload or {}
        point = self.point(memory_id, str(payload["text"]), int(payload["version"]))
        self.client.upsert(INDEX, points=[point])

    def search(self, query: list[float]) -> str:
        hits = self.client.query_points(INDEX, query=query, limit=2).points
        return str((hits[0].payload or {})["text"])

    def close(self) -> None:
        self.client.close()


class ChromaMemory(MemoryStore):
    """Chroma PersistentClient: string ids, text as the document, version in the metadata."""

    key = "chroma:*/{collection}/{{id}}"  # `*`: any tenant/database
    version: ClassVar[dict[str, str]] = {"payload_field": "version"}

    @staticmethod
    def instrumentor() -> BaseInstrumentor:
        from otel_agent_state.instrumentation.chromadb import ChromaInstrumentor

        return ChromaInstrumentor()

    def __init__(self, path: str) -> None:
        import chromadb

        client = chromadb.PersistentClient(
            path=path, settings=chromadb.Settings(anonymized_telemetry=False)
        )
        # No embedding function: every write and query passes its embeddings.
        self.primary = client.create_collection(PRIMARY, embedding_function=None)
        self.index = client.create_collection(INDEX, embedding_function=None)
        for collection in (self.primary, self.index):
            for memory_id, (_, text) in MEMORIES.items():
                self.write(collection, memory_id, text, 1)

    @staticmethod
    def write(collection: Any, memory_id: int, text: str, version: int) -> None:
        vector, _ = MEMORIES[memory_id]
        collection.upsert(
            ids=[str(memory_id)],
            embeddings=[vector],
            documents=[text],
            metadatas=[{"version": version}],
        )

    def update(self, memory_id: int, text: str, version: int) -> None:
        self.write(self.primary, memory_id, text, version)

    def sync(self, memory_id: int) -> None:
        current = self.primary.get(ids=[str(memory_id)])
        text, version = current["documents"][0], current["metadatas"][0]["version"]
        self.write(self.index, memory_id, text, version)

    def search(self, query: list[float]) -> str:
        hits = self.index.query(query_embeddings=[query], n_results=2)
        return str(hits["documents"][0][0])


class LanceMemory(MemoryStore):
    """LanceDB: tables with columns id, vector, text, version."""

    key = "lancedb:{collection}/{{id}}"  # {id}: the `id` column
    version: ClassVar[dict[str, str]] = {"column": "version"}

    @staticmethod
    def instrumentor() -> BaseInstrumentor:
        from otel_agent_state.instrumentation.lancedb import LanceDBInstrumentor

        return LanceDBInstrumentor()

    def __init__(self, path: str) -> None:
        import lancedb

        rows = [
            {"id": i, "vector": vector, "text": text, "version": 1}
            for i, (vector, text) in MEMORIES.items()
        ]
        db = lancedb.connect(path)
        self.primary = db.create_table(PRIMARY, data=rows)
        self.index = db.create_table(INDEX, data=rows)

    def update(self, memory_id: int, text: str, version: int) -> None:
        self.primary.update(where=f"id = {memory_id}", values={"text": text, "version": version})

    def sync(self, memory_id: int) -> None:
        changed = self.primary.search().where(f"id = {memory_id}").to_arrow()
        self.index.merge_insert("id").when_matched_update_all().execute(changed)

    def search(self, query: list[float]) -> str:
        hits = self.index.search(query).limit(2).to_list()
        return str(hits[0]["text"])


STORES: dict[str, type[MemoryStore]] = {
    "qdrant": QdrantMemory,
    "chroma": ChromaMemory,
    "lancedb": LanceMemory,
}


class Findings(SpanProcessor):
    """Collects the anomaly spans the coherence processor emits, to print them."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("agentstate.anomaly"):
            self.spans.append(span)


def telemetry(store: type[MemoryStore]) -> tuple[TracerProvider, Findings]:
    provider: Any = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # plain `python`: no launcher set one up
        provider = TracerProvider(resource=Resource.create({"service.name": "rag-memory"}))
        provider.add_span_processor(StateCoherenceSpanProcessor(tracer_provider=provider))
        trace.set_tracer_provider(provider)
    findings = Findings()
    provider.add_span_processor(findings)
    # The primary and its search index are one logical fact per memory id.
    keys = [
        {"pattern": store.key.format(collection=PRIMARY), "tier": "primary"},
        {"pattern": store.key.format(collection=INDEX), "tier": "index"},
    ]
    configure(rules=[{"name": "memory", "keys": keys, "version": store.version}])
    instrumentor = store.instrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:  # the launcher did it already
        instrumentor.instrument(tracer_provider=provider)
    return provider, findings


def main(store_name: str, correct: bool) -> int:
    store = STORES[store_name]
    provider, findings = telemetry(store)
    with tempfile.TemporaryDirectory() as path:
        memory = store(path)
        with workflow("support-ticket"):
            with agent("memory-curator"):
                memory.update(1, "customer prefers phone calls", 2)
            if correct:
                with agent("index-sync"):  # the sync job catches up before anyone reads
                    memory.sync(1)
            with agent("responder"), decision("contact-channel") as chosen:
                retrieved = memory.search(CONTACT_QUERY)
                channel = "phone" if "phone" in retrieved else "email"
                chosen.outcome(channel)
                print(f"responder retrieved {retrieved!r} and contacts the customer by {channel}")
        memory.close()
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
    parser.add_argument("--store", choices=sorted(STORES), required=True, help="the vector store")
    parser.add_argument("--correct", action="store_true", help="sync the index before reading")
    args = parser.parse_args()
    raise SystemExit(main(args.store, args.correct))
