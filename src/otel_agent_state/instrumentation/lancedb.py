"""State-aware instrumentation of embedded LanceDB (SPEC §3): `LanceTable` and its queries.

Wrapped: `LanceTable.add/update/delete`, `merge_insert(...).execute(...)`, and the query
builders' `to_arrow` (which `to_list`, `to_pandas`, `to_polars` and `to_pydantic` call), so
`table.search(vector).limit(k).to_list()` is one read span. Facts are rows,
`lancedb:<table>/<id>`, where `<id>` is the row's id column (`id` unless configured with
`instrument(id_column=..., id_columns={table: column})` or `OTEL_AGENTSTATE_LANCEDB_ID_COLUMN`
= `column` or `table=column,...,*=column`); the id column is taken to be unique. A row's
version is its configured column (`version = { column = "..." }`), else a keyed digest of
its non-vector columns. Writes read their rows back (untraced): Arrow casts what was given,
and `update`/`delete` by predicate are resolved to ids first. The table version after a write
is recorded as `agentstate.write.store_order`. Not covered: `to_batches` streaming readers,
`Table.to_arrow/to_pandas` full scans, the async API, LanceDB Cloud tables.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import secrets
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

STORE = "lancedb"
ENV_ID_COLUMN = "OTEL_AGENTSTATE_LANCEDB_ID_COLUMN"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPS = {"add": "write", "update": "write", "delete": "delete", "merge_insert": "write"}
_in_query: contextvars.ContextVar[bool] = contextvars.ContextVar("agentstate_lancedb_query")


def parse_id_columns(text: str) -> tuple[str, dict[str, str]]:
    """`col` or `table=col,...,*=col` -> (default column, per-table columns)."""
    default = "id"
    tables: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            default = part
            continue
        table, column = (x.strip() for x in part.split("=", 1))
        if table == "*":
            default = column
        elif table and column:
            tables[table] = column
    return default, tables


# --------------------------------------------------------------------------- rows


def _vector_column(field: Any) -> bool:
    """Vector columns (fixed-size or variable lists of floats) are left out of digests."""
    kind = getattr(field, "type", None)
    value_type = getattr(kind, "value_type", None)
    if value_type is None:
        return False
    return str(value_type) in ("float", "double", "halffloat", "float16", "float32", "float64")


def _content_columns(schema: Any) -> set[str]:
    return {
        str(f.name)
        for f in schema
        if not _vector_column(f) and not str(f.name).startswith("_")  # `_distance`, `_rowid`
    }


def _rows(result: Any) -> tuple[list[dict[str, Any]], set[str]]:
    """Up to MAX_FACTS_PER_SPAN rows of an Arrow table, and its content columns."""
    table = result.slice(0, MAX_FACTS_PER_SPAN)
    columns = _content_columns(table.schema)
    kept = [name for name in table.column_names if name in columns]
    return table.select(kept).to_pylist(), columns


def _data_ids(data: Any, column: str) -> list[Any] | None:
    """Id column values of data handed to add/merge_insert; None for shapes we do not read."""
    try:
        if isinstance(data, Mapping):
            data = [data]
        if isinstance(data, (list, tuple)):
            ids = []
            for row in data[: MAX_FACTS_PER_SPAN + 1]:
                if isinstance(row, Mapping):
                    ids.append(row[column])
                else:
                    ids.append(getattr(row, column))  # LanceModel / pydantic rows
            return ids
        names = getattr(data, "column_names", None)  # pyarrow Table / RecordBatch
        if names is not None:
            return list(data.column(column).to_pylist()) if column in names else None
        columns = getattr(data, "columns", None)  # pandas / polars DataFrame
        if columns is not None and column in list(columns):
            return list(data[column].to_list())
    except Exception:
        _log.debug("cannot read ids from %s", type(data).__name__, exc_info=True)
    return None


def _literal(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def _column_sql(column: str) -> str:
    return column if _IDENT.match(column) else "`" + column.replace("`", "``") + "`"


def _fetch_rows(table: Any, column: str, ids: Sequence[Any]) -> Fetch | None:
    """An untraced read of the rows with these ids (all columns)."""
    literals = [_literal(v) for v in ids]
    if not ids or any(v is None for v in literals):
        return None
    where = f"{_column_sql(column)} IN ({', '.join(literals)})"  # type: ignore[arg-type]
    limit = max(len(ids) * 2, 10)
    return Fetch("search", function=lambda: table.search().where(where).limit(limit).to_arrow())


def _fetch_ids(table: Any, column: str, where: Any) -> Fetch:
    """An untraced read of the ids a predicate matches (the rows a write will touch)."""

    def run() -> Any:
        query = table.search()
        if where is not None:
            query = query.where(where)
        return query.select([column]).limit(MAX_FACTS_PER_SPAN + 1).to_arrow()

    return Fetch("search", function=run)


def _version(
    settings: Settings, rule: FactRule | None, row: Mapping[str, Any], full: bool
) -> str | None:
    name = version_field(rule, "column", "payload_field")
    if name is not None:
        found, value = field_value(row, name)
        if found:
            return field_version(settings, value)
    if not full:
        return None
    return digest_version(settings, STORE, dict(row))


# --------------------------------------------------------------------------- handler


class _LanceDB:
    """The `Handler` of LanceDB table and query calls (see `_vector.sync_wrapper`)."""

    def __init__(self, tracer: trace.Tracer, default_id: str, id_columns: dict[str, str]) -> None:
        self.tracer = tracer
        self.default_id = default_id
        self.id_columns = id_columns

    def start(self, method: str, instance: Any, args: dict[str, Any]) -> Plan | None:
        # queries and merge builders keep their table in `_table`
        table = (
            getattr(instance, "_table", None) if method in ("search", "merge_insert") else instance
        )
        name = getattr(table, "name", None)
        if not isinstance(name, str):
            return None
        op = "read" if method == "search" else _OPS[method]
        call = VectorCall(
            self.tracer, get_settings(), store=STORE, collection=name, operation=method, op=op
        )
        plan = Plan(call, method, args, name)
        plan.data["table"] = table
        plan.data["id"] = self.id_columns.get(name, self.default_id)
        return plan

    def _fact(self, plan: Plan, row_id: Any) -> tuple[str, FactRule | None]:
        return plan.call.resolve(f"{STORE}:{plan.collection}/{key_part(row_id)}")

    def _unresolved(self, plan: Plan, reason: str) -> None:
        fact, _ = plan.call.resolve(f"{STORE}:{plan.collection}")
        plan.call.write(fact, plan.call.settings.digest(secrets.token_bytes(16)))
        plan.call.unresolved(reason)

    def before(self, plan: Plan) -> Fetch | None:
        table, column, args = plan.data["table"], plan.data["id"], plan.args
        if plan.method == "update":
            if args.get("values_sql") and column in args["values_sql"]:
                return None
            if isinstance(args.get("values"), Mapping) and column in args["values"]:
                return None
            return _fetch_ids(table, column, args.get("where"))
        if plan.method == "delete":
            return _fetch_ids(table, column, args.get("where"))
        return None

    def after(self, plan: Plan, result: Any) -> Fetch | None:
        table, column, args, method = plan.data["table"], plan.data["id"], plan.args, plan.method
        if method == "search":
            return None
        version = getattr(result, "version", None)
        plan.data["order"] = version if isinstance(version, int) else None
        if method == "add":
            if str(args.get("mode", "append")) != "append":
                self._unresolved(plan, "overwrite")
                return None
            ids = _data_ids(args.get("data"), column)
        elif method == "merge_insert":
            builder = plan.data["builder"] = args.get("self")
            on = getattr(builder, "_on", None)
            if getattr(builder, "_when_not_matched_by_source_delete", False):
                self._unresolved(plan, "delete not matched by source")
            if not on or list(on) != [column]:
                self._unresolved(plan, "merge key is not the id column")
                return None
            ids = _data_ids(args.get("new_data"), column)
        else:
            if "ids" not in plan.data:  # update of the id column itself, or lookup failed
                self._unresolved(plan, "rows not identified")
                return None
            ids = plan.data["ids"]
            if method == "update":  # sets these columns of the stored rows, keeps the others
                plan.data["fields"] = merged_keys(args.get("values") or args.get("values_sql"))
            if method == "delete":
                for row_id in ids:
                    plan.call.write(self._fact(plan, row_id)[0], "none")
                return None
        if ids is None:
            self._unresolved(plan, "data shape")
            return None
        if len(ids) > MAX_FACTS_PER_SPAN:
            ids = ids[:MAX_FACTS_PER_SPAN]
        plan.data["ids"] = ids
        return _fetch_rows(table, column, ids)

    def fetched(self, plan: Plan, stage: str, data: Any) -> None:
        column = plan.data["id"]
        if stage == "before":
            ids = data.column(column).to_pylist()
            if len(ids) > MAX_FACTS_PER_SPAN:
                plan.call.unresolved("too many rows")
            plan.data["ids"] = ids[:MAX_FACTS_PER_SPAN]
            return
        rows, _ = _rows(data)
        by_id = {row.get(column): row for row in rows}
        settings = plan.call.settings
        for row_id in plan.data.get("ids", ()):
            fact, rule = self._fact(plan, row_id)
            row = by_id.get(row_id)
            if row is None:
                plan.call.write(fact, "none")
                continue
            version = _version(settings, rule, row, full=True)
            if version is not None:
                plan.call.write(fact, version, plan.data.get("fields"))

    def finish(self, plan: Plan, result: Any) -> None:
        call = plan.call
        if plan.method != "search":
            call.record_writes(plan.data.get("order"))
            return
        rows, columns = _rows(result)
        column = plan.data["id"]
        table = plan.data["table"]
        try:
            full = _content_columns(table.schema) <= columns
        except Exception:
            full = False
        skipped = False
        for row in rows:
            if call.full():
                break
            if column not in row:
                skipped = True
                continue
            fact, rule = self._fact(plan, row[column])
            version = _version(call.settings, rule, row, full)
            if version is None:
                skipped = True
                continue
            call.read(fact, version)
        if skipped:
            call.unresolved("columns not selected")
        call.record_reads()


class LanceDBInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps embedded LanceDB tables' writes and query execution."""

    _wrapped: Wrapped

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("lancedb >= 0.13",)

    def _instrument(self, **kwargs: Any) -> None:
        from lancedb import query as lance_query
        from lancedb.merge import LanceMergeInsertBuilder
        from lancedb.table import LanceTable

        tracer = trace.get_tracer(
            __name__, __version__, tracer_provider=kwargs.get("tracer_provider")
        )
        default_id, id_columns = parse_id_columns(os.environ.get(ENV_ID_COLUMN, ""))
        if isinstance(kwargs.get("id_column"), str):
            default_id = kwargs["id_column"]
        if isinstance(kwargs.get("id_columns"), Mapping):
            id_columns.update({str(k): str(v) for k, v in kwargs["id_columns"].items()})
        handler = _LanceDB(tracer, default_id, id_columns)
        search = _outermost(sync_wrapper(handler, "search"))
        targets: Wrapped = [
            (LanceTable, method, sync_wrapper(handler, method))
            for method in ("add", "update", "delete")
        ]
        targets.append((LanceMergeInsertBuilder, "execute", sync_wrapper(handler, "merge_insert")))
        targets.extend(
            (cls, "to_arrow", search)
            for cls in vars(lance_query).values()
            if isinstance(cls, type) and issubclass(cls, lance_query.LanceQueryBuilder)
        )
        self._wrapped = [target for target in targets if wrap_under(*target)]

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap_all(getattr(self, "_wrapped", []))
        self._wrapped = []


def _outermost(inner: Any) -> Any:
    """One span per query: a query that runs sub-queries (hybrid search) is not re-traced."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _in_query.get(False):
            return wrapped(*args, **kwargs)
        token = _in_query.set(True)
        try:
            return inner(wrapped, instance, args, kwargs)
        finally:
            _in_query.reset(token)

    return wrapper
