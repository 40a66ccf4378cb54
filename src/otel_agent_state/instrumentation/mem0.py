"""State-aware instrumentation of mem0 (`mem0ai`): `Memory` and `AsyncMemory`.

`add`, `update`, `delete`, `get`, `get_all` and `search` are the logical memory operations;
each is one observation of the memories it touched, `mem0:<collection>/<memory id>` (the
vector store's collection name). A memory's version is the time of its last history event
(`t:`): mem0 writes one history row per ADD / UPDATE / DELETE with the same `updated_at` it
puts on the memory, so a write's version is its own history event's (read back, untraced)
and a read's is the `updated_at` of the memory it returned; a delete leaves `none`.

One memory, one fact: mem0 keeps each memory as a point of its vector store (Qdrant by
default) and rows of its SQLite history, and our Qdrant and sqlite3 instrumentations would
observe those too, as other facts in other representations (a Qdrant payload digest is not
comparable with a history time). So mem0's own work beneath our span runs with OTel's
suppress-instrumentation key set: the memory is seen once, at the layer agents use. Spans
also carry the GenAI memory conventions (`genai_memory`).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import __version__
from .. import attributes as A
from ..core.config import FactRule, get_settings
from ..genai_memory import memory_span_attributes
from ._memory import quiet_wrapper
from ._vector import (
    Fetch,
    Plan,
    VectorCall,
    field_value,
    field_version,
    key_part,
    version_field,
)
from ._wrapping import Wrapped, unwrap_all, wrap_under

_log = logging.getLogger(__name__)

STORE = "mem0"
TIER = "primary"
_MAX_RECORDS = 1_000
# method -> (agentstate.op, gen_ai.operation.name)
_METHODS = {
    "add": ("write", A.OP_CREATE_MEMORY),
    "update": ("write", A.OP_UPDATE_MEMORY),
    "delete": ("delete", A.OP_DELETE_MEMORY),
    "get": ("read", A.OP_SEARCH_MEMORY),
    "get_all": ("read", A.OP_SEARCH_MEMORY),
    "search": ("read", A.OP_SEARCH_MEMORY),
}


def _collection(instance: Any) -> str:
    name = getattr(getattr(getattr(instance, "config", None), "vector_store", None), "config", None)
    value = getattr(name, "collection_name", None)
    return value if isinstance(value, str) and value else "mem0"


def _time_version(value: Any) -> str | None:
    """mem0's ISO timestamps (with their zone) as a `t:` version; None without a zone."""
    if not isinstance(value, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # no order across processes without a zone
    return f"t:{round(moment.timestamp() * 1e6) * 1000}"


def _records(result: Any) -> list[Mapping[str, Any]]:
    if isinstance(result, Mapping):
        result = result.get("results")
    if not isinstance(result, list):
        return []
    return [r for r in result[:_MAX_RECORDS] if isinstance(r, Mapping)]


def _last_event(history: Any, events: tuple[str, ...]) -> Mapping[str, Any] | None:
    rows = [h for h in history or () if isinstance(h, Mapping) and h.get("event") in events]
    return rows[-1] if rows else None


class _Mem0:
    """The `Handler` of Memory calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer, is_async: bool) -> None:
        self.tracer = tracer
        self.is_async = is_async

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        op, operation = _METHODS[method]
        collection = _collection(instance)
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=collection, operation=method,
            op=op,
        )  # fmt: skip
        call.set(A.TIER, TIER)
        memory_id = args.get("memory_id")
        ids = [str(memory_id)] if memory_id is not None else []
        for key, value in memory_span_attributes(operation, collection, ids).items():
            call.set(key, value)
        return Plan(call, method, args, collection, {"instance": instance})

    def before(self, plan: Plan) -> Fetch | None:
        return None

    def _written(self, plan: Plan, result: Any) -> list[tuple[str, tuple[str, ...]]]:
        """(memory id, the history events that can be this write's) per memory written."""
        if plan.method == "update":
            return [(str(plan.args["memory_id"]), ("UPDATE",))]
        out: list[tuple[str, tuple[str, ...]]] = []
        for record in _records(result):
            event = record.get("event")
            if event in ("ADD", "UPDATE") and record.get("id") is not None:
                out.append((str(record["id"]), (str(event),)))
        return out

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        if plan.method not in ("add", "update"):
            return None
        written = self._written(plan, result)
        plan.data["written"] = written
        if not written:
            return None
        instance = plan.data["instance"]
        ids = [mid for mid, _ in written]
        if self.is_async:

            async def afetch() -> dict[str, Any]:
                return {mid: await instance.history(mid) for mid in ids}

            return Fetch("history", function=afetch)
        return Fetch("history", function=lambda: {mid: instance.history(mid) for mid in ids})

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        plan.data["history"] = data if isinstance(data, Mapping) else None

    def _fact(self, plan: Plan, memory_id: Any) -> tuple[str, FactRule | None] | None:
        if memory_id is None or isinstance(memory_id, bool):
            return None
        return plan.call.resolve(f"{STORE}:{key_part(plan.collection)}/{key_part(memory_id)}")

    def _read_version(self, plan: Plan, rule: FactRule | None, record: Any) -> str | None:
        if record is None:
            return "none"
        name = version_field(rule, "payload_field", "json_field")
        if name is not None:
            found, value = field_value(record.get("metadata") or {}, name)
            if found:
                return field_version(plan.call.settings, value)
        return _time_version(record.get("updated_at"))

    def finish(self, plan: Plan, result: Any) -> None:
        call = plan.call
        skipped = False
        count = 0
        if plan.method in ("add", "update"):
            history = plan.data.get("history") or {}
            for memory_id, events in plan.data.get("written", ()):
                found = self._fact(plan, memory_id)
                event = _last_event(history.get(memory_id), events)
                version = _time_version(event.get("updated_at")) if event else None
                if found is None or version is None:
                    skipped = True
                    continue
                call.write(found[0], version)
                count += 1
            if plan.method == "add":
                for record in _records(result):
                    found = self._fact(plan, record.get("id"))
                    if record.get("event") == "DELETE" and found is not None:
                        call.write(found[0], "none")
                        count += 1
        elif plan.method == "delete":
            found = self._fact(plan, plan.args.get("memory_id"))
            if found is not None:
                call.write(found[0], "none")
                count += 1
        else:
            records: list[Any] = [result] if plan.method == "get" else _records(result)
            for record in records:
                memory_id = plan.args.get("memory_id") if record is None else record.get("id")
                found = self._fact(plan, memory_id)
                version = self._read_version(plan, found[1], record) if found else None
                if found is None or version is None:
                    skipped = True
                    continue
                call.read(found[0], version)
                count += 1
        call.set(A.GEN_AI_MEMORY_RECORD_COUNT, count)
        if skipped:
            call.unresolved("memory not versioned")
        if plan.method in ("add", "update", "delete"):
            call.record_writes()
        else:
            call.record_reads()


class Mem0Instrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps the memory methods of mem0's `Memory` and `AsyncMemory`."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("mem0ai >= 1.0",)

    def _instrument(self, **kwargs: Any) -> None:
        from mem0.memory import main  # type: ignore[import-untyped]

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        self._wrapped = []
        for name, is_async in (("Memory", False), ("AsyncMemory", True)):
            cls = getattr(main, name, None)
            if cls is None:
                continue
            handler = _Mem0(tracer, is_async)
            for method in _METHODS:
                if method not in vars(cls):
                    continue
                wrapper = quiet_wrapper(handler, method, is_async)
                if wrap_under(cls, method, wrapper):
                    self._wrapped.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []
