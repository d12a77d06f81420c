"""Prepared statements, portals and SQL cursors of one connection.

A portal computes its answer at most once (the first Execute/FETCH) and then only pages
through it, so chunked fetches release one noisy answer, never several draws.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from server.pgwire import types as T
from server.pgwire.session import Outcome, Plan
from sqlgate.errors import InvalidParameter, SqlSyntaxError


@dataclass
class Statement:
    name: str
    sql: str
    plan: Plan
    param_types: list[int]


@dataclass
class Portal:
    name: str
    plan: Plan
    result_formats: tuple[int, ...] = ()
    outcome: Outcome | None = None
    position: int = 0
    columns: list[T.Column] | None = None

    def formats(self, count: int) -> list[int]:
        if not self.result_formats:
            return [0] * count
        if len(self.result_formats) == 1:
            return [self.result_formats[0]] * count
        if len(self.result_formats) != count:
            raise InvalidParameter(f"bind message has {len(self.result_formats)} result "
                                   f"formats but the query has {count} columns")
        return list(self.result_formats)

    def take(self, limit: int) -> tuple[list[tuple], bool]:
        """The next `limit` rows (all if limit <= 0) and whether rows remain after them."""
        rows = self.outcome.rows if self.outcome else []
        end = len(rows) if limit <= 0 else min(len(rows), self.position + limit)
        chunk = rows[self.position:end]
        self.position = end
        return chunk, end < len(rows)


@dataclass(frozen=True)
class DeclareCursor:
    name: str
    query: str
    binary: bool


@dataclass(frozen=True)
class FetchCursor:
    name: str
    count: int  # <= 0 means ALL
    move: bool = False


_DECLARE = re.compile(
    r'^\s*DECLARE\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s+((?:BINARY|INSENSITIVE|ASENSITIVE|'
    r'NO\s+SCROLL|SCROLL)\s+)*CURSOR\s+(?:(?:WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(.*)$', re.I | re.S)
_FETCH = re.compile(
    r'^\s*(FETCH|MOVE)\s+(?:(NEXT|FIRST|ALL|FORWARD\s+ALL|FORWARD\s+[0-9]+|FORWARD|[0-9]+)\s+)?'
    r'(?:(?:FROM|IN)\s+)?("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$', re.I | re.S)
_CLOSE = re.compile(r'^\s*CLOSE\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$', re.I)


def _ident(text: str) -> str:
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def parse_declare(sql: str) -> DeclareCursor | None:
    match = _DECLARE.match(sql)
    if not match:
        return None
    return DeclareCursor(_ident(match.group(1)), match.group(3).strip().rstrip(";"),
                         "BINARY" in (match.group(0)[:match.start(3)].upper()))


def parse_fetch(sql: str) -> FetchCursor | None:
    match = _FETCH.match(sql)
    if not match:
        if re.match(r"^\s*(FETCH|MOVE)\b", sql, re.I):
            raise SqlSyntaxError("only FETCH [FORWARD] [n | ALL | NEXT] FROM cursor is supported")
        return None
    direction = (match.group(2) or "NEXT").upper().split()
    if direction[-1] == "ALL":
        count = 0
    elif direction[-1].isdigit():
        count = int(direction[-1])
        if count == 0:
            raise SqlSyntaxError("FETCH 0 is not supported")
    elif direction[-1] == "FIRST":
        raise SqlSyntaxError("FETCH FIRST needs a scrollable cursor; cursors only move forward")
    else:
        count = 1
    return FetchCursor(_ident(match.group(3)), count, match.group(1).upper() == "MOVE")


def parse_close(sql: str) -> str | None:
    match = _CLOSE.match(sql)
    if not match or match.group(1).upper() == "ALL":
        return None
    return _ident(match.group(1))
