"""State-aware instrumentation of chromadb (SPEC §3): `Collection` and `AsyncCollection`.

The public collection methods are wrapped, so an embedded client (`PersistentClient`,
`EphemeralClient`) and a server client (`HttpClient`, `AsyncHttpClient`) go through the same
code. Facts are records, `chroma:<database>/<collection>/<id>`. A record's version is its
configured metadata field (`version = { payload_field = "..." }`), else a keyed digest of its
document and metadata (embeddings are left out, see `_vector`). Writes read the records back
(untraced) because `update`/`upsert` merge into what is stored; a `delete` by filter first
looks up the ids it will remove. Reads record every returned record; a read without
documents and metadatas (`include=`) is versioned only by the metadata field, if configured.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import __version__
from ..core.config import FactRule, Settings, get_settings
from ._vector import (
    MAX_FACTS_PER_SPAN,
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

STORE = "chroma"
_WRITES = {"add": "write", "upsert": "write", "update": "write", "delete": "delete"}
_READS = {"get": "read", "query": "read"}
_METHODS = {**_WRITES, **_READS}
_FULL = ["metadatas", "documents"]


def _ids(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    return None


# Chroma's own names for a record's document and embedding (reserved: never metadata keys).
_DOCUMENT, _EMBEDDING = "chroma:document", "chroma:embedding"


def _merged(args: Mapping[str, Any], index: int) -> frozenset[str] | None:
    """What `update`/`upsert` of the `index`-th record changes: the metadata keys it names
    (Chroma merges them into the stored metadata, keeping the others), its document and its
    embedding if given. None (a whole-record write) when that is not plain."""
    if args.get("images") is not None or args.get("uris") is not None:
        return None
    names: set[str] = set()
    metadatas = args.get("metadatas")
    if isinstance(metadatas, Mapping):
        metadatas = [metadatas]
    if metadatas is not None:
        if not isinstance(metadatas, Sequence) or index >= len(metadatas):
            return None
        metadata = metadatas[index]
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            return None
        names.update(metadata)
    if args.get("documents") is not None:
        names.update((_DOCUMENT, _EMBEDDING))  # a new document is embedded again
    elif args.get("embeddings") is not None:
        names.add(_EMBEDDING)
    return frozenset(names) or None


def _version(
    settings: Settings, rule: FactRule | None, document: Any, metadata: Any, included: set[str]
) -> str | None:
    name = version_field(rule, "payload_field", "json_field")
    if name is not None and "metadatas" in included:
        found, value = field_value(metadata if isinstance(metadata, Mapping) else None, name)
        if found:
            return field_version(settings, value)
    if not {"metadatas", "documents"} <= included:
        return None
    return digest_version(settings, STORE, [document, metadata])


def _column(result: Mapping[str, Any], name: str, size: int) -> list[Any]:
    values = result.get(name)
    if isinstance(values, Sequence) and len(values) == size:
        return list(values)
    return [None] * size


class _Chroma:
    """The `Handler` of chromadb collection calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        collection = getattr(instance, "name", None)
        if not isinstance(collection, str):
            return None
        database = getattr(instance, "database", None)
        namespace = database if isinstance(database, str) and database else "default_database"
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=collection, operation=method,
            op=_METHODS[method], namespace=namespace,
        )  # fmt: skip
        plan = Plan(call, method, args, collection)
        plan.data["namespace"] = namespace
        return plan

    def _fact(self, plan: Plan, record_id: Any) -> tuple[str, FactRule | None]:
        namespace = plan.data["namespace"]
        physical = f"{STORE}:{key_part(namespace)}/{plan.collection}/{key_part(record_id)}"
        return plan.call.resolve(physical)

    def before(self, plan: Plan) -> Fetch | None:
        if plan.method != "delete":
            return None
        args = plan.args
        ids = _ids(args.get("ids"))
        filtered = args.get("where") is not None or args.get("where_document") is not None
        if ids is not None and not filtered:
            plan.data["ids"] = ids[:MAX_FACTS_PER_SPAN]
            return None
        # A delete by filter: which records it removes is known only by asking first.
        limit = args.get("limit")
        cap = min(limit, MAX_FACTS_PER_SPAN) if isinstance(limit, int) else MAX_FACTS_PER_SPAN
        return Fetch(
            "get",
            kwargs={
                "ids": ids,
                "where": args.get("where"),
                "where_document": args.get("where_document"),
                "limit": cap,
                "include": [],
            },
        )

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        if plan.method == "delete":
            return None
        if plan.method in _WRITES:
            ids = _ids(plan.args.get("ids"))
            if not ids:
                plan.call.unresolved("ids")
                return None
            plan.data["ids"] = ids[:MAX_FACTS_PER_SPAN]
            return Fetch("get", kwargs={"ids": plan.data["ids"], "include": list(_FULL)})
        return None

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        if stage == "before":
            found = _ids(data.get("ids")) if isinstance(data, Mapping) else None
            if found is None and isinstance(data, Mapping):
                plan.call.unresolved("filter")
            plan.data["ids"] = (found or [])[:MAX_FACTS_PER_SPAN]
            return
        if not isinstance(data, Mapping):
            return
        returned = _ids(data.get("ids")) or []
        documents = _column(data, "documents", len(returned))
        metadatas = _column(data, "metadatas", len(returned))
        states = {
            rid: (doc, meta) for rid, doc, meta in zip(returned, documents, metadatas, strict=False)
        }
        merges = plan.method in ("update", "upsert")
        for index, rid in enumerate(plan.data.get("ids", ())):
            fact, rule = self._fact(plan, rid)
            if rid not in states:
                plan.call.write(fact, "none")
                continue
            doc, meta = states[rid]
            version = _version(plan.call.settings, rule, doc, meta, set(_FULL))
            if version is not None:
                plan.call.write(fact, version, _merged(plan.args, index) if merges else None)

    def finish(self, plan: Plan, result: Any) -> None:
        call = plan.call
        if plan.method == "delete":
            for rid in plan.data.get("ids", ()):
                call.write(self._fact(plan, rid)[0], "none")
        if plan.method in _WRITES:
            call.record_writes()
            return
        if not isinstance(result, Mapping):
            return
        included = {str(i) for i in result.get("included") or ()}
        ids = result.get("ids") or []
        if plan.method == "get":
            groups = [(ids, result.get("documents"), result.get("metadatas"))]
        else:  # query: one list per query embedding
            documents = result.get("documents") or [None] * len(ids)
            metadatas = result.get("metadatas") or [None] * len(ids)
            groups = list(zip(ids, documents, metadatas, strict=False))
        skipped = False
        seen: set[str] = set()
        for group_ids, group_docs, group_metas in groups:
            size = len(group_ids or ())
            docs = list(group_docs) if group_docs is not None else [None] * size
            metas = list(group_metas) if group_metas is not None else [None] * size
            for rid, doc, meta in zip(group_ids or (), docs, metas, strict=False):
                if call.full():
                    break
                seen.add(str(rid))
                fact, rule = self._fact(plan, rid)
                version = _version(call.settings, rule, doc, meta, included)
                if version is None:
                    skipped = True
                    continue
                call.read(fact, version)
        args = plan.args
        pinned = plan.method == "get" and all(
            args.get(k) is None for k in ("where", "where_document", "limit", "offset")
        )
        if pinned:  # a lookup by id also sees the records that are absent
            for rid in _ids(args.get("ids")) or ():
                if rid not in seen and not call.full():
                    call.read(self._fact(plan, rid)[0], "none")
        if skipped:
            call.unresolved("documents or metadatas not included")
        call.record_reads()


class ChromaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps the record methods of chromadb's `Collection` and `AsyncCollection`."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("chromadb >= 0.5",)

    def _instrument(self, **kwargs: Any) -> None:
        from chromadb.api.models.Collection import Collection as SyncCollection

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        handler = _Chroma(tracer)
        classes: list[tuple[type, Any]] = [(SyncCollection, sync_wrapper)]
        try:
            from chromadb.api.models.AsyncCollection import AsyncCollection

            classes.append((AsyncCollection, async_wrapper))
        except ImportError:  # older chromadb without the async client
            pass
        self._wrapped = []
        for cls, make in classes:
            for method in _METHODS:
                wrapper = make(handler, method)
                if wrap_under(cls, method, wrapper):
                    self._wrapped.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []
