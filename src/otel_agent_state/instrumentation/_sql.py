"""A small hand-written SQL statement analyser for the database instrumentations.

It tells the instrumentation which rows a statement touches: the operation, the main table,
the projection, INSERT values, and the `col = value` equalities ANDed in the WHERE clause.
It is deliberately partial (no grammar, no third-party parser, stdlib only) and total:
`analyse()` never raises; what it cannot follow it reports as unresolved with a short reason,
so the caller falls back to a table-level fact instead of guessing a row.
Written for SQLite's dialect; `dialect="postgresql"` adds PostgreSQL's lexical forms
(`$1`, `%s` / `%(name)s` placeholders, `$tag$` strings, `::type` casts).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

_log = logging.getLogger(__name__)

# Token kinds.
WORD: Final = "word"  # bare identifier or keyword
QIDENT: Final = "qident"  # quoted identifier: "x", `x`, [x]
STRING: Final = "string"
BLOB: Final = "blob"
NUMBER: Final = "number"
PARAM: Final = "param"
PUNCT: Final = "punct"

OPERATIONS: Final = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "DDL",
    "OTHER",
)

_DDL_WORDS: Final = frozenset({"CREATE", "DROP", "ALTER"})
_TXN_WORDS: Final = {
    "BEGIN": "BEGIN",
    "START": "BEGIN",
    "COMMIT": "COMMIT",
    "END": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "ABORT": "ROLLBACK",
    "SAVEPOINT": "SAVEPOINT",
    "RELEASE": "RELEASE",
}
_JOIN_WORDS: Final = frozenset({"JOIN", "LEFT", "RIGHT", "INNER", "CROSS", "NATURAL", "FULL"})
_COMPOUND_WORDS: Final = frozenset({"UNION", "INTERSECT", "EXCEPT"})
_WHERE_END: Final = frozenset(
    {"GROUP", "ORDER", "LIMIT", "WINDOW", "RETURNING", "HAVING", "OFFSET", "FOR", "FETCH"}
)
_AGGREGATES: Final = frozenset(
    {"COUNT", "SUM", "MIN", "MAX", "AVG", "TOTAL", "GROUP_CONCAT", "STRING_AGG"}
)
# Words that end a table reference rather than name its alias.
_NOT_ALIAS: Final = frozenset(
    {
        "WHERE",
        "SET",
        "VALUES",
        "DEFAULT",
        "SELECT",
        "ON",
        "USING",
        "INDEXED",
        "NOT",
        "RETURNING",
        "ORDER",
        "GROUP",
        "LIMIT",
        "HAVING",
        "WINDOW",
        "FROM",
        "OFFSET",
        "FOR",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "ONLY",
        "DO",
        "WITH",
        *_JOIN_WORDS,
        "OUTER",
    }
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str  # identifiers unquoted; strings unescaped; keywords as written
    upper: str = ""  # WORD tokens in upper case, for keyword tests

    def word(self, *words: str) -> bool:
        return self.kind == WORD and self.upper in words

    def punct(self, *symbols: str) -> bool:
        return self.kind == PUNCT and self.text in symbols


@dataclass(frozen=True, slots=True)
class Value:
    """Where a column's value comes from: a bound parameter, a literal, or an expression."""

    kind: str  # "param", "literal" or "expr"
    index: int = 0  # 1-based SQLite parameter number, for "param"
    name: str | None = None  # :name / @name / $name without the prefix, for "param"
    literal: int | float | str | bytes | None = None

    def resolve(self, params: object) -> tuple[bool, object]:
        """(found, value) for this value given the statement's parameters; never raises."""
        try:
            if self.kind == "literal":
                return True, self.literal
            if self.kind != "param":
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
    """What one SQL statement does, as far as a lexical analysis can tell."""

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
    upsert: bool = False  # ON CONFLICT ... / INSERT OR REPLACE / REPLACE
    unresolved: str | None = None  # why the statement's rows cannot be followed at all
    multiple: bool = False  # more statements follow the first
    savepoint: str | None = None  # SAVEPOINT / RELEASE / ROLLBACK TO name
    params: int = 0  # highest parameter number used
    param_names: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        """`db.query.summary`: operation and target, never values."""
        if self.operation == "DDL":
            return f"DDL {self.table}" if self.table else "DDL"
        if self.table and self.operation in ("SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"):
            return f"{self.operation} {self.table}"
        return self.operation

    @property
    def is_write(self) -> bool:
        return self.operation in ("INSERT", "UPDATE", "DELETE", "REPLACE")


# --------------------------------------------------------------------------- lexer


def _comment_end(sql: str, i: int) -> int:
    """The index after the comment that starts at `i` (an unterminated one runs to the
    end), or -1 when no comment starts there."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return len(sql) if end < 0 else end + 2
    return -1


def tokenize(sql: str, dialect: str = "sqlite") -> list[Token]:
    """Split SQL text into tokens; comments dropped; unterminated constructs run to the end."""
    if dialect == "postgresql":
        return _pg_tokens(sql)
    tokens: list[Token] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c in "-/" and (skip := _comment_end(sql, i)) >= 0:
            i = skip
        elif c in "'\"`":
            text, i = _quoted(sql, i, c, c)
            tokens.append(Token(STRING if c == "'" else QIDENT, text))
        elif c == "[":
            end = sql.find("]", i + 1)
            end = n if end < 0 else end
            tokens.append(Token(QIDENT, sql[i + 1 : end]))
            i = end + 1
        elif c in "xX" and i + 1 < n and sql[i + 1] == "'":
            text, i = _quoted(sql, i + 1, "'", "'")
            try:
                blob = bytes.fromhex(text)
            except ValueError:
                blob = b""
            tokens.append(Token(BLOB, text, blob.hex()))
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            j = i
            if sql.startswith(("0x", "0X"), i):
                j = i + 2
                while j < n and sql[j] in "0123456789abcdefABCDEF_":
                    j += 1
            else:
                while j < n and (sql[j].isdigit() or sql[j] in "._"):
                    j += 1
                if j < n and sql[j] in "eE":
                    k = j + 1
                    if k < n and sql[k] in "+-":
                        k += 1
                    if k < n and sql[k].isdigit():
                        j = k
                        while j < n and sql[j].isdigit():
                            j += 1
            tokens.append(Token(NUMBER, sql[i:j]))
            i = j
        elif c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            tokens.append(Token(PARAM, sql[i:j]))
            i = j
        elif c in ":@$" and i + 1 < n and (sql[i + 1].isalnum() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            tokens.append(Token(PARAM, sql[i:j]))
            i = j
        elif c.isalpha() or c == "_" or ord(c) > 127:
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
                j += 1
            word = sql[i:j]
            tokens.append(Token(WORD, word, word.upper()))
            i = j
        else:
            for symbol in ("->>", "==", "!=", "<>", "<=", ">=", "||", "<<", ">>", "->", "::"):
                if sql.startswith(symbol, i):
                    tokens.append(Token(PUNCT, symbol))
                    i += len(symbol)
                    break
            else:
                tokens.append(Token(PUNCT, c))
                i += 1
    return tokens


def _pg_tokens(sql: str) -> list[Token]:
    """PostgreSQL: driver placeholders become PARAM tokens and `::type` casts are dropped."""
    out: list[Token] = []
    # Cut the text at the PostgreSQL-only forms and tokenize the pieces in between.
    i = 0
    n = len(sql)
    start = 0
    pieces: list[tuple[str, Token | None]] = []
    while i < n:
        c = sql[i]
        if c in "-/" and (skip := _comment_end(sql, i)) >= 0:
            i = skip
        elif c in "'\"":
            _, i = _quoted(sql, i, c, c)
        elif c == "%" and i + 1 < n and sql[i + 1] in "sbt%(":
            special: Token | None = None
            if sql[i + 1] == "%":
                end = i + 2
                special = Token(PUNCT, "%")
            elif sql[i + 1] == "(":
                close = sql.find(")", i + 2)
                if close < 0 or close + 1 >= n or sql[close + 1] not in "sbt":
                    i += 1
                    continue
                special = Token(PARAM, "%(" + sql[i + 2 : close] + ")")
                end = close + 2
            else:
                special = Token(PARAM, "%s")
                end = i + 2
            pieces.append((sql[start:i], special))
            i = start = end
        elif c == "$" and i + 1 < n and sql[i + 1].isdigit() and not _word_char(sql, i - 1):
            end = i + 1
            while end < n and sql[end].isdigit():
                end += 1
            pieces.append((sql[start:i], Token(PARAM, sql[i:end])))
            i = start = end
        elif c == "$" and not _word_char(sql, i - 1):
            close = sql.find("$", i + 1)
            tag = sql[i : close + 1] if close > 0 else ""
            if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]):
                end = sql.find(tag, close + 1)
                end = n if end < 0 else end + len(tag)
                body = sql[close + 1 : max(close + 1, end - len(tag))]
                pieces.append((sql[start:i], Token(STRING, body)))
                i = start = end
            else:
                i += 1
        else:
            i += 1
    pieces.append((sql[start:], None))
    for text, special in pieces:
        for tok in tokenize(text):
            if tok.kind == PARAM:  # `?`, `:x`, `@x` are operators or text in PostgreSQL
                tok = Token(PUNCT, tok.text)
            out.append(tok)
        if special is not None:
            out.append(special)
    return _drop_casts(out)


def _word_char(sql: str, at: int) -> bool:
    return at >= 0 and (sql[at].isalnum() or sql[at] == "_")


def _drop_casts(tokens: list[Token]) -> list[Token]:
    """`value::type[(n)][[]]` -> `value`: a cast does not change which row a key names."""
    out: list[Token] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok.punct("::") and i + 1 < n and tokens[i + 1].kind in (WORD, QIDENT):
            i += 2
            while i < n and tokens[i].kind == WORD and tokens[i].upper in _TYPE_WORDS:
                i += 1  # double precision, character varying, ... with time zone
            if i < n and tokens[i].punct("("):
                depth = 0
                while i < n:
                    if tokens[i].punct("("):
                        depth += 1
                    elif tokens[i].punct(")"):
                        depth -= 1
                        if depth == 0:
                            i += 1
                            break
                    i += 1
            while i + 1 < n and tokens[i].punct("[") and tokens[i + 1].punct("]"):
                i += 2
            continue
        out.append(tok)
        i += 1
    return out


_TYPE_WORDS: Final = frozenset({"PRECISION", "VARYING", "WITH", "WITHOUT", "TIME", "ZONE"})


def _quoted(sql: str, start: int, quote: str, close: str) -> tuple[str, int]:
    """Text of a quoted run starting at `start` (doubled quote = escaped); returns (text, end)."""
    parts: list[str] = []
    i = start + 1
    n = len(sql)
    while i < n:
        end = sql.find(close, i)
        if end < 0:
            parts.append(sql[i:])
            return "".join(parts), n
        parts.append(sql[i:end])
        if end + 1 < n and sql[end + 1] == close:
            parts.append(close)
            i = end + 2
            continue
        return "".join(parts), end + 1
    return "".join(parts), n


def split_statements(sql: str) -> list[str]:
    """Statement texts of a script (split at `;` outside quotes and comments); never raises."""
    try:
        return _split(sql)
    except Exception:  # pragma: no cover - defensive
        _log.debug("split failed", exc_info=True)
        return [sql]


def _split(sql: str) -> list[str]:
    out: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in "-/" and (skip := _comment_end(sql, i)) >= 0:
            i = skip
        elif c in "'\"`":
            _, i = _quoted(sql, i, c, c)
        elif c == "[":
            end = sql.find("]", i + 1)
            i = n if end < 0 else end + 1
        elif c == ";":
            out.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    out.append(sql[start:])
    return [part for part in out if tokenize(part)]


# --------------------------------------------------------------------------- parser


def analyse(sql: object, dialect: str = "sqlite") -> Statement:
    """Analyse the first statement of `sql`; returns OTHER/unresolved instead of raising.

    Applications run the same statements over and over, so results are cached by text
    (statements are immutable; the cache holds at most 2048 of them)."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    if not isinstance(sql, str):
        return Statement(unresolved="not text")
    return _analyse_text(sql, dialect)


@functools.lru_cache(maxsize=2048)
def _analyse_text(sql: str, dialect: str = "sqlite") -> Statement:
    try:
        return _Parser(tokenize(sql, dialect), dialect).statement()
    except Exception:
        _log.debug("SQL analysis failed", exc_info=True)
        return Statement(unresolved="unparsed")


class _Parser:
    def __init__(self, tokens: list[Token], dialect: str = "sqlite") -> None:
        # Assign SQLite parameter numbers: `?` takes max+1, `?NNN` takes NNN, a name keeps its
        # first number; sequences bind by number, mappings by name.
        self.numbers: dict[int, tuple[int, str | None]] = {}
        names: dict[str, int] = {}
        highest = 0
        for pos, tok in enumerate(tokens):
            if tok.kind != PARAM:
                continue
            if tok.text in ("?", "%s"):
                highest += 1
                self.numbers[pos] = (highest, None)
            elif dialect == "postgresql" and tok.text[:1] == "$" and tok.text[1:].isdigit():
                number = int(tok.text[1:]) if len(tok.text) < 8 else 0
                highest = max(highest, number)
                self.numbers[pos] = (number, None)
            elif tok.text.startswith("%("):  # psycopg %(name)s: bound from a mapping
                name = tok.text[2:-1]
                if name not in names:
                    highest += 1
                    names[name] = highest
                self.numbers[pos] = (names[name], name)
            elif tok.text.startswith("?"):
                number = int(tok.text[1:]) if len(tok.text) < 8 else 0
                highest = max(highest, number)
                self.numbers[pos] = (number, None)
            else:
                name = tok.text[1:]
                if name not in names:
                    highest += 1
                    names[name] = highest
                self.numbers[pos] = (names[name], name)
        self.highest = highest
        self.names = tuple(names)
        # Only the first statement is analysed; note whether anything follows it.
        depth = 0
        end = len(tokens)
        for pos, tok in enumerate(tokens):
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth = max(0, depth - 1)
            elif tok.punct(";") and depth == 0:
                end = pos
                break
        self.multiple = any(not t.punct(";") for t in tokens[end:])
        self.toks = tokens
        self.end = end
        self.pos = 0

    # -- helpers

    def peek(self, ahead: int = 0) -> Token | None:
        at = self.pos + ahead
        return self.toks[at] if at < self.end else None

    def take(self) -> Token | None:
        tok = self.peek()
        if tok is not None:
            self.pos += 1
        return tok

    def accept(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.word(*words):
            self.pos += 1
            return True
        return False

    def base(self, **kw: object) -> Statement:
        kw.setdefault("multiple", self.multiple)
        kw.setdefault("params", self.highest)
        kw.setdefault("param_names", self.names)
        return Statement(**kw)  # type: ignore[arg-type]

    def skip_group(self) -> None:
        """At `(`: move past the matching `)` (or to the end)."""
        depth = 0
        while (tok := self.take()) is not None:
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth -= 1
                if depth <= 0:
                    return

    def ident(self) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind in (WORD, QIDENT, STRING):
            self.pos += 1
            return tok.text
        return None

    def qualified(self) -> tuple[str | None, str | None]:
        """[schema.]name at the cursor; (schema, name)."""
        first = self.ident()
        if first is None:
            return None, None
        tok = self.peek()
        if tok is not None and tok.punct("."):
            self.pos += 1
            second = self.ident()
            if second is None:
                return None, None
            return first, second
        return None, first

    def skip_alias(self) -> None:
        if self.accept("AS"):
            self.ident()
            return
        tok = self.peek()
        if tok is not None and (
            tok.kind == QIDENT or (tok.kind == WORD and tok.upper not in _NOT_ALIAS)
        ):
            self.pos += 1

    def until_depth0(self, stop: frozenset[str], puncts: tuple[str, ...] = ()) -> list[Token]:
        """Tokens from the cursor up to a depth-0 keyword in `stop` (or punct) or the end."""
        out: list[Token] = []
        depth = 0
        while (tok := self.peek()) is not None:
            if depth == 0 and (
                (tok.kind == WORD and tok.upper in stop) or (puncts and tok.punct(*puncts))
            ):
                break
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth -= 1
                if depth < 0:
                    break
            out.append(tok)
            self.pos += 1
        return out

    def has_depth0(self, words: frozenset[str]) -> bool:
        depth = 0
        for tok in self.toks[self.pos : self.end]:
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth -= 1
            elif depth == 0 and tok.kind == WORD and tok.upper in words:
                return True
        return False

    # -- statements

    def statement(self) -> Statement:
        first = self.peek()
        if first is None:
            return self.base(unresolved="empty")
        if first.punct("("):
            return self.base(operation="OTHER", unresolved="parenthesised statement")
        if first.kind != WORD:
            return self.base(unresolved="not a statement")
        word = first.upper
        if word == "WITH":
            return self.with_clause()
        if word == "EXPLAIN":
            return self.base(operation="OTHER", unresolved="explain")
        if word == "SELECT" or word == "VALUES":
            return self.select()
        if word in ("INSERT", "REPLACE"):
            return self.insert()
        if word == "UPDATE":
            return self.update()
        if word == "DELETE":
            return self.delete()
        if word in _TXN_WORDS:
            return self.transaction(word)
        if word in _DDL_WORDS:
            return self.ddl()
        return self.base(operation="OTHER")

    def with_clause(self) -> Statement:
        self.take()
        self.accept("RECURSIVE")
        # Skip `name [(cols)] AS [NOT] [MATERIALIZED] (...)`, comma separated.
        while self.peek() is not None:
            tok = self.peek()
            assert tok is not None
            if tok.punct("("):
                self.skip_group()
                nxt = self.peek()
                if nxt is not None and nxt.punct(","):
                    self.take()
                continue
            if tok.word("SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "VALUES"):
                inner = self.statement()
                return replace(inner, unresolved=inner.unresolved or "with clause")
            self.take()
        return self.base(operation="OTHER", unresolved="with clause")

    def transaction(self, word: str) -> Statement:
        self.take()
        operation = _TXN_WORDS[word]
        if operation == "ROLLBACK":
            self.accept("TRANSACTION", "WORK")
            if self.accept("TO"):
                self.accept("SAVEPOINT")
                return self.base(operation="ROLLBACK", savepoint=self.ident() or "")
            return self.base(operation="ROLLBACK")
        if operation in ("SAVEPOINT", "RELEASE"):
            self.accept("SAVEPOINT")
            return self.base(operation=operation, savepoint=self.ident() or "")
        return self.base(operation=operation)

    def ddl(self) -> Statement:
        self.take()
        self.accept("TEMP", "TEMPORARY", "VIRTUAL", "UNIQUE")
        table: str | None = None
        schema: str | None = None
        if self.accept("TABLE"):
            if self.accept("IF"):
                self.accept("NOT")
                self.accept("EXISTS")
            schema, table = self.qualified()
        return self.base(operation="DDL", table=table, schema=schema)

    def select(self) -> Statement:
        if self.accept("VALUES"):
            return self.base(operation="SELECT", unresolved="values")
        self.take()
        self.accept("DISTINCT", "ALL")
        items: list[list[Token]] = []
        current: list[Token] = []
        depth = 0
        while (tok := self.peek()) is not None:
            if depth == 0 and tok.word("FROM", *_COMPOUND_WORDS, *_WHERE_END, "WHERE"):
                break
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth -= 1
            if depth == 0 and tok.punct(","):
                items.append(current)
                current = []
            else:
                current.append(tok)
            self.pos += 1
        items.append(current)
        projection, star, aggregate = _projection(items)
        reason: str | None = "aggregate" if aggregate else None
        if not self.accept("FROM"):
            if self.has_depth0(_COMPOUND_WORDS):
                reason = "compound select"
            return self.base(
                operation="SELECT",
                projection=projection,
                star=star,
                unresolved=reason or "no table",
            )
        tok = self.peek()
        if tok is None or tok.punct("("):
            return self.base(
                operation="SELECT", projection=projection, star=star, unresolved="subquery"
            )
        schema, table = self.qualified()
        tok = self.peek()
        if tok is not None and tok.punct("("):
            return self.base(
                operation="SELECT", table=table, schema=schema, unresolved="table function"
            )
        self.skip_alias()
        if self.accept("INDEXED"):
            self.accept("BY")
            self.ident()
        elif self.accept("NOT"):
            self.accept("INDEXED")
        tok = self.peek()
        if tok is not None and (tok.punct(",") or tok.word(*_JOIN_WORDS)):
            reason = reason or "join"
        if self.has_depth0(_COMPOUND_WORDS):
            reason = "compound select"
        if self.has_depth0(frozenset({"GROUP", "HAVING"})):
            reason = reason or "aggregate"
        where, has_where, where_reason = self.where_clause()
        return self.base(
            operation="SELECT",
            table=table,
            schema=schema,
            projection=projection,
            star=star,
            where=where,
            has_where=has_where,
            where_reason=where_reason,
            unresolved=reason,
        )

    def where_clause(self) -> tuple[tuple[tuple[str, Value], ...], bool, str | None]:
        """Parse from the cursor to past the WHERE clause if one is next (joins skipped)."""
        self.until_depth0(frozenset({"WHERE"}) | _WHERE_END | _COMPOUND_WORDS)
        if not self.accept("WHERE"):
            return (), False, None
        start = self.pos
        body = self.until_depth0(_WHERE_END | _COMPOUND_WORDS)
        numbers = {k: self.numbers.get(start + k) for k in range(len(body))}
        equalities, reason = _conjuncts(body, numbers)
        return equalities, True, reason

    def insert(self) -> Statement:
        first = self.take()
        assert first is not None
        upsert = first.upper == "REPLACE"
        operation = "REPLACE" if upsert else "INSERT"
        if self.accept("OR"):
            action = self.take()
            if action is not None and action.upper == "REPLACE":
                upsert = True
                operation = "REPLACE"
        self.accept("INTO")
        schema, table = self.qualified()
        if table is None:
            return self.base(operation=operation, unresolved="no table")
        if self.accept("AS"):
            self.ident()
        columns: list[str] = []
        tok = self.peek()
        if tok is not None and tok.punct("("):
            self.take()
            while (tok := self.take()) is not None and not tok.punct(")"):
                if tok.kind in (WORD, QIDENT, STRING):
                    columns.append(tok.text)
        rows: list[tuple[Value, ...]] = []
        reason: str | None = None
        if self.accept("VALUES"):
            while (tok := self.peek()) is not None and tok.punct("("):
                rows.append(self.values_row())
                tok = self.peek()
                if tok is not None and tok.punct(","):
                    self.take()
                else:
                    break
        elif self.accept("DEFAULT"):
            self.accept("VALUES")
            rows.append(())
        else:
            reason = "insert from select"
        rest = self.toks[self.pos : self.end]
        returning = any(t.word("RETURNING") for t in rest)
        for k, tok in enumerate(rest[:-1]):
            if tok.word("ON") and rest[k + 1].word("CONFLICT"):
                upsert = True
        return self.base(
            operation=operation,
            table=table,
            schema=schema,
            insert_columns=tuple(columns),
            insert_rows=tuple(rows),
            returning=returning,
            upsert=upsert,
            unresolved=reason,
        )

    def values_row(self) -> tuple[Value, ...]:
        self.take()  # (
        items: list[Value] = []
        current: list[tuple[int, Token]] = []
        depth = 0
        while (tok := self.peek()) is not None:
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                if depth == 0:
                    self.take()
                    break
                depth -= 1
            if depth == 0 and tok.punct(","):
                items.append(self.value(current))
                current = []
            else:
                current.append((self.pos, tok))
            self.pos += 1
        items.append(self.value(current))
        return tuple(items)

    def value(self, toks: list[tuple[int, Token]]) -> Value:
        return _value([t for _, t in toks], [self.numbers.get(p) for p, _ in toks])

    def update(self) -> Statement:
        self.take()
        if self.accept("OR"):
            self.take()
        schema, table = self.qualified()
        if table is None:
            return self.base(operation="UPDATE", unresolved="no table")
        self.skip_alias()
        if self.accept("INDEXED"):
            self.accept("BY")
            self.ident()
        elif self.accept("NOT"):
            self.accept("INDEXED")
        columns: list[str] = []
        # An assignment is from the row if its value references a column (`balance - 1`);
        # client-determined if it has only parameters and literals (`= %s`, `= 'done'`).
        row_based = client = False
        uses_row = uses_value = False
        if self.accept("SET"):
            # `a = expr, (b, c) = (...)`: the target is what precedes each depth-0 `=`.
            target = True
            depth = 0
            while (tok := self.peek()) is not None:
                if depth == 0 and tok.word("WHERE", "FROM", "RETURNING", "ORDER", "LIMIT"):
                    break
                if not target:
                    if tok.kind in (WORD, QIDENT) and _names_column(self.toks, self.pos):
                        uses_row = True
                    elif tok.kind in (PARAM, STRING, NUMBER, BLOB) or tok.word(
                        "TRUE", "FALSE", "NULL"
                    ):
                        uses_value = True
                if tok.punct("("):
                    depth += 1
                elif tok.punct(")"):
                    depth -= 1
                elif depth == 0 and tok.punct(","):
                    row_based = row_based or uses_row
                    client = client or (uses_value and not uses_row)
                    uses_row = uses_value = False
                    target = True
                elif depth == 0 and tok.punct("="):
                    target = False
                elif target and tok.kind in (WORD, QIDENT, STRING):
                    columns.append(tok.text)
                self.pos += 1
            row_based = row_based or uses_row
            client = client or (uses_value and not uses_row)
        from_row = row_based and not client
        reason = "update from" if self.accept("FROM") else None
        where, has_where, where_reason = self.where_clause()
        returning = any(t.word("RETURNING") for t in self.toks[self.pos : self.end])
        return self.base(
            operation="UPDATE",
            table=table,
            schema=schema,
            set_columns=tuple(columns),
            set_from_row=from_row,
            where=where,
            has_where=has_where,
            where_reason=where_reason,
            returning=returning,
            unresolved=reason,
        )

    def delete(self) -> Statement:
        self.take()
        self.accept("FROM")
        schema, table = self.qualified()
        if table is None:
            return self.base(operation="DELETE", unresolved="no table")
        self.skip_alias()
        where, has_where, where_reason = self.where_clause()
        returning = any(t.word("RETURNING") for t in self.toks[self.pos : self.end])
        return self.base(
            operation="DELETE",
            table=table,
            schema=schema,
            where=where,
            has_where=has_where,
            where_reason=where_reason,
            returning=returning,
        )


# Words in a SET value that are not column references.
_VALUE_WORDS: Final = frozenset(
    {
        "NULL",
        "TRUE",
        "FALSE",
        "DEFAULT",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "AND",
        "OR",
        "NOT",
        "IS",
        "IN",
        "LIKE",
        "ILIKE",
        "BETWEEN",
        "ESCAPE",
        "COLLATE",
        "INTERVAL",
        "ARRAY",
        "CURRENT_TIMESTAMP",
        "CURRENT_DATE",
        "CURRENT_TIME",
        "LOCALTIMESTAMP",
        "LOCALTIME",
        "CURRENT_USER",
        "SESSION_USER",
        "USER",
        "DISTINCT",
        "FROM",
        "AS",
    }
)


def _names_column(toks: list[Token], pos: int) -> bool:
    """Whether the identifier at `pos` (inside a SET value) names a column, not a keyword,
    a function (`now()`) or a type (`CAST(x AS int)`, `x::int` is gone already)."""
    tok = toks[pos]
    if tok.kind == WORD and tok.upper in _VALUE_WORDS:
        return False
    if pos + 1 < len(toks) and toks[pos + 1].punct("("):
        return tok.upper == "SELECT"  # a subquery reads rows; other calls are functions
    return not (pos > 0 and toks[pos - 1].word("AS"))


def _projection(items: list[list[Token]]) -> tuple[tuple[str | None, ...], bool, bool]:
    """(source column per item, `*` selected, aggregate used)."""
    out: list[str | None] = []
    star = False
    aggregate = False
    for item in items:
        for k, tok in enumerate(item[:-1]):
            if tok.kind == WORD and tok.upper in _AGGREGATES and item[k + 1].punct("("):
                aggregate = True
        if len(item) >= 1 and item[-1].punct("*") and (len(item) == 1 or item[-2].punct(".")):
            star = True
            out.append(None)
            continue
        # Drop a trailing alias: `expr AS name` or `column name`.
        body = item
        if len(body) >= 3 and body[-2].word("AS"):
            body = body[:-2]
        elif len(body) == 2 and body[0].kind in (WORD, QIDENT) and body[1].kind in (WORD, QIDENT):
            body = body[:1]
        elif len(body) == 4 and body[1].punct(".") and body[3].kind in (WORD, QIDENT):
            body = body[:3]
        if len(body) == 1 and body[0].kind in (WORD, QIDENT):
            out.append(body[0].text)
        elif (
            len(body) == 3
            and body[1].punct(".")
            and body[0].kind in (WORD, QIDENT)
            and body[2].kind in (WORD, QIDENT)
        ):
            out.append(body[2].text)
        else:
            out.append(None)
    return tuple(out), star, aggregate


def _literal(tok: Token, negative: bool) -> Value | None:
    if tok.kind == NUMBER:
        text = tok.text.replace("_", "")
        try:
            number: int | float = (
                int(text, 16)
                if text[:2].lower() == "0x"
                else (float(text) if any(ch in text for ch in ".eE") else int(text))
            )
        except ValueError:
            return None
        return Value("literal", literal=-number if negative else number)
    if negative:
        return None
    if tok.kind == STRING:
        return Value("literal", literal=tok.text)
    if tok.kind == BLOB:
        try:
            return Value("literal", literal=bytes.fromhex(tok.upper))
        except ValueError:
            return None
    if tok.word("TRUE", "FALSE"):
        return Value("literal", literal=1 if tok.upper == "TRUE" else 0)
    if tok.word("NULL"):
        return Value("literal", literal=None)
    return None


def _value(toks: list[Token], numbers: list[tuple[int, str | None] | None]) -> Value:
    negative = False
    if len(toks) == 2 and toks[0].punct("-", "+"):
        negative = toks[0].text == "-"
        toks, numbers = toks[1:], numbers[1:]
    if len(toks) != 1:
        return Value("expr")
    tok = toks[0]
    if tok.kind == PARAM and not negative:
        number = numbers[0]
        if number is None:
            return Value("expr")
        return Value("param", index=number[0], name=number[1])
    return _literal(tok, negative) or Value("expr")


def _conjuncts(
    body: list[Token], numbers: dict[int, tuple[int, str | None] | None]
) -> tuple[tuple[tuple[str, Value], ...], str | None]:
    """Equalities of the top-level AND conjuncts; the first reason another conjunct isn't one."""
    parts: list[list[tuple[int, Token]]] = [[]]
    depth = 0
    reason: str | None = None
    between = False
    for k, tok in enumerate(body):
        if tok.punct("("):
            depth += 1
        elif tok.punct(")"):
            depth -= 1
        if depth == 0 and tok.word("OR"):
            return (), "or"
        if depth == 0 and tok.word("BETWEEN"):
            between = True
        if depth == 0 and tok.word("AND"):
            if between:  # `x BETWEEN a AND b`: this AND belongs to BETWEEN
                between = False
            else:
                parts.append([])
                continue
        parts[-1].append((k, tok))
    # Strip one redundant level of parentheses around the whole clause.
    if (
        len(parts) == 1
        and len(parts[0]) >= 2
        and parts[0][0][1].punct("(")
        and parts[0][-1][1].punct(")")
    ):
        inner = [t for _, t in parts[0][1:-1]]
        if _balanced(inner):
            return _conjuncts(inner, {k - 1: numbers.get(k) for k, _ in parts[0][1:-1]})
    out: list[tuple[str, Value]] = []
    for part in parts:
        found = _equality(part, numbers)
        if isinstance(found, str):
            reason = reason or found
        else:
            out.append(found)
    return tuple(out), reason


def _balanced(toks: list[Token]) -> bool:
    depth = 0
    for tok in toks:
        if tok.punct("("):
            depth += 1
        elif tok.punct(")"):
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _column(toks: list[Token]) -> str | None:
    if len(toks) == 1 and toks[0].kind in (WORD, QIDENT) and toks[0].upper not in ("NULL",):
        return toks[0].text
    if len(toks) == 3 and toks[1].punct(".") and toks[2].kind in (WORD, QIDENT):
        return toks[2].text
    return None


def _equality(
    part: list[tuple[int, Token]], numbers: dict[int, tuple[int, str | None] | None]
) -> tuple[str, Value] | str:
    toks = [t for _, t in part]
    if not toks:
        return "empty condition"
    if any(t.word("SELECT") for t in toks):
        return "subquery"
    if any(t.word("IN") for t in toks):
        return "in"
    if any(t.word("LIKE", "GLOB", "REGEXP", "MATCH") for t in toks):
        return "pattern match"
    if any(t.punct("<", ">", "<=", ">=", "!=", "<>") or t.word("BETWEEN") for t in toks):
        return "range"
    eq = [k for k, t in enumerate(toks) if t.punct("=", "==") or t.word("IS")]
    if len(eq) != 1:
        return "not an equality"
    k = eq[0]
    if toks[k].word("IS") or (k + 1 < len(toks) and toks[k + 1].word("NOT")):
        return "is"
    left, right = toks[:k], toks[k + 1 :]
    left_n = [numbers.get(p) for p, _ in part[:k]]
    right_n = [numbers.get(p) for p, _ in part[k + 1 :]]
    for col_toks, val_toks, val_n in ((left, right, right_n), (right, left, left_n)):
        column = _column(col_toks)
        if column is None:
            continue
        value = _value(val_toks, val_n)
        if value.kind == "expr":
            if _column(val_toks) is not None:
                return "column comparison"
            continue
        if value.kind == "literal" and value.literal is None:
            return "null comparison"
        return column, value
    if any(t.punct("(") for t in toks):
        return "function"
    return "not an equality"
