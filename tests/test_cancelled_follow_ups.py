"""An asyncio task cancelled while we read a value again (after the application's call
returned) still ends the call's span: none is left open, and the cancellation reaches the
application unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from qdrant_client import AsyncQdrantClient, models

from otel_agent_state import configure
from otel_agent_state.instrumentation import _vector
from otel_agent_state.instrumentation import redis as redis_instrumentation
from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor
from otel_agent_state.instrumentation.redis import RedisInstrumentor

from .conftest import Telemetry

ASYNC_DB = 2
RULES = [{"name": "profile", "keys": ["redis:*/profile:{id}"], "version": {"hash_field": "rev"}}]


async def _cancelled_while_following_up(
    work: Callable[[], Awaitable[Any]], reached: asyncio.Event
) -> None:
    task = asyncio.ensure_future(work())
    await asyncio.wait_for(reached.wait(), 10)  # the application's call is done; we read again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _stuck(reached: asyncio.Event) -> Callable[[Any], Awaitable[None]]:
    async def follow_up(_: Any) -> None:
        reached.set()
        await asyncio.sleep(30)

    return follow_up


@pytest.mark.redis
@pytest.mark.parametrize("how", ["command", "pipeline"])
def test_redis_span_ends_when_cancelled_during_the_read_again(
    telemetry: Telemetry, redis_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    configure(rules=RULES)
    RedisInstrumentor().instrument(tracer_provider=telemetry.provider)

    async def main() -> None:
        reached = asyncio.Event()
        monkeypatch.setattr(redis_instrumentation, "_refetch_async", _stuck(reached))
        conn = redis.asyncio.Redis.from_url(f"{redis_url}/{ASYNC_DB}")

        async def work() -> Any:
            if how == "command":  # one field, no rev: the hash must be read again
                return await conn.hset("profile:9", "name", "grace")
            pipe = conn.pipeline(transaction=False)
            pipe.hset("profile:9", "name", "grace")
            return await pipe.execute()

        try:
            await _cancelled_while_following_up(work, reached)
        finally:
            await conn.aclose()

    try:
        asyncio.run(main())
    finally:
        RedisInstrumentor().uninstrument()
    ended = [s for s in telemetry.spans() if s.name in ("HSET", "PIPELINE")]
    assert len(ended) == 1, "the call's span was left open (never ended, never exported)"


def test_vector_span_ends_when_cancelled_during_the_read_again(
    telemetry: Telemetry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instrumentor = QdrantInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)

    async def main() -> None:
        reached = asyncio.Event()
        store = AsyncQdrantClient(path=str(tmp_path / "qdrant"))
        await store.create_collection(
            "memories", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        await store.upsert(
            "memories", [models.PointStruct(id=1, vector=[0.1, 0.2, 0.3, 0.4], payload={"a": 1})]
        )
        monkeypatch.setattr(_vector, "_afollow", _stuck(reached))
        try:  # set_payload merges into the stored payload: it is read back after the call
            await _cancelled_while_following_up(
                lambda: store.set_payload("memories", {"b": 2}, points=[1]), reached
            )
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        instrumentor.uninstrument()
    ended = [s for s in telemetry.spans() if s.name.startswith("set_payload")]
    assert len(ended) == 1, "the call's span was left open (never ended, never exported)"
