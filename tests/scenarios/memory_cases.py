"""Scenarios on agent memory layers: LangGraph's long-term store (`BaseStore`), mem0 (local
Qdrant + SQLite history, a stub embedder, `infer=False`) and Milvus Lite, each through our
instrumentation, and other instrumentations' GenAI memory spans (no agentstate.* on them)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, api, decision, workflow
from otel_agent_state import attributes as A

from . import Env, scenario
from .sqlite_cases import _in_threads

# mem0 reads these when it is first imported (our instrumentor imports it before a scenario
# runs): no telemetry, and its own config store (a local Qdrant) in a directory of ours.
os.environ.setdefault("MEM0_TELEMETRY", "False")
os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="agentstate-mem0-"))

STORE = ("langgraph-store",)
MEM0 = ("mem0",)
MILVUS = ("milvus",)
NS = ("users", "u-42", "memories")
VECTOR = [0.9, 0.1, 0.0, 0.2]


def _twice_read_then_write(
    read: Any, write: Any, names: tuple[str, str] = ("alice", "bob"), *, concurrent: bool
) -> None:
    """Two agents each read one memory and write their edit of it: both reads before either
    write (concurrent), or one agent after the other."""
    barrier = threading.Barrier(2, timeout=30) if concurrent else None
    lock = threading.Lock()  # local-mode stores here are not thread-safe: one call at a time

    def edit(name: str) -> None:
        with agent(name):
            with lock:
                seen = read()
            if barrier is not None:
                barrier.wait()  # both read before either writes
                if name == names[1]:
                    barrier.wait()
            with lock:
                write(name, seen)
            if barrier is not None and name == names[0]:
                barrier.wait()

    with workflow("support-ticket"):
        if concurrent:
            _in_threads(lambda: edit(names[0]), lambda: edit(names[1]))
        else:
            edit(names[0])
            edit(names[1])


# ------------------------------------------------------------------ LangGraph store


def _stores(env: Env) -> tuple[Any, Any]:
    """The agents' long-term store and a copy another process loaded earlier (both hold
    the customer's channel memory, untraced)."""
    from langgraph.store.memory import InMemoryStore

    primary, copy = InMemoryStore(), InMemoryStore()
    with suppress_instrumentation():
        for store in (primary, copy):
            store.put(NS, "channel", {"channel": "email"})
    return primary, copy


def _store_reply(primary: Any, copy: Any, *, synced: bool) -> str:
    with workflow("support-ticket"):
        with agent("memory-curator"):
            primary.put(NS, "channel", {"channel": "phone"})
        if synced:
            with agent("sync"):
                copy.put(NS, "channel", primary.get(NS, "channel").value)
        with agent("responder"), decision("reply channel"):
            return str(copy.get(NS, "channel").value["channel"])


@scenario(
    "agent reads a superseded memory from a copy of the LangGraph store that lags",
    expect={"stale_read": 1},
    stores=STORE,
)
def store_memory_from_lagging_copy(env: Env) -> None:
    assert _store_reply(*_stores(env), synced=False) == "email"


@scenario("the store copy is synced before the agent reads its memory", stores=STORE)
def store_copy_synced_before_read(env: Env) -> None:
    assert _store_reply(*_stores(env), synced=True) == "phone"


def _store_edits(env: Env, *, concurrent: bool) -> None:
    store, _ = _stores(env)

    def write(name: str, seen: Any) -> None:
        store.put(NS, "channel", {**seen.value, "noted_by": name})

    _twice_read_then_write(lambda: store.get(NS, "channel"), write, concurrent=concurrent)


@scenario(
    "two agents read one LangGraph store memory, then both put their edit of it",
    expect={"lost_update": 1},
    stores=STORE,
)
def store_memory_lost_update(env: Env) -> None:
    _store_edits(env, concurrent=True)


@scenario("the same two store edits, one after the other", stores=STORE)
def store_memory_sequential_edits(env: Env) -> None:
    _store_edits(env, concurrent=False)


# ------------------------------------------------------------------ mem0


def _mem0(env: Env, name: str) -> Any:
    from mem0 import Memory
    from mem0.embeddings.base import EmbeddingBase

    class Stub(EmbeddingBase):  # type: ignore[misc]
        """Deterministic vectors from a hash of the text: no model, no network."""

        def embed(self, text: Any, memory_action: Any = None) -> list[float]:
            digest = hashlib.sha256(str(text).encode()).digest()
            return [b / 255 for b in digest[:8]]

    directory = env.tmp / name
    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": "agent_memories",
                "path": str(directory / "qdrant"),
                "embedding_model_dims": 8,
                "on_disk": True,
            },
        },
        "embedder": {"provider": "openai", "config": {"api_key": "unused", "embedding_dims": 8}},
        "llm": {"provider": "openai", "config": {"api_key": "unused"}},
        "history_db_path": str(directory / "history.db"),
    }
    with suppress_instrumentation():
        memory = Memory.from_config(config)
    memory.embedding_model = Stub()
    env._cleanup.callback(memory.vector_store.client.close)
    return memory


def _mem0_reply(env: Env, *, synced: bool) -> str:
    primary = _mem0(env, "primary")
    with suppress_instrumentation():
        added = primary.add("customer prefers email", user_id="u-42", infer=False)
    memory_id = added["results"][0]["id"]
    shutil.copytree(env.tmp / "primary", env.tmp / "replica")  # another process's copy
    replica = _mem0(env, "replica")
    with workflow("support-ticket"):
        with agent("memory-curator"):
            primary.update(memory_id, "customer prefers phone")
        if synced:
            with agent("sync"):
                replica.update(memory_id, "customer prefers phone")
        with agent("responder"), decision("reply channel"):
            return str(replica.get(memory_id)["memory"])


@scenario(
    "agent gets a superseded mem0 memory from a copy of the memory store",
    expect={"stale_read": 1},
    stores=MEM0,
)
def mem0_memory_from_lagging_copy(env: Env) -> None:
    assert _mem0_reply(env, synced=False) == "customer prefers email"


@scenario("the mem0 copy is updated before the agent reads it", stores=MEM0)
def mem0_copy_updated_before_read(env: Env) -> None:
    assert _mem0_reply(env, synced=True) == "customer prefers phone"


def _mem0_edits(env: Env, *, concurrent: bool) -> str:
    memory = _mem0(env, "memory")
    with suppress_instrumentation():
        added = memory.add("customer prefers email", user_id="u-42", infer=False)
    memory_id = added["results"][0]["id"]

    def write(name: str, seen: Any) -> None:
        memory.update(memory_id, f"{seen['memory']}; noted by {name}")

    _twice_read_then_write(lambda: memory.get(memory_id), write, concurrent=concurrent)
    with suppress_instrumentation():
        return str(memory.get(memory_id)["memory"])


@scenario(
    "two agents get one mem0 memory, then both update it",
    expect={"lost_update": 1},
    stores=MEM0,
)
def mem0_memory_lost_update(env: Env) -> None:
    assert _mem0_edits(env, concurrent=True) == "customer prefers email; noted by bob"


@scenario("the same two mem0 updates, one after the other", stores=MEM0)
def mem0_memory_sequential_updates(env: Env) -> None:
    final = _mem0_edits(env, concurrent=False)
    assert final == "customer prefers email; noted by alice; noted by bob"


# ------------------------------------------------------------------ Milvus Lite


def _milvus(env: Env, *collections: str) -> Any:
    from pymilvus import MilvusClient

    client = MilvusClient(str(env.tmp / "milvus.db"))
    env._cleanup.callback(client.close)
    with suppress_instrumentation():
        for name in collections:
            client.create_collection(name, dimension=4)
            client.insert(name, [_entity(1, "customer prefers email")])
    return client


def _entity(version: int, text: str) -> dict[str, Any]:
    return {"id": 7, "vector": VECTOR, "text": text, "version": version}


MILVUS_MEMORY = {  # a primary collection and the search index a sync job copies it into
    "name": "memory",
    "keys": [
        {"pattern": "milvus:memories/{id}", "tier": "primary"},
        {"pattern": "milvus:memories_index/{id}", "tier": "index"},
    ],
    "version": {"payload_field": "version"},
}


def _milvus_reply(env: Env, *, reindex: bool) -> str:
    client = _milvus(env, "memories", "memories_index")
    with workflow("support-ticket"):
        with agent("memory-curator"):
            client.upsert("memories", [_entity(2, "customer prefers phone")])
            if reindex:
                client.upsert("memories_index", [_entity(2, "customer prefers phone")])
        with agent("responder"), decision("reply channel"):
            hits = client.search("memories_index", data=[VECTOR], limit=1, output_fields=["*"])
            return str(hits[0][0]["entity"]["text"])


@scenario(
    "agent searches a Milvus index that lags the primary collection",
    expect={"stale_read": 1},
    stores=MILVUS,
    rules=(MILVUS_MEMORY,),
)
def milvus_memory_from_lagging_index(env: Env) -> None:
    assert _milvus_reply(env, reindex=False) == "customer prefers email"


@scenario("the Milvus index is refreshed before the search", stores=MILVUS, rules=(MILVUS_MEMORY,))
def milvus_index_refreshed(env: Env) -> None:
    assert _milvus_reply(env, reindex=True) == "customer prefers phone"


def _milvus_edits(env: Env, *, concurrent: bool) -> str:
    client = _milvus(env, "memories")

    def read() -> dict[str, Any]:
        return dict(client.get("memories", ids=[7])[0])

    def write(name: str, seen: dict[str, Any]) -> None:
        text = f"{seen['text']}; noted by {name}"
        client.upsert("memories", [_entity(int(seen["version"]) + 1, text)])

    _twice_read_then_write(read, write, concurrent=concurrent)
    with suppress_instrumentation():
        return str(client.get("memories", ids=[7])[0]["text"])


@scenario(
    "two agents get one Milvus memory, then both upsert their edit (digest versions)",
    expect={"lost_update": 1},
    stores=MILVUS,
)
def milvus_memory_lost_update(env: Env) -> None:
    assert _milvus_edits(env, concurrent=True) == "customer prefers email; noted by bob"


@scenario("the same two Milvus edits, one after the other", stores=MILVUS)
def milvus_memory_sequential_edits(env: Env) -> None:
    final = _milvus_edits(env, concurrent=False)
    assert final == "customer prefers email; noted by alice; noted by bob"


# ------------------------------------------------------------------ foreign GenAI memory spans


def _foreign(operation: str, **attrs: Any) -> None:
    """A span another memory instrumentation makes by the GenAI conventions."""
    tracer = trace.get_tracer("some.memory.framework", "1.0", tracer_provider=api._tracer_provider)
    base: dict[str, Any] = {A.GEN_AI_OPERATION_NAME: operation, A.GEN_AI_MEMORY_STORE_ID: "prefs"}
    with tracer.start_as_current_span(f"{operation} prefs", attributes={**base, **attrs}):
        pass


def _forget_then_retrieve(*, recreated: bool) -> None:
    record = {A.GEN_AI_MEMORY_RECORD_ID: "m-7"}
    with workflow("support-ticket"):
        with agent("memory-curator"):
            _foreign("create_memory", **record)
            _foreign("delete_memory", **record)
            if recreated:
                _foreign("create_memory", **record)
        with agent("responder"), decision("reply channel"):
            docs = json.dumps([{"id": "m-7", "score": 0.91}])
            _foreign("retrieval", **{A.GEN_AI_RETRIEVAL_DOCUMENTS: docs})


@scenario(
    "a retrieval span returns a memory another agent's delete_memory span had deleted",
    expect={"stale_read": 1},
    stores=(),
)
def genai_retrieval_of_deleted_memory(env: Env) -> None:
    _forget_then_retrieve(recreated=False)


@scenario("the memory was re-created before the retrieval span", stores=())
def genai_retrieval_after_recreate(env: Env) -> None:
    _forget_then_retrieve(recreated=True)


@scenario("two agents search and update one memory through GenAI spans only", stores=())
def genai_updates_prove_no_lost_update(env: Env) -> None:
    """No version on the spans: two updates after two searches prove nothing (sound before
    complete), though a versioned store would show a lost update here."""
    record = {A.GEN_AI_MEMORY_RECORD_ID: f"m-{uuid.uuid4().hex[:6]}"}
    with workflow("support-ticket"):
        for name in ("alice", "bob"):
            with agent(name):
                _foreign("search_memory", **record)
        for name in ("alice", "bob"):
            with agent(name):
                _foreign("update_memory", **record)
