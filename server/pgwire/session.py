"""One connection's SQL session: what each statement means and who answers it.

* Session statements (SET, SHOW, BEGIN/COMMIT/ROLLBACK, DISCARD, DEALLOCATE...) are answered
  here, harmlessly; `SET sqlgate.epsilon = x` sets the per-query epsilon of this session.
* Catalog queries (only pg_catalog / information_schema relations, or no relation at all) go
  to the per-connection synthetic catalog, which holds public metadata only.
* Everything else is analyst SQL: GatewayService.query (DP, charged) or, to describe it,
  GatewayService.describe (never executes, never spends).
* Writes are refused with 25006 before anything runs.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from rewriter.parse import MAX_SQL_LENGTH
from server.catalog_audit import audited_catalog
from server.pgwire import types as T
from server.pgwire.catalog import SERVER_VERSION, SyntheticCatalog, VERSION_STRING
from server.pgwire.sqltext import first_words, strip_comments
from sqlgate.errors import (InvalidParameter, LimitExceeded, NotFound, PolicyRefused,
                            ReadOnlyViolation, SqlgateError, SqlSyntaxError, UnsupportedQuery)

_WRITES = {"INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "GRANT",
           "REVOKE", "VACUUM", "ANALYZE", "CLUSTER", "REINDEX", "REFRESH", "COMMENT", "SECURITY",
           "LOCK", "IMPORT", "SELECT_INTO", "UPSERT", "REPLACE"}
_REFUSED = {"COPY", "ATTACH", "DETACH", "INSTALL", "LOAD", "PRAGMA", "EXPORT", "CHECKPOINT"}
_UNSUPPORTED = {"CALL", "DO", "PREPARE", "EXECUTE", "FETCH", "MOVE", "DECLARE", "NOTIFY",
                "LISTEN", "CREATE_FUNCTION"}
_QUERIES = {"SELECT", "WITH", "VALUES", "TABLE"}

# Names clients expect in ParameterStatus at startup; all of them answer SHOW too.
STARTUP_PARAMETERS = {
    "server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on",
    "TimeZone": "UTC", "IntervalStyle": "postgres", "is_superuser": "off",
    "application_name": "", "default_transaction_read_only": "on", "in_hot_standby": "off",
}
# A session's settings live in memory and in its catalog's pg_settings: bounded, so a client
# cannot grow the server's memory one SET at a time.
MAX_SETTINGS = 500
MAX_SETTING_CHARS = 8192
_SHOW_ALIASES = {"transaction isolation level": "transaction_isolation",
                 "time zone": "timezone", "session authorization": "session_authorization"}


@dataclass
class Outcome:
    """What one statement produced: rows (with columns) or just a command tag."""

    tag: str
    columns: list[T.Column] | None = None
    rows: list[tuple] = field(default_factory=list)
    empty: bool = False


@dataclass
class Plan:
    """A classified statement: kind in query|catalog|session|empty."""

    kind: str
    sql: str
    tree: exp.Expression | None = None


class Session:
    def __init__(self, service, caller, *, backend_pid: int, client_parameters: dict[str, str]):
        self.service = service
        self.caller = caller
        self.epsilon: float | None = None
        self.transaction = "I"  # I idle, T in a transaction block, E failed transaction
        self.settings: dict[str, str] = {k.lower(): v for k, v in STARTUP_PARAMETERS.items()}
        self._names = {k.lower(): k for k in STARTUP_PARAMETERS}
        datasets = service.datasets(caller)
        schemas = sorted(meta.name for meta in datasets)
        self.settings.update({
            "transaction_isolation": "read committed", "transaction_read_only": "on",
            "search_path": ", ".join(schemas) or "public", "extra_float_digits": "1",
            "session_authorization": caller.name, "max_identifier_length": "63",
            "statement_timeout": "0", "lc_collate": "C.UTF-8", "lc_ctype": "C.UTF-8",
            "server_version_num": "160004", "sqlgate.version": VERSION_STRING,
            "sqlgate.backend_pid": str(backend_pid),
            "sqlgate.current_schema": schemas[0] if schemas else "public",
            "sqlgate.epsilon": "default",
        })
        for key in ("application_name", "client_encoding", "datestyle", "timezone",
                    "extra_float_digits"):
            if key in {k.lower() for k in client_parameters}:
                value = next(v for k, v in client_parameters.items() if k.lower() == key)
                if key != "client_encoding":
                    self.settings[key] = value
        self.catalog = SyntheticCatalog(datasets, user=caller.name, settings=self.settings)
        self._dataset_columns = _column_types(datasets)

    def close(self) -> None:
        self.catalog.close()

    def parameter_status(self) -> list[tuple[str, str]]:
        return [(name, self.settings[name.lower()]) for name in STARTUP_PARAMETERS]

    # ------------------------------------------------------------ classify

    def plan(self, sql: str) -> Plan:
        words = first_words(sql)
        if not words:
            return Plan("empty", sql)
        head = words[0]
        if head in _QUERIES or head == "EXPLAIN":
            if head == "EXPLAIN":
                return Plan("session", sql)
            if len(sql) > MAX_SQL_LENGTH:
                # Before sqlglot sees it: parsing a 16 MiB statement (the message limit)
                # takes minutes and gigabytes. Same limit and error as the DP planner.
                raise UnsupportedQuery(f"query text is longer than {MAX_SQL_LENGTH} characters")
            try:
                tree = sqlglot.parse_one(sql, read="postgres")
            except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError,
                    RecursionError):
                # The DP planner reports the syntax error (or "nested too deeply").
                return Plan("query", sql)
            if isinstance(tree, exp.Select) and tree.args.get("into"):
                raise ReadOnlyViolation("SELECT INTO writes a table; this server is read-only")
            if self.catalog.uses_only_catalog(tree):
                self.catalog.check_bounded(tree)
                return Plan("catalog", sql, tree)
            return Plan("query", sql, tree)
        if head in _WRITES:
            raise ReadOnlyViolation(f"{head} is not allowed: sqlgate is read-only",
                                    hint="only SELECT queries with aggregates are answered")
        if head in _REFUSED:
            raise PolicyRefused(f"{head} is refused: no file, extension or engine access")
        return Plan("session", sql)

    # ------------------------------------------------------------ describe / run

    def describe(self, plan: Plan) -> list[T.Column] | None:
        """Result columns without executing anything that touches data or budget."""
        if plan.kind == "catalog":
            return self._run_catalog(plan).columns  # public metadata only: free
        if plan.kind == "query":
            self._check_transaction()
            return [T.Column(c.name, T.SQLGATE_OIDS.get(c.type, T.TEXT))
                    for c in self.service.describe(self.caller, plan.sql)]
        if plan.kind == "session":
            words = first_words(plan.sql, 2)
            if words[0] == "SHOW":
                return self.run_session(plan.sql).columns
            if words[0] == "EXPLAIN":
                return [T.Column("QUERY PLAN", T.TEXT)]
        return None

    def run(self, plan: Plan, cancel: threading.Event | None = None) -> Outcome:
        if plan.kind == "empty":
            return Outcome("", empty=True)
        if plan.kind == "session":
            return self.run_session(plan.sql)
        self._check_transaction()
        if plan.kind == "catalog":
            # Audited like the Trino front end's catalog queries (describe is not: it is no
            # statement the client ran).
            with audited_catalog(self.service, self.caller, plan.sql) as record:
                answer = self._run_catalog(plan)
                record["rows_out"] = len(answer.rows)
            return Outcome(f"SELECT {len(answer.rows)}", answer.columns, answer.rows)
        result = self.service.query(self.caller, plan.sql, epsilon=self.epsilon, cancel=cancel)
        columns = [T.Column(c.name, T.SQLGATE_OIDS.get(c.type, T.TEXT)) for c in result.columns]
        rows = [tuple(_plain(v) for v in row) for row in result.rows]
        return Outcome(f"SELECT {len(rows)}", columns, rows)

    def _run_catalog(self, plan: Plan):
        # Catalog queries hold a worker thread too: they count against the same per-user
        # concurrency limit as DP queries (as on the Trino front end), so one user's many
        # connections cannot occupy every thread with slow catalog queries.
        limiter = getattr(self.service, "limiter", None)
        if limiter is None:
            return self.catalog.run(plan.tree)
        with limiter.slot(self.caller.name):
            return self.catalog.run(plan.tree)

    def _check_transaction(self) -> None:
        if self.transaction == "E":
            raise _TransactionAborted()

    def fail(self) -> None:
        """An error happened: a transaction block becomes failed, like PostgreSQL."""
        if self.transaction == "T":
            self.transaction = "E"

    # ------------------------------------------------------------ session statements

    def run_session(self, sql: str) -> Outcome:
        words = first_words(sql, 3)
        head = words[0]
        text = strip_comments(sql).strip().rstrip(";").strip()
        if self.transaction == "E" and head not in ("ROLLBACK", "ABORT", "COMMIT", "END"):
            raise _TransactionAborted()
        if head in ("BEGIN", "START"):
            self.transaction = "T"
            return Outcome("BEGIN" if head == "BEGIN" else "START TRANSACTION")
        if head in ("COMMIT", "END"):
            failed = self.transaction == "E"
            self.transaction = "I"
            return Outcome("ROLLBACK" if failed else "COMMIT")
        if head in ("ROLLBACK", "ABORT"):
            if len(words) > 1 and words[1] == "TO":
                if self.transaction == "E":
                    self.transaction = "T"
                return Outcome("ROLLBACK")
            self.transaction = "I"
            return Outcome("ROLLBACK")
        if head in ("SAVEPOINT", "RELEASE"):
            return Outcome(head)
        if head == "SET":
            return self._set(text)
        if head == "RESET":
            name = text[5:].strip().lower()
            if name == "all":
                self.epsilon = None
            elif name == "sqlgate.epsilon":
                self.epsilon = None
                self.settings[name] = "default"
            return Outcome("RESET")
        if head == "SHOW":
            return self._show(text[4:].strip())
        if head == "DISCARD":
            self.epsilon = None
            self.settings["sqlgate.epsilon"] = "default"
            return Outcome("DISCARD " + (words[1] if len(words) > 1 else "ALL"))
        if head == "DEALLOCATE":
            return Outcome("DEALLOCATE" + (" ALL" if "ALL" in words[1:] else ""))
        if head in ("UNLISTEN", "CLOSE"):
            return Outcome(head + (" ALL" if head == "CLOSE" else ""))
        if head == "EXPLAIN":
            return self._explain(text)
        if head in _UNSUPPORTED:
            raise UnsupportedQuery(f"{head} is not supported by sqlgate")
        raise SqlSyntaxError(f"syntax error at or near \"{text.split()[0][:40]}\"")

    def _set(self, text: str) -> Outcome:
        body = re.sub(r"^SET\s+(SESSION\s+|LOCAL\s+)?", "", text, flags=re.I).strip()
        if re.match(r"^(TRANSACTION|SESSION\s+CHARACTERISTICS)\b", body, re.I):
            return Outcome("SET")
        match = re.match(r"^TIME\s+ZONE\s+(.+)$", body, re.I)
        if match:
            name, value = "timezone", match.group(1)
        else:
            match = re.match(r'^("?[A-Za-z_][A-Za-z0-9_.]*"?)\s*(?:=|\bTO\b)\s*(.+)$', body,
                             re.I | re.S)
            if not match:
                raise SqlSyntaxError("syntax error in SET; expected SET name = value")
            name, value = match.group(1).strip('"').lower(), match.group(2)
        value = _setting_value(value)
        if len(value) > MAX_SETTING_CHARS:
            raise LimitExceeded(f"setting values are limited to {MAX_SETTING_CHARS} characters")
        if name not in self.settings and len(self.settings) >= MAX_SETTINGS:
            raise LimitExceeded(f"a session holds at most {MAX_SETTINGS} settings")
        if name == "sqlgate.epsilon":
            self.epsilon = _epsilon(value)
            self.settings[name] = "default" if self.epsilon is None else repr(self.epsilon)
        elif name == "client_encoding" and value.upper().replace("-", "") not in ("UTF8", "UNICODE"):
            raise UnsupportedQuery("only client_encoding UTF8 is supported")
        else:
            self.settings[name] = value
        self.catalog.set_settings(self.settings)
        return Outcome("SET")

    def _show(self, name: str) -> Outcome:
        key = _SHOW_ALIASES.get(" ".join(name.lower().split()), name.lower().strip('"'))
        if key == "all":
            rows = sorted((self._names.get(k, k), v, "") for k, v in self.settings.items())
            return Outcome("SHOW", [T.Column("name", T.TEXT), T.Column("setting", T.TEXT),
                                    T.Column("description", T.TEXT)], rows)
        if key not in self.settings:
            raise NotFound(f'unrecognized configuration parameter "{name}"')
        return Outcome("SHOW", [T.Column(key, T.TEXT)], [(self.settings[key],)])

    def _explain(self, text: str) -> Outcome:
        query = re.sub(r"^EXPLAIN\s+(\((?:[^()]*)\)\s*|ANALYZE\s+|VERBOSE\s+)*", "", text,
                       flags=re.I)
        explanation = self.service.explain(self.caller, query, epsilon=self.epsilon)
        lines = [f"sqlgate DP plan on dataset {explanation.dataset} "
                 f"(mechanism {explanation.mechanism}, key release {explanation.key_release})",
                 f"  cost: epsilon={explanation.cost.epsilon:g} delta={explanation.cost.delta:g}"]
        for column in explanation.columns:
            ci = f" ci95=±{column.ci95:.4g}" if column.ci95 is not None else ""
            lines.append(f"  column {column.name} {column.type}"
                         f"{' noisy' if column.noisy else ''}{ci}")
        lines.append("  rewritten: " + " ".join(explanation.rewritten_sql.split()))
        return Outcome("EXPLAIN", [T.Column("QUERY PLAN", T.TEXT)], [(line,) for line in lines])

    # ------------------------------------------------------------ parameters

    def infer_parameter_types(self, plan: Plan, count: int, given: tuple[int, ...]) -> list[int]:
        """PG infers unspecified parameter types from context; we do it from the column a
        placeholder is compared with (dataset metadata), LIMIT/OFFSET, or default to text."""
        oids = [given[i] if i < len(given) and given[i] not in (0, T.UNKNOWN) else 0
                for i in range(count)]
        if plan.tree is not None and 0 in oids:
            for node in plan.tree.find_all(exp.Parameter, exp.Placeholder):
                number = _placeholder_number(node)
                if number is None or not 1 <= number <= count or oids[number - 1]:
                    continue
                oids[number - 1] = self._context_type(node)
        return [oid or (given[i] if i < len(given) and given[i] else T.TEXT)
                for i, oid in enumerate(oids)]

    def _context_type(self, node: exp.Expression) -> int:
        parent = node.parent
        while isinstance(parent, (exp.Paren, exp.Neg)):
            parent = parent.parent
        if isinstance(parent, exp.Cast):
            name = parent.to.sql(dialect="postgres").lower()
            return {"int": T.INT4, "integer": T.INT4, "bigint": T.INT8, "int8": T.INT8,
                    "int4": T.INT4, "smallint": T.INT2, "double precision": T.FLOAT8,
                    "float": T.FLOAT8, "real": T.FLOAT4, "numeric": T.NUMERIC,
                    "boolean": T.BOOL, "bool": T.BOOL, "date": T.DATE, "text": T.TEXT,
                    "varchar": T.VARCHAR, "timestamp": T.TIMESTAMP}.get(name, T.TEXT)
        if isinstance(parent, (exp.Limit, exp.Offset, exp.Fetch)):
            return T.INT8
        if isinstance(parent, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like,
                               exp.ILike, exp.Between, exp.In, exp.Add, exp.Sub, exp.Mul,
                               exp.Div)):
            for other in parent.iter_expressions():
                if isinstance(other, exp.Column):
                    kind = self._dataset_columns.get(other.name.lower())
                    if kind:
                        return T.SQLGATE_OIDS[kind]
        return 0


class _TransactionAborted(SqlgateError):
    code = "in_failed_sql_transaction"
    sqlstate = "25P02"
    http_status = 400

    def __init__(self):
        super().__init__("current transaction is aborted, commands ignored until end of "
                         "transaction block")


def _placeholder_number(node: exp.Expression) -> int | None:
    text = node.sql(dialect="postgres").lstrip("$")
    return int(text) if text.isdigit() else None


def _column_types(datasets) -> dict[str, str]:
    """Column name -> sqlgate type, when the name has one type across visible datasets."""
    seen: dict[str, set[str]] = {}
    for meta in datasets:
        for table in meta.tables.values():
            for column in table.columns.values():
                seen.setdefault(column.name.lower(), set()).add(column.type)
    return {name: next(iter(kinds)) for name, kinds in seen.items() if len(kinds) == 1}


def _setting_value(raw: str) -> str:
    raw = raw.strip()
    if raw.upper() == "DEFAULT":
        return "default"
    parts = [p.strip() for p in raw.split(",")]
    values = []
    for part in parts:
        if len(part) >= 2 and part[0] == part[-1] == "'":
            part = part[1:-1].replace("''", "'")
        elif len(part) >= 2 and part[0] == part[-1] == '"':
            part = part[1:-1]
        values.append(part)
    return ", ".join(values)


def _epsilon(value: str) -> float | None:
    if value.lower() in ("default", ""):
        return None
    try:
        epsilon = float(value)
    except ValueError:
        raise InvalidParameter("sqlgate.epsilon must be a positive number or DEFAULT") from None
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidParameter("sqlgate.epsilon must be a positive finite number")
    return epsilon


def _plain(value):
    """Normalise engine/pandas scalars to Python values for encoding."""
    if value is None:
        return None
    try:
        import pandas as pd
        if value is pd.NA or value is pd.NaT:
            return None
        if isinstance(value, pd.Timestamp):
            return value.to_pydatetime()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value
