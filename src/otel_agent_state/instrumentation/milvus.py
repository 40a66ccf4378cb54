"""State-aware instrumentation of pymilvus' `MilvusClient` / `AsyncMilvusClient` (Milvus Lite,
embedded, and a Milvus server alike): insert, upsert, delete, get, query, search.

Facts are entities, `milvus:<collection>/<primary key>`, tier `index`. A version is the
configured field of the entity (`version = { payload_field = "..." }`, or `json_field`), else
a keyed digest of the entity as the store returns it, without its primary key and vector
fields (`_vector` says why vectors stay out). Writes are read back (untraced, every field)
for the state they left, so a write's digest and a later read's come from one representation;
the collection's schema (which fields are vectors, which is the key) is read once per client
and collection.
A read that names its output fields (not `*`) returns part of the entity: without the version
field it is marked `agentstate.unresolved`. A delete by filter changes entities nobody named:
it is a write of the collection, `milvus:<collection>`.
"""

from __future__ import annotations

import logging
import secrets
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import __version__
from ..core.config import FactRule, get_settings
from ._vector import (
    Fetch,
    Plan,
    VectorCall,
    async_wrapper,
    digest_version,
    field_value,
    field_version,
    key_part,
    sync_wrapper,
    version_field,
)
from ._wrapping import Wrapped, unwrap_all, wrap_under

_log = logging.getLogger(__name__)

STORE = "milvus"
_MAX_REFETCH = 1_000
_VECTOR_TYPES = 100  # pymilvus DataType values from 100 up are vector types (and arrays of)
_METHODS = {
    "insert": "write",
    "upsert": "write",
    "delete": "delete",
    "get": "read",
    "query": "read",
    "search": "read",
}


class _Schema:
    __slots__ = ("primary", "vectors")

    def __init__(self, primary: str, vectors: frozenset[str]) -> None:
        self.primary = primary
        self.vectors = vectors


def _schema_of(description: Any) -> _Schema | None:
    if not isinstance(description, Mapping):
        return None
    primary, vectors = None, set()
    for f in description.get("fields") or ():
        name = f.get("name")
        kind = getattr(f.get("type"), "value", f.get("type"))
        if f.get("is_primary"):
            primary = name
        if isinstance(kind, int) and kind >= _VECTOR_TYPES:
            vectors.add(name)
    if not isinstance(primary, str):
        return None
    return _Schema(primary, frozenset(v for v in vectors if isinstance(v, str)))


def _pk_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return str(value)


def _full(output_fields: Any) -> bool:
    """Whether a read returns every field: none named (all are returned), or `*`."""
    if output_fields is None:
        return True
    return isinstance(output_fields, (list, tuple)) and "*" in output_fields


class _Milvus:
    """The `Handler` of MilvusClient calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        # client -> collection -> schema, read once (a collection dropped and re-created
        # with another schema under the same name through the same client is not re-read).
        self.schemas: weakref.WeakKeyDictionary[Any, dict[str, _Schema]] = (
            weakref.WeakKeyDictionary()
        )

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        collection = args.get("collection_name")
        if not isinstance(collection, str):
            return None
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=collection, operation=method,
            op=_METHODS[method],
        )  # fmt: skip
        plan = Plan(call, method, args, collection)
        try:
            plan.data["schema"] = self.schemas.get(instance, {}).get(collection)
        except TypeError:  # a client that cannot be weakly referenced: read each time
            plan.data["schema"] = None
        plan.data["instance"] = weakref.ref(instance) if _weakable(instance) else None
        return plan

    def before(self, plan: Plan) -> Fetch | None:
        if plan.data["schema"] is not None:
            return None
        return Fetch("describe_collection", (plan.collection,))

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        schema: _Schema | None = plan.data["schema"]
        if plan.method not in ("insert", "upsert") or schema is None:
            return None
        ids = result.get("ids") if isinstance(result, Mapping) else None
        if not isinstance(ids, Sequence) or isinstance(ids, str):
            plan.call.unresolved("write result")
            return None
        plan.data["written"] = list(ids)[:_MAX_REFETCH]
        kwargs: dict[str, Any] = {"ids": plan.data["written"], "output_fields": ["*"]}
        partition = plan.args.get("partition_name")
        if partition:
            kwargs["partition_names"] = [partition]
        return Fetch("get", (plan.collection,), kwargs)

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        if stage == "before":
            schema = _schema_of(data)
            plan.data["schema"] = schema
            ref = plan.data.get("instance")
            client = ref() if ref is not None else None
            if schema is not None and client is not None:
                self.schemas.setdefault(client, {})[plan.collection] = schema
            return
        plan.data["refetched"] = list(data) if isinstance(data, Sequence) else None

    # ------------------------------------------------------------------ facts

    def _fact(self, plan: Plan, pk: Any) -> tuple[str, FactRule | None] | None:
        text = _pk_text(pk)
        if text is None:
            return None
        return plan.call.resolve(f"{STORE}:{plan.collection}/{key_part(text)}")

    def _version(
        self, plan: Plan, rule: FactRule | None, entity: Any, full: bool, schema: _Schema
    ) -> str | None:
        if not isinstance(entity, Mapping):
            return None
        name = version_field(rule, "payload_field", "json_field", "column")
        if name is not None:
            found, value = field_value(entity, name)
            if found:
                return field_version(plan.call.settings, value)
        if not full:
            return None
        content = {
            k: v for k, v in entity.items() if k != schema.primary and k not in schema.vectors
        }
        return digest_version(plan.call.settings, STORE, content)

    def finish(self, plan: Plan, result: Any) -> None:
        schema: _Schema | None = plan.data["schema"]
        call = plan.call
        if schema is None:
            call.unresolved("collection schema")
        elif plan.method in ("insert", "upsert"):
            self._record_write(plan, schema)
        elif plan.method == "delete":
            self._record_delete(plan)
        else:
            self._record_read(plan, result, schema)
        if plan.method in ("insert", "upsert", "delete"):
            call.record_writes()
        else:
            call.record_reads()

    def _record_write(self, plan: Plan, schema: _Schema) -> None:
        records = plan.data.get("refetched")
        if records is None:
            plan.call.unresolved("read-back")
            return
        by_pk = {_pk_text(r.get(schema.primary)): r for r in records if isinstance(r, Mapping)}
        for pk in plan.data.get("written", ()):
            found = self._fact(plan, pk)
            if found is None or plan.call.full():
                continue
            entity = by_pk.get(_pk_text(pk))
            if entity is None:
                plan.call.write(found[0], "none")
                continue
            version = self._version(plan, found[1], entity, True, schema)
            if version is not None:
                plan.call.write(found[0], version)

    def _record_delete(self, plan: Plan) -> None:
        ids = plan.args.get("ids")
        if plan.args.get("filter") or ids is None:
            fact, _ = plan.call.resolve(f"{STORE}:{plan.collection}")
            plan.call.write(fact, plan.call.settings.digest(secrets.token_bytes(16)))
            plan.call.unresolved("filter delete")
            if ids is None:
                return
        for pk in ids if isinstance(ids, (list, tuple)) else [ids]:
            found = self._fact(plan, pk)
            if found is not None and not plan.call.full():
                plan.call.write(found[0], "none")

    def _record_read(self, plan: Plan, result: Any, schema: _Schema) -> None:
        call, args = plan.call, plan.args
        full = _full(args.get("output_fields"))
        rows: list[tuple[Any, Any]] = []  # (primary key, entity)
        if plan.method == "search":
            for hits in result or ():
                for hit in hits or ():
                    if isinstance(hit, Mapping):
                        entity = hit.get("entity")
                        pk = hit.get(schema.primary, hit.get("id"))
                        rows.append((pk, entity if isinstance(entity, Mapping) else None))
        else:
            rows = [(r.get(schema.primary), r) for r in result or () if isinstance(r, Mapping)]
        seen: set[str] = set()
        skipped = False
        for pk, entity in rows:
            found = self._fact(plan, pk)
            if found is None or call.full():
                skipped = skipped or found is None
                continue
            seen.add(str(_pk_text(pk)))
            version = self._version(plan, found[1], entity, full, schema)
            if version is None:
                skipped = True
                continue
            call.read(found[0], version)
        if plan.method == "get":  # a lookup by key also sees the entities that are absent
            ids = args.get("ids")
            for pk in ids if isinstance(ids, (list, tuple)) else [ids]:
                text = _pk_text(pk)
                found = self._fact(plan, pk) if text is not None and text not in seen else None
                if found is not None and not call.full():
                    call.read(found[0], "none")
        if skipped:
            call.unresolved("partial entity" if not full else "entity not returned")


def _weakable(value: Any) -> bool:
    try:
        weakref.ref(value)
    except TypeError:
        return False
    return True


class MilvusInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps the entity methods of `MilvusClient` and `AsyncMilvusClient`."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("pymilvus >= 2.4",)

    def _instrument(self, **kwargs: Any) -> None:
        import pymilvus  # type: ignore[import-untyped]

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        handler = _Milvus(tracer)
        self._wrapped = []
        classes = [(getattr(pymilvus, "MilvusClient", None), sync_wrapper)]
        classes.append((getattr(pymilvus, "AsyncMilvusClient", None), async_wrapper))
        for cls, make in classes:
            if cls is None:
                continue
            for method in _METHODS:
                if method not in vars(cls):
                    continue
                wrapper = make(handler, method)
                if wrap_under(cls, method, wrapper):
                    self._wrapped.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []
