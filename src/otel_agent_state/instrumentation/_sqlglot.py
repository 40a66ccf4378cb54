"""The sqlglot-backed analysis (optional extra `sql`): a full parser behind the fast path.

`_sql.analyse` consults it for statements the hand-written fast path cannot resolve, and
first for MySQL / MariaDB. sqlglot cannot parse `%s` placeholders in its MySQL dialect and
reads `?` as a jsonb operator in PostgreSQL, so every driver placeholder is first rewritten
to a named one (`:__pN`) that all its dialects read, numbered exactly as the fast path numbers
them (so `Value.resolve` binds the same parameter). MySQL's `REPLACE` (which sqlglot parses
as an opaque command) is read as the INSERT it is, with REPLACE's semantics.
Returns None when sqlglot is missing or cannot parse the text: the fast path's answer stands.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Final

from ._sql_exprs import Scope, Where
from ._sql_model import Statement, Value
from ._sqlglot_text import Number, rewrite

sqlglot: Any
exp: Any
try:
    sqlglot = importlib.import_module("sqlglot")
    exp = importlib.import_module("sqlglot.expressions")
except ImportError:  # the `sql` extra is not installed
    sqlglot = exp = None

_log = logging.getLogger(__name__)

AVAILABLE: Final = sqlglot is not None
_READ: Final = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


def analyse(sql: str, dialect: str) -> Statement | None:
    if sqlglot is None:
        return None
    try:
        text, numbers, replace_into = rewrite(sql, dialect)
        trees = [t for t in sqlglot.parse(text, read=_READ.get(dialect, "sqlite")) if t]
        if not trees:
            return None
        builder = _Builder(numbers, multiple=len(trees) > 1)
        stmt = builder.statement(trees[0])
        if stmt is not None and replace_into and stmt.operation == "INSERT":
            stmt = _replace(stmt, operation="REPLACE", upsert=True, conflict=())
        return stmt
    except Exception:
        _log.debug("sqlglot analysis failed", exc_info=True)
        return None


# --------------------------------------------------------------------------- the tree


class _Builder:
    def __init__(self, numbers: dict[str, Number], multiple: bool) -> None:
        self.numbers = numbers
        self.multiple = multiple
        self.highest = max((number for number, _ in numbers.values()), default=0)
        self.names = tuple(dict.fromkeys(name for _, name in numbers.values() if name))

    def done(self, stmt: Statement | None = None, **kw: Any) -> Statement:
        kw.setdefault("multiple", self.multiple)
        kw.setdefault("params", self.highest)
        kw.setdefault("param_names", self.names)
        kw["analyser"] = "sqlglot"
        writes = ("INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE")
        if kw.get("operation") in writes and kw.get("table") and "targets" not in kw:
            kw["targets"] = ((kw.get("schema"), kw["table"]),)
        return Statement(**kw)

    def statement(self, tree: Any, ctes: dict[str, Any] | None = None) -> Statement | None:
        assert exp is not None
        with_ = tree.args.get("with_") or tree.args.get("with")
        if with_ is not None:
            return self.with_clause(tree, with_)
        if isinstance(tree, exp.Select):
            return self.select(tree, ctes or {})
        if isinstance(tree, exp.SetOperation):
            return self.done(operation="SELECT", unresolved="compound select")
        if isinstance(tree, exp.Insert):
            return self.insert(tree)
        if isinstance(tree, exp.Update):
            return self.update(tree)
        if isinstance(tree, exp.Delete):
            return self.delete(tree)
        if isinstance(tree, exp.Merge):
            schema, table = _table(tree.this)
            return self.done(operation="MERGE", table=table, schema=schema, unresolved="merge")
        return None  # transactions, DDL, commands: the fast path knows them

    def with_clause(self, tree: Any, with_: Any) -> Statement | None:
        assert exp is not None
        ctes = {cte.alias_or_name.lower(): cte.this for cte in with_.expressions}
        body = tree.copy()
        body.set("with_", None)
        body.set("with", None)
        main = self.statement(body, ctes)
        parts = [self.statement(cte) for cte in ctes.values()]
        writes = [s for s in [*parts, main] if s is not None and s.is_write and s.table]
        if len(writes) > 1:
            targets = tuple(t for s in writes for t in s.targets)
            return _replace(writes[0], unresolved="several writes in with", targets=targets)
        if writes and writes[0] is not main:
            return writes[0]
        if writes and main is not None:  # as the fast path: kept table-level
            return _replace(main, unresolved=main.unresolved or "with clause")
        if main is None:
            return None
        if with_.args.get("recursive"):
            return _replace(main, unresolved="recursive with")
        return main

    # -- SELECT

    def select(self, tree: Any, ctes: dict[str, Any]) -> Statement:
        assert exp is not None
        columns: list[str | None] = []
        star = False
        aggregate = False
        for item in tree.expressions:
            inner = item.this if isinstance(item, exp.Alias) else item
            if isinstance(inner, exp.Star) or (
                isinstance(inner, exp.Column) and isinstance(inner.this, exp.Star)
            ):
                star = True
                columns.append(None)
            elif isinstance(inner, exp.Column):
                columns.append(inner.name)
            else:
                columns.append(None)
            if item.find(exp.AggFunc) is not None:
                aggregate = True
            if item.find(exp.Select) is not None:
                return self.done(operation="SELECT", unresolved="subquery")
        from_ = tree.args.get("from_") or tree.args.get("from")
        base: dict[str, Any] = {"operation": "SELECT", "projection": tuple(columns), "star": star}
        if from_ is None:
            return self.done(**base, unresolved="no table")
        source = from_.this
        if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
            return self.done(**base, unresolved="subquery")
        schema, table = _table(source)
        if schema is None and table.lower() in ctes:
            inner_tree = ctes[table.lower()]
            inner = self.statement(inner_tree) if isinstance(inner_tree, exp.Select) else None
            plain = star and len(columns) == 1 and tree.args.get("where") is None
            if (
                plain
                and not tree.args.get("joins")
                and inner is not None
                and inner.operation == "SELECT"
                and inner.unresolved is None
                and inner.table is not None
                and inner.table.lower() not in ctes
                and inner.has_where
                and inner.where_reason is None
            ):
                return inner  # point lookups only, as the fast path
            return self.done(**base, table=table, unresolved="with clause")
        reason = None
        joined = bool(tree.args.get("joins"))
        if aggregate or tree.args.get("group") or tree.args.get("having"):
            reason = "aggregate"
        if joined:
            reason = reason or "join"
        scope = _scope(source, not joined)
        return self.done(
            **base, table=table, schema=schema, unresolved=reason, **self.where(tree, scope)
        )

    # -- WHERE

    def where(self, tree: Any, scope: Scope) -> dict[str, Any]:
        clause = tree.args.get("where")
        if clause is None:
            return {"has_where": False}
        found = self.conjuncts(clause.this, scope)
        return {
            "has_where": True,
            "where": found.equalities,
            "where_in": found.sets,
            "where_reason": found.reason,
            "where_rest": found.rest,
        }

    def conjuncts(self, node: Any, scope: Scope) -> Where:
        assert exp is not None
        parts: list[Any] = []
        stack = [node]
        while stack:
            item = stack.pop()
            while isinstance(item, exp.Paren):
                item = item.this
            if isinstance(item, exp.And):
                stack.extend([item.expression, item.this])
            else:
                parts.append(item)
        equalities: list[tuple[str, Value]] = []
        sets: list[tuple[str, tuple[Value, ...]]] = []
        reason: str | None = None
        rest: str | None = None
        for part in parts:
            found = self.conjunct(part, scope)
            if isinstance(found, str):
                reason, rest = reason or found, rest or found
            elif isinstance(found[1], Value):
                equalities.append((found[0], found[1]))
            else:
                sets.append((found[0], found[1]))
                reason = reason or "in"
        return Where(tuple(equalities), tuple(sets), reason, rest)

    def conjunct(self, node: Any, scope: Scope) -> Any:
        assert exp is not None
        if isinstance(node, (exp.Or, exp.Xor)):
            return "or"
        if node.find(exp.Select) is not None:
            return "subquery"
        if isinstance(node, exp.In):
            column = node.this
            if not isinstance(column, exp.Column) or node.args.get("query") is not None:
                return "in"
            values = [self.value(v) for v in node.expressions]
            if not values or any(v.kind == "expr" for v in values):
                return "in"
            why = _own(column, scope)
            return why if why else (column.name, tuple(values))
        if isinstance(node, exp.EQ):
            for column, other in ((node.this, node.expression), (node.expression, node.this)):
                if not isinstance(column, exp.Column) or isinstance(column.this, exp.Star):
                    continue
                if isinstance(other, exp.Any):
                    inner = other.this
                    while isinstance(inner, exp.Paren):
                        inner = inner.this
                    value = self.value(inner)
                    if value.kind != "param":
                        return "any"
                    why = _own(column, scope)
                    array = Value("array", index=value.index, name=value.name)
                    return why if why else (column.name, (array,))
                if isinstance(other, exp.Null):
                    return "null comparison"
                value = self.value(other)
                if value.kind == "expr":
                    if isinstance(other, exp.Column):
                        return "column comparison"
                    continue
                why = _own(column, scope)
                return why if why else (column.name, value)
            return "not an equality"
        if isinstance(node, (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NEQ, exp.Between)):
            return "range"
        if isinstance(node, (exp.Like, exp.ILike, exp.RegexpLike, exp.Glob)):
            return "pattern match"
        if isinstance(node, exp.Is):
            return "is"
        return "not an equality"

    def value(self, node: Any) -> Value:
        assert exp is not None
        while isinstance(node, (exp.Cast, exp.Paren)):
            node = node.this
        if isinstance(node, exp.Placeholder):
            number = self.numbers.get(str(node.name))
            if number is None:
                return Value("expr")
            return Value("param", index=number[0], name=number[1])
        negative = False
        if isinstance(node, exp.Neg):
            negative, node = True, node.this
        if isinstance(node, exp.Literal):
            if node.is_string:
                return Value("expr") if negative else Value("literal", literal=node.this)
            text = str(node.this).replace("_", "")
            try:
                numeric: int | float = (
                    float(text) if any(ch in text for ch in ".eE") else int(text, 0)
                )
            except ValueError:
                return Value("expr")
            return Value("literal", literal=-numeric if negative else numeric)
        if isinstance(node, exp.Null) and not negative:
            return Value("literal", literal=None)
        if isinstance(node, exp.Boolean) and not negative:
            return Value("literal", literal=1 if node.this else 0)
        return Value("expr")

    # -- writes

    def insert(self, tree: Any) -> Statement:
        assert exp is not None
        target = tree.this
        columns: list[str] = []
        if isinstance(target, exp.Schema):
            columns = [c.name for c in target.expressions]
            target = target.this
        if not isinstance(target, exp.Table):
            return self.done(operation="INSERT", unresolved="no table")
        schema, table = _table(target)
        alternative = str(tree.args.get("alternative") or "").upper()
        operation = "REPLACE" if alternative == "REPLACE" else "INSERT"
        upsert = operation == "REPLACE"
        conflict: tuple[str, ...] | None = () if upsert else None
        ignore = bool(tree.args.get("ignore")) or alternative == "IGNORE"
        rows: list[tuple[Value, ...]] = []
        reason = None
        source = tree.args.get("expression")
        if isinstance(source, exp.Values):
            for row in source.expressions:
                items = row.expressions if isinstance(row, exp.Tuple) else [row]
                rows.append(tuple(self.value(v) for v in items))
        elif source is None and tree.args.get("default"):
            rows.append(())
        else:
            reason = "insert from select"
        action = None
        clause = tree.args.get("conflict")
        if clause is not None:
            upsert = True
            conflict = ()
            keys = clause.args.get("conflict_keys") or []
            names = [k.this.name if isinstance(k, exp.Ordered) else k.name for k in keys]
            plain = all(
                isinstance(
                    k.this if isinstance(k, exp.Ordered) else k, (exp.Column, exp.Identifier)
                )
                for k in keys
            )
            if names and plain and not clause.args.get("constraint"):
                conflict = tuple(names)
            action = (
                "nothing" if "NOTHING" in str(clause.args.get("action") or "").upper() else "update"
            )
            if clause.args.get("duplicate"):
                conflict, action = (), "update"
        if action == "nothing":
            ignore = True
        if action == "update":
            keep = {c.lower() for c in conflict or ()}
            rows = [
                tuple(
                    v if k < len(columns) and columns[k].lower() in keep else Value("expr")
                    for k, v in enumerate(row)
                )
                for row in rows
            ]
        return self.done(
            operation=operation,
            table=table,
            schema=schema,
            insert_columns=tuple(columns),
            insert_rows=tuple(rows),
            upsert=upsert,
            conflict=conflict,
            ignore=ignore,
            unresolved=reason,
            **self.returning(tree),
        )

    def returning(self, tree: Any) -> dict[str, Any]:
        assert exp is not None
        clause = tree.args.get("returning")
        if clause is None:
            return {}
        columns: list[str | None] = []
        star = False
        for item in clause.expressions:
            inner = item.this if isinstance(item, exp.Alias) else item
            if isinstance(inner, exp.Star) or (
                isinstance(inner, exp.Column) and isinstance(inner.this, exp.Star)
            ):
                star = True
                columns.append(None)
            else:
                columns.append(inner.name if isinstance(inner, exp.Column) else None)
        return {"returning": True, "returning_columns": tuple(columns), "returning_star": star}

    def update(self, tree: Any) -> Statement:
        assert exp is not None
        target = tree.this
        if not isinstance(target, exp.Table):
            return self.done(operation="UPDATE", unresolved="no table")
        schema, table = _table(target)
        columns: list[str] = []
        qualifiers: set[str | None] = set()
        row_based = client = False
        for assignment in tree.expressions:
            left, right = assignment.this, assignment.expression
            if isinstance(left, exp.Column):
                columns.append(left.name)
                qualifiers.add(_qualifier(left))
            else:
                qualifiers.add(None)
                columns.extend(c.name for c in left.find_all(exp.Column))
            if right.find(exp.Column) is not None or right.find(exp.Select) is not None:
                row_based = True
            else:
                client = True
        joins = target.args.get("joins") or []
        if joins:  # MySQL multi-table UPDATE
            refs = [target, *(j.this for j in joins)]
            return self.multi("UPDATE", refs, qualifiers, "multi-table update")
        joined = (tree.args.get("from_") or tree.args.get("from")) is not None
        return self.done(
            operation="UPDATE",
            table=table,
            schema=schema,
            set_columns=tuple(columns),
            set_from_row=row_based and not client,
            **self.where(tree, _scope(target, not joined)),
            **self.returning(tree),
        )

    def multi(
        self, operation: str, refs: list[Any], written: set[str | None], reason: str
    ) -> Statement:
        assert exp is not None
        by_name: dict[str, tuple[str | None, str]] = {}
        tables: list[tuple[str | None, str]] = []
        for ref in refs:
            if not isinstance(ref, exp.Table):
                return self.done(operation=operation, unresolved=reason)
            schema, name = _table(ref)
            tables.append((schema, name))
            for key in (ref.alias, name, f"{schema}.{name}" if schema else None):
                if key:
                    by_name.setdefault(key.lower(), (schema, name))
        if None in written or any(q not in by_name for q in written if q):
            targets = tables
        else:
            targets = [by_name[q] for q in sorted(q for q in written if q)]
        targets = list(dict.fromkeys(targets))
        schema, table = targets[0]
        return self.done(
            operation=operation,
            table=table,
            schema=schema,
            targets=tuple(targets),
            unresolved=reason,
        )

    def delete(self, tree: Any) -> Statement:
        assert exp is not None
        target = tree.this
        if not isinstance(target, exp.Table):
            return self.done(operation="DELETE", unresolved="no table")
        listed = tree.args.get("tables") or []
        using = tree.args.get("using") or []
        if listed:  # MySQL `DELETE a, b FROM a JOIN b ...`
            refs = [target, *(j.this for j in target.args.get("joins") or [])]
            written: set[str | None] = {_table_key(t) for t in listed}
            return self.multi("DELETE", refs, written, "multi-table delete")
        if target.args.get("joins"):
            return self.done(operation="DELETE", unresolved="multi-table delete")
        schema, table = _table(target)
        return self.done(
            operation="DELETE",
            table=table,
            schema=schema,
            **self.where(tree, _scope(target, not using)),
            **self.returning(tree),
        )


def _replace(stmt: Statement, **kw: Any) -> Statement:
    from dataclasses import replace

    return replace(stmt, **kw)


def _table(node: Any) -> tuple[str | None, str]:
    return (node.db or None), node.name


def _table_key(node: Any) -> str:
    schema, name = _table(node)
    return (f"{schema}.{name}" if schema else name).lower()


def _qualifier(column: Any) -> str | None:
    table = column.table
    if not table:
        return None
    return (f"{column.db}.{table}" if column.db else table).lower()


def _scope(table: Any, exclusive: bool) -> Scope:
    schema, name = _table(table)
    if table.alias:
        return Scope(frozenset({str(table.alias).lower()}), exclusive)
    names = {name.lower()}
    if schema:
        names.add(f"{schema}.{name}".lower())
    return Scope(frozenset(names), exclusive)


def _own(column: Any, scope: Scope) -> str | None:
    qualifier = _qualifier(column)
    if qualifier is None:
        return None if scope.exclusive else "ambiguous column"
    if scope.names and qualifier not in scope.names:
        return "other table's column"
    return None
