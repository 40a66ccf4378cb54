"""mem0 (`Memory` on its default local Qdrant and SQLite history, `infer=False`, a stub
embedder: no model, no network) through our instrumentation."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# mem0 reads these when it is imported: no telemetry, its config dir under /tmp.
os.environ.setdefault("MEM0_TELEMETRY", "False")
os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="agentstate-mem0-"))

from mem0 import Memory
from mem0.embeddings.base import EmbeddingBase
from opentelemetry import context
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_agent_state import agent, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.mem0 import Mem0Instrumentor
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor
from otel_agent_state.instrumentation.sqlite3 import SQLite3Instrumentor

from .conftest import Telemetry

COLLECTION = "agent_memories"
USER = {"user_id": "u-42"}


class StubEmbedder(EmbeddingBase):  # type: ignore[misc]
    """Deterministic 8-dimension vectors from a hash of the text: no model to download."""

    def embed(self, text: Any, memory_action: Any = None) -> list[float]:
        digest = hashlib.sha256(str(text).encode()).digest()
        return [b / 255 for b in digest[:8]]


def _memory(directory: Path) -> Any:
    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": COLLECTION,
                "path": str(directory / "qdrant"),
                "embedding_model_dims": 8,
                "on_disk": True,
            },
        },
        # Constructed, never called: the stub below replaces the embedder, infer=False
        # keeps the LLM out.
        "embedder": {"provider": "openai", "config": {"api_key": "unused", "embedding_dims": 8}},
        "llm": {"provider": "openai", "config": {"api_key": "unused"}},
        "history_db_path": str(directory / "history.db"),
    }
    with suppress_instrumentation():  # its set-up statements are not the test's subject
        memory = Memory.from_config(config)
    memory.embedding_model = StubEmbedder()
    return memory


def _close(memory: Any) -> None:
    client = getattr(memory.vector_store, "client", None)
    if client is not None:
        client.close()


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    """mem0 with our Qdrant and sqlite3 instrumentations on too: the memory must be one fact."""
    instrumentors = [SQLite3Instrumentor(), QdrantInstrumentor(), Mem0Instrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider)
    yield telemetry
    for instrumentor in reversed(instrumentors):
        instrumentor.uninstrument()


def _observations(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in telemetry.spans() if A.OP in (s.attributes or {})]


def _add(memory: Any, text: str) -> str:
    result = memory.add(text, user_id=USER["user_id"], infer=False)
    return str(result["results"][0]["id"])


def test_each_operation_is_one_observation_of_the_memory(
    instrumented: Telemetry, tmp_path: Path
) -> None:
    memory = _memory(tmp_path)
    try:
        with workflow("support"), agent("curator"):
            mid = _add(memory, "customer prefers email")
            memory.update(mid, "customer prefers phone")
            got = memory.get(mid)
            found = memory.search("prefers", filters=USER)
            listed = memory.get_all(filters=USER)
            memory.delete(mid)
            gone = memory.get(mid)
        with suppress_instrumentation():
            history = memory.history(mid)
    finally:
        _close(memory)
    assert got["memory"] == "customer prefers phone" and gone is None
    assert found["results"][0]["id"] == mid and listed["results"][0]["id"] == mid
    observed = _observations(instrumented)
    # Nothing of the Qdrant points and SQLite history rows beneath: mem0's spans only.
    assert {o[A.STORE] for o in observed} == {"mem0"}
    fact = f"mem0:{COLLECTION}/{mid}"
    names = [(o[A.DB_OPERATION_NAME], o[A.GEN_AI_OPERATION_NAME]) for o in observed]
    assert names == [
        ("add", "create_memory"),
        ("update", "update_memory"),
        ("get", "search_memory"),
        ("search", "search_memory"),
        ("get_all", "search_memory"),
        ("delete", "delete_memory"),
        ("get", "search_memory"),
    ]
    add, update, get, search, get_all, delete, absent = observed
    events = [h["event"] for h in history]
    assert events == ["ADD", "UPDATE", "DELETE"]
    v1, v2 = add[A.WRITE_VERSIONS][0], update[A.WRITE_VERSIONS][0]
    assert (add[A.WRITE_FACTS] == (fact,) and v1.startswith("t:") and v1 < v2) or len(v1) < len(v2)
    assert v1 != v2
    assert get[A.READ_VERSIONS] == search[A.READ_VERSIONS] == get_all[A.READ_VERSIONS] == (v2,)
    assert delete[A.WRITE_VERSIONS] == ("none",) and absent[A.READ_VERSIONS] == ("none",)
    assert update[A.GEN_AI_MEMORY_RECORD_ID] == mid
    assert update[A.GEN_AI_MEMORY_STORE_ID] == COLLECTION
    assert search[A.GEN_AI_MEMORY_RECORD_COUNT] == 1
    assert instrumented.anomalies() == []


@pytest.mark.parametrize("synced", [False, True])
def test_superseded_memory_from_a_lagging_copy(
    instrumented: Telemetry, tmp_path: Path, synced: bool
) -> None:
    """The curator updates the memory; the responder reads a copy of the memory store taken
    before (another process's mem0 directory) that lags unless it was updated as well."""
    primary = _memory(tmp_path / "primary")
    with suppress_instrumentation():
        mid = _add(primary, "customer prefers email")
    shutil.copytree(tmp_path / "primary", tmp_path / "replica")
    replica = _memory(tmp_path / "replica")
    try:
        with workflow("support-ticket"):
            with agent("memory-curator"):
                primary.update(mid, "customer prefers phone")
            if synced:
                with agent("sync"):
                    replica.update(mid, "customer prefers phone")
            with agent("responder"), decision("reply channel"):
                seen = replica.get(mid)
    finally:
        _close(primary)
        _close(replica)
    assert seen["memory"] == ("customer prefers phone" if synced else "customer prefers email")
    if synced:
        assert instrumented.anomalies() == []
        return
    [stale] = instrumented.anomalies("stale_read")
    attrs = stale.attributes or {}
    assert attrs[A.ANOMALY_FACT] == f"mem0:{COLLECTION}/{mid}"
    assert attrs[A.ANOMALY_AGENTS] == ("responder", "memory-curator")
    assert attrs[A.ANOMALY_SEVERITY] == "error"


@pytest.mark.parametrize("concurrent", [True, False])
def test_two_agents_overwrite_one_memory(
    instrumented: Telemetry, tmp_path: Path, concurrent: bool
) -> None:
    memory = _memory(tmp_path)
    with suppress_instrumentation():
        mid = _add(memory, "customer prefers email")
    barrier = threading.Barrier(2, timeout=30) if concurrent else None
    errors: list[BaseException] = []
    lock = threading.Lock()  # Qdrant's local mode is not thread-safe: one call at a time

    def edit(parent: Any, name: str) -> None:
        token = context.attach(parent)
        try:
            with agent(name):
                with lock:
                    seen = memory.get(mid)
                if barrier is not None:
                    barrier.wait()
                    if name == "bob":
                        barrier.wait()
                with lock:
                    memory.update(mid, f"{seen['memory']}; noted by {name}")
                if barrier is not None and name == "alice":
                    barrier.wait()
        except BaseException as exc:
            errors.append(exc)
            if barrier is not None:
                barrier.abort()
        finally:
            context.detach(token)

    try:
        with workflow("support-ticket"):
            parent = context.get_current()
            if concurrent:
                threads = [
                    threading.Thread(target=edit, args=(parent, n)) for n in ("alice", "bob")
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                edit(parent, "alice")
                edit(parent, "bob")
        with suppress_instrumentation():
            final = memory.get(mid)["memory"]
    finally:
        _close(memory)
    assert not errors
    if not concurrent:
        assert final == "customer prefers email; noted by alice; noted by bob"
        assert instrumented.anomalies() == []
        return
    assert final == "customer prefers email; noted by bob"
    [lost] = instrumented.anomalies("lost_update")
    attrs = lost.attributes or {}
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_AGENTS]) == (
        f"mem0:{COLLECTION}/{mid}",
        ("alice", "bob"),
    )


def test_uninstrument_restores_memory(telemetry: Telemetry, tmp_path: Path) -> None:
    before = {m: vars(Memory)[m] for m in ("add", "get", "update")}
    instrumentor = Mem0Instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert vars(Memory)["add"] is not before["add"]
    instrumentor.uninstrument()
    assert {m: vars(Memory)[m] for m in before} == before


def test_async_memory(instrumented: Telemetry, tmp_path: Path) -> None:
    import asyncio

    from mem0 import AsyncMemory

    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": COLLECTION,
                "path": str(tmp_path / "qdrant"),
                "embedding_model_dims": 8,
            },
        },
        "embedder": {"provider": "openai", "config": {"api_key": "unused", "embedding_dims": 8}},
        "llm": {"provider": "openai", "config": {"api_key": "unused"}},
        "history_db_path": str(tmp_path / "history.db"),
    }

    async def run() -> tuple[str, Any]:
        with suppress_instrumentation():
            memory = AsyncMemory.from_config(config)
        memory.embedding_model = StubEmbedder()
        try:
            with workflow("support"), agent("curator"):
                added = await memory.add("customer prefers email", user_id="u-42", infer=False)
                mid = str(added["results"][0]["id"])
                await memory.update(mid, "customer prefers phone")
                return mid, await memory.get(mid)
        finally:
            _close(memory)

    mid, got = asyncio.run(run())
    assert got["memory"] == "customer prefers phone"
    add, update, get = _observations(instrumented)
    fact = f"mem0:{COLLECTION}/{mid}"
    assert (add[A.WRITE_FACTS], update[A.WRITE_FACTS], get[A.READ_FACTS]) == ((fact,),) * 3
    assert add[A.WRITE_VERSIONS] != update[A.WRITE_VERSIONS] == get[A.READ_VERSIONS]
    assert instrumented.anomalies() == []


def test_suppressed_calls_make_no_spans(instrumented: Telemetry, tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    try:
        with suppress_instrumentation():
            mid = _add(memory, "customer prefers email")
            assert memory.get(mid)["memory"] == "customer prefers email"
    finally:
        _close(memory)
    assert instrumented.spans() == []
