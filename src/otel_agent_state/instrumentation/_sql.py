"""SQL statement analysis for the database instrumentations: which rows a statement touches.

`analyse(sql, dialect)` returns a `Statement`: the operation, the table(s) written or read,
the projection, INSERT values, the `col = value` equalities and `col IN (...)` lists ANDed in
the WHERE clause, upsert conflict targets and RETURNING columns. It is total (never raises)
and correct before complete: what it cannot follow it reports as `unresolved` with a short
reason, so the caller falls back to a table-level fact instead of guessing a row.

Two analysers stand behind it, and the result is cached per statement text (bounded):

- the hand-written fast path (`_sql_lexer`, `_sql_parser`, `_sql_exprs`; stdlib only);
- sqlglot (`_sqlglot`, the optional extra `otel-agent-state[sql]`), consulted when the fast
  path cannot resolve a statement, and first for MySQL. Without the extra the fast path
  alone answers (table-level where it cannot resolve).

Dialects (`dialect=`):

- `sqlite` (default): `?`, `?NNN`, `:name`, `@name`, `$name` placeholders.
- `postgresql`: `$1`, `%s`, `%(name)s` placeholders, `$tag$` strings, `::type` casts,
  `= ANY(%s)` array parameters, `FROM ONLY`, `UPDATE ... FROM`, `DELETE ... USING`.
- `mysql` (MySQL / MariaDB, for the PyMySQL / mysqlclient / aiomysql instrumentations):
  `%s` / `%(name)s` placeholders, backslash escapes and `"..."` strings, `#` comments,
  `INSERT IGNORE`, `INSERT ... SET`, `ON DUPLICATE KEY UPDATE` (conflict on any unique key:
  rows table-level), `REPLACE`, multi-table `UPDATE a, b` / `DELETE a, b FROM` (every
  written table in `Statement.targets`, table-level).

Row pins for a write: `_sql_model.row_keys(stmt, pk, params_list, columns)`; keys that come
back in `RETURNING`: `_sql_model.returning_keys(stmt, pk, names, rows)`.
"""

from __future__ import annotations

import functools
import logging
from typing import Final

from ._sql_lexer import (
    BLOB,
    NUMBER,
    PARAM,
    PUNCT,
    QIDENT,
    STRING,
    WORD,
    Token,
    split_statements,
    tokenize,
)
from ._sql_model import Statement, Value, returning_keys, row_keys
from ._sql_parser import Parser

__all__ = [
    "BLOB",
    "NUMBER",
    "OPERATIONS",
    "PARAM",
    "PUNCT",
    "QIDENT",
    "STRING",
    "WORD",
    "Statement",
    "Token",
    "Value",
    "analyse",
    "returning_keys",
    "row_keys",
    "split_statements",
    "tokenize",
]

_log = logging.getLogger(__name__)

OPERATIONS: Final = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "MERGE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "DDL",
    "OTHER",
)
DIALECTS: Final = ("sqlite", "postgresql", "mysql")
CACHE_SIZE: Final = 4096
# sqlglot costs ~0.3-1 ms a statement (pure Python ~3x more) and grows with the text: a bulk
# INSERT of thousands of rows, or a stream of distinct texts (inlined literals) missing the
# cache, would pay it on every execution. Longer texts get the fast path's answer alone.
SQLGLOT_MAX_CHARS: Final = 4096

# Fast-path reasons sqlglot cannot improve on (they are about the data, not the syntax).
_FINAL: Final = frozenset(
    {"empty", "not text", "explain", "merge", "insert from select", "values", "no table"}
)


def analyse(sql: object, dialect: str = "sqlite") -> Statement:
    """Analyse the first statement of `sql`; returns OTHER/unresolved instead of raising.

    Applications run the same statements over and over, so results are cached by text
    (statements are immutable; the cache holds at most `CACHE_SIZE` of them)."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    if not isinstance(sql, str):
        return Statement(unresolved="not text")
    return _analyse_text(sql, dialect)  # an unknown dialect is read as SQLite, once per text


def fast_path(sql: str, dialect: str = "sqlite") -> Statement:
    """The hand-written analysis alone (uncached; for tests and benchmarks)."""
    try:
        return Parser(tokenize(sql, dialect), dialect).statement()
    except Exception:
        _log.debug("SQL analysis failed", exc_info=True)
        return Statement(unresolved="unparsed")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _analyse_text(sql: str, dialect: str) -> Statement:
    if dialect not in DIALECTS:
        dialect = "sqlite"
    fast = fast_path(sql, dialect)
    if len(sql) > SQLGLOT_MAX_CHARS or not _wants_sqlglot(fast, dialect):
        return fast
    try:
        from . import _sqlglot
    except ImportError:  # pragma: no cover - the module itself is stdlib-only at import
        return fast
    deep = _sqlglot.analyse(sql, dialect)
    if deep is None or not _better(deep, fast, dialect):
        return fast
    return deep


def _wants_sqlglot(fast: Statement, dialect: str) -> bool:
    if fast.operation in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "DDL"):
        return False
    if dialect == "mysql":
        return True  # sqlglot's MySQL dialect is the reference there
    if fast.unresolved is not None:
        return fast.unresolved not in _FINAL
    return fast.where_rest is not None and fast.operation in ("UPDATE", "DELETE", "SELECT")


def _better(deep: Statement, fast: Statement, dialect: str) -> bool:
    """Take sqlglot's answer when it agrees on what the statement is and resolves more
    (for MySQL: unless it resolves less)."""
    if (
        deep.operation != fast.operation
        and fast.operation != "OTHER"
        and fast.unresolved != ("unparsed")
    ):
        return False
    if fast.is_write and not {t for _, t in fast.targets} <= {t for _, t in deep.targets}:
        return False  # never report fewer written tables
    if (deep.unresolved is None) != (fast.unresolved is None):
        return deep.unresolved is None
    if dialect == "mysql":
        return True
    return deep.where_rest is None and fast.where_rest is not None
