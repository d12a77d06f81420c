"""PEP 249 (DB-API 2.0) over the sqlgate HTTP API, so pandas and SQLAlchemy can use it.

    from sqlgate.client import dbapi
    conn = dbapi.connect("http://127.0.0.1:8765", token="sqg_...")
    cur = conn.cursor()
    cur.execute("SELECT region, COUNT(*) FROM patients WHERE age > %(age)s GROUP BY region",
                {"age": 30})
    cur.fetchall(); cur.sqlgate   # noise metadata: cost, 95% CIs, query id

Every execute is one POST /v1/query: the one noisy answer is fetched whole and the fetch*
methods page through that copy, so fetching never asks for (or pays for) a new answer.
Parameters (paramstyle `pyformat`: %s or %(name)s) are rendered as SQL literals by
sqlglot, so a value can never change the statement around it.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Mapping, Sequence

from sqlgate.client.client import from_json_value
from sqlgate.client.errors import ConnectionFailed
from sqlgate.client.frame import literal
from sqlgate.client.transport import DEFAULT_TIMEOUT_S, Credentials, Transport
from sqlgate.errors import SqlgateError

apilevel = "2.0"
threadsafety = 1          # connections may not be shared between threads
paramstyle = "pyformat"


# ---------------------------------------------------------------- exceptions (PEP 249)


class Warning(Exception):  # noqa: A001 - the name PEP 249 requires
    pass


class Error(Exception):
    """Base class. `code`, `sqlstate`, `details` and `hint` come from the server's error;
    the typed sqlgate error (e.g. BudgetExhausted) is the `__cause__`."""

    def __init__(self, message: str, *, code: str | None = None, sqlstate: str | None = None,
                 details: dict | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.sqlstate = sqlstate
        self.details = details or {}
        self.hint = hint


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


_ERROR_CLASSES = {
    "syntax_error": ProgrammingError, "undefined_table": ProgrammingError,
    "undefined_column": ProgrammingError, "refused_by_policy": ProgrammingError,
    "permission_denied": ProgrammingError, "invalid_parameter": ProgrammingError,
    "not_found": ProgrammingError,
    "unsupported": NotSupportedError, "read_only": NotSupportedError,
    "budget_exhausted": OperationalError, "too_many_requests": OperationalError,
    "query_canceled": OperationalError, "authentication_failed": OperationalError,
    "connection_failed": OperationalError, "limit_exceeded": OperationalError,
    "invalid_data": DataError,
    "execution_failed": InternalError, "internal_error": InternalError,
}


def _dbapi_error(err: SqlgateError) -> Error:
    cls = _ERROR_CLASSES.get(err.code, DatabaseError)
    return cls(err.message, code=err.code, sqlstate=err.sqlstate, details=err.details,
               hint=err.hint)


# ---------------------------------------------------------------- types (PEP 249)


class DBAPITypeObject:
    def __init__(self, *values: str):
        self.values = frozenset(values)

    def __eq__(self, other: object) -> bool:
        return other in self.values

    def __hash__(self) -> int:
        return hash(self.values)


STRING = DBAPITypeObject("string")
BINARY = DBAPITypeObject("binary")
NUMBER = DBAPITypeObject("int", "float", "bool")
DATETIME = DBAPITypeObject("date", "timestamp")
ROWID = DBAPITypeObject("rowid")

Date = dt.date
Time = dt.time
Timestamp = dt.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> dt.date:  # noqa: N802 - PEP 249 names
    return dt.date.fromtimestamp(ticks)


def TimeFromTicks(ticks: float) -> dt.time:  # noqa: N802
    return dt.datetime.fromtimestamp(ticks).time()


def TimestampFromTicks(ticks: float) -> dt.datetime:  # noqa: N802
    return dt.datetime.fromtimestamp(ticks)


# ---------------------------------------------------------------- connection and cursor


def connect(url: str, token: str | None = None, user: str | None = None,
            password: str | None = None, *, epsilon: float | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, verify: Any = True) -> "Connection":
    """A connection to the sqlgate server at `url`. `epsilon`, when given, is the privacy
    cost of every query run through it (else each dataset's default)."""
    try:
        transport = Transport(url, Credentials(token=token, user=user, password=password),
                              timeout_s=timeout_s, verify=verify)
    except SqlgateError as err:
        raise InterfaceError(err.message, code=err.code, sqlstate=err.sqlstate) from err
    return Connection(transport, epsilon=epsilon)


class Connection:
    def __init__(self, transport: Transport, *, epsilon: float | None = None):
        self._http: Transport | None = transport
        self.epsilon = epsilon

    def cursor(self) -> "Cursor":
        self._open()
        return Cursor(self)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def commit(self) -> None:
        # Read-only: there is never anything to commit.
        self._open()

    def rollback(self) -> None:
        self._open()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._http is None

    # Public catalog facts, for tools that browse schemas (the SQLAlchemy dialect).
    def datasets(self) -> list[dict]:
        return self._call("GET", "/v1/datasets")["datasets"]

    def dataset(self, name: str) -> dict:
        from urllib.parse import quote
        return self._call("GET", f"/v1/datasets/{quote(str(name), safe='')}")

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            return self._open().json(method, path, **kwargs)
        except SqlgateError as err:
            raise _dbapi_error(err) from err

    def _open(self) -> Transport:
        if self._http is None:
            raise InterfaceError("the connection is closed")
        return self._http

    def _query(self, sql: str) -> dict:
        body: dict[str, Any] = {"sql": sql}
        if self.epsilon is not None:
            body["epsilon"] = float(self.epsilon)
        return self._call("POST", "/v1/query", body=body)


class Cursor:
    arraysize = 1

    def __init__(self, connection: Connection):
        self.connection = connection
        self.description: list[tuple] | None = None
        self.rowcount = -1
        self.sqlgate: dict | None = None     # noise metadata of the last answer
        self._rows: list[tuple] = []
        self._position = 0
        self._closed = False

    def execute(self, operation: str, parameters: Sequence[Any] | Mapping[str, Any] | None
                = None) -> "Cursor":
        self._check()
        if not isinstance(operation, str):
            raise ProgrammingError("the operation must be a SQL string")
        sql = bind(operation, parameters) if parameters is not None else operation
        # Forget the previous answer first: a failed execute must not leave it fetchable.
        self.description, self._rows, self.rowcount, self.sqlgate = None, [], -1, None
        body = self.connection._query(sql)
        columns = body["columns"]
        self.description = [(c["name"], c["type"], None, None, None, None, True)
                             for c in columns]
        types = [c["type"] for c in columns]
        self._rows = [tuple(from_json_value(v, t) for v, t in zip(row, types))
                      for row in body["rows"]]
        self._position = 0
        self.rowcount = len(self._rows)
        self.sqlgate = {"query_id": body["query_id"], "dataset": body["dataset"],
                        "cost": body["cost"], "cached": body["cached"],
                        "ci95": {c["name"]: c.get("ci95") for c in columns if c.get("noisy")}}
        return self

    def executemany(self, operation: str, seq_of_parameters) -> None:
        for parameters in seq_of_parameters:
            self.execute(operation, parameters)

    def fetchone(self) -> tuple | None:
        self._check_result()
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        self._check_result()
        size = self.arraysize if size is None else size
        rows = self._rows[self._position:self._position + size]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[tuple]:
        self._check_result()
        rows = self._rows[self._position:]
        self._position = len(self._rows)
        return rows

    def __iter__(self):
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row

    def setinputsizes(self, sizes) -> None:
        pass

    def setoutputsize(self, size, column=None) -> None:
        pass

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("the cursor is closed")
        if self.connection.closed:
            raise InterfaceError("the connection is closed")

    def _check_result(self) -> None:
        self._check()
        if self.description is None:
            raise ProgrammingError("no query has been executed")


# ---------------------------------------------------------------- parameters

_MARKER = re.compile(r"%\((?P<name>[^)]+)\)s|%(?P<kind>[s%])")


def bind(operation: str, parameters: Sequence[Any] | Mapping[str, Any]) -> str:
    """`operation` with pyformat markers replaced by SQL literals (%% is a literal %)."""
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, (Mapping, Sequence)):
        raise ProgrammingError("parameters must be a sequence or a mapping")
    positional = None if isinstance(parameters, Mapping) else list(parameters)
    used = 0
    pieces: list[str] = []
    last = 0
    for match in _MARKER.finditer(operation):
        pieces.append(operation[last:match.start()])
        last = match.end()
        if match.group("kind") == "%":
            pieces.append("%")
            continue
        if match.group("name") is not None:
            if positional is not None:
                raise ProgrammingError("named markers need a mapping of parameters")
            name = match.group("name")
            if name not in parameters:
                raise ProgrammingError(f"no value for parameter '{name}'")
            value = parameters[name]
        else:
            if positional is None:
                raise ProgrammingError("%s markers need a sequence of parameters")
            if used >= len(positional):
                raise ProgrammingError("not enough parameters for the %s markers")
            value = positional[used]
            used += 1
        try:
            pieces.append(literal(value).sql(dialect="postgres"))
        except SqlgateError as err:
            raise ProgrammingError(err.message) from err
    pieces.append(operation[last:])
    if positional is not None and used != len(positional):
        raise ProgrammingError(f"{len(positional)} parameters given for {used} markers")
    return "".join(pieces)


__all__ = ["BINARY", "DATETIME", "NUMBER", "ROWID", "STRING", "Binary", "Connection",
           "ConnectionFailed", "Cursor", "DataError", "DatabaseError", "Date",
           "DateFromTicks", "Error", "IntegrityError", "InterfaceError", "InternalError",
           "NotSupportedError", "OperationalError", "ProgrammingError", "Time",
           "TimeFromTicks", "Timestamp", "TimestampFromTicks", "Warning", "apilevel", "bind",
           "connect", "paramstyle", "threadsafety"]
