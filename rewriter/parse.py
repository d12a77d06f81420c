"""Parse one analyst statement and classify it before any planning."""
from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Tokenizer, TokenType

from sqlgate.errors import PolicyRefused, ReadOnlyViolation, SqlSyntaxError, UnsupportedQuery

# sqlglot logs a warning for every statement it falls back to parsing as a raw command.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

READ_DIALECT = "postgres"
MAX_SQL_LENGTH = 100_000
MAX_TREE_NODES = 5_000

_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
           exp.TruncateTable)
_REFUSED_COMMANDS = {"COPY", "ATTACH", "DETACH", "INSTALL", "LOAD", "PRAGMA", "EXPORT",
                     "IMPORT", "CALL", "CHECKPOINT", "VACUUM", "GRANT", "REVOKE"}


def parse_statements(sql: str) -> list[exp.Expression]:
    """Parse a script into statements; empty statements are dropped."""
    if len(sql) > MAX_SQL_LENGTH:
        raise UnsupportedQuery(f"query text is longer than {MAX_SQL_LENGTH} characters")
    for word in leading_keywords(sql):
        if word in _REFUSED_COMMANDS:
            raise PolicyRefused(f"{word} is not allowed: analysts have no file, network, "
                                "extension or configuration access")
    try:
        trees = sqlglot.parse(sql, read=READ_DIALECT)
    except (ParseError, TokenError) as err:
        raise SqlSyntaxError(f"syntax error: {_first_line(err)}") from None
    except RecursionError:
        raise UnsupportedQuery("query is nested too deeply") from None
    return [t for t in trees if t is not None]


def parse_select(sql: str) -> exp.Select:
    """Parse exactly one read-only SELECT statement or raise a clear error."""
    statements = parse_statements(sql)
    if not statements:
        raise SqlSyntaxError("empty query")
    if len(statements) > 1:
        raise UnsupportedQuery("only one statement per query is allowed")
    tree = statements[0]
    _check_size(tree)
    return require_select(tree)


def leading_keywords(sql: str) -> list[str]:
    """The first word of every statement in a script, upper-cased (comments skipped)."""
    try:
        tokens = Tokenizer().tokenize(sql)
    except TokenError:
        raise SqlSyntaxError("syntax error: the query text could not be tokenized") from None
    words, expect = [], True
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            expect = True
        elif expect:
            words.append(token.text.upper())
            expect = False
    return words


def require_select(tree: exp.Expression) -> exp.Select:
    if isinstance(tree, _WRITES):
        raise ReadOnlyViolation("sqlgate is read-only: data definition and modification "
                                "statements are not allowed")
    if isinstance(tree, exp.Command):
        word = str(tree.this).upper()
        if word in _REFUSED_COMMANDS:
            raise PolicyRefused(f"{word} is not allowed: analysts have no file, network, "
                                "extension or configuration access")
        raise UnsupportedQuery(f"{word} statements are not supported")
    if isinstance(tree, (exp.Pragma, exp.Set, exp.Use)) or type(tree).__name__ in ("Copy", "Attach", "Detach", "Install", "Load"):
        raise PolicyRefused(f"{type(tree).__name__.upper()} is not allowed: analysts have no "
                            "file, network, extension or configuration access")
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        raise UnsupportedQuery("set operations (UNION/INTERSECT/EXCEPT) are not supported: "
                               "they can combine a unit's rows beyond its contribution bound")
    if not isinstance(tree, exp.Select):
        raise UnsupportedQuery(f"only SELECT queries are supported, not {type(tree).__name__.upper()}")
    return tree


def _check_size(tree: exp.Expression) -> None:
    count = 0
    for _ in tree.walk():
        count += 1
        if count > MAX_TREE_NODES:
            raise UnsupportedQuery(f"query is too large (more than {MAX_TREE_NODES} syntax nodes)")


def _first_line(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if errors:
        first = errors[0]
        desc = first.get("description", "invalid SQL")
        line, col = first.get("line"), first.get("col")
        if line is not None:
            return f"{desc} (line {line}, column {col})"
        return desc
    return str(err).splitlines()[0][:300]
