"""Scenarios on embedded Qdrant (local mode, on disk) through our qdrant-client
instrumentation: agents' shared memory, its search index, and a SQLite primary."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from qdrant_client import QdrantClient, models

from otel_agent_state import agent, decision, mutation, workflow

from . import Env, scenario
from .sqlite_cases import Failure, _in_threads

QDRANT = ("qdrant",)
WITH_SQLITE = ("sqlite", "qdrant")
MEMORY = {  # the primary collection and the search index a sync job copies it into
    "name": "memory",
    "keys": [
        {"pattern": "qdrant:memories/{id}", "tier": "primary"},
        {"pattern": "qdrant:memories_index/{id}", "tier": "index"},
    ],
    "version": {"payload_field": "version"},
}
NOTE = {  # notes kept in SQLite, searched through a Qdrant index
    "name": "note",
    "keys": [
        "sqlite:*/notes/{id}",
        {"pattern": "qdrant:notes_index/{id}", "tier": "index"},
    ],
    "version": {"column": "version", "payload_field": "version"},
}
PREFS = {  # customer preferences as payloads, no version field: keyed digests
    "name": "prefs",
    "keys": [{"pattern": "qdrant:preferences/{id}", "tier": "primary"}],
}
RULES = (MEMORY, NOTE, PREFS)
VECTOR = [0.9, 0.1, 0.0, 0.2]
OTHER = [0.0, 0.2, 0.9, 0.1]


def _memory(version: int, text: str, point: int = 7, vector: list[float] = VECTOR) -> Any:
    return models.PointStruct(id=point, vector=vector, payload={"text": text, "version": version})


def _setup(env: Env) -> QdrantClient:
    """Both collections hold memory 7 at version 1 (and an unrelated memory 8); untraced."""
    client: QdrantClient = env.qdrant()
    with suppress_instrumentation():
        for name in ("memories", "memories_index", "notes_index", "preferences"):
            client.create_collection(
                name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
            )
            client.upsert(
                name,
                points=[
                    _memory(1, "customer prefers email"),
                    _memory(1, "customer lives in Lyon", point=8, vector=OTHER),
                ],
            )
        conn = env.sqlite()
        conn.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT, version INTEGER);
            INSERT INTO notes VALUES (7, 'customer prefers email', 1);
            """
        )
    return client


def _curate(client: QdrantClient, *, reindex: bool) -> None:
    with agent("memory-curator"):
        client.upsert("memories", points=[_memory(2, "customer prefers phone")])
        if reindex:  # the sync job copied the new version before anyone searched
            client.upsert("memories_index", points=[_memory(2, "customer prefers phone")])


def _respond(client: QdrantClient, collection: str = "memories_index") -> str:
    with agent("responder"), decision("reply channel") as chosen:
        hits = client.query_points(collection, query=VECTOR, limit=1).points
        text = str((hits[0].payload or {})["text"])
        chosen.outcome("phone" if "phone" in text else "email")
        return text


# ------------------------------------------------------------ superseded memory retrieval


@scenario(
    "agent retrieves a superseded memory from an index that lags the primary collection",
    expect={"stale_read": 1},
    stores=QDRANT,
    rules=RULES,
)
def superseded_memory_from_lagging_index(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _curate(client, reindex=False)
        assert _respond(client) == "customer prefers email"


@scenario("memory re-indexed before the agent searches", stores=QDRANT, rules=RULES)
def memory_reindexed_before_search(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _curate(client, reindex=True)
        assert _respond(client) == "customer prefers phone"


@scenario(
    "agent searches the primary memory collection after the update",
    stores=QDRANT,
    rules=RULES,
)
def memory_searched_in_primary(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _curate(client, reindex=False)
        assert _respond(client, "memories") == "customer prefers phone"


@scenario(
    "index lag within a bounded-staleness window is allowed",
    stores=QDRANT,
    rules=RULES,
    consistency="bounded:60000",
)
def lagging_index_within_bound(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _curate(client, reindex=False)
        _respond(client)


def _revise_note(env: Env, client: QdrantClient, *, reindex: bool) -> None:
    with agent("note-taker"):
        env.sqlite().execute(
            "UPDATE notes SET text = 'customer prefers phone', version = 2 WHERE id = 7"
        )
        if reindex:
            client.upsert("notes_index", points=[_memory(2, "customer prefers phone")])


def _recall_note(client: QdrantClient) -> None:
    with agent("responder"):
        [note] = client.retrieve("notes_index", ids=[7])
        with decision("reply channel") as chosen:
            chosen.outcome("phone" if "phone" in str((note.payload or {})["text"]) else "email")


@scenario(
    "note updated in SQLite, the Qdrant index still returns the old note",
    expect={"stale_read": 1},
    stores=WITH_SQLITE,
    rules=RULES,
)
def note_index_not_refreshed(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _revise_note(env, client, reindex=False)
        _recall_note(client)


@scenario("note updated in SQLite and re-indexed in Qdrant", stores=WITH_SQLITE, rules=RULES)
def note_index_refreshed(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _revise_note(env, client, reindex=True)
        _recall_note(client)


def _forget(client: QdrantClient, *, everywhere: bool) -> None:
    with agent("privacy-officer"):
        ids = models.PointIdsList(points=[7])
        client.delete("memories", points_selector=ids)
        if everywhere:
            client.delete("memories_index", points_selector=ids)


@scenario(
    "a memory erased from the primary collection is still retrieved from the index",
    expect={"stale_read": 1},
    stores=QDRANT,
    rules=RULES,
)
def erased_memory_still_indexed(env: Env) -> None:
    client = _setup(env)
    with workflow("erasure"):
        _forget(client, everywhere=False)
        with agent("responder"):
            client.retrieve("memories_index", ids=[7])


@scenario("a memory erased from both collections is gone", stores=QDRANT, rules=RULES)
def erased_memory_everywhere(env: Env) -> None:
    client = _setup(env)
    with workflow("erasure"):
        _forget(client, everywhere=True)
        with agent("responder"):
            assert client.retrieve("memories_index", ids=[7]) == []


# ------------------------------------------------------------------------ lost updates


def _append(client: QdrantClient, name: str, barrier: threading.Barrier | None) -> None:
    with agent(name):
        [seen] = client.retrieve("memories", ids=[7])
        if barrier is not None:
            barrier.wait()  # both retrieved version 1 before either writes
            if name == "bob":
                barrier.wait()
        payload = seen.payload or {}
        text = f"{payload['text']}; noted by {name}"
        client.upsert("memories", points=[_memory(int(payload["version"]) + 1, text)])
        if barrier is not None and name == "alice":
            barrier.wait()


@scenario(
    "two agents retrieve memory 7, then both upsert their edit of it",
    expect={"lost_update": 1},
    stores=QDRANT,
    rules=RULES,
)
def lost_memory_update(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    with workflow("support-ticket"):
        _in_threads(
            lambda: _append(client, "alice", barrier),
            lambda: _append(client, "bob", barrier),
        )
    with suppress_instrumentation():
        [point] = client.retrieve("memories", ids=[7])
    assert (point.payload or {})["text"] == "customer prefers email; noted by bob"


@scenario("the same two memory edits, one after the other", stores=QDRANT, rules=RULES)
def sequential_memory_updates(env: Env) -> None:
    client = _setup(env)
    with workflow("support-ticket"):
        _append(client, "alice", None)
        _append(client, "bob", None)
    with suppress_instrumentation():
        [point] = client.retrieve("memories", ids=[7])
    assert (point.payload or {})["version"] == 3


@scenario(
    "two agents edit different memories concurrently",
    stores=QDRANT,
    rules=RULES,
)
def concurrent_edits_of_different_memories(env: Env) -> None:
    client = _setup(env)
    barrier = threading.Barrier(2, timeout=10)
    # Qdrant's local mode shares one sqlite3 connection between threads without a lock: two
    # upserts at once race at its COMMIT ("cannot commit - no transaction is active"). The
    # agents still overlap (both retrieve before either writes); only the writes take turns.
    writing = threading.Lock()

    def edit(name: str, point: int) -> None:
        with agent(name):
            [seen] = client.retrieve("memories", ids=[point])
            barrier.wait()
            with writing:
                client.upsert(
                    "memories",
                    points=[_memory(2, f"{(seen.payload or {})['text']} ({name})", point=point)],
                )

    with workflow("support-ticket"):
        _in_threads(lambda: edit("alice", 7), lambda: edit("bob", 8))


def _set_pref(
    client: QdrantClient, name: str, patch: dict[str, str], barrier: threading.Barrier
) -> None:
    with agent(name):
        client.retrieve("preferences", ids=[7])
        barrier.wait()  # both read the same payload before either writes
        if name == "bob":
            barrier.wait()
        client.set_payload("preferences", payload=patch, points=[7])  # merged by Qdrant
        if name == "alice":
            barrier.wait()


def _prefs_after(client: QdrantClient, *patches: dict[str, str]) -> dict[str, Any]:
    barrier = threading.Barrier(2, timeout=10)
    with workflow("preferences"):
        _in_threads(
            lambda: _set_pref(client, "alice", patches[0], barrier),
            lambda: _set_pref(client, "bob", patches[1], barrier),
        )
    with suppress_instrumentation():
        [point] = client.retrieve("preferences", ids=[7])
    return dict(point.payload or {})


@scenario(
    "two agents retrieve a payload, then both set_payload the same key",
    expect={"lost_update": 1},
    stores=QDRANT,
    rules=RULES,
)
def concurrent_set_payload_same_key(env: Env) -> None:
    client = _setup(env)
    prefs = _prefs_after(client, {"tone": "formal"}, {"tone": "casual"})
    assert prefs["tone"] == "casual"  # alice's choice is gone


@scenario(
    "two agents retrieve a payload, then set_payload different keys (both kept)",
    stores=QDRANT,
    rules=RULES,
)
def concurrent_set_payload_different_keys(env: Env) -> None:
    client = _setup(env)
    prefs = _prefs_after(client, {"tone": "formal"}, {"language": "fr"})
    assert (prefs["tone"], prefs["language"]) == ("formal", "fr")


# ------------------------------------------------------------------ orphaned mutations


@scenario(
    "memory consolidation rewrites the primary, then crashes before the index",
    expect={"orphaned_mutation": 1},
    stores=QDRANT,
    rules=RULES,
)
def consolidation_crashes_midway(env: Env) -> None:
    client = _setup(env)
    with workflow("consolidation"):
        try:
            with agent("consolidator"):
                client.upsert("memories", points=[_memory(2, "customer prefers phone")])
                raise Failure("embedding service unavailable")
        except Failure:
            pass


@scenario("memory consolidation writes both collections", stores=QDRANT, rules=RULES)
def consolidation_completes(env: Env) -> None:
    client = _setup(env)
    with workflow("consolidation"), agent("consolidator"):
        for name in ("memories", "memories_index"):
            client.upsert(name, points=[_memory(2, "customer prefers phone")])


@scenario(
    "failed consolidation compensated by restoring the memory, SQLite traced too",
    stores=WITH_SQLITE,  # Qdrant local mode persists to SQLite: those writes are traced too
    rules=RULES,
)
def consolidation_compensated(env: Env) -> None:
    client = _setup(env)
    with workflow("consolidation"), agent("consolidator"):
        try:
            with mutation("consolidate"):
                client.upsert("memories", points=[_memory(2, "customer prefers phone")])
                raise Failure("embedding service unavailable")
        except Failure:
            client.upsert("memories", points=[_memory(1, "customer prefers email")])


# ---------------------------------------------------------------------- divergent views


def _reply(
    client: QdrantClient,
    name: str,
    go: threading.Event,
    done: threading.Event,
    deciding: threading.Event,
) -> None:
    with agent(name):
        go.wait(10)
        client.retrieve("memories", ids=[7])
        done.set()
        with decision("reply channel"):
            deciding.wait(10)  # both responders are deciding at the same time


@scenario(
    "two concurrent responders act on different versions of a memory a curator changed",
    expect={"divergent_view": 1},
    stores=QDRANT,
    rules=RULES,
)
def divergent_memory_views(env: Env) -> None:
    client = _setup(env)
    go_a, a_read, go_b, b_read, deciding = (threading.Event() for _ in range(5))

    def coordinator() -> None:
        go_a.set()
        a_read.wait(10)
        _curate(client, reindex=True)
        go_b.set()
        b_read.wait(10)
        deciding.set()

    with workflow("support-ticket"):
        _in_threads(
            lambda: _reply(client, "email-responder", go_a, a_read, deciding),
            lambda: _reply(client, "chat-responder", go_b, b_read, deciding),
            coordinator,
        )


@scenario("two concurrent responders act on the same memory version", stores=QDRANT, rules=RULES)
def concurrent_responders_same_version(env: Env) -> None:
    client = _setup(env)
    go, a_read, b_read, deciding = (threading.Event() for _ in range(4))

    def coordinator() -> None:
        go.set()
        a_read.wait(10)
        b_read.wait(10)
        deciding.set()

    with workflow("support-ticket"):
        _in_threads(
            lambda: _reply(client, "email-responder", go, a_read, deciding),
            lambda: _reply(client, "chat-responder", go, b_read, deciding),
            coordinator,
        )
