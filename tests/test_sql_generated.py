"""Generated statements, judged like the ORM corpus: random WHERE clauses (equalities, IN
lists, ANY arrays, ranges, ORs, qualifiers naming the target, its alias or another table)
in UPDATE / DELETE / SELECT with and without USING / FROM, in the three dialects. Neither
analyser may pin a row the sqlglot reference does not, and the two must agree."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_agent_state.instrumentation import _sql, _sqlglot
from otel_agent_state.instrumentation._sql import row_keys

from .test_sql_corpus import Record, judge

TARGET, OTHER = "sqlc_docs", "sqlc_users"


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, str, list[Any]]:
    dialect = draw(st.sampled_from(["sqlite", "postgresql", "mysql"]))
    alias = draw(st.sampled_from([None, "d"]))
    joined = draw(st.booleans()) and dialect != "sqlite"
    own = alias or TARGET
    params: list[Any] = []

    def value() -> str:
        if draw(st.booleans()):
            return str(draw(st.integers(1, 5)))
        params.append(draw(st.integers(1, 5)))
        return "?" if dialect == "sqlite" else "%s"

    def qualifier() -> str:
        choice = draw(st.sampled_from(["", "own", "other"] if joined else ["", "own"]))
        return {"": "", "own": f"{own}.", "other": f"{OTHER}."}[choice]

    def conjunct() -> str:
        kind = draw(st.sampled_from(["eq", "in", "range", "col", "or", "any"]))
        q = qualifier()
        if kind == "eq":
            return f"{q}id = {value()}"
        if kind == "in":
            return f"{q}id IN ({', '.join(value() for _ in range(draw(st.integers(1, 3))))})"
        if kind == "range":
            return f"{q}id > {value()}"
        if kind == "col":
            return f"{q}slug = {value()}"
        if kind == "any" and dialect == "postgresql":
            params.append([draw(st.integers(1, 5)) for _ in range(2)])
            return f"{q}id = ANY(%s)"
        return f"({q}id = {value()} OR {q}id = {value()})"

    target = f"{TARGET} AS {alias}" if alias else TARGET
    form = draw(st.sampled_from(["delete", "update", "select", "insert"]))
    if form == "insert":
        return dialect, insert(draw, dialect, params, value), params
    sets = f"body = {value()}" if form == "update" else ""  # parameters in text order
    where = " AND ".join(conjunct() for _ in range(draw(st.integers(1, 3))))
    if form == "delete":
        using = f" USING {OTHER}" if joined else ""
        if joined and dialect == "mysql":  # MySQL names the target in USING as well
            using = f" USING {target}, {OTHER}"
            target = TARGET if not alias else target
        sql = f"DELETE FROM {target}{using} WHERE {where}"
    elif form == "update":
        if joined and dialect == "mysql":
            sql = f"UPDATE {target}, {OTHER} SET {own}.{sets} WHERE {where}"
        else:
            from_ = f" FROM {OTHER}" if joined else ""
            sql = f"UPDATE {target} SET {sets}{from_} WHERE {where}"
    else:
        from_ = f", {OTHER}" if joined else ""
        sql = f"SELECT * FROM {target}{from_} WHERE {where}"
    return dialect, sql, params


def insert(draw: st.DrawFn, dialect: str, params: list[Any], value: Any) -> str:
    columns = draw(st.sampled_from([("id", "slug", "body"), ("slug", "body"), ("body", "id")]))
    rows = ", ".join(
        "(" + ", ".join(value() for _ in columns) + ")" for _ in range(draw(st.integers(1, 2)))
    )
    head = f"INSERT INTO {TARGET} ({', '.join(columns)}) VALUES {rows}"
    if dialect == "mysql":
        tail = draw(st.sampled_from(["", " ON DUPLICATE KEY UPDATE body = VALUES(body)"]))
        if draw(st.booleans()):
            head = head.replace("INSERT", "INSERT IGNORE", 1)
        return head + tail
    target = draw(st.sampled_from(["", " (id)", " (slug)", " (id, slug)"]))
    if not target:
        return head + draw(st.sampled_from(["", " ON CONFLICT DO NOTHING"]))
    action = draw(st.sampled_from(["DO NOTHING", "DO UPDATE SET body = excluded.body"]))
    return f"{head} ON CONFLICT{target} {action}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements())
def test_generated_statements_never_pin_a_wrong_row(case: tuple[str, str, list[Any]]) -> None:
    dialect, sql, params = case
    style = "qmark" if dialect == "sqlite" else "format"
    record = Record(dialect, "generated", "generated", style, sql, [params], False)
    verdict = judge(record)
    assert verdict.wrong == [] and verdict.unreported == [], (sql, params)
    fast = _sql.fast_path(sql, dialect)
    deep = _sqlglot.analyse(sql, dialect)
    assert deep is not None, sql
    assert row_keys(fast, ("id",), [params])[0] == row_keys(deep, ("id",), [params])[0], sql
    assert {t for _, t in fast.targets} == {t for _, t in deep.targets}, sql
