"""Which rows a statement pins: upsert conflict targets, qualifiers naming other tables,
USING / FROM, IN / ANY row sets, writes nested in WITH, MERGE, RETURNING keys.

Every case runs through both analysers (the hand-written fast path and sqlglot's), which
must agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from otel_agent_state.instrumentation import _sql, _sqlglot
from otel_agent_state.instrumentation._dbapi import where_keys
from otel_agent_state.instrumentation._sql import Statement, returning_keys, row_keys

from .conftest import fail_or_skip

Analyse = Callable[[str, str], Statement]


def _deep(sql: str, dialect: str) -> Statement:
    stmt = _sqlglot.analyse(sql, dialect)
    assert stmt is not None, f"sqlglot could not read {sql!r}"
    return stmt


@pytest.fixture(params=["fast", "sqlglot"])
def analyse(request: pytest.FixtureRequest) -> Analyse:
    if request.param == "sqlglot":
        if not _sqlglot.AVAILABLE:
            fail_or_skip("the sql extra (sqlglot) is not installed")
        return _deep
    return _sql.fast_path


def keys(stmt: Statement, pk: tuple[str, ...], *params: Any) -> list[list[Any]] | str:
    found, reason = row_keys(stmt, pk, list(params) or [()])
    return reason if reason else found


# --------------------------------------------------------------------------- upserts


@pytest.mark.parametrize(
    ("sql", "dialect", "pk", "expected"),
    [
        # the row that changes agrees with ours only on the conflict target
        (
            "INSERT INTO docs (id, slug, body) VALUES (?, ?, ?) "
            "ON CONFLICT (slug) DO UPDATE SET body = excluded.body",
            "sqlite",
            ("id",),
            "primary key not given",
        ),
        (
            "INSERT INTO docs (id, slug, body) VALUES (?, ?, ?) "
            "ON CONFLICT (slug) DO UPDATE SET body = excluded.body",
            "sqlite",
            ("slug",),
            [["s"]],
        ),
        (
            "INSERT INTO docs (id, slug, body) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            "postgresql",
            ("id",),
            [[7]],
        ),
        (
            "INSERT INTO docs (id, slug, body) VALUES (%s, %s, %s) "
            "ON CONFLICT ON CONSTRAINT docs_slug_key DO UPDATE SET body = excluded.body",
            "postgresql",
            ("id",),
            "primary key not given",
        ),
        # DO NOTHING: the row is ours or untouched
        (
            "INSERT INTO docs (id, slug, body) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            "postgresql",
            ("id",),
            [[7]],
        ),
        # MySQL: any unique key may match
        (
            "INSERT INTO docs (id, slug, body) VALUES (%s, %s, %s) "
            "ON DUPLICATE KEY UPDATE body = VALUES(body)",
            "mysql",
            ("id",),
            "primary key not given",
        ),
    ],
)
def test_upserts_pin_only_what_the_conflict_target_names(
    analyse: Analyse, sql: str, dialect: str, pk: tuple[str, ...], expected: Any
) -> None:
    stmt = analyse(sql, dialect)
    assert stmt.upsert and stmt.is_write
    assert keys(stmt, pk, (7, "s", "b")) == expected


def test_conflict_fields(analyse: Analyse) -> None:
    slug = analyse("INSERT INTO d (id, slug) VALUES (?, ?) ON CONFLICT (slug) DO NOTHING", "sqlite")
    assert (slug.conflict, slug.ignore) == (("slug",), True)
    dup = analyse("INSERT INTO d (id) VALUES (%s) ON DUPLICATE KEY UPDATE id = id", "mysql")
    assert (dup.conflict, dup.ignore) == ((), False)
    ignored = analyse("INSERT OR IGNORE INTO d (id) VALUES (?)", "sqlite")
    assert ignored.ignore and keys(ignored, ("id",), (3,)) == [[3]]


# --------------------------------------------------------------------------- qualifiers


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "DELETE FROM addresses USING users WHERE addresses.user_id = users.id AND users.id = 4",
            "column comparison",
        ),
        ("DELETE FROM addresses USING users WHERE addresses.id = 4", [[4]]),
        ("DELETE FROM addresses USING users WHERE id = 4", "ambiguous column"),
        ("UPDATE addresses SET v = 1 FROM users WHERE users.id = 4", "other table's column"),
        ("UPDATE addresses SET v = 1 FROM users WHERE addresses.id = %s", [[9]]),
        ("UPDATE addresses AS a SET v = 1 WHERE a.id = %s", [[9]]),
        ("UPDATE addresses AS a SET v = 1 WHERE addresses.id = %s", "other table's column"),
        ("UPDATE public.addresses SET v = 1 WHERE public.addresses.id = %s", [[9]]),
        ("DELETE FROM ONLY addresses WHERE id = %s", [[9]]),
    ],
)
def test_qualifiers_naming_another_table_pin_nothing(
    analyse: Analyse, sql: str, expected: Any
) -> None:
    stmt = analyse(sql, "postgresql")
    assert stmt.table == "addresses"
    found = keys(stmt, ("id",), (9,))
    if isinstance(expected, str):
        assert isinstance(found, str)
        assert found in (expected, "rows not pinned by primary key")
        # the drivers' own helper pins nothing either
        assert where_keys(stmt, ("id",), [(9,)])[0] == []
    else:
        assert found == expected


def test_select_from_only_and_qualified_columns(analyse: Analyse) -> None:
    stmt = analyse("SELECT t.id, t.v FROM ONLY t WHERE t.id = $1", "postgresql")
    assert (stmt.table, stmt.unresolved, stmt.projection) == ("t", None, ("id", "v"))
    assert [c for c, _ in stmt.where] == ["id"]


# --------------------------------------------------------------------------- row sets


@pytest.mark.parametrize(
    ("sql", "dialect", "params", "expected"),
    [
        ("DELETE FROM t WHERE id IN (?, ?, ?)", "sqlite", (1, 2, 3), [[1], [2], [3]]),
        ('DELETE FROM "t" WHERE "t"."id" IN (%s)', "postgresql", (5,), [[5]]),
        ("UPDATE t SET v = 0 WHERE id = ANY(%s)", "postgresql", ([4, 5, 4],), [[4], [5]]),
        ("DELETE FROM t WHERE id IN (1, NULL)", "sqlite", (), [[1]]),
        ("DELETE FROM t WHERE id NOT IN (?)", "sqlite", (1,), "in"),
        ("DELETE FROM t WHERE id IN (SELECT x FROM u)", "sqlite", (), "subquery"),
        ("DELETE FROM t WHERE id IN (?) OR v = 1", "sqlite", (1,), "or"),
    ],
)
def test_in_lists_and_arrays_are_row_sets(
    analyse: Analyse, sql: str, dialect: str, params: tuple[Any, ...], expected: Any
) -> None:
    stmt = analyse(sql, dialect)
    found = keys(stmt, ("id",), params)
    if isinstance(expected, str):
        assert isinstance(found, str)
    else:
        assert found == expected
        # consumers of `where` alone see a reason, never a wrong pin
        assert stmt.where_reason == "in"


def test_composite_keys_take_the_product(analyse: Analyse) -> None:
    stmt = analyse("DELETE FROM lines WHERE order_id = ? AND line_no IN (?, ?)", "sqlite")
    assert keys(stmt, ("order_id", "line_no"), (1, 2, 3)) == [[1, 2], [1, 3]]


def test_django_bulk_update_pins_its_in_list(analyse: Analyse) -> None:
    stmt = analyse(
        'UPDATE "b" SET "pages" = CASE WHEN ("b"."id" = %s) THEN %s WHEN ("b"."id" = %s) '
        'THEN %s ELSE NULL END WHERE "b"."id" IN (%s, %s)',
        "postgresql",
    )
    assert keys(stmt, ("id",), (1, 7, 2, 7, 1, 2)) == [[1], [2]]


# --------------------------------------------------------------------------- WITH, MERGE


def test_a_write_nested_in_with_is_the_statement(analyse: Analyse) -> None:
    stmt = analyse(
        "WITH d AS (DELETE FROM checkpoints WHERE thread_id = %s RETURNING *) "
        "SELECT count(*) FROM d",
        "postgresql",
    )
    assert (stmt.operation, stmt.table, stmt.is_write) == ("DELETE", "checkpoints", True)
    assert keys(stmt, ("thread_id",), ("t1",)) == [["t1"]]


def test_several_writes_in_with_name_every_table(analyse: Analyse) -> None:
    stmt = analyse(
        "WITH a AS (DELETE FROM x WHERE id = 1 RETURNING id) INSERT INTO y (id) SELECT id FROM a",
        "postgresql",
    )
    assert stmt.is_write and stmt.unresolved
    assert {t for _, t in stmt.targets} == {"x", "y"}
    assert keys(stmt, ("id",)) == stmt.unresolved


def test_ctes(analyse: Analyse) -> None:
    wrapped = analyse("WITH c AS (SELECT * FROM users WHERE id = ?) SELECT * FROM c", "sqlite")
    assert (wrapped.table, wrapped.unresolved) == ("users", None)
    shadow = analyse("WITH users AS (SELECT 1 AS id) SELECT * FROM users WHERE id = 1", "sqlite")
    assert shadow.unresolved == "with clause"
    recursive = analyse("WITH RECURSIVE c(x) AS (SELECT 1) SELECT * FROM t", "sqlite")
    assert recursive.unresolved == "recursive with"


def test_merge_is_a_table_level_write(analyse: Analyse) -> None:
    stmt = analyse(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v", "postgresql"
    )
    assert (stmt.operation, stmt.is_write, stmt.unresolved) == ("MERGE", True, "merge")
    assert stmt.targets == ((None, "t"),) and stmt.summary == "MERGE t"


# --------------------------------------------------------------------------- RETURNING


def test_keys_that_come_back_in_returning(analyse: Analyse) -> None:
    stmt = analyse('INSERT INTO "a" ("name") VALUES (%s), (%s) RETURNING "a"."id"', "postgresql")
    assert keys(stmt, ("id",), ("x", "y")) == "primary key not given"
    assert stmt.returning_columns == ("id",)
    assert returning_keys(stmt, ("id",), ["id"], [(11,), (12,)]) == [[11], [12]]
    star = analyse("DELETE FROM a WHERE name = %s RETURNING *", "postgresql")
    assert returning_keys(star, ("id",), ["id", "name"], [(3, "x")]) == [[3]]
    fake = analyse("UPDATE a SET n = 1 WHERE n = 2 RETURNING 5 AS id", "postgresql")
    assert returning_keys(fake, ("id",), ["id"], [(5,)]) is None
    read = analyse("SELECT id FROM a", "postgresql")
    assert returning_keys(read, ("id",), ["id"], [(1,)]) is None


def test_row_keys_never_raises() -> None:
    stmt = _sql.fast_path("DELETE FROM t WHERE id = ANY(%s)", "postgresql")
    assert keys(stmt, ("id",), (42,)) == "array parameter not a list"
    assert keys(stmt, ("id",), object()) == "parameter not found"
    assert keys(stmt, ()) == "no primary key"


# --------------------------------------------------------------------------- the fallback


@pytest.mark.parametrize(
    ("sql", "dialect", "params", "expected"),
    [
        ("UPDATE t SET v = 1 WHERE id = CAST(? AS INTEGER)", "sqlite", (5,), [[5]]),
        ("DELETE FROM t WHERE id IN (CAST(%s AS INT), CAST(%s AS INT))", "postgresql", (1, 2),
         [[1], [2]]),
        ("UPDATE t SET v = 1 WHERE id = (?)", "sqlite", (3,), [[3]]),
    ],
)  # fmt: skip
def test_sqlglot_resolves_what_the_fast_path_cannot(
    sql: str, dialect: str, params: tuple[Any, ...], expected: list[list[Any]]
) -> None:
    if not _sqlglot.AVAILABLE:
        fail_or_skip("the sql extra (sqlglot) is not installed")
    fast = _sql.fast_path(sql, dialect)
    assert isinstance(keys(fast, ("id",), params), str)  # table-level on its own
    stmt = _sql.analyse(sql, dialect)
    assert stmt.analyser == "sqlglot"
    assert keys(stmt, ("id",), params) == expected


def test_the_analysis_and_normalise_are_cached_per_text() -> None:
    from otel_agent_state.instrumentation.sqlalchemy import normalise

    sql = "UPDATE cached_t SET v = %(v)s WHERE id = %(id)s"
    assert _sql.analyse(sql, "postgresql") is _sql.analyse(sql, "postgresql")
    before = normalise.cache_info().hits
    assert normalise(sql, "pyformat") == "UPDATE cached_t SET v = :v WHERE id = :id"
    assert normalise(sql, "pyformat") is normalise(sql, "pyformat")
    assert normalise.cache_info().hits >= before + 2
    assert normalise.cache_info().maxsize == _sql.CACHE_SIZE  # bounded, as the analysis
