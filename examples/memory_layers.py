"""Agents sharing long-term memory through a memory layer: LangGraph's store, mem0 or Milvus.

Two workflows on the chosen layer, each with its correct twin (`--correct`):

- `stale`: a curator updates the customer's contact memory; a responder reads it from a copy
  that lags (another process's copy of the store, or a search index a sync job fills) and
  decides on the superseded memory: a stale read. Correct: the copy is synced first.
- `lost-update`: two agents read the memory, then both write their edit of it; the later
  silently overwrites the earlier: a lost update. Correct: one edits after the other.

    python examples/memory_layers.py --layer langgraph-store --workflow stale [--correct]
    opentelemetry-instrument --service_name memory python examples/memory_layers.py --layer mem0

Everything runs embedded in a temporary directory (InMemoryStore, mem0 on local Qdrant and
SQLite with a stub embedder and `infer=False`, Milvus Lite): no model, no network. Only the
chosen layer's library is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_agent_state import StateCoherenceSpanProcessor, agent, configure, decision, workflow

os.environ.setdefault("MEM0_TELEMETRY", "False")  # read when mem0 is imported
VECTOR = [0.9, 0.1, 0.0, 0.2]


class Layer:
    """One memory layer: a primary holding the contact memory, and a lagging copy of it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, copy: bool = False) -> str: ...
    def write(self, text: str, copy: bool = False) -> None: ...
    def close(self) -> None: ...


class StoreLayer(Layer):
    NS = ("users", "u-42", "memories")

    def __init__(self, path: Path) -> None:
        from langgraph.store.memory import InMemoryStore

        super().__init__(path)
        self.stores = (InMemoryStore(), InMemoryStore())
        with suppress_instrumentation():
            for store in self.stores:
                store.put(self.NS, "contact", {"text": "customer prefers email"})

    def read(self, copy: bool = False) -> str:
        item = self.stores[copy].get(self.NS, "contact")
        return str(item.value["text"]) if item is not None else ""

    def write(self, text: str, copy: bool = False) -> None:
        self.stores[copy].put(self.NS, "contact", {"text": text})


class Mem0Layer(Layer):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        os.environ.setdefault("MEM0_DIR", str(path / "mem0-home"))
        self.primary = self._memory(path / "primary")
        with suppress_instrumentation():
            added = self.primary.add("customer prefers email", user_id="u-42", infer=False)
        self.id = added["results"][0]["id"]
        shutil.copytree(path / "primary", path / "copy")  # another process's copy
        self.copy = self._memory(path / "copy")

    @staticmethod
    def _memory(directory: Path) -> Any:
        from mem0 import Memory
        from mem0.embeddings.base import EmbeddingBase

        class Stub(EmbeddingBase):  # type: ignore[misc]
            def embed(self, text: Any, memory_action: Any = None) -> list[float]:
                return [b / 255 for b in hashlib.sha256(str(text).encode()).digest()[:8]]

        store = {"collection_name": "agent_memories", "path": str(directory / "qdrant")}
        config = {
            "vector_store": {"provider": "qdrant", "config": {**store, "embedding_model_dims": 8}},
            "embedder": {"provider": "openai", "config": {"api_key": "unused"}},  # replaced
            "llm": {"provider": "openai", "config": {"api_key": "unused"}},  # infer=False
            "history_db_path": str(directory / "history.db"),
        }
        with suppress_instrumentation():
            memory = Memory.from_config(config)
        memory.embedding_model = Stub()
        return memory

    def read(self, copy: bool = False) -> str:
        return str((self.copy if copy else self.primary).get(self.id)["memory"])

    def write(self, text: str, copy: bool = False) -> None:
        (self.copy if copy else self.primary).update(self.id, text)

    def close(self) -> None:
        for memory in (self.primary, self.copy):
            memory.vector_store.client.close()


class MilvusLayer(Layer):
    COLLECTIONS = ("memories", "memories_index")

    def __init__(self, path: Path) -> None:
        from pymilvus import MilvusClient

        super().__init__(path)
        self.client = MilvusClient(str(path / "milvus.db"))
        self.version = 1
        with suppress_instrumentation():
            for name in self.COLLECTIONS:
                self.client.create_collection(name, dimension=4)
                self.client.insert(name, [self._entity("customer prefers email", 1)])

    @staticmethod
    def _entity(text: str, version: int) -> dict[str, Any]:
        return {"id": 7, "vector": VECTOR, "text": text, "version": version}

    def read(self, copy: bool = False) -> str:
        if copy:  # the responder searches the index
            hits = self.client.search(
                self.COLLECTIONS[1], data=[VECTOR], limit=1, output_fields=["*"]
            )
            return str(hits[0][0]["entity"]["text"])
        [entity] = self.client.get(self.COLLECTIONS[0], ids=[7])
        self.seen = int(entity["version"])
        return str(entity["text"])

    def write(self, text: str, copy: bool = False) -> None:
        version = getattr(self, "seen", 1) + 1
        self.client.upsert(self.COLLECTIONS[copy], [self._entity(text, version)])

    def close(self) -> None:
        self.client.close()


LAYERS: dict[str, tuple[type[Layer], str, str]] = {  # layer, module, instrumentor
    "langgraph-store": (StoreLayer, "langgraph_store", "LangGraphStoreInstrumentor"),
    "mem0": (Mem0Layer, "mem0", "Mem0Instrumentor"),
    "milvus": (MilvusLayer, "milvus", "MilvusInstrumentor"),
}
# Milvus: the primary collection and its index are one logical memory, versioned by a field.
MILVUS_RULE = {
    "name": "contact",
    "keys": [
        {"pattern": "milvus:memories/{id}", "tier": "primary"},
        {"pattern": "milvus:memories_index/{id}", "tier": "index"},
    ],
    "version": {"payload_field": "version"},
}


class Findings(SpanProcessor):
    """Collects the anomaly spans the coherence processor emits, to print them."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("agentstate.anomaly"):
            self.spans.append(span)


def telemetry(layer: str) -> tuple[TracerProvider, Findings]:
    import importlib

    provider: Any = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # plain `python`: no launcher set one up
        provider = TracerProvider(resource=Resource.create({"service.name": "memory-layers"}))
        provider.add_span_processor(StateCoherenceSpanProcessor(tracer_provider=provider))
        trace.set_tracer_provider(provider)
    findings = Findings()
    provider.add_span_processor(findings)
    if layer == "milvus":
        configure(rules=[MILVUS_RULE])
    _, module, name = LAYERS[layer]
    instrumentation = importlib.import_module(f"otel_agent_state.instrumentation.{module}")
    instrumentor: BaseInstrumentor = getattr(instrumentation, name)()
    if not instrumentor.is_instrumented_by_opentelemetry:  # the launcher did it already
        instrumentor.instrument(tracer_provider=provider)
    return provider, findings


def stale(memory: Layer, correct: bool) -> None:
    with agent("memory-curator"):
        memory.write("customer prefers phone calls")
    if correct:
        with agent("sync"):  # the copy catches up before anyone reads it
            memory.write(memory.read(), copy=True)
    with agent("responder"), decision("contact-channel") as chosen:
        text = memory.read(copy=True)
        chosen.outcome("phone" if "phone" in text else "email")
        print(f"responder read {text!r}")


def lost_update(memory: Layer, correct: bool) -> None:
    barrier = threading.Barrier(2, timeout=30)
    lock = threading.Lock()  # embedded stores here take one call at a time
    parent = context.get_current()

    def edit(name: str) -> None:
        token = context.attach(parent)
        try:
            with agent(name):
                with lock:
                    seen = memory.read()
                if not correct:
                    barrier.wait()  # both read before either writes
                    if name == "bob":
                        barrier.wait()
                with lock:
                    memory.write(f"{seen}; noted by {name}")
                if not correct and name == "alice":
                    barrier.wait()
        finally:
            context.detach(token)

    if correct:
        edit("alice")
        edit("bob")
    else:
        threads = [threading.Thread(target=edit, args=(n,)) for n in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with suppress_instrumentation():
        print(f"the memory now reads {memory.read()!r}")


def main(layer: str, flow: str, correct: bool) -> int:
    provider, findings = telemetry(layer)
    with tempfile.TemporaryDirectory() as path:
        memory = LAYERS[layer][0](Path(path))
        try:
            with workflow("support-ticket"):
                (stale if flow == "stale" else lost_update)(memory, correct)
        finally:
            memory.close()
    provider.force_flush()
    for span in findings.spans:
        attrs = span.attributes or {}
        print(
            f"FINDING {attrs['agentstate.anomaly.kind']} {attrs['agentstate.anomaly.fact']} "
            f"agents={','.join(attrs['agentstate.anomaly.agents'])} "  # type: ignore[arg-type]
            f"severity={attrs['agentstate.anomaly.severity']}"
        )
        print(f"  {attrs['agentstate.anomaly.summary']}")
    if not findings.spans:
        print("no state anomalies")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=sorted(LAYERS), required=True)
    parser.add_argument("--workflow", choices=("stale", "lost-update"), default="stale")
    parser.add_argument("--correct", action="store_true", help="the correct twin")
    args = parser.parse_args()
    raise SystemExit(main(args.layer, args.workflow, args.correct))
