"""The hand-written SQL analyser: table-driven cases and 'never raises' properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_agent_state.instrumentation._sql import (
    OPERATIONS,
    Value,
    analyse,
    split_statements,
    tokenize,
)


def _eq(stmt: Any) -> dict[str, Any]:
    """WHERE equalities as {column: ("?", n) | (":", name) | literal}."""
    out: dict[str, Any] = {}
    for column, value in stmt.where:
        if value.kind == "param":
            out[column] = (":", value.name) if value.name else ("?", value.index)
        else:
            out[column] = value.literal
    return out


@pytest.mark.parametrize(
    ("sql", "operation", "table", "where", "reason"),
    [
        (
            "SELECT score FROM credit_scores WHERE customer_id = ?",
            "SELECT",
            "credit_scores",
            {"customer_id": ("?", 1)},
            None,
        ),
        (
            'select * from main."Credit Scores" cs where cs.id=:id',
            "SELECT",
            "Credit Scores",
            {"id": (":", "id")},
            None,
        ),
        (
            "SELECT a FROM t WHERE ? = id AND b = 'x''y'",
            "SELECT",
            "t",
            {"id": ("?", 1), "b": "x'y"},
            None,
        ),
        (
            "SELECT a FROM t WHERE id = ?2 AND k = ?1",
            "SELECT",
            "t",
            {"id": ("?", 2), "k": ("?", 1)},
            None,
        ),
        (
            "SELECT a FROM t WHERE id = @a AND k = $b AND z = ?",
            "SELECT",
            "t",
            {"id": (":", "a"), "k": (":", "b"), "z": ("?", 3)},
            None,
        ),
        (
            "SELECT a FROM t WHERE id = -5 AND f = 1.5 AND b = x'0aFF'",
            "SELECT",
            "t",
            {"id": -5, "f": 1.5, "b": b"\x0a\xff"},
            None,
        ),
        ("SELECT a FROM t WHERE (id = 1)", "SELECT", "t", {"id": 1}, None),
        ("SELECT a FROM t WHERE id = 1 OR id = 2", "SELECT", "t", {}, "or"),
        ("SELECT a FROM t WHERE id IN (1, 2)", "SELECT", "t", {}, "in"),
        ("SELECT a FROM t WHERE id = (SELECT max(id) FROM t)", "SELECT", "t", {}, "subquery"),
        ("SELECT a FROM t WHERE lower(name) = ?", "SELECT", "t", {}, "function"),
        ("SELECT a FROM t WHERE id = 1 AND n BETWEEN 1 AND 5", "SELECT", "t", {"id": 1}, "range"),
        ("SELECT a FROM t WHERE id = other", "SELECT", "t", {}, "column comparison"),
        ("SELECT a FROM t WHERE id IS NULL", "SELECT", "t", {}, "is"),
        ("SELECT a FROM t -- WHERE id = 1\n WHERE id = 2", "SELECT", "t", {"id": 2}, None),
        ("SELECT a FROM t /* WHERE id = 1 */ WHERE id = 3", "SELECT", "t", {"id": 3}, None),
        (
            "SELECT a FROM t WHERE name = 'a OR b; -- x' AND id = 4",
            "SELECT",
            "t",
            {"name": "a OR b; -- x", "id": 4},
            None,
        ),
        (
            "UPDATE t SET a = ?, b = 'WHERE id = 9' WHERE id = ?",
            "UPDATE",
            "t",
            {"id": ("?", 2)},
            None,
        ),
        ("DELETE FROM [my table] WHERE `id` = 7", "DELETE", "my table", {"id": 7}, None),
    ],
)
def test_where_clause(
    sql: str, operation: str, table: str, where: dict[str, Any], reason: str | None
) -> None:
    stmt = analyse(sql)
    assert stmt.operation == operation
    assert stmt.table == table
    assert _eq(stmt) == where
    assert stmt.where_reason == reason


@pytest.mark.parametrize(
    ("sql", "operation", "unresolved"),
    [
        ("SELECT * FROM a JOIN b ON a.id = b.id WHERE a.id = 1", "SELECT", "join"),
        ("SELECT * FROM a, b WHERE a.id = 1", "SELECT", "join"),
        ("SELECT count(*) FROM t WHERE id = 1", "SELECT", "aggregate"),
        ("SELECT k, v FROM t GROUP BY k", "SELECT", "aggregate"),
        ("SELECT a FROM t UNION SELECT a FROM u", "SELECT", "compound select"),
        ("SELECT * FROM (SELECT 1)", "SELECT", "subquery"),
        ("SELECT * FROM json_each(?)", "SELECT", "table function"),
        ("SELECT 1", "SELECT", "no table"),
        ("WITH t AS (SELECT 1 AS id) SELECT * FROM t WHERE id = 1", "SELECT", "with clause"),
        ("INSERT INTO t SELECT * FROM u", "INSERT", "insert from select"),
        ("", "OTHER", "empty"),
        ("   -- only a comment", "OTHER", "empty"),
        ("PRAGMA table_info(t)", "OTHER", None),
        ("VACUUM", "OTHER", None),
    ],
)
def test_unresolved(sql: str, operation: str, unresolved: str | None) -> None:
    stmt = analyse(sql)
    assert stmt.operation == operation
    assert stmt.unresolved == unresolved


@pytest.mark.parametrize(
    ("sql", "operation", "savepoint"),
    [
        ("BEGIN", "BEGIN", None),
        ("begin immediate transaction", "BEGIN", None),
        ("COMMIT", "COMMIT", None),
        ("END TRANSACTION", "COMMIT", None),
        ("ROLLBACK", "ROLLBACK", None),
        ("ROLLBACK TO SAVEPOINT sp1", "ROLLBACK", "sp1"),
        ("rollback transaction to sp2", "ROLLBACK", "sp2"),
        ('SAVEPOINT "a b"', "SAVEPOINT", "a b"),
        ("RELEASE SAVEPOINT sp1", "RELEASE", "sp1"),
        ("RELEASE sp1", "RELEASE", "sp1"),
        ("CREATE TABLE IF NOT EXISTS foo (id INTEGER PRIMARY KEY)", "DDL", None),
        ("DROP TABLE foo", "DDL", None),
        ("ALTER TABLE foo ADD COLUMN x", "DDL", None),
        ("CREATE INDEX i ON foo (x)", "DDL", None),
    ],
)
def test_transactions_and_ddl(sql: str, operation: str, savepoint: str | None) -> None:
    stmt = analyse(sql)
    assert stmt.operation == operation
    assert stmt.savepoint == savepoint


def test_ddl_table_in_summary() -> None:
    assert analyse("CREATE TABLE IF NOT EXISTS main.foo (id)").summary == "DDL foo"
    assert analyse("create temp table bar (x)").table == "bar"


def test_select_projection() -> None:
    stmt = analyse('SELECT id, t.score AS s, score * 2, "note" n FROM t WHERE id = ?')
    assert stmt.projection == ("id", "score", None, "note")
    assert not stmt.star
    assert analyse("SELECT * FROM t").star
    assert analyse("SELECT t.* FROM t").star
    assert analyse("SELECT DISTINCT a FROM t").projection == ("a",)
    assert analyse("SELECT a FROM t").summary == "SELECT t"


def test_schema_split_and_quoting() -> None:
    stmt = analyse('SELECT * FROM "aux"."my ""odd"" table" WHERE id = 1')
    assert stmt.schema == "aux"
    assert stmt.table == 'my "odd" table'


def test_insert_values() -> None:
    stmt = analyse("INSERT INTO t (id, score, note) VALUES (?, ?, 'n'), (:a, 5, NULL)")
    assert stmt.operation == "INSERT"
    assert stmt.table == "t"
    assert stmt.insert_columns == ("id", "score", "note")
    first, second = stmt.insert_rows
    assert first == (
        Value("param", index=1),
        Value("param", index=2),
        Value("literal", literal="n"),
    )
    assert second[0] == Value("param", index=3, name="a")
    assert second[1].literal == 5
    assert second[2] == Value("literal", literal=None)
    assert not stmt.upsert
    assert not stmt.returning


def test_insert_expression_values_and_default() -> None:
    stmt = analyse("INSERT INTO t VALUES (abs(?), (1 + 2), ?)")
    assert stmt.insert_columns == ()
    assert [v.kind for v in stmt.insert_rows[0]] == ["expr", "expr", "param"]
    assert stmt.insert_rows[0][2].index == 2  # the `?` inside abs() took number 1
    assert analyse("INSERT INTO t DEFAULT VALUES").insert_rows == ((),)


def test_upserts_and_returning() -> None:
    upsert = analyse(
        "INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET v = excluded.v "
        "RETURNING id"
    )
    assert upsert.upsert and upsert.returning
    assert upsert.operation == "INSERT"
    assert analyse("INSERT OR REPLACE INTO t (id) VALUES (1)").operation == "REPLACE"
    replace = analyse("REPLACE INTO t (id) VALUES (1)")
    assert replace.operation == "REPLACE" and replace.upsert
    assert not analyse("INSERT OR IGNORE INTO t (id) VALUES (1)").upsert
    assert analyse("DELETE FROM t WHERE id = 1 RETURNING *").returning
    assert analyse("UPDATE t SET a = 1 WHERE id = 1 RETURNING a").returning


def test_update_set_columns() -> None:
    stmt = analyse("UPDATE OR IGNORE t AS x SET a = ?, (b, c) = (1, (2)), d = f(e) WHERE id = ?")
    assert stmt.set_columns == ("a", "b", "c", "d")
    assert _eq(stmt) == {"id": ("?", 2)}


def test_value_resolution() -> None:
    by_number = Value("param", index=2)
    assert by_number.resolve((1, "two")) == (True, "two")
    assert by_number.resolve((1,)) == (False, None)
    assert by_number.resolve({"x": 1}) == (False, None)
    assert by_number.resolve("ab") == (False, None)
    named = Value("param", index=1, name="id")
    assert named.resolve({"id": 42}) == (True, 42)
    assert named.resolve([7]) == (True, 7)
    assert Value("literal", literal=b"x").resolve(None) == (True, b"x")
    assert Value("expr").resolve((1,)) == (False, None)


def test_multiple_statements_and_split() -> None:
    assert analyse("SELECT 1; SELECT 2").multiple
    assert not analyse("SELECT 1;  -- trailing").multiple
    parts = split_statements("INSERT INTO t VALUES ('a;b'); /* ; */ DELETE FROM t; ; ")
    assert len(parts) == 2
    assert analyse(parts[1]).operation == "DELETE"


def test_non_text_input() -> None:
    assert analyse(None).operation == "OTHER"
    assert analyse(b"SELECT a FROM t").table == "t"
    assert analyse(12).unresolved == "not text"


def test_unterminated_constructs() -> None:
    for sql in ("SELECT 'abc", 'SELECT "abc', "SELECT /* x", "SELECT [x", "SELECT x'0"):
        analyse(sql)
        tokenize(sql)


_SQL_WORDS = st.sampled_from(
    [
        "SELECT",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "DELETE",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "IN",
        "NOT",
        "NULL",
        "IS",
        "BETWEEN",
        "JOIN",
        "ON",
        "AS",
        "WITH",
        "RETURNING",
        "CONFLICT",
        "DO",
        "REPLACE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "TO",
        "SAVEPOINT",
        "t",
        "id",
        "x",
        "(",
        ")",
        ",",
        ";",
        "=",
        "==",
        "?",
        "?3",
        ":a",
        "@b",
        "$c",
        "'str'",
        '"q"',
        "[b]",
        "`c`",
        "x'00'",
        "1",
        "-2",
        "3.5",
        "*",
        ".",
        "--",
        "/*",
        "*/",
        "CREATE",
        "TABLE",
        "DROP",
        "GROUP",
        "BY",
        "ORDER",
        "LIMIT",
        "UNION",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(sql: str) -> None:
    stmt = analyse(sql)
    assert stmt.operation in OPERATIONS
    assert isinstance(stmt.summary, str)
    split_statements(sql)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(_SQL_WORDS, max_size=30),
    st.one_of(
        st.none(),
        st.tuples(st.integers()),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    ),
)
def test_never_raises_on_sql_like_token_soup(words: list[str], params: Any) -> None:
    stmt = analyse(" ".join(words))
    for _, value in stmt.where:
        value.resolve(params)
    for row in stmt.insert_rows:
        for value in row:
            value.resolve(params)
