"""The token cursor under the hand-written SQL parser: parameter numbering, navigation, and
the clauses every statement shares (table references, WHERE, RETURNING, VALUES rows)."""

from __future__ import annotations

from typing import Final

from ._sql_exprs import Scope, Where, conjuncts, projection, value_of
from ._sql_lexer import PARAM, QIDENT, STRING, WORD, Token
from ._sql_model import Statement, Value

_WRITES: Final = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"})
_JOIN_WORDS: Final = frozenset(
    {"JOIN", "LEFT", "RIGHT", "INNER", "CROSS", "NATURAL", "FULL", "STRAIGHT_JOIN"}
)
_COMPOUND_WORDS: Final = frozenset({"UNION", "INTERSECT", "EXCEPT"})
_WHERE_END: Final = frozenset(
    {"GROUP", "ORDER", "LIMIT", "WINDOW", "RETURNING", "HAVING", "OFFSET", "FOR", "FETCH", "LOCK"}
)
# Words that end a table reference rather than name its alias.
_NOT_ALIAS: Final = frozenset(
    {
        "WHERE",
        "SET",
        "VALUES",
        "VALUE",
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
        "LOCK",
        "USE",
        "FORCE",
        "IGNORE",
        "PARTITION",
        *_JOIN_WORDS,
        "OUTER",
    }
)
TableRef = tuple[str | None, str, str | None]  # schema, name, alias


class TokenCursor:
    """Tokens of one statement, a position in them, and the shared clause parsers."""

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
            elif tok.text.startswith("%("):  # pyformat %(name)s: bound from a mapping
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

    def at_punct(self, *symbols: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.punct(*symbols)

    def base(self, **kw: object) -> Statement:
        kw.setdefault("multiple", self.multiple)
        kw.setdefault("params", self.highest)
        kw.setdefault("param_names", self.names)
        table = kw.get("table")
        if kw.get("operation") in _WRITES and isinstance(table, str):
            kw.setdefault("targets", ((kw.get("schema"), table),))
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
        if self.at_punct("."):
            self.pos += 1
            second = self.ident()
            if second is None:
                return None, None
            return first, second
        return None, first

    def skip_alias(self) -> str | None:
        """Past an alias if one is next; returns it."""
        if self.accept("AS"):
            return self.ident()
        tok = self.peek()
        if tok is not None and (
            tok.kind == QIDENT or (tok.kind == WORD and tok.upper not in _NOT_ALIAS)
        ):
            self.pos += 1
            return tok.text
        return None

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

    def depth0_at(self, words: frozenset[str]) -> int:
        """Position of the first depth-0 keyword in `words` from the cursor, or -1."""
        depth = 0
        for at in range(self.pos, self.end):
            tok = self.toks[at]
            if tok.punct("("):
                depth += 1
            elif tok.punct(")"):
                depth -= 1
            elif depth == 0 and tok.kind == WORD and tok.upper in words:
                return at
        return -1

    def has_depth0(self, words: frozenset[str]) -> bool:
        return self.depth0_at(words) >= 0

    @staticmethod
    def scope(schema: str | None, table: str, alias: str | None, exclusive: bool) -> Scope:
        """The qualifiers that name the target: its alias if it has one (SQL then hides
        the table's own name), else the table and schema.table."""
        if alias:
            return Scope(frozenset({alias.lower()}), exclusive)
        names = {table.lower()}
        if schema:
            names.add(f"{schema}.{table}".lower())
        return Scope(frozenset(names), exclusive)

    def table_refs(self, stop: frozenset[str]) -> list[TableRef] | None:
        """`a [AS x], b JOIN c ON ...` up to a depth-0 word in `stop`; None if a reference is
        not a plain table (a subquery)."""
        refs: list[TableRef] = []
        while (tok := self.peek()) is not None and not (tok.kind == WORD and tok.upper in stop):
            if tok.punct(",") or tok.word(*_JOIN_WORDS, "OUTER"):
                self.pos += 1
                continue
            if tok.punct("("):
                return None
            if tok.word("ON"):
                self.pos += 1
                self.until_depth0(stop | _JOIN_WORDS, (",",))
                continue
            if tok.word("USING"):
                self.pos += 1
                if self.at_punct("("):
                    self.skip_group()
                continue
            schema, name = self.qualified()
            if name is None:
                return None
            refs.append((schema, name, self.skip_alias()))
        return refs

    def where_clause(self, scope: Scope) -> tuple[Where, bool]:
        """Parse from the cursor to past the WHERE clause if one is next (joins skipped)."""
        self.until_depth0(frozenset({"WHERE"}) | _WHERE_END | _COMPOUND_WORDS)
        if not self.accept("WHERE"):
            return Where(), False
        start = self.pos
        body = self.until_depth0(_WHERE_END | _COMPOUND_WORDS)
        numbers = {k: self.numbers.get(start + k) for k in range(len(body))}
        return conjuncts(body, numbers, scope), True

    def where_fields(self, scope: Scope) -> dict[str, object]:
        where, has_where = self.where_clause(scope)
        return {
            "where": where.equalities,
            "where_in": where.sets,
            "has_where": has_where,
            "where_reason": where.reason,
            "where_rest": where.rest,
        }

    def returning_fields(self) -> dict[str, object]:
        """RETURNING items from the cursor on (depth 0), as result columns."""
        at = self.depth0_at(frozenset({"RETURNING"}))
        if at < 0:
            return {}
        self.pos = at + 1
        items = self.items(frozenset())
        columns, star, _ = projection(items)
        return {"returning": True, "returning_columns": columns, "returning_star": star}

    def items(self, stop: frozenset[str]) -> list[list[Token]]:
        """Comma-separated depth-0 items from the cursor up to a word in `stop` or the end."""
        items: list[list[Token]] = []
        current: list[Token] = []
        depth = 0
        while (tok := self.peek()) is not None:
            if depth == 0 and tok.kind == WORD and tok.upper in stop:
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
        return items

    # -- statements

    def until_group(self) -> list[Token]:
        """At `(`: the tokens inside the group; the cursor moves past it."""
        start = self.pos
        self.skip_group()
        return self.toks[start + 1 : self.pos - 1]

    def positioned_items(self, stop: frozenset[str]) -> list[tuple[int, list[Token]]]:
        out: list[tuple[int, list[Token]]] = []
        start = self.pos
        for item in self.items(stop):
            out.append((start, item))
            start += len(item) + 1
        return out

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
        return value_of([t for _, t in toks], [self.numbers.get(p) for p, _ in toks])
