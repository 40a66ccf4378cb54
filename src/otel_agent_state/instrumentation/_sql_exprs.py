"""Expressions of the hand-written SQL analyser: values, projections, WHERE conjuncts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._sql_lexer import BLOB, NUMBER, PARAM, QIDENT, STRING, WORD, Token
from ._sql_model import Value

_AGGREGATES: Final = frozenset(
    {"COUNT", "SUM", "MIN", "MAX", "AVG", "TOTAL", "GROUP_CONCAT", "STRING_AGG"}
)
Numbers = dict[int, tuple[int, str | None] | None]


@dataclass(frozen=True, slots=True)
class Scope:
    """Which column references name the target table's columns: those qualified by one of
    `names` (lower case: the table, its alias, schema.table), and unqualified ones only when
    the statement reads no other table (`exclusive`)."""

    names: frozenset[str] = frozenset()
    exclusive: bool = True


ANY_SCOPE: Final = Scope()


@dataclass(frozen=True, slots=True)
class Where:
    """The ANDed conjuncts of a WHERE clause, sorted into pins and reasons."""

    equalities: tuple[tuple[str, Value], ...] = ()
    sets: tuple[tuple[str, tuple[Value, ...]], ...] = ()
    reason: str | None = None  # first conjunct that is not an equality (IN lists included)
    rest: str | None = None  # first conjunct that is neither an equality nor an IN list


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


def names_column(toks: list[Token], pos: int) -> bool:
    """Whether the identifier at `pos` (inside a SET value) names a column, not a keyword,
    a function (`now()`) or a type (`CAST(x AS int)`, `x::int` is gone already)."""
    tok = toks[pos]
    if tok.kind == WORD and tok.upper in _VALUE_WORDS:
        return False
    if pos + 1 < len(toks) and toks[pos + 1].punct("("):
        return tok.upper == "SELECT"  # a subquery reads rows; other calls are functions
    return not (pos > 0 and toks[pos - 1].word("AS"))


def projection(items: list[list[Token]]) -> tuple[tuple[str | None, ...], bool, bool]:
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


def value_of(toks: list[Token], numbers: list[tuple[int, str | None] | None]) -> Value:
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


def conjuncts(body: list[Token], numbers: Numbers, scope: Scope = ANY_SCOPE) -> Where:
    """Equalities and IN lists of the top-level AND conjuncts, and why others are neither."""
    parts: list[list[tuple[int, Token]]] = [[]]
    depth = 0
    between = False
    for k, tok in enumerate(body):
        if tok.punct("("):
            depth += 1
        elif tok.punct(")"):
            depth -= 1
        if depth == 0 and (tok.word("OR", "XOR") or tok.punct("||")):
            return Where(reason="or", rest="or")
        if depth == 0 and tok.word("BETWEEN"):
            between = True
        if depth == 0 and (tok.word("AND") or tok.punct("&&")):
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
            return conjuncts(inner, {k - 1: numbers.get(k) for k, _ in parts[0][1:-1]}, scope)
    equalities: list[tuple[str, Value]] = []
    sets: list[tuple[str, tuple[Value, ...]]] = []
    reason: str | None = None
    rest: str | None = None
    for part in parts:
        found = _conjunct(part, numbers, scope)
        if isinstance(found, str):
            reason = reason or found
            rest = rest or found
        elif isinstance(found[1], Value):
            equalities.append((found[0], found[1]))
        else:
            sets.append((found[0], found[1]))
            reason = reason or "in"
    return Where(tuple(equalities), tuple(sets), reason, rest)


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


def _ident(tok: Token) -> bool:
    return tok.kind == QIDENT or (tok.kind == WORD and tok.upper != "NULL")


def column_ref(toks: list[Token]) -> tuple[str | None, str] | None:
    """(qualifier, column) of `c`, `t.c` or `s.t.c` (qualifier `s.t`), else None."""
    if len(toks) == 1 and _ident(toks[0]):
        return None, toks[0].text
    if len(toks) == 3 and toks[1].punct(".") and _ident(toks[0]) and _ident(toks[2]):
        return toks[0].text, toks[2].text
    if (
        len(toks) == 5
        and toks[1].punct(".")
        and toks[3].punct(".")
        and all(_ident(toks[i]) for i in (0, 2, 4))
    ):
        return f"{toks[0].text}.{toks[2].text}", toks[4].text
    return None


def _own(ref: tuple[str | None, str], scope: Scope) -> str | None:
    """Why the column reference does not name the target's column, or None if it does."""
    qualifier, _ = ref
    if qualifier is None:
        return None if scope.exclusive else "ambiguous column"
    if scope.names and qualifier.lower() not in scope.names:
        return "other table's column"
    return None


_Found = tuple[str, Value] | tuple[str, tuple[Value, ...]] | str


def _conjunct(part: list[tuple[int, Token]], numbers: Numbers, scope: Scope) -> _Found:
    toks = [t for _, t in part]
    if not toks:
        return "empty condition"
    if any(t.word("SELECT") for t in toks):
        return "subquery"
    if any(t.word("IN") for t in toks):
        return _in_list(part, numbers, scope)
    if any(t.word("LIKE", "GLOB", "REGEXP", "RLIKE", "MATCH", "ILIKE") for t in toks):
        return "pattern match"
    if any(t.punct("<", ">", "<=", ">=", "!=", "<>", "<=>") or t.word("BETWEEN") for t in toks):
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
        ref = column_ref(col_toks)
        if ref is None:
            continue
        array = _any_array(val_toks, val_n)
        value = array or value_of(val_toks, val_n)
        if value.kind == "expr":
            if column_ref(val_toks) is not None:
                return "column comparison"
            continue
        if value.kind == "literal" and value.literal is None:
            return "null comparison"
        why = _own(ref, scope)
        if why is not None:
            return why
        return (ref[1], (value,)) if array else (ref[1], value)
    if any(t.punct("(") for t in toks):
        return "function"
    return "not an equality"


def _any_array(toks: list[Token], numbers: list[tuple[int, str | None] | None]) -> Value | None:
    """`ANY(param)` (PostgreSQL: the parameter is an array of values), else None."""
    if (
        len(toks) == 4
        and toks[0].word("ANY")
        and toks[1].punct("(")
        and toks[2].kind == PARAM
        and toks[3].punct(")")
        and numbers[2] is not None
    ):
        number = numbers[2]
        return Value("array", index=number[0], name=number[1])
    return None


def _in_list(part: list[tuple[int, Token]], numbers: Numbers, scope: Scope) -> _Found:
    """`column IN (v, v, ...)` with plain values, else the reason."""
    toks = [t for _, t in part]
    at = next(k for k, t in enumerate(toks) if t.word("IN"))
    ref = column_ref(toks[:at])
    body = part[at + 1 :]
    if ref is None or len(body) < 2 or not body[0][1].punct("(") or not body[-1][1].punct(")"):
        return "in"
    values: list[Value] = []
    item: list[tuple[int, Token]] = []
    for pos, tok in [*body[1:-1], (-1, Token("punct", ","))]:
        if tok.punct("(", ")"):
            return "in"
        if tok.punct(","):
            value = value_of([t for _, t in item], [numbers.get(p) for p, _ in item])
            if value.kind == "expr":
                return "in"
            values.append(value)
            item = []
        else:
            item.append((pos, tok))
    why = _own(ref, scope)
    if why is not None:
        return why
    return ref[1], tuple(values)
