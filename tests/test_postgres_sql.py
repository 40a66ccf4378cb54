"""The SQL analyser's PostgreSQL dialect: driver placeholders, casts, dollar quotes, and
which UPDATEs are atomic read-modify-writes."""

from __future__ import annotations

import pytest

from otel_agent_state.instrumentation._sql import Value, analyse


def pg(sql: str) -> object:
    return analyse(sql, "postgresql")


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        ("SELECT * FROM t WHERE id = %s", (42,), 42),
        ("SELECT * FROM t WHERE id = $2 AND x = $1", ("x", 7), 7),
        ("SELECT * FROM t WHERE id = %(id)s", {"id": 9}, 9),
        ("SELECT * FROM t WHERE id = $1::int", ("5",), "5"),
        ("SELECT * FROM t WHERE id = %s::character varying(10)", ("k",), "k"),
        ("SELECT * FROM t WHERE name LIKE 'a%%' OR TRUE AND id = %s", (1,), None),
    ],
)
def test_placeholders_bind_to_the_primary_key(sql: str, params: object, expected: object) -> None:
    stmt = analyse(sql, "postgresql")
    pins = dict(stmt.where)
    if expected is None:
        assert stmt.where_reason == "or"
        return
    found, value = pins["id"].resolve(params)
    assert (found, value) == (True, expected)


def test_schema_qualified_upsert_with_returning() -> None:
    stmt = analyse(
        'INSERT INTO billing."Invoices" (id, total) VALUES (%s, %s) '
        "ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total RETURNING id",
        "postgresql",
    )
    assert (stmt.operation, stmt.schema, stmt.table) == ("INSERT", "billing", "Invoices")
    assert stmt.upsert and stmt.returning and stmt.conflict == ("id",)
    # only the conflict target's value names the row that changes; `total` is masked
    assert stmt.insert_rows == ((Value("param", index=1), Value("expr")),)
    assert stmt.returning_columns == ("id",)


def test_dollar_quoted_text_and_percent_signs_are_not_parameters() -> None:
    stmt = analyse("UPDATE t SET note = $$it's 100%s$$ WHERE id = %s AND tag = 'x%%'", "postgresql")
    assert stmt.params == 1
    assert dict(stmt.where)["id"] == Value("param", index=1)


def test_ctes_and_sqlite_placeholders_stay_unresolved_or_literal() -> None:
    assert analyse("WITH t AS (SELECT 1) SELECT * FROM t", "postgresql").unresolved == (
        "with clause"
    )
    # `?` is an operator (jsonb) in PostgreSQL, not a placeholder
    stmt = analyse("SELECT * FROM t WHERE doc ? 'k' AND id = 1", "postgresql")
    assert stmt.params == 0
    # the SQLite dialect is unchanged: `$1` is a named parameter there
    assert analyse("SELECT * FROM t WHERE id = $1").param_names == ("1",)


@pytest.mark.parametrize(
    ("sql", "atomic"),
    [
        ("UPDATE a SET balance = balance - %s WHERE id = %s", True),
        ("UPDATE a SET balance = balance - %s, updated_at = now() WHERE id = 1", True),
        ("UPDATE a SET (x, y) = (x + 1, y) WHERE id = 1", True),
        ("UPDATE a SET b = (SELECT max(x) FROM y) WHERE id = 1", True),
        ("UPDATE a SET balance = %s WHERE id = %s", False),
        ("UPDATE a SET balance = %s, updated_at = now() WHERE id = 1", False),
        ("UPDATE a SET score = %s, version = version + 1 WHERE id = %s", False),
        ("UPDATE a SET b = CAST(%s AS INTEGER) WHERE id = 1", False),
        ("UPDATE a SET status = 'done' WHERE id = 1", False),
    ],
)
def test_updates_computed_from_the_row_are_atomic(sql: str, atomic: bool) -> None:
    assert analyse(sql, "postgresql").set_from_row is atomic
