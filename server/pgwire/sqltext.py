"""Lexical helpers over raw SQL text: split statements, find $n placeholders, first keyword.

They honour '...' strings (with '' escapes), E'...' strings, "..." identifiers, $tag$...$tag$
bodies and -- / /* */ comments, so a ';' or '$1' inside a literal is never mistaken for
syntax.
"""
from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_PLACEHOLDER = re.compile(r"\$([0-9]+)")


def _scan(sql: str):
    """Yield (kind, start, end) spans: 'code', 'string', 'ident', 'comment'."""
    i, n, start = 0, len(sql), 0
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            if start < i:
                yield "code", start, i
            end = sql.find("\n", i)
            end = n if end < 0 else end + 1
            yield "comment", i, end
            i = start = end
        elif ch == "/" and sql.startswith("/*", i):
            if start < i:
                yield "code", start, i
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            yield "comment", i, j
            i = start = j
        elif ch in ("'", '"'):
            if start < i:
                yield "code", start, i
            backslash = ch == "'" and i > 0 and sql[i - 1] in "eE" and (
                i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            j = min(j + 1, n)
            yield ("string" if ch == "'" else "ident"), i, j
            i = start = j
        elif ch == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            match = _DOLLAR_TAG.match(sql, i)
            if match:
                if start < i:
                    yield "code", start, i
                tag = match.group(0)
                end = sql.find(tag, match.end())
                end = n if end < 0 else end + len(tag)
                yield "string", i, end
                i = start = end
            else:
                i += 1
        else:
            i += 1
    if start < n:
        yield "code", start, n


def split_statements(sql: str) -> list[str]:
    """Statements of a simple Query, in order; empty ones dropped."""
    statements, current = [], []
    for kind, start, end in _scan(sql):
        chunk = sql[start:end]
        if kind != "code":
            current.append(chunk)
            continue
        parts = chunk.split(";")
        for part in parts[:-1]:
            current.append(part)
            statements.append("".join(current))
            current = []
        current.append(parts[-1])
    statements.append("".join(current))
    return [s.strip() for s in statements if strip_comments(s).strip()]


def strip_comments(sql: str) -> str:
    return "".join(sql[s:e] if kind != "comment" else " " for kind, s, e in _scan(sql))


def first_words(sql: str, count: int = 3) -> list[str]:
    code = strip_comments(sql).strip().lstrip("(").strip()
    return [w.upper() for w in re.findall(r"[A-Za-z_]+", code)[:count]]


def placeholders(sql: str) -> list[int]:
    """Numbers n of the $n placeholders, outside literals and comments."""
    found = []
    for kind, start, end in _scan(sql):
        if kind == "code":
            found.extend(int(m.group(1)) for m in _PLACEHOLDER.finditer(sql, start, end))
    return found


def substitute(sql: str, literals: dict[int, str]) -> str:
    """Replace each $n (outside literals/comments) with literals[n]."""
    out = []
    for kind, start, end in _scan(sql):
        chunk = sql[start:end]
        if kind == "code":
            chunk = _PLACEHOLDER.sub(lambda m: _replacement(m, literals), chunk)
        out.append(chunk)
    return "".join(out)


def _replacement(match: re.Match, literals: dict[int, str]) -> str:
    number = int(match.group(1))
    if number not in literals:
        from sqlgate.errors import InvalidParameter
        raise InvalidParameter(f"there is no parameter ${number}")
    # Parenthesised so a negative number or a cast binds as one operand.
    return f"({literals[number]})"
