"""The analyser's MySQL / MariaDB dialect (`analyse(sql, "mysql")`), as the PyMySQL,
mysqlclient and aiomysql instrumentations call it: through sqlglot's MySQL dialect when the
`sql` extra is installed, and through the fast path alone when it is not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_agent_state.instrumentation import _sql, _sqlglot
from otel_agent_state.instrumentation._sql import Statement, Value, analyse, row_keys

from .conftest import fail_or_skip


@pytest.fixture(params=["with sqlglot", "fast path only"])
def mysql(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fast path only":
        monkeypatch.setattr(_sqlglot, "sqlglot", None)  # as without the `sql` extra
    elif not _sqlglot.AVAILABLE:
        fail_or_skip("the sql extra (sqlglot) is not installed")
    _sql._analyse_text.cache_clear()
    yield request.param
    _sql._analyse_text.cache_clear()


def pins(stmt: Statement, params: Any, pk: tuple[str, ...] = ("id",)) -> Any:
    found, reason = row_keys(stmt, pk, [params])
    return reason or found


def test_the_analyser_in_use(mysql: str) -> None:
    stmt = analyse("SELECT * FROM t WHERE id = %s", "mysql")
    assert stmt.analyser == ("sqlglot" if mysql == "with sqlglot" else "fast")


def test_pyformat_placeholders_bind_by_position_and_name(mysql: str) -> None:
    stmt = analyse("SELECT `a`.`v` FROM `a` WHERE `a`.`id` = %s AND `a`.`k` = %s", "mysql")
    assert (stmt.table, stmt.projection, stmt.params) == ("a", ("v",), 2)
    assert dict(stmt.where) == {"id": Value("param", index=1), "k": Value("param", index=2)}
    named = analyse("UPDATE a SET v = %(v)s WHERE id = %(id)s", "mysql")
    assert pins(named, {"v": 1, "id": 42}) == [[42]]
    assert named.param_names == ("v", "id")


def test_backslash_escapes_quotes_and_comments(mysql: str) -> None:
    stmt = analyse("SELECT * FROM t WHERE name = 'it\\'s; %s' AND id = %s # trailing %s\n", "mysql")
    assert stmt.params == 1 and not stmt.multiple
    assert dict(stmt.where)["name"] == Value("literal", literal="it's; %s")
    assert dict(stmt.where)["id"] == Value("param", index=1)
    dq = analyse('SELECT * FROM t WHERE tag = "x\\"y" AND id = 3', "mysql")
    assert dict(dq.where) == {
        "tag": Value("literal", literal='x"y'),
        "id": Value("literal", literal=3),
    }
    # `?` and `@var` are no placeholders for the MySQL drivers
    odd = analyse("SELECT * FROM t WHERE id = @v", "mysql")
    assert odd.params == 0 and odd.where == ()


def test_insert_ignore_and_insert_set(mysql: str) -> None:
    ignore = analyse("INSERT IGNORE INTO t (id, v) VALUES (%s, %s), (%s, %s)", "mysql")
    assert (ignore.operation, ignore.ignore) == ("INSERT", True)
    assert row_keys(ignore, ("id",), [(1, "a", 2, "b")])[0] == [[1], [2]]
    set_form = analyse("INSERT INTO t SET id = %s, v = 'x'", "mysql")
    assert set_form.insert_columns == ("id", "v")
    assert pins(set_form, (9,)) == [[9]]


def test_on_duplicate_key_update_is_table_level(mysql: str) -> None:
    stmt = analyse(
        "INSERT INTO t (id, slug) VALUES (%s, %s) AS new ON DUPLICATE KEY UPDATE slug = new.slug",
        "mysql",
    )
    assert stmt.upsert and stmt.conflict == ()
    assert pins(stmt, (1, "a")) == "primary key not given"


def test_replace(mysql: str) -> None:
    stmt = analyse("REPLACE INTO t (id, v) VALUES (%s, %s)", "mysql")
    assert (stmt.operation, stmt.upsert, stmt.summary) == ("REPLACE", True, "REPLACE t")
    assert pins(stmt, (4, "x")) == [[4]]


@pytest.mark.parametrize(
    ("sql", "targets"),
    [
        ("UPDATE a, b SET a.x = 1, b.y = 2 WHERE a.id = b.aid", {"a", "b"}),
        ("UPDATE a JOIN b ON a.id = b.aid SET a.x = %s WHERE a.id = %s", {"a"}),
        ("UPDATE a AS p JOIN b AS q ON p.id = q.aid SET q.y = 1", {"b"}),
        ("UPDATE a, b SET x = 1 WHERE a.id = b.aid", {"a", "b"}),  # unqualified: either
        ("DELETE a, b FROM a JOIN b ON a.id = b.aid WHERE a.id = %s", {"a", "b"}),
        ("DELETE p FROM a AS p JOIN b ON p.id = b.aid", {"a"}),
        ("DELETE FROM a, b USING a JOIN b ON a.id = b.aid", {"a", "b"}),
    ],
)
def test_multi_table_writes_name_every_written_table(
    mysql: str, sql: str, targets: set[str]
) -> None:
    stmt = analyse(sql, "mysql")
    assert stmt.is_write and stmt.unresolved
    assert {t for _, t in stmt.targets} == targets
    assert pins(stmt, (1, 2)) == stmt.unresolved  # table-level


def test_single_table_delete_using_itself(mysql: str) -> None:
    # what SQLAlchemy emits for DELETE ... WHERE a.x = b.id on MySQL
    stmt = analyse("DELETE FROM a USING a, b WHERE a.user_id = b.id AND b.id = %s", "mysql")
    assert stmt.targets == ((None, "a"),)
    assert isinstance(pins(stmt, (4,)), str)  # b.id names b's rows, not a's


def test_transactions_and_ddl(mysql: str) -> None:
    assert analyse("START TRANSACTION", "mysql").operation == "BEGIN"
    assert analyse("SAVEPOINT `s1`", "mysql").savepoint == "s1"
    assert analyse("CREATE TABLE t (id INT PRIMARY KEY)", "mysql").operation == "DDL"
    assert analyse("SET NAMES utf8mb4", "mysql").operation == "OTHER"


def test_long_statements_skip_sqlglot_and_still_resolve(mysql: str) -> None:
    rows = ", ".join(["(%s, %s)"] * 800)  # a bulk insert past SQLGLOT_MAX_CHARS
    stmt = analyse(f"INSERT INTO t (id, v) VALUES {rows}", "mysql")
    assert len(rows) > _sql.SQLGLOT_MAX_CHARS and stmt.analyser == "fast"
    params = [x for i in range(800) for x in (i, "v")]
    assert row_keys(stmt, ("id",), [params])[0] == [[i] for i in range(800)]


_WORDS = st.sampled_from(
    [
        "SELECT", "INSERT", "IGNORE", "INTO", "REPLACE", "UPDATE", "DELETE", "FROM", "USING",
        "SET", "VALUES", "ON", "DUPLICATE", "KEY", "CONFLICT", "DO", "NOTHING", "WITH", "AS",
        "WHERE", "AND", "OR", "IN", "ANY", "JOIN", "RETURNING", "MERGE", "ONLY", "=", ",", "(",
        ")", ".", ";", "*", "%s", "%(a)s", "%%", "?", "$1", "#", "--", "'a\\'b'", '"x"', "`t`",
        "t", "u", "a", "id", "v", "1", "NULL", "/*", "*/",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_WORDS, max_size=25),
    st.sampled_from(["sqlite", "postgresql", "mysql"]),
    st.one_of(
        st.none(), st.tuples(st.integers(), st.text()), st.dictionaries(st.text(), st.integers())
    ),
)
def test_both_analysers_never_raise(words: list[str], dialect: str, params: Any) -> None:
    sql = " ".join(words)
    for stmt in (
        _sql.fast_path(sql, dialect),
        _sqlglot.analyse(sql, dialect),
        analyse(sql, dialect),
    ):
        if stmt is None:
            continue
        assert isinstance(stmt.summary, str)
        row_keys(stmt, ("id",), [params])
        for _, value in stmt.where:
            value.resolve(params)
