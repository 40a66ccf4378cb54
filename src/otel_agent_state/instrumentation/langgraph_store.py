"""State-aware instrumentation of LangGraph's long-term memory, the `BaseStore` API.

`BaseStore.get/search/put/delete` and their async twins are the logical operations of every
backend (`InMemoryStore`, `SqliteStore`, `PostgresStore`, ...), so they are wrapped once, on
`BaseStore`; `batch`/`abatch` are wrapped on the backends this module knows, for callers
that batch themselves. One span per logical operation: the backend's own work beneath it
(sqlite3 / psycopg statements, a public method's inner `batch`) runs with OTel's
suppress-instrumentation key set, so neither our driver instrumentations nor contrib's count
it a second time.

Facts are items, `langgraph-store:<namespace path>/<key>`; a version is the item's
`updated_at` (`t:`), `none` when absent or deleted. A put returns nothing, so the item is read
back (untraced) for the version it now has. `SqliteStore` keeps `updated_at` to the second (as
UTC text): two writes within one second share a version, so findings between them are missed
(never invented). Spans also carry the GenAI memory conventions (`genai_memory`).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Collection, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import __version__
from .. import attributes as A
from ..core.config import get_settings
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

STORE = "langgraph-store"
TIER = "primary"
_MAX_OPS = 1_000  # operations of one batch that are tracked

# public method -> agentstate.op
_PUBLIC = {
    "get": "read",
    "search": "read",
    "put": "write",
    "delete": "delete",
    "aget": "read",
    "asearch": "read",
    "aput": "write",
    "adelete": "delete",
}
_BATCH = ("batch", "abatch")
# Backends whose own batch methods are wrapped: (module, class names).
_BACKENDS = (
    ("langgraph.store.memory", ("InMemoryStore",)),
    ("langgraph.store.sqlite", ("SqliteStore", "AsyncSqliteStore")),
    ("langgraph.store.postgres", ("PostgresStore", "AsyncPostgresStore")),
)


# --------------------------------------------------------------------------- ops


def _ns_path(namespace: Any) -> str | None:
    if not isinstance(namespace, (tuple, list)) or not all(isinstance(p, str) for p in namespace):
        return None
    return "/".join(key_part(p) for p in namespace)


def _ops_of(method: str, args: dict[str, Any]) -> list[Any] | None:
    """The store operations one call stands for; None when they cannot be known."""
    from langgraph.store.base import GetOp, PutOp, SearchOp

    name = method.removeprefix("a") if method in _PUBLIC and method.startswith("a") else method
    if name == "get":
        return [GetOp(tuple(args["namespace"]), args["key"])]
    if name == "put":
        return [PutOp(tuple(args["namespace"]), args["key"], args["value"])]
    if name == "delete":
        return [PutOp(tuple(args["namespace"]), args["key"], None)]
    if name == "search":
        return [SearchOp(tuple(args["namespace_prefix"]))]
    ops = args.get("ops")
    if isinstance(ops, Sequence) and len(ops) <= _MAX_OPS:  # an iterator is not consumed
        return list(ops)
    return None


def _kind(op: Any) -> str:
    name = type(op).__name__
    if name == "PutOp":
        return "delete" if op.value is None else "write"
    return "read" if name in ("GetOp", "SearchOp") else "other"


def _agentstate_op(kinds: set[str]) -> str:
    if kinds <= {"read", "other"}:
        return "read"
    if "read" in kinds:
        return "read_write"
    return "delete" if kinds == {"delete"} else "write"


def _genai_operation(kinds: set[str]) -> str:
    if kinds <= {"read", "other"}:
        return A.OP_SEARCH_MEMORY
    return A.OP_DELETE_MEMORY if kinds == {"delete"} else A.OP_UPSERT_MEMORY


def _updated_version(updated_at: Any) -> str | None:
    """An item's `updated_at` as a `t:` version. SqliteStore's are naive: SQLite's
    CURRENT_TIMESTAMP is UTC by definition."""
    if isinstance(updated_at, str):
        try:
            updated_at = _dt.datetime.fromisoformat(updated_at)
        except ValueError:
            return None
    if not isinstance(updated_at, _dt.datetime):
        return None
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=_dt.timezone.utc)
    return f"t:{round(updated_at.timestamp() * 1e6) * 1000}"


# --------------------------------------------------------------------------- one call


class _Store:
    """The `Handler` of BaseStore calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        ops = _ops_of(method, args)
        if ops is None:
            return None
        kinds = {_kind(op) for op in ops}
        if kinds <= {"other"}:
            return None  # list_namespaces and the like: no items
        paths = {
            _ns_path(getattr(op, "namespace", getattr(op, "namespace_prefix", None))) for op in ops
        }
        collection = next(iter(paths)) if len(paths) == 1 else ""
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=collection or "",
            operation=method, op=_agentstate_op(kinds),
        )  # fmt: skip
        call.set(A.TIER, TIER)
        keys = [op.key for op in ops if hasattr(op, "key")]
        for key, value in memory_span_attributes(
            _genai_operation(kinds), collection or STORE, keys if len(ops) == 1 else []
        ).items():
            call.set(key, value)
        return Plan(call, method, args, collection or "", {"ops": ops})

    def before(self, plan: Plan) -> Fetch | None:
        return None

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        from langgraph.store.base import GetOp

        puts = [op for op in plan.data["ops"] if _kind(op) == "write"]
        if not puts:
            return None
        gets = [GetOp(op.namespace, op.key) for op in puts]
        plan.data["refetched"] = puts
        return Fetch("abatch" if plan.method.startswith("a") else "batch", (gets,))

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        plan.data["items"] = list(data) if isinstance(data, (list, tuple)) else None

    def _fact(self, plan: Plan, namespace: Any, key: Any) -> tuple[str, Any] | None:
        path = _ns_path(namespace)
        if path is None or not isinstance(key, str):
            return None
        return plan.call.resolve(f"{STORE}:{path}/{key_part(key)}")

    def _version(self, plan: Plan, rule: Any, item: Any) -> str | None:
        if item is None:
            return "none"
        name = version_field(rule, "json_field", "payload_field")
        if name is not None:
            found, value = field_value(getattr(item, "value", None), name)
            if found:
                return field_version(plan.call.settings, value)
        return _updated_version(getattr(item, "updated_at", None))

    def finish(self, plan: Plan, result: Any) -> None:
        call, ops = plan.call, plan.data["ops"]
        single = plan.method in _PUBLIC
        results = [result] if single else list(result) if isinstance(result, list) else []
        count = 0
        skipped = False
        for op, value in zip(ops, results, strict=False):
            kind = type(op).__name__
            if kind == "GetOp":
                found = self._fact(plan, op.namespace, op.key)
                version = self._version(plan, found[1], value) if found else None
                if found and version:
                    call.read(found[0], version)
                    count += 1
                else:
                    skipped = True
            elif kind == "SearchOp":
                for item in value or ():
                    found = self._fact(plan, getattr(item, "namespace", None), item.key)
                    version = self._version(plan, found[1], item) if found else None
                    if found and version:
                        call.read(found[0], version)
                        count += 1
                    else:
                        skipped = True
        items = plan.data.get("items")
        if plan.data.get("refetched") and items is None:
            skipped = True  # the read-back failed: no version for those writes
        by_key = dict(zip(map(id, plan.data.get("refetched", ())), items or (), strict=False))
        for op in ops:
            if type(op).__name__ != "PutOp":
                continue
            found = self._fact(plan, op.namespace, op.key)
            if found is None:
                skipped = True
                continue
            if op.value is None:
                call.write(found[0], "none")
                count += 1
            elif id(op) in by_key:
                version = self._version(plan, found[1], by_key[id(op)])
                if version is not None:
                    call.write(found[0], version)
                    count += 1
        call.set(A.GEN_AI_MEMORY_RECORD_COUNT, count)
        if skipped:
            call.unresolved("item not versioned")
        if any(type(op).__name__ == "PutOp" for op in ops):
            call.record_writes()
        call.record_reads()


class LangGraphStoreInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps `BaseStore`'s public memory methods and the known backends' `batch`/`abatch`."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("langgraph-checkpoint >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        import importlib

        from langgraph.store.base import BaseStore

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        handler = _Store(tracer)
        self._wrapped = []
        targets: list[tuple[Any, str]] = [(BaseStore, m) for m in _PUBLIC]
        for module_name, names in _BACKENDS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue  # that backend's package is not installed
            for name in names:
                cls = getattr(module, name, None)
                if cls is not None:
                    targets.extend((cls, m) for m in _BATCH if m in vars(cls))
        for cls, method in targets:
            is_async = method.startswith("a")
            wrapper = quiet_wrapper(handler, method, is_async)
            if wrap_under(cls, method, wrapper):
                self._wrapped.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []
