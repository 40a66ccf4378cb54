"""Driver placeholders rewritten for sqlglot, numbered as the fast path numbers them.

sqlglot cannot parse `%s` in its MySQL dialect and reads `?` as a jsonb operator in
PostgreSQL; every dialect reads a named `:__pN`. Quoted text, comments and PostgreSQL's
`$tag$` strings are copied as they are (MySQL: with backslash escapes).
"""

from __future__ import annotations

from typing import Final

_PREFIX: Final = "__p"

Number = tuple[int, str | None]  # (parameter number, name) as `Value.index` / `Value.name`


def rewrite(sql: str, dialect: str) -> tuple[str, dict[str, Number], bool]:
    """`sql` with each driver placeholder as `:__pK`, K -> (parameter number, name) as the fast
    path numbers them; whether it is MySQL's REPLACE (rewritten to INSERT)."""
    out: list[str] = []
    numbers: dict[str, Number] = {}
    names: dict[str, int] = {}
    highest = 0
    i, n = 0, len(sql)
    mysql, pg = dialect == "mysql", dialect == "postgresql"
    while i < n:
        c = sql[i]
        end = _skip(sql, i, mysql, pg)
        if end > i:
            text = sql[i:end]
            if (mysql or pg) and c in "'\"":
                text = text.replace("%%", "%")  # pyformat drivers double `%` in literals too
            out.append(text)
            i = end
            continue
        number: Number | None = None
        if (mysql or pg) and c == "%" and i + 1 < n:
            if sql[i + 1] == "%":
                out.append("%")
                i += 2
                continue
            if sql[i + 1] == "s":
                highest += 1
                number, i = (highest, None), i + 2
            elif sql[i + 1] == "(":
                close = sql.find(")", i + 2)
                if close > 0 and close + 1 < n and sql[close + 1] in "sbt":
                    name = sql[i + 2 : close]
                    if name not in names:
                        highest += 1
                        names[name] = highest
                    number, i = (names[name], name), close + 2
        elif pg and c == "$" and i + 1 < n and sql[i + 1].isdigit() and not _word(sql, i - 1):
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            value = int(sql[i + 1 : j]) if j - i < 8 else 0
            highest = max(highest, value)
            number, i = (value, None), j
        elif not (mysql or pg) and c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            if j == i + 1:
                highest += 1
                number = (highest, None)
            else:
                value = int(sql[i + 1 : j]) if j - i < 8 else 0
                highest = max(highest, value)
                number = (value, None)
            i = j
        elif (
            not (mysql or pg)
            and c in ":@$"
            and i + 1 < n
            and (sql[i + 1].isalnum() or sql[i + 1] == "_")
        ):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            name = sql[i + 1 : j]
            if name not in names:
                highest += 1
                names[name] = highest
            number, i = (names[name], name), j
        if number is None:
            out.append(c)
            i += 1
            continue
        key = f"{_PREFIX}{len(numbers) + 1}"
        numbers[key] = number
        out.append(f" :{key} ")
    text = "".join(out)
    replace_into = False
    if mysql:
        stripped = text.lstrip()
        if stripped[:7].upper() == "REPLACE" and not _word(stripped, 7):
            text, replace_into = "INSERT" + stripped[7:], True
    return text, numbers, replace_into


def _word(sql: str, at: int) -> bool:
    return 0 <= at < len(sql) and (sql[at].isalnum() or sql[at] == "_")


def _skip(sql: str, i: int, mysql: bool, pg: bool) -> int:
    """The end of the quoted text or comment that starts at `i`, or `i` if none does."""
    c, n = sql[i], len(sql)
    if sql.startswith("--", i) or (mysql and c == "#"):
        end = sql.find("\n", i)
        return n if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return n if end < 0 else end + 2
    if c in "'\"`" or (c == "[" and not (mysql or pg)):
        close = "]" if c == "[" else c
        j = i + 1
        while j < n:
            if mysql and sql[j] == "\\" and c != "`":
                j += 2
                continue
            if sql[j] == close:
                if close != "]" and j + 1 < n and sql[j + 1] == close:
                    j += 2
                    continue
                return j + 1
            j += 1
        return n
    if pg and c == "$" and not _word(sql, i - 1):
        tag_end = sql.find("$", i + 1)
        tag = sql[i : tag_end + 1] if tag_end > 0 else ""
        if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]):
            end = sql.find(tag, tag_end + 1)
            return n if end < 0 else end + len(tag)
    return i
