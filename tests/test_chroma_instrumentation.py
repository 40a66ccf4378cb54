"""chromadb instrumentation on a real embedded PersistentClient and a real `chroma run`
server (HttpClient, AsyncHttpClient): span shape, facts, versions, findings."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
import pytest_asyncio
from chromadb.api.models.Collection import Collection
from opentelemetry import context as otel_context
from opentelemetry.trace import StatusCode

from otel_agent_state import StaleReadError, agent, configure, decision, workflow
from otel_agent_state import attributes as A
from otel_agent_state.instrumentation.chromadb import ChromaInstrumentor

from .conftest import Telemetry
from .vector_support import check_stale_memory, lost_update_in_threads

CHROMA = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))


def _settings() -> chromadb.Settings:
    # a new object each time: chromadb's client constructors modify the one they get
    return chromadb.Settings(anonymized_telemetry=False)


SECRET = "the customer's account number is 0042"
VERSIONED = [
    {
        "name": "memory",
        "keys": [
            {"pattern": "chroma:*/memories/{id}", "tier": "primary"},
            {"pattern": "chroma:*/memories_index/{id}", "tier": "index"},
        ],
        "version": {"payload_field": "version"},
    }
]
DIGESTED = [{"name": "memory", "keys": ["chroma:*/memories/{id}", "chroma:*/memories_index/{id}"]}]
VECTOR = [0.9, 0.1, 0.0, 0.2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_server() -> Iterator[tuple[str, int]]:
    """A real `chroma run` on a temp dir and a free port; a failure to start fails the tests."""
    path = tempfile.mkdtemp(prefix="agentstate-chroma-")
    port = _free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    log = open(Path(path) / "server.log", "w+b")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [CHROMA, "run", "--path", path, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2):
                ready = True
                break
        except OSError:
            time.sleep(0.2)
    try:
        if not ready:
            log.seek(0)
            pytest.fail(f"chroma run did not start: {log.read()[-2000:].decode(errors='replace')}")
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(path, ignore_errors=True)


def _collections(client: Any) -> tuple[Collection, Collection]:
    primary = client.create_collection("memories", embedding_function=None)
    index = client.create_collection("memories_index", embedding_function=None)
    for collection in (primary, index):
        collection.add(
            ids=["7"],
            embeddings=[VECTOR],
            documents=["customer prefers email"],
            metadatas=[{"version": 1}],
        )
    return primary, index


@pytest.fixture(params=["persistent", "http"])
def stores(
    request: pytest.FixtureRequest, telemetry: Telemetry, tmp_path: Path
) -> Iterator[tuple[Collection, Collection]]:
    if request.param == "persistent":
        client: Any = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=_settings())
    else:
        host, port = request.getfixturevalue("chroma_server")
        client = chromadb.HttpClient(host=host, port=port, settings=_settings())
        for existing in client.list_collections():
            client.delete_collection(existing.name)
    collections = _collections(client)  # the initial state, before instrumenting
    instrumentor = ChromaInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield collections
    instrumentor.uninstrument()


def _attrs(telemetry: Telemetry, name: str) -> dict[str, Any]:
    return dict(telemetry.span_named(name).attributes or {})


# --------------------------------------------------------------------------- span shape


def test_span_shape_facts_and_versions(
    telemetry: Telemetry, stores: tuple[Collection, Collection]
) -> None:
    primary, _ = stores
    with agent("curator"):
        primary.add(
            ids=["8", "9"],
            embeddings=[[0.1, 0.9, 0, 0], [0, 0.1, 0.9, 0]],
            documents=[SECRET, "plan: premium"],
            metadatas=[{"topic": "account"}, None],
        )
    add = _attrs(telemetry, "add memories")
    assert add[A.DB_SYSTEM_NAME] == "chroma"
    assert add[A.DB_NAMESPACE] == "default_database"
    assert add[A.DB_COLLECTION_NAME] == "memories"
    assert (add[A.DB_OPERATION_NAME], add[A.DB_QUERY_SUMMARY]) == ("add", "add memories")
    assert (add[A.STORE], add[A.TIER], add[A.OP], add[A.COMMITTED]) == (
        "chroma",
        "index",
        "write",
        True,
    )
    assert add[A.GEN_AI_AGENT_NAME] == "curator"
    assert add[A.WRITE_FACTS] == (
        "chroma:default_database/memories/8",
        "chroma:default_database/memories/9",
    )
    written = dict(zip(add[A.WRITE_FACTS], add[A.WRITE_VERSIONS], strict=True))
    assert all(v.startswith("h:") for v in written.values())
    for value in add.values():
        assert SECRET not in str(value) and "0.9" not in str(value)
    # the follow-up read that versions the write is not traced
    assert [s.name for s in telemetry.spans()] == ["add memories", "invoke_agent curator"]

    result = primary.get(ids=["8", "404"])
    assert result["ids"] == ["8"]
    get = _attrs(telemetry, "get memories")
    assert get[A.READ_FACTS] == (
        "chroma:default_database/memories/8",
        "chroma:default_database/memories/404",
    )
    assert get[A.READ_VERSIONS] == (written["chroma:default_database/memories/8"], "none")

    hits = primary.query(query_embeddings=[[0.1, 0.9, 0, 0]], n_results=2)
    assert hits["ids"][0][0] == "8"
    query = _attrs(telemetry, "query memories")
    assert query[A.READ_FACTS][0] == "chroma:default_database/memories/8"
    assert query[A.READ_VERSIONS][0] == written["chroma:default_database/memories/8"]

    primary.update(ids=["8"], metadatas=[{"topic": "billing"}])  # merges into the metadata
    update = _attrs(telemetry, "update memories")
    assert update[A.WRITE_VERSIONS][0] != written["chroma:default_database/memories/8"]
    primary.get(ids=["8"])
    gets = [s for s in telemetry.spans() if s.name == "get memories"]
    assert (gets[-1].attributes or {})[A.READ_VERSIONS] == update[A.WRITE_VERSIONS]

    primary.get(ids=["8"], include=["documents"])
    partial = telemetry.spans()[-1].attributes or {}
    assert partial[A.UNRESOLVED] == "documents or metadatas not included"

    primary.delete(ids=["8", "9"], where={"topic": "none of them"})  # deletes nothing
    assert _attrs(telemetry, "delete memories").get(A.WRITE_FACTS) is None
    telemetry.exporter.clear()
    primary.delete(where={"topic": "billing"})
    delete = _attrs(telemetry, "delete memories")
    assert delete[A.OP] == "delete"
    assert delete[A.WRITE_FACTS] == ("chroma:default_database/memories/8",)
    assert delete[A.WRITE_VERSIONS] == ("none",)
    assert primary.get(ids=["8"])["ids"] == []


def test_configured_metadata_field_and_client_errors(
    telemetry: Telemetry, stores: tuple[Collection, Collection]
) -> None:
    configure(rules=VERSIONED)
    primary, _ = stores
    primary.upsert(ids=["7"], embeddings=[VECTOR], metadatas=[{"version": 5}])
    upsert = _attrs(telemetry, "upsert memories")
    assert (upsert[A.TIER], upsert[A.WRITE_FACTS], upsert[A.WRITE_VERSIONS]) == (
        "primary",
        ("memory/7",),
        ("n:5",),
    )
    primary.get(ids=["7"], include=["metadatas"])  # enough for the version field
    assert _attrs(telemetry, "get memories")[A.READ_VERSIONS] == ("n:5",)
    with pytest.raises(Exception) as caught:
        primary.add(ids=["x"], embeddings=[[1.0, 2.0]])  # wrong dimension: chroma's own error
    assert "dimension" in str(caught.value).lower()
    failed = [s for s in telemetry.spans() if s.name == "add memories"]
    assert failed[-1].status.status_code == StatusCode.ERROR


# --------------------------------------------------------------------------- findings


def _workflow(primary: Collection, index: Collection, sync: bool) -> str:
    with workflow("support-ticket"):
        with agent("indexer"):  # syncs the index from the primary: a copy (SPEC §5)
            seen = primary.get(ids=["7"], include=["documents", "metadatas"])
            index.upsert(
                ids=["7"],
                embeddings=[VECTOR],
                documents=seen["documents"],
                metadatas=seen["metadatas"],
            )
        with agent("memory-curator"):
            primary.upsert(
                ids=["7"],
                embeddings=[VECTOR],
                documents=["customer prefers phone"],
                metadatas=[{"version": 2}],
            )
            if sync:
                index.upsert(
                    ids=["7"],
                    embeddings=[VECTOR],
                    documents=["customer prefers phone"],
                    metadatas=[{"version": 2}],
                )
        with agent("responder"), decision("reply-channel"):
            hits = index.query(query_embeddings=[VECTOR], n_results=1)
    return str(hits["documents"][0][0])


@pytest.mark.parametrize("rules", [VERSIONED, DIGESTED], ids=["field", "digest"])
def test_stale_memory_retrieval_flagged_and_twin_clean(
    telemetry: Telemetry, stores: tuple[Collection, Collection], rules: list[Any]
) -> None:
    configure(rules=rules)
    primary, index = stores
    # With digests the index's value is judged through the indexer's copy of the primary's.
    assert _workflow(primary, index, sync=False) == "customer prefers email"
    versions = ("n:1", "n:2") if rules is VERSIONED else None
    check_stale_memory(telemetry, "upsert memories", "query memories_index", versions)

    telemetry.exporter.clear()
    assert _workflow(primary, index, sync=True) == "customer prefers phone"
    assert telemetry.anomalies() == []


def test_lost_update_two_agents_in_threads(
    telemetry: Telemetry, stores: tuple[Collection, Collection]
) -> None:
    configure(rules=DIGESTED)
    primary, _ = stores

    def write(name: str, seen: Any) -> None:
        text = f"{seen['documents'][0]} ({name})"
        # embeddings given: chroma would otherwise embed the document with a model
        primary.update(ids=["7"], embeddings=[VECTOR], documents=[text])

    lost_update_in_threads(telemetry, lambda: primary.get(ids=["7"]), write)
    assert primary.get(ids=["7"])["documents"] == ["customer prefers email (bob)"]


@pytest.mark.parametrize(("alice", "bob", "lost"), [("tone", "lang", 0), ("tone", "tone", 1)])
def test_metadata_merges_lose_only_the_keys_both_set(
    telemetry: Telemetry, stores: tuple[Collection, Collection], alice: str, bob: str, lost: int
) -> None:
    """`update(metadatas=...)` merges keys into the stored metadata (the others are kept):
    two agents that both read the record and set different keys lose nothing."""
    configure(rules=DIGESTED)
    primary, _ = stores
    keys = {"alice": alice, "bob": bob}
    both_read, alice_wrote = threading.Barrier(2, timeout=30), threading.Event()

    def work(parent: Any, name: str) -> None:
        token = otel_context.attach(parent)
        try:
            with agent(name):
                primary.get(ids=["7"])
                both_read.wait()  # both read before either writes; alice writes first
                if name == "bob":
                    alice_wrote.wait(30)
                primary.update(ids=["7"], metadatas=[{keys[name]: name[0]}])
                alice_wrote.set()
        finally:
            otel_context.detach(token)

    with workflow("preferences"):
        parent = otel_context.get_current()
        threads = [threading.Thread(target=work, args=(parent, n)) for n in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stored = primary.get(ids=["7"])["metadatas"][0]
    assert stored == {"version": 1, **{alice: "a"}, **{bob: "b"}}
    assert len(telemetry.anomalies("lost_update")) == lost
    update = [s for s in telemetry.spans() if s.name == "update memories"][-1]
    assert (update.attributes or {})[A.WRITE_FIELDS] == (bob,)


def test_raise_mode_on_the_embedded_client(
    telemetry: Telemetry, stores: tuple[Collection, Collection]
) -> None:
    configure(rules=VERSIONED, on_anomaly="raise")
    primary, index = stores
    with workflow("support-ticket"):
        with agent("memory-curator"):
            primary.update(ids=["7"], metadatas=[{"version": 2}])
        with agent("responder"), pytest.raises(StaleReadError) as caught:
            index.get(ids=["7"])
    found = caught.value.anomaly
    assert (found.fact, found.observed_version, found.expected_version) == (
        "memory/7",
        "n:1",
        "n:2",
    )
    assert telemetry.span_named("get memories_index").status.status_code == StatusCode.ERROR


def test_uninstrument_restores_the_original_methods(telemetry: Telemetry, tmp_path: Path) -> None:
    originals = {m: Collection.__dict__[m] for m in ("add", "get", "query", "delete")}
    instrumentor = ChromaInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    assert Collection.__dict__["add"] is not originals["add"]
    instrumentor.uninstrument()
    for name, function in originals.items():
        assert Collection.__dict__[name] is function
    client = chromadb.PersistentClient(path=str(tmp_path / "c"), settings=_settings())
    client.create_collection("mem", embedding_function=None).add(ids=["1"], embeddings=[VECTOR])
    assert telemetry.spans() == []


# --------------------------------------------------------------------------- asyncio client


@pytest_asyncio.fixture
async def async_index(
    telemetry: Telemetry, chroma_server: tuple[str, int]
) -> AsyncIterator[tuple[Any, Any]]:
    host, port = chroma_server
    client = await chromadb.AsyncHttpClient(host=host, port=port, settings=_settings())
    for existing in await client.list_collections():
        await client.delete_collection(existing.name)
    collections = []
    for name in ("memories", "memories_index"):
        collection = await client.create_collection(name, embedding_function=None)
        await collection.add(
            ids=["7"], embeddings=[VECTOR], documents=["prefers email"], metadatas=[{"version": 1}]
        )
        collections.append(collection)
    instrumentor = ChromaInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield collections[0], collections[1]
    instrumentor.uninstrument()


@pytest.mark.asyncio
async def test_async_client_concurrent_agents(
    telemetry: Telemetry, async_index: tuple[Any, Any]
) -> None:
    configure(rules=VERSIONED)
    primary, index = async_index
    updated = asyncio.Event()

    async def curator() -> None:
        async with agent("memory-curator"):
            await primary.update(
                ids=["7"],
                embeddings=[VECTOR],
                documents=["prefers phone"],
                metadatas=[{"version": 2}],
            )
        updated.set()

    async def responder() -> Any:
        await updated.wait()
        async with agent("responder"):
            return await index.query(query_embeddings=[VECTOR], n_results=1)

    async with workflow("support-ticket"):
        _, hits = await asyncio.gather(curator(), responder())
    assert hits["documents"][0][0] == "prefers email"
    [anomaly] = telemetry.anomalies("stale_read")
    attrs = anomaly.attributes or {}
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == (
        "memory/7",
        "n:1",
        "n:2",
    )
    assert attrs[A.ANOMALY_AGENTS] == ("responder", "memory-curator")
