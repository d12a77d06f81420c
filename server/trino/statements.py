"""What a Trino statement means for sqlgate: a catalog query answered from public metadata,
a DP query for the gateway, or a session command answered with X-Trino-Set-* headers.

Anything that names a dataset table goes to the DP path (the gateway); catalog views and
constant queries run in a throwaway sandbox that holds public metadata only. A query that
mixes the two is refused: catalog answers must never be combined with private rows.
"""
from __future__ import annotations

import re
import secrets
import urllib.parse
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.dialects.trino import Trino
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from rewriter.parse import MAX_SQL_LENGTH
from sqlgate.errors import SqlSyntaxError, UnsupportedQuery

from server.trino.errors import (CATALOG_NOT_FOUND, GENERIC_USER_ERROR, INVALID_PARAMETER_USAGE,
                                 NOT_FOUND, NOT_SUPPORTED, SCHEMA_NOT_FOUND, TABLE_NOT_FOUND,
                                 TrinoError)
from server.trino.metadata import SQLGATE_VERSION, SYSTEM_SCHEMAS, TABLES, CatalogView, local_name
from server.trino.session import (CATALOG, SESSION_PROPERTIES, SYSTEM_CATALOG, TrinoSession,
                                  check_property)

GATEWAY_DIALECT = "postgres"   # what rewriter.parse reads
_QUERY_STARTS = {"SELECT", "WITH", "VALUES", "(", "TABLE"}


@dataclass(frozen=True)
class SandboxQuery:
    """A catalog or constant query: DuckDB SQL over the named views (catalog, schema, table)."""
    sql: str
    views: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class DPQuery:
    sql: str             # gateway (postgres) dialect, tables qualified by dataset


@dataclass(frozen=True)
class ExplainQuery:
    sql: str


@dataclass(frozen=True)
class DescribeOutput:
    sql: str


@dataclass(frozen=True)
class StaticResult:
    """An answer computed without any engine: session commands and small listings."""
    columns: tuple[tuple[str, str], ...] = ()       # (name, trino type)
    rows: tuple[tuple, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    update_type: str | None = None


Plan = SandboxQuery | DPQuery | ExplainQuery | DescribeOutput | StaticResult


_MAX_INDIRECTION = 8   # EXECUTE / EXPLAIN wrapping another statement


def plan_statement(sql: str, session: TrinoSession, view: CatalogView, *,
                   _depth: int = 0) -> Plan:
    if _depth > _MAX_INDIRECTION:
        # A prepared statement that executes itself (p = 'EXECUTE p') would recurse forever.
        raise UnsupportedQuery("statements nest (EXECUTE / EXPLAIN) too deeply")
    if len(sql) > MAX_SQL_LENGTH:
        # Before tokenizing: sqlglot needs seconds and hundreds of MB per megabyte of SQL.
        raise UnsupportedQuery(f"query text is longer than {MAX_SQL_LENGTH} characters")
    sql = _strip(sql)
    if not sql:
        raise SqlSyntaxError("empty statement")
    tokens = _tokens(sql)
    words = [t.text.upper() for t in tokens[:4]]
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first == "EXECUTE" and second == "IMMEDIATE":
        if len(tokens) < 3 or tokens[2].token_type != TokenType.STRING:
            raise SqlSyntaxError("syntax error: EXECUTE IMMEDIATE needs a string literal")
        return plan_statement(bind_parameters(tokens[2].text, _using(sql, tokens, 3)),
                              session, view, _depth=_depth + 1)
    if first == "EXECUTE":
        statement = _prepared(session, _name_token(tokens, 1))
        return plan_statement(bind_parameters(statement, _using(sql, tokens, 2)), session, view,
                              _depth=_depth + 1)
    if first == "PREPARE":
        name = _statement_name(_name_token(tokens, 1))
        if len(tokens) < 4 or tokens[2].text.upper() != "FROM":
            raise SqlSyntaxError("syntax error: expected PREPARE name FROM statement")
        statement = sql[tokens[3].start:]
        return StaticResult(headers={"X-Trino-Added-Prepare":
                                     f"{name}={urllib.parse.quote_plus(statement)}"},
                            update_type="PREPARE")
    if first == "DEALLOCATE":
        index = 2 if second == "PREPARE" else 1
        name = _name_token(tokens, index)
        return StaticResult(headers={"X-Trino-Deallocated-Prepare": name},
                            update_type="DEALLOCATE")
    if first in ("DESCRIBE", "DESC") and second == "OUTPUT":
        return DescribeOutput(_dp_sql(_prepared(session, _name_token(tokens, 2)), session,
                                      view))
    if first in ("DESCRIBE", "DESC") and second == "INPUT":
        statement = _prepared(session, _name_token(tokens, 2))
        count = sum(t.token_type == TokenType.PLACEHOLDER for t in _tokens(statement))
        return StaticResult(columns=(("Position", "bigint"), ("Type", "varchar")),
                            rows=tuple((i, "unknown") for i in range(count)))
    if first in ("DESCRIBE", "DESC"):
        return _show_columns(tokens[1:], session, view)
    if first == "SHOW":
        return _show(tokens[1:], session, view)
    if first == "USE":
        return _use(tokens[1:], session, view)
    if first == "SET" and second == "SESSION":
        return _set_session(sql, tokens)
    if first == "RESET" and second == "SESSION":
        name = _name_token(tokens, 2)
        if name not in SESSION_PROPERTIES:
            check_property(name, "")   # raises: unknown property
        return StaticResult(headers={"X-Trino-Clear-Session": name}, update_type="RESET SESSION")
    if first == "START" and second == "TRANSACTION":
        # sqlgate is read-only, so a transaction is only a label clients may carry around.
        return StaticResult(headers={"X-Trino-Started-Transaction-Id": secrets.token_hex(16)},
                            update_type="START TRANSACTION")
    if first in ("COMMIT", "ROLLBACK"):
        return StaticResult(headers={"X-Trino-Clear-Transaction-Id": "true"}, update_type=first)
    if first == "EXPLAIN":
        index = 1
        if second == "ANALYZE":
            raise TrinoError(NOT_SUPPORTED, "EXPLAIN ANALYZE is not supported: it would run the "
                                            "query; EXPLAIN shows cost and accuracy without "
                                            "spending budget")
        if second == "(":
            depth, index = 0, 1
            for index in range(1, len(tokens)):
                depth += {"(": 1, ")": -1}.get(tokens[index].text, 0)
                if depth == 0:
                    break
            index += 1
        if index >= len(tokens):
            raise SqlSyntaxError("syntax error: EXPLAIN needs a query")
        if tokens[index].text.upper() not in _QUERY_STARTS:
            raise TrinoError(NOT_SUPPORTED, "EXPLAIN applies to queries over dataset tables")
        inner = plan_statement(sql[tokens[index].start:], session, view, _depth=_depth + 1)
        if not isinstance(inner, DPQuery):
            raise TrinoError(NOT_SUPPORTED, "EXPLAIN applies to queries over dataset tables")
        return ExplainQuery(inner.sql)
    return _plan_query(sql, session, view)


# ---------------------------------------------------------------- queries


def _plan_query(sql: str, session: TrinoSession, view: CatalogView) -> Plan:
    try:
        trees = sqlglot.parse(sql, read="trino")
    except (ParseError, TokenError) as err:
        raise SqlSyntaxError(f"syntax error: {_first_line(err)}") from None
    except RecursionError:
        raise UnsupportedQuery("query is nested too deeply") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise TrinoError(NOT_SUPPORTED, "only one statement per request is allowed")
    tree = trees[0]
    if not isinstance(tree, exp.Query):
        # Writes, DDL and commands: the gateway refuses them with its own precise error.
        return DPQuery(sql)
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    meta, data = [], []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise TrinoError(NOT_SUPPORTED, "table functions are not supported")
        if not table.db and not table.catalog and table.name.lower() in ctes:
            continue
        target = _classify(table, session, view)
        (meta if target[0] == "meta" else data).append((table, target))
    if meta and data:
        raise TrinoError(NOT_SUPPORTED, "a query cannot combine catalog tables "
                                        "(information_schema, system) with dataset tables")
    if data:
        for table, (_, schema) in data:
            table.set("catalog", None)
            if not table.db and schema:
                table.set("db", exp.to_identifier(schema))
        return DPQuery(tree.sql(dialect=GATEWAY_DIALECT))
    _check_sandbox_safe(tree)
    views = []
    for table, (_, catalog, schema, name) in meta:
        suffix = "__system" if catalog == SYSTEM_CATALOG and schema == "information_schema" else ""
        alias = table.alias
        table.set("catalog", None)
        table.set("db", None)
        table.set("this", exp.to_identifier(local_name(schema, name) + suffix, quoted=True))
        if not alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
        views.append((catalog, schema, name))
    _name_outputs(tree)
    tree = tree.transform(lambda node: _constant(node, session))
    return SandboxQuery(tree.sql(dialect="duckdb"), tuple(dict.fromkeys(views)))


# What catalog and constant queries may use. BI tools browse schemas with plain filters and
# sorts; anything else (sequence(), repeat(), unnest, engine functions) could exhaust memory
# or reach engine internals, so it is refused rather than run.
_SANDBOX_NODES = tuple(getattr(exp, name) for name in (
    "Select", "Union", "Intersect", "Except", "Subquery", "With", "CTE", "From", "Join",
    "Where", "Group", "Having", "Order", "Ordered", "Limit", "Offset", "Distinct", "Table",
    "TableAlias", "Alias", "Column", "Identifier", "Star", "Literal", "Boolean", "Null",
    "DataType", "DataTypeParam", "Cast", "TryCast", "Paren", "Tuple", "Values",
    "And", "Or", "Not", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ",
    "Is", "In", "Between", "Like", "ILike", "Escape", "Add", "Sub", "Mul", "Div", "Mod", "Neg",
    "Case", "If", "Coalesce", "Nullif", "Concat", "DPipe", "Lower", "Upper", "Length",
    "Substring", "Trim", "Count", "Min", "Max", "Sum", "Avg",
    "CurrentVersion", "CurrentUser", "CurrentCatalog", "CurrentSchema",
) if hasattr(exp, name))


def _check_sandbox_safe(tree: exp.Expression) -> None:
    for node in tree.walk():
        if not isinstance(node, _SANDBOX_NODES):
            name = node.sql_name() if hasattr(node, "sql_name") else type(node).__name__
            if isinstance(node, exp.Anonymous):
                name = str(node.this)
            raise TrinoError(NOT_SUPPORTED, f"{name} is not supported in catalog queries "
                                            f"(information_schema, system, constants)")


def _name_outputs(tree: exp.Expression) -> None:
    """Unnamed output expressions are called _col0, _col1... as Trino names them."""
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None:
        return
    for index, expression in enumerate(list(select.expressions)):
        if not isinstance(expression, (exp.Alias, exp.Column, exp.Star)):
            expression.replace(exp.alias_(expression.copy(), f"_col{index}", quoted=True))


def _classify(table: exp.Table, session: TrinoSession, view: CatalogView):
    """("meta", catalog, schema, table) for catalog views, ("data", default schema) otherwise."""
    catalog = table.catalog.lower() if table.catalog else None
    schema = table.db.lower() if table.db else None
    name = table.name.lower()
    session_catalog = (session.catalog or CATALOG).lower()
    effective_catalog = catalog or session_catalog
    if effective_catalog not in (CATALOG, SYSTEM_CATALOG):
        raise TrinoError(CATALOG_NOT_FOUND, f"catalog '{effective_catalog}' does not exist; "
                                            f"sqlgate has '{CATALOG}' and '{SYSTEM_CATALOG}'")
    effective_schema = schema or (session.schema.lower() if session.schema else None)
    if effective_catalog == SYSTEM_CATALOG:
        if effective_schema is None:
            raise TrinoError(GENERIC_USER_ERROR, f"table '{name}' needs a schema: the session "
                                                 f"schema is not set")
        if effective_schema not in SYSTEM_SCHEMAS:
            raise TrinoError(SCHEMA_NOT_FOUND, f"schema 'system.{effective_schema}' does not "
                                               f"exist")
        if (effective_schema, name) not in TABLES:
            raise TrinoError(TABLE_NOT_FOUND, f"table 'system.{effective_schema}.{name}' does "
                                              f"not exist")
        return ("meta", SYSTEM_CATALOG, effective_schema, name)
    if effective_schema == "information_schema":
        if ("information_schema", name) not in TABLES:
            raise TrinoError(TABLE_NOT_FOUND, f"table 'information_schema.{name}' does not "
                                              f"exist")
        return ("meta", CATALOG, "information_schema", name)
    return ("data", None if schema else session.schema)


def _constant(node: exp.Expression, session: TrinoSession) -> exp.Expression:
    if isinstance(node, exp.CurrentVersion) or (
            isinstance(node, exp.Anonymous) and str(node.this).lower() == "version"):
        return exp.Literal.string(SQLGATE_VERSION)
    if isinstance(node, exp.CurrentUser):
        return exp.Literal.string(session.user.name)
    if isinstance(node, exp.CurrentCatalog):
        return exp.Literal.string(session.catalog) if session.catalog else exp.Null()
    if isinstance(node, exp.CurrentSchema) or (
            isinstance(node, exp.Column) and not node.table and node.name.lower() in
            ("current_schema",)):
        return exp.Literal.string(session.schema) if session.schema else exp.Null()
    return node


def _dp_sql(statement: str, session: TrinoSession, view: CatalogView) -> str:
    plan = _plan_query(_strip(statement), session, view)
    if not isinstance(plan, DPQuery):
        raise TrinoError(NOT_SUPPORTED, "DESCRIBE OUTPUT applies to queries over dataset tables")
    return plan.sql


# ---------------------------------------------------------------- parameters


def bind_parameters(statement: str, using: str | None) -> str:
    """`statement` with each `?` replaced by the matching literal of the USING list.

    Only literals are accepted as parameters, rendered back by sqlglot, so a parameter can
    never change the structure of the statement.
    """
    params: list[exp.Expression] = []
    if using and using.strip():
        try:
            select = sqlglot.parse_one(f"SELECT {using}", read="trino")
        except (ParseError, TokenError) as err:
            raise SqlSyntaxError(f"syntax error in USING: {_first_line(err)}") from None
        if not isinstance(select, exp.Select) or select.args.get("from_") is not None \
                or select.args.get("from") is not None:
            raise TrinoError(INVALID_PARAMETER_USAGE, "USING takes a list of literal values")
        params = list(select.expressions)
        for param in params:
            if not _is_literal(param):
                raise TrinoError(INVALID_PARAMETER_USAGE,
                                 "query parameters must be literal values")
    holes = [t for t in _tokens(statement) if t.token_type == TokenType.PLACEHOLDER]
    if len(holes) != len(params):
        raise TrinoError(INVALID_PARAMETER_USAGE, f"incorrect number of parameters: expected "
                                                  f"{len(holes)} but found {len(params)}")
    pieces, last = [], 0
    for hole, param in zip(holes, params):
        pieces.append(statement[last:hole.start])
        pieces.append(param.sql(dialect="trino"))
        last = hole.end + 1
    pieces.append(statement[last:])
    return "".join(pieces)


def _is_literal(node: exp.Expression) -> bool:
    if isinstance(node, (exp.Literal, exp.Null, exp.Boolean, exp.HexString)):
        return True
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    if isinstance(node, exp.Cast):
        return isinstance(node.this, exp.Literal) and node.this.is_string
    return False


# ---------------------------------------------------------------- SHOW / DESCRIBE / USE / SET


def _show(tokens, session: TrinoSession, view: CatalogView) -> Plan:
    what = tokens[0].text.upper() if tokens else ""
    rest = tokens[1:]
    if what == "CATALOGS":
        like = _like(rest)
        return _sandbox('SELECT catalog_name AS "Catalog" FROM system.metadata.catalogs',
                        session, view, where=_where([], "catalog_name", like), order="1")
    if what == "SCHEMAS":
        name, rest = _from_name(rest)
        if len(name) > 1:
            raise SqlSyntaxError("syntax error: SHOW SCHEMAS FROM takes a catalog name")
        catalog = (name[0] if name else session.catalog or CATALOG).lower()
        if catalog not in (CATALOG, SYSTEM_CATALOG):
            raise TrinoError(CATALOG_NOT_FOUND, f"catalog '{catalog}' does not exist")
        return _sandbox(f'SELECT schema_name AS "Schema" FROM {catalog}.information_schema.'
                        f'schemata', session, view,
                        where=_where([], "schema_name", _like(rest)), order="1")
    if what == "TABLES":
        name, rest = _from_name(rest)
        catalog, schema = _catalog_schema(name, session)
        like = _like(rest)
        _require_schema(catalog, schema, view)
        source = f"{catalog}.information_schema.tables"
        conditions = [f"table_schema = {_quote(schema)}"]
        return _sandbox(f'SELECT table_name AS "Table" FROM {source}', session, view,
                        where=_where(conditions, "table_name", like), order="1")
    if what == "COLUMNS":
        return _show_columns(rest, session, view, skip_from=True)
    if what == "SESSION":
        epsilon = session.properties.get("epsilon", "")
        return StaticResult(columns=(("Name", "varchar"), ("Value", "varchar"),
                                     ("Default", "varchar"), ("Type", "varchar"),
                                     ("Description", "varchar")),
                            rows=(("epsilon", epsilon, "", "double",
                                   SESSION_PROPERTIES["epsilon"]),))
    if what == "FUNCTIONS":
        raise TrinoError(NOT_SUPPORTED, "SHOW FUNCTIONS is not supported; see the sqlgate "
                                        "README for the SQL subset")
    raise TrinoError(NOT_SUPPORTED, f"SHOW {what} is not supported")


def _show_columns(tokens, session: TrinoSession, view: CatalogView, *, skip_from=False) -> Plan:
    if skip_from and tokens and tokens[0].text.upper() in ("FROM", "IN"):
        tokens = tokens[1:]
    name, rest = _qualified_name(tokens)
    if not name:
        raise SqlSyntaxError("syntax error: expected a table name")
    like = _like(rest)
    table = name[-1]
    catalog, schema = _catalog_schema(name[:-1], session)
    if catalog == SYSTEM_CATALOG:
        if (schema.lower(), table.lower()) not in TABLES:
            raise TrinoError(TABLE_NOT_FOUND, f"table 'system.{schema}.{table}' does not exist")
    else:
        if not view.has_table(schema, table):
            raise TrinoError(TABLE_NOT_FOUND, f"table '{CATALOG}.{schema}.{table}' does not "
                                              f"exist")
    source = f"{catalog}.information_schema.columns"
    conditions = [f"lower(table_schema) = {_quote(schema.lower())}",
                  f"lower(table_name) = {_quote(table.lower())}"]
    return _sandbox('SELECT column_name AS "Column", data_type AS "Type", '
                    f'extra_info AS "Extra", comment AS "Comment" FROM {source}',
                    session, view, where=_where(conditions, "column_name", like),
                    order="ordinal_position")


def _use(tokens, session: TrinoSession, view: CatalogView) -> Plan:
    name, rest = _qualified_name(tokens)
    if not name or len(name) > 2 or rest:
        raise SqlSyntaxError("syntax error: expected USE schema or USE catalog.schema")
    catalog, schema = _catalog_schema(name, session)
    _require_schema(catalog, schema, view)
    headers = {"X-Trino-Set-Schema": schema}
    if len(name) == 2 or not session.catalog:
        headers["X-Trino-Set-Catalog"] = catalog
    return StaticResult(headers=headers, update_type="USE")


def _set_session(sql: str, tokens) -> Plan:
    if len(tokens) < 5 or tokens[3].text != "=":
        raise SqlSyntaxError("syntax error: expected SET SESSION name = value")
    name = tokens[2].text
    value_text = sql[tokens[4].start:].strip()
    try:
        value = sqlglot.parse_one(value_text, read="trino")
    except (ParseError, TokenError) as err:
        raise SqlSyntaxError(f"syntax error: {_first_line(err)}") from None
    except RecursionError:
        raise UnsupportedQuery("query is nested too deeply") from None
    if not isinstance(value, exp.Literal):
        raise TrinoError(GENERIC_USER_ERROR, "session property values must be literals")
    check_property(name, value.this)
    return StaticResult(headers={"X-Trino-Set-Session":
                                 f"{name}={urllib.parse.quote(str(value.this))}"},
                        update_type="SET SESSION")


def _sandbox(select: str, session: TrinoSession, view: CatalogView, *, where: str = "",
             order: str | None = None) -> Plan:
    sql = select + where + (f" ORDER BY {order}" if order else "")
    return _plan_query(sql, session, view)


def _where(conditions: list[str], column: str, like: tuple[str, str | None] | None) -> str:
    if like is not None:
        pattern, escape = like
        conditions = conditions + [f"{column} LIKE {_quote(pattern)}" + (
            f" ESCAPE {_quote(escape)}" if escape is not None else "")]
    return (" WHERE " + " AND ".join(conditions)) if conditions else ""


def _like(tokens) -> tuple[str, str | None] | None:
    """(pattern, escape) of a trailing LIKE 'pattern' [ESCAPE 'c'], if any."""
    if not tokens:
        return None
    if tokens[0].text.upper() != "LIKE" or len(tokens) < 2 \
            or tokens[1].token_type != TokenType.STRING:
        raise SqlSyntaxError(f"syntax error at '{tokens[0].text}'")
    if len(tokens) == 2:
        return tokens[1].text, None
    if tokens[2].text.upper() == "ESCAPE" and len(tokens) == 4 \
            and tokens[3].token_type == TokenType.STRING:
        return tokens[1].text, tokens[3].text
    raise SqlSyntaxError(f"syntax error at '{tokens[2].text}'")


def _from_name(tokens):
    if tokens and tokens[0].text.upper() in ("FROM", "IN"):
        name, rest = _qualified_name(tokens[1:])
        if not name:
            raise SqlSyntaxError("syntax error: expected a name after FROM")
        return name, rest
    return [], tokens


def _qualified_name(tokens):
    parts, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        if token.token_type in (TokenType.STRING, TokenType.DOT) or \
                token.text.upper() in ("LIKE", "ESCAPE"):
            break
        parts.append(token.text)
        index += 1
        if index < len(tokens) and tokens[index].token_type == TokenType.DOT:
            index += 1
        else:
            break
    return parts, tokens[index:]


def _catalog_schema(name: list[str], session: TrinoSession) -> tuple[str, str]:
    if len(name) > 2:
        raise SqlSyntaxError(f"syntax error: too many name parts in '{'.'.join(name)}'")
    catalog = (name[0] if len(name) == 2 else session.catalog or CATALOG).lower()
    schema = name[-1] if name else session.schema
    if catalog not in (CATALOG, SYSTEM_CATALOG):
        raise TrinoError(CATALOG_NOT_FOUND, f"catalog '{catalog}' does not exist")
    if not schema:
        raise TrinoError(GENERIC_USER_ERROR, "schema must be specified when the session "
                                             "schema is not set")
    return catalog, schema


def _require_schema(catalog: str, schema: str, view: CatalogView) -> None:
    known = SYSTEM_SCHEMAS if catalog == SYSTEM_CATALOG else view.schemas()
    if schema.lower() not in {s.lower() for s in known}:
        raise TrinoError(SCHEMA_NOT_FOUND, f"schema '{catalog}.{schema}' does not exist")


# ---------------------------------------------------------------- tokens


class _Tokenizer(Trino.Tokenizer):
    # Trino's tokenizer folds SHOW/EXPLAIN/PREPARE... and the rest of the statement into one
    # command token; statement heads are parsed here, so keep every word a token.
    COMMANDS: set = set()
    KEYWORDS = {k: v for k, v in Trino.Tokenizer.KEYWORDS.items() if v != TokenType.COMMAND}


def _tokens(sql: str):
    try:
        return _Tokenizer().tokenize(sql)
    except (TokenError, ValueError) as err:
        raise SqlSyntaxError(f"syntax error: {_first_line(err)}") from None


def _using(sql: str, tokens, index: int) -> str | None:
    """The text of the USING list that starts at tokens[index], if any."""
    if len(tokens) <= index:
        return None
    if tokens[index].token_type != TokenType.USING or len(tokens) <= index + 1:
        raise SqlSyntaxError("syntax error: expected USING and parameter values")
    return sql[tokens[index + 1].start:]


def _name_token(tokens, index: int) -> str:
    if len(tokens) <= index:
        raise SqlSyntaxError("syntax error: a statement name is missing")
    return tokens[index].text


_STATEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _statement_name(name: str) -> str:
    # Names travel in X-Trino-Added-Prepare as name=statement: keep them plain identifiers.
    if not _STATEMENT_NAME.match(name):
        raise SqlSyntaxError("prepared statement names must be plain identifiers")
    return name


def _prepared(session: TrinoSession, name: str) -> str:
    statement = session.prepared.get(name)
    if statement is None:
        raise TrinoError(NOT_FOUND, f"prepared statement not found: {name}")
    return statement


def _strip(sql: str) -> str:
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def _quote(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="trino")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
