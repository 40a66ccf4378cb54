"""The SQL lexer of the hand-written analyser: tokens, placeholders, statement splitting.

Stdlib only and total (never raises on any text). Dialects: `sqlite` (the base), `postgresql`
(`$1`, `%s` / `%(name)s` placeholders, `$tag$` strings, `::type` casts dropped) and `mysql`
(`%s` / `%(name)s` placeholders, backslash escapes in strings, `"..."` strings, `#` comments).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str  # identifiers unquoted; strings unescaped; keywords as written
    upper: str = ""  # WORD tokens in upper case, for keyword tests

    def word(self, *words: str) -> bool:
        return self.kind == WORD and self.upper in words

    def punct(self, *symbols: str) -> bool:
        return self.kind == PUNCT and self.text in symbols


def _comment_end(sql: str, i: int, mysql: bool = False) -> int:
    """The index after the comment that starts at `i` (an unterminated one runs to the
    end), or -1 when no comment starts there. MySQL's `--` needs a space after it."""
    if sql.startswith("--", i) and not (mysql and i + 2 < len(sql) and not sql[i + 2].isspace()):
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
    mysql = dialect == "mysql"
    tokens: list[Token] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c in "-/" and (skip := _comment_end(sql, i, mysql)) >= 0:
            i = skip
        elif mysql and c == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif mysql and c in "'\"":  # MySQL: both quote strings, and backslash escapes
            text, i = _quoted(sql, i, c, c, backslash=True)
            tokens.append(Token(STRING, text))
        elif mysql and c == "%" and i + 1 < n and sql[i + 1] in "s(%":
            i = _format_param(sql, i, tokens)
        elif c in "'\"`":
            text, i = _quoted(sql, i, c, c)
            tokens.append(Token(STRING if c == "'" else QIDENT, text))
        elif c == "[" and not mysql:
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
        elif c == "?" and not mysql:
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            tokens.append(Token(PARAM, sql[i:j]))
            i = j
        elif c in ":@$" and i + 1 < n and (sql[i + 1].isalnum() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            # MySQL: `@var` is a user variable, `:x` no placeholder: an expression, not a value
            tokens.append(Token(PUNCT if mysql else PARAM, sql[i:j]))
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


def _format_param(sql: str, i: int, tokens: list[Token]) -> int:
    """A DB-API `format` / `pyformat` placeholder at `i` (`%s`, `%(name)s`, `%%`): append its
    token and return the index after it; a lone `%` is the modulo operator."""
    n = len(sql)
    if sql[i + 1] == "%":
        tokens.append(Token(PUNCT, "%"))
        return i + 2
    if sql[i + 1] == "s":
        tokens.append(Token(PARAM, "%s"))
        return i + 2
    close = sql.find(")", i + 2)
    if close < 0 or close + 1 >= n or sql[close + 1] not in "sbt":
        tokens.append(Token(PUNCT, "%"))
        return i + 1
    tokens.append(Token(PARAM, "%(" + sql[i + 2 : close] + ")"))
    return close + 2


_ESCAPES: Final = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


def _quoted(
    sql: str, start: int, quote: str, close: str, backslash: bool = False
) -> tuple[str, int]:
    """Text of a quoted run starting at `start` (doubled quote = escaped; with `backslash`,
    MySQL's `\\x` escapes too); returns (text, end)."""
    if backslash:
        return _backslash_quoted(sql, start, quote)
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


def _backslash_quoted(sql: str, start: int, quote: str) -> tuple[str, int]:
    parts: list[str] = []
    i = start + 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "\\" and i + 1 < n:
            nxt = sql[i + 1]
            # `\%` and `\_` keep their backslash (LIKE patterns); others are escapes.
            parts.append(_ESCAPES.get(nxt, "\\" + nxt if nxt in "%_" else nxt))
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                parts.append(quote)
                i += 2
                continue
            return "".join(parts), i + 1
        else:
            parts.append(c)
            i += 1
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
