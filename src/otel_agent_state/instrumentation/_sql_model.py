"""What an analysed SQL statement says (`Statement`, `Value`) and the rows it pins.

Both analysers (the hand-written fast path and the sqlglot one) produce these; the
instrumentations consume them. `row_keys` and `returning_keys` turn a statement and its
parameters into the primary keys of the rows it touches, or the reason they are unknown.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MAX_PINNED_ROWS = 1_000  # an IN list / array longer than this is not followed row by row


@dataclass(frozen=True, slots=True)
class Value:
    """Where a column's value comes from: a bound parameter, a literal, or an expression.
    `array`: a parameter bound to a sequence of values (`= ANY(%s)`)."""

    kind: str  # "param", "array", "literal" or "expr"
    index: int = 0  # 1-based parameter number, for "param" / "array"
    name: str | None = None  # :name / @name / $name / %(name)s without the prefix
    literal: int | float | str | bytes | None = None

    def resolve(self, params: object) -> tuple[bool, object]:
        """(found, value) for this value given the statement's parameters; never raises."""
        try:
            if self.kind == "literal":
                return True, self.literal
            if self.kind not in ("param", "array"):
                return False, None
            if isinstance(params, Mapping):
                # Mappings bind by name (sqlite3 strips the :, @ or $ prefix).
                return (True, params[self.name]) if self.name is not None else (False, None)
            if not isinstance(params, Sequence) or isinstance(params, (str, bytes, bytearray)):
                return False, None
            if self.index < 1:
                return False, None
            return True, params[self.index - 1]
        except Exception:
            return False, None


@dataclass(frozen=True, slots=True)
class Statement:
    """What one SQL statement does, as far as the analysis can tell.

    Correct before complete: `where` holds only equalities on the written / read table's own
    columns, and `insert_rows` only values that name the row the statement touches (an upsert
    whose conflict target is not the whole key has the other columns' values masked as
    `expr`), so a consumer that pins rows from them never names a row the statement did not
    touch; what cannot be followed is `unresolved` with the reason (a table-level fact)."""

    operation: str = "OTHER"
    table: str | None = None
    schema: str | None = None
    # SELECT: source column per result column (None for expressions); star: `*` selected.
    projection: tuple[str | None, ...] = ()
    star: bool = False
    # INSERT / REPLACE: column list (empty: all columns in table order) and VALUES rows.
    insert_columns: tuple[str, ...] = ()
    insert_rows: tuple[tuple[Value, ...], ...] = ()
    # UPDATE: assigned columns; whether an assigned value is computed from the row itself
    # (`balance = balance - 1`, a subquery): the server reads and writes atomically.
    set_columns: tuple[str, ...] = ()
    set_from_row: bool = False
    # ANDed `column = value` predicates of the WHERE clause (column unquoted, unqualified).
    where: tuple[tuple[str, Value], ...] = ()
    has_where: bool = False
    where_reason: str | None = None  # why some WHERE conjunct is not a plain equality
    returning: bool = False
    upsert: bool = False  # ON CONFLICT ... / INSERT OR REPLACE / REPLACE / ON DUPLICATE KEY
    unresolved: str | None = None  # why the statement's rows cannot be followed at all
    multiple: bool = False  # more statements follow the first
    savepoint: str | None = None  # SAVEPOINT / RELEASE / ROLLBACK TO name
    params: int = 0  # highest parameter number used
    param_names: tuple[str, ...] = field(default=())
    # ANDed `column IN (v, ...)` / `column = ANY(array)` conjuncts: row sets.
    where_in: tuple[tuple[str, tuple[Value, ...]], ...] = ()
    # Why some conjunct is neither an equality nor an IN list (None: all are).
    where_rest: str | None = None
    # Upsert conflict target: None without one; () any unique key (REPLACE, ON DUPLICATE
    # KEY UPDATE, ON CONSTRAINT, ON CONFLICT DO NOTHING without a target).
    conflict: tuple[str, ...] | None = None
    ignore: bool = False  # INSERT IGNORE / OR IGNORE / DO NOTHING: a row may be skipped
    # RETURNING: source column per item (None for expressions); `*` returned.
    returning_columns: tuple[str | None, ...] = ()
    returning_star: bool = False
    # Every table the statement writes, (schema, name), the main `table` first: more than
    # one for MySQL multi-table UPDATE / DELETE or several data-modifying WITH parts.
    targets: tuple[tuple[str | None, str], ...] = ()
    analyser: str = "fast"  # "fast" or "sqlglot": which analysis produced this

    @property
    def summary(self) -> str:
        """`db.query.summary`: operation and target, never values."""
        if self.operation == "DDL":
            return f"DDL {self.table}" if self.table else "DDL"
        if self.table and self.operation in (
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "REPLACE",
            "MERGE",
        ):
            return f"{self.operation} {self.table}"
        return self.operation

    @property
    def is_write(self) -> bool:
        return self.operation in ("INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE")


# --------------------------------------------------------------------------- pinned rows


def row_keys(
    stmt: Statement,
    pk: Sequence[str],
    params_list: Sequence[object],
    columns: Sequence[str] = (),
) -> tuple[list[list[object]], str | None]:
    """Primary-key values (lower-case `pk` columns, key order) of every row a write touches,
    one list per row across all parameter rows, or ([], why not). `columns`: the table's
    columns in order, for an INSERT without a column list. Never raises."""
    try:
        return _row_keys(stmt, [c.lower() for c in pk], params_list, columns)
    except Exception:
        return [], "unresolved"


def _row_keys(
    stmt: Statement, pk: list[str], params_list: Sequence[object], columns: Sequence[str]
) -> tuple[list[list[object]], str | None]:
    if stmt.unresolved:
        return [], stmt.unresolved
    if not pk:
        return [], "no primary key"
    if len(stmt.targets) > 1:
        return [], "several tables written"
    keys: list[list[object]] = []
    if stmt.operation in ("INSERT", "REPLACE"):
        names = [c.lower() for c in stmt.insert_columns] or [c.lower() for c in columns]
        for params in params_list:
            for row in stmt.insert_rows:
                by_column = dict(zip(names, row, strict=False))
                key: list[object] = []
                for column in pk:
                    value = by_column.get(column)
                    found, resolved = value.resolve(params) if value else (False, None)
                    if not found or resolved is None:
                        return [], "primary key not given"
                    key.append(resolved)
                keys.append(key)
        return (keys, None) if keys else ([], "no rows")
    if stmt.operation not in ("UPDATE", "DELETE"):
        return [], "not a row write"
    if stmt.operation == "UPDATE" and {c.lower() for c in stmt.set_columns} & set(pk):
        return [], "primary key updated"
    if not stmt.has_where:
        return [], "no where clause"
    for params in params_list:
        found_keys = where_row_keys(stmt, pk, params)
        if isinstance(found_keys, str):
            return [], found_keys
        keys.extend(found_keys)
        if len(keys) > MAX_PINNED_ROWS:
            return [], "too many rows"
    return keys, None


def where_row_keys(stmt: Statement, pk: Sequence[str], params: object) -> list[list[object]] | str:
    """The keys the WHERE pins for one parameter row (equalities and IN lists on every key
    column; several on one column intersect; columns combine as a product), or why not."""
    constraints: dict[str, list[tuple[Value, ...]]] = {}
    for column, value in stmt.where:
        constraints.setdefault(column.lower(), []).append((value,))
    for column, values in stmt.where_in:
        constraints.setdefault(column.lower(), []).append(values)
    choices: list[list[object]] = []
    for column in pk:
        found_sets = constraints.get(column.lower())
        if not found_sets:
            return stmt.where_rest or stmt.where_reason or "rows not pinned by primary key"
        options: list[dict[str, object]] = []
        for values in found_sets:
            resolved = _resolve_all(values, params)
            if isinstance(resolved, str):
                return resolved
            # NULL never equals anything; keys compare as the database coerces them ('5' = 5).
            options.append({_same(v): v for v in resolved if v is not None})
        first, *others = options
        kept = [v for text, v in first.items() if all(text in other for other in others)]
        if not kept:
            return "no row matches every condition on the key"
        choices.append(kept)
    total = 1
    for kept in choices:
        total *= len(kept)
    if total > MAX_PINNED_ROWS:
        return "too many rows"
    return [list(combo) for combo in itertools.product(*choices)]


def _resolve_all(values: tuple[Value, ...], params: object) -> list[object] | str:
    out: list[object] = []
    for value in values:
        found, resolved = value.resolve(params)
        if not found:
            return "parameter not found"
        if value.kind == "array":
            if not isinstance(resolved, (list, tuple)):
                return "array parameter not a list"
            out.extend(resolved)
        else:
            out.append(resolved)
    return out


def _same(value: object) -> str:
    """A key value as text, so values the database takes for equal compare equal."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "x" + bytes(value).hex()
    return str(value)


def returning_keys(
    stmt: Statement, pk: Sequence[str], names: Sequence[str], rows: Sequence[Sequence[object]]
) -> list[list[object]] | None:
    """The primary keys of the rows a write RETURNING its key came back with: `names` are
    the result's column names (cursor.description), `rows` the fetched rows. None when the
    statement returns no key (or is not a single-table write)."""
    try:
        if not stmt.returning or not stmt.is_write or len(stmt.targets) > 1 or not pk:
            return None
        lowered = [str(n).lower() for n in names]
        if not stmt.returning_star:
            # Name each result column by its source column: `RETURNING 5 AS id` is no key.
            if len(stmt.returning_columns) != len(lowered):
                return None
            lowered = [(c or "").lower() for c in stmt.returning_columns]
        positions = [lowered.index(c.lower()) if c.lower() in lowered else -1 for c in pk]
        if min(positions) < 0:
            return None
        return [[row[p] for p in positions] for row in rows]
    except Exception:
        return None
