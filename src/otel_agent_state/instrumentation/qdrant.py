"""State-aware instrumentation of qdrant-client (SPEC §3): `QdrantClient` and `AsyncQdrantClient`.

The public client methods are wrapped, so local mode (`path=` / `":memory:"`) and a server
client (HTTP or gRPC) go through the same code. Facts are points, `qdrant:<collection>/<id>`.
A point's version is its configured payload field (`version = { payload_field = "..." }`),
else a keyed digest of its payload. Reads record every returned point at the version
returned; a read whose payload was not returned (or only partly, without the version field)
cannot be versioned and is marked `agentstate.unresolved`. `search`, `recommend` and
`search_batch` no longer exist in qdrant-client 1.16+; `query_points` replaces them.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import __version__
from ..core.config import FactRule, Settings, get_settings
from ._vector import (
    Fetch,
    Plan,
    VectorCall,
    async_wrapper,
    digest_version,
    field_value,
    field_version,
    key_part,
    merged_keys,
    sync_wrapper,
    version_field,
)
from ._wrapping import Wrapped, unwrap_all, wrap_under

_log = logging.getLogger(__name__)

STORE = "qdrant"
_MAX_REFETCH = 1_000

# method -> agentstate.op
_WRITES = {
    "upsert": "write",
    "overwrite_payload": "write",
    "set_payload": "write",
    "delete_payload": "write",
    "clear_payload": "write",
    "delete": "delete",
    "batch_update_points": "write",
}
_READS = {
    "retrieve": "read",
    "scroll": "read",
    "query_points": "read",
    "query_points_groups": "read",
    "query_batch_points": "read",
}
_METHODS = {**_WRITES, **_READS}
# Writes that merge into the stored payload: the new state is read back.
_REFETCHED = ("set_payload", "delete_payload")


# --------------------------------------------------------------------------- ids and versions


def _point_id(value: Any) -> str | None:
    """The canonical text of a point id (ints, UUIDs in any spelling), None if not an id."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return value
    return None


def _selector_ids(selector: Any) -> list[Any] | None:
    """Point ids named by a points selector; None for a filter (ids unknown)."""
    if isinstance(selector, (list, tuple)):
        return list(selector)
    points = getattr(selector, "points", None)  # models.PointIdsList
    if isinstance(points, (list, tuple)) and type(selector).__name__ == "PointIdsList":
        return list(points)
    return None


def _payload_mode(with_payload: Any) -> str:
    """`full`, `partial` or `none`: how much of each payload a read returns."""
    if with_payload is True:
        return "full"
    if with_payload is False or with_payload is None:
        return "none"
    return "partial"


def _version(settings: Settings, rule: FactRule | None, payload: Any, mode: str) -> str | None:
    """The version of a point with `payload`, None when what was returned cannot tell."""
    name = version_field(rule, "payload_field", "json_field")
    if name is not None and mode != "none":
        found, value = field_value(payload if isinstance(payload, Mapping) else None, name)
        if found:
            return field_version(settings, value)
    if mode != "full":
        return None
    return digest_version(settings, STORE, payload if payload is not None else {})


# --------------------------------------------------------------------------- one call


def _fact(plan: Plan, point: Any) -> tuple[str, FactRule | None] | None:
    pid = _point_id(point)
    if pid is None:
        return None
    return plan.call.resolve(f"{STORE}:{plan.collection}/{key_part(pid)}")


def _unknown_write(plan: Plan, reason: str) -> None:
    """A write whose points are unknown (a filter selector): the collection changed."""
    call = plan.call
    fact, _ = call.resolve(f"{STORE}:{plan.collection}")
    call.write(fact, call.settings.digest(secrets.token_bytes(16)))
    call.unresolved(reason)


def _write_payload(plan: Plan, point: Any, payload: Any) -> None:
    found = _fact(plan, point)
    if found is None:
        plan.call.unresolved("point id")
        return
    fact, rule = found
    version = _version(plan.call.settings, rule, payload or {}, "full")
    if version is not None:
        plan.call.write(fact, version)


def _record_write(plan: Plan) -> None:
    """Versions known from the arguments; points whose new state is not are refetched."""
    call, args, method = plan.call, plan.args, plan.method
    if method == "upsert":
        points = args.get("points")
        pairs: list[tuple[Any, Any]] = []
        if type(points).__name__ == "Batch":
            ids = list(getattr(points, "ids", None) or ())
            payloads = getattr(points, "payloads", None)
            payloads = list(payloads) if payloads is not None else [None] * len(ids)
            pairs = list(zip(ids, payloads, strict=False))
        elif isinstance(points, Sequence):
            for point in points:
                if not hasattr(point, "id") or not hasattr(point, "payload"):
                    call.unresolved("point type")
                    return
                pairs.append((point.id, point.payload))
        else:
            call.unresolved("point type")
            return
        mode = args.get("update_mode")
        conditional = args.get("update_filter") is not None or (
            mode is not None and str(getattr(mode, "value", mode)) != "upsert"
        )
        if conditional:  # the store decides which points change: read them back
            plan.data["refetch"] = [pid for pid, _ in pairs[:_MAX_REFETCH]]
            return
        for pid, payload in pairs:
            if call.full():
                break
            _write_payload(plan, pid, payload)
        return
    if method == "batch_update_points":  # several operations: only "the collection changed"
        _unknown_write(plan, "batch update")
        return
    selector = args.get("points_selector", args.get("points"))
    selected = _selector_ids(selector)
    if selected is None:
        _unknown_write(plan, "filter selector")
        return
    if method in _REFETCHED:
        plan.data["refetch"] = selected[:_MAX_REFETCH]
        # The keys merged into (or deleted from) each payload, the others kept; a `key=`
        # (nested path) set_payload counts as a whole-payload write.
        if method == "delete_payload":
            plan.data["fields"] = merged_keys(args.get("keys"))
        elif args.get("key") is None:
            plan.data["fields"] = merged_keys(args.get("payload"))
        return
    for pid in selected:
        if call.full():
            break
        if method == "delete":
            found = _fact(plan, pid)
            if found is not None:
                call.write(found[0], "none")
        elif method == "clear_payload":
            _write_payload(plan, pid, {})
        else:  # overwrite_payload
            _write_payload(plan, pid, args.get("payload"))


def _record_refetched(plan: Plan, records: Any) -> None:
    by_id = {_point_id(getattr(r, "id", None)): r for r in records or ()}
    fields = plan.data.get("fields")
    for pid in plan.data.get("refetch", ()):
        found = _fact(plan, pid)
        if found is None:
            continue
        fact, rule = found
        record = by_id.get(_point_id(pid))
        if record is None:
            plan.call.write(fact, "none")
            continue
        version = _version(plan.call.settings, rule, getattr(record, "payload", None), "full")
        if version is not None:
            plan.call.write(fact, version, fields)


def _returned(plan: Plan, result: Any) -> list[tuple[Any, str]]:
    """The records a read returned, each with how much of its payload came back."""
    mode = _payload_mode(plan.args.get("with_payload"))
    if plan.method == "retrieve":
        return [(r, mode) for r in result or ()]
    if plan.method == "scroll":
        records = result[0] if isinstance(result, tuple) and result else ()
        return [(r, mode) for r in records]
    if plan.method == "query_points_groups":
        groups = getattr(result, "groups", None) or ()
        return [(hit, mode) for group in groups for hit in getattr(group, "hits", None) or ()]
    if plan.method == "query_batch_points":  # each request says what its results carry
        out: list[tuple[Any, str]] = []
        requests = plan.args.get("requests") or ()
        for request, response in zip(requests, result or (), strict=False):
            request_mode = _payload_mode(getattr(request, "with_payload", None))
            out.extend((p, request_mode) for p in getattr(response, "points", None) or ())
        return out
    return [(p, mode) for p in getattr(result, "points", None) or ()]


def _record_read(plan: Plan, result: Any) -> None:
    call, args = plan.call, plan.args
    seen: set[str] = set()
    skipped: set[str] = set()
    for record, mode in _returned(plan, result):
        if call.full():
            break
        pid = _point_id(getattr(record, "id", None))
        found = _fact(plan, pid) if pid is not None else None
        if found is None:
            skipped.add("point id")
            continue
        seen.add(str(pid))
        fact, rule = found
        version = _version(call.settings, rule, getattr(record, "payload", None), mode)
        if version is None:
            skipped.add("payload not returned" if mode != "partial" else "partial payload")
            continue
        call.read(fact, version)
    if plan.method == "retrieve":  # a lookup by id also sees the points that are absent
        for requested in args.get("ids") or ():
            if call.full():
                break
            pid = _point_id(requested)
            if pid is not None and pid not in seen:
                found = _fact(plan, pid)
                if found is not None:
                    call.read(found[0], "none")
    if skipped:
        call.unresolved(", ".join(sorted(skipped)))


def _store_order(result: Any) -> int | None:
    if isinstance(result, list) and result:  # batch_update_points: one result per operation
        result = result[-1]
    operation_id = getattr(result, "operation_id", None)
    return operation_id if isinstance(operation_id, int) else None


class _Qdrant:
    """The `Handler` of qdrant-client calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        collection = args.get("collection_name")
        if not isinstance(collection, str):
            return None
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=collection, operation=method,
            op=_METHODS[method],
        )  # fmt: skip
        return Plan(call, method, args, collection)

    def before(self, plan: Plan) -> Fetch | None:
        return None

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        if plan.method not in _WRITES:
            return None
        _record_write(plan)
        refetch = plan.data.get("refetch")
        if not refetch:
            return None
        kwargs: dict[str, Any] = {"with_payload": True, "with_vectors": False}
        shard = plan.args.get("shard_key_selector")
        if shard is not None:
            kwargs["shard_key_selector"] = shard
        return Fetch("retrieve", (plan.collection, refetch), kwargs)

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        _record_refetched(plan, data)

    def finish(self, plan: Plan, result: Any) -> None:
        if plan.method in _WRITES:
            plan.call.record_writes(_store_order(result))
        else:
            _record_read(plan, result)
            plan.call.record_reads()


class QdrantInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps the point methods of `QdrantClient` and `AsyncQdrantClient`."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("qdrant-client >= 1.9",)

    def _instrument(self, **kwargs: Any) -> None:
        import qdrant_client

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        handler = _Qdrant(tracer)
        self._wrapped = []
        classes = (
            (qdrant_client.QdrantClient, sync_wrapper),
            (qdrant_client.AsyncQdrantClient, async_wrapper),
        )
        for cls, make in classes:
            for method in _METHODS:
                if not callable(getattr(cls, method, None)):
                    continue  # e.g. a method an older client does not have
                wrapper = make(handler, method)
                if wrap_under(cls, method, wrapper):
                    self._wrapped.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []
