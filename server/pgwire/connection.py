"""One client connection: startup, SCRAM authentication, then simple and extended query.

Blocking work (the gateway, the catalog engine) runs in threads so one slow query never
stalls other connections. Any protocol violation closes this connection only.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from typing import TYPE_CHECKING

from server.pgwire import codec
from server.pgwire import types as T
from server.pgwire.codec import ProtocolViolation
from server.pgwire.portals import (DeclareCursor, FetchCursor, Portal, Statement, parse_close,
                                   parse_declare, parse_fetch)
from server.pgwire.scram import MECHANISM, ScramError, ScramExchange, parse_initial_response
from server.pgwire.session import Outcome, Plan, Session
from server.pgwire.sqltext import first_words, placeholders, split_statements, substitute
from server.service import Caller
from sqlgate.errors import (InvalidParameter, LimitExceeded, NotFound, QueryCanceled,
                            SqlgateError, SqlSyntaxError, TooManyRequests)

if TYPE_CHECKING:
    from server.pgwire.admission import Ticket
    from server.pgwire.server import PgWireServer

log = logging.getLogger("sqlgate.pgwire")

_READ_SIZE = 65536
# Until a client has authenticated, its messages (SCRAM, a cleartext password) are tiny; a
# 16 MiB PasswordMessage from 256 anonymous connections would pin gigabytes of buffers.
_MAX_AUTH_MESSAGE = 16_384
_MAX_OBJECTS = 10_000  # prepared statements / portals one connection may hold
_DUMMY = {T.INT8: "0", T.INT4: "0", T.INT2: "0", T.FLOAT8: "0.0", T.FLOAT4: "0.0",
          T.NUMERIC: "0", T.BOOL: "TRUE", T.DATE: "DATE '2000-01-01'",
          T.TIMESTAMP: "TIMESTAMP '2000-01-01 00:00:00'"}


class _Closed(Exception):
    """The peer went away or must be dropped."""


class ProtocolError(SqlgateError):
    code = "protocol_violation"
    sqlstate = "08P01"
    http_status = 400


class Connection:
    def __init__(self, server: "PgWireServer", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, ticket: "Ticket | None" = None):
        self.server = server
        # This connection's place in the per-address count of unauthenticated connections;
        # given back once authenticated (the server also releases it when we end).
        self.ticket = ticket
        self.reader = reader
        self.writer = writer
        self.parser = codec.FrontendParser(max_message=_MAX_AUTH_MESSAGE)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.source = f"{peer[0]}:{peer[1]}"
        self.pid = 0
        self.secret = secrets.token_bytes(4)
        self.cancel_event = threading.Event()
        self.session: Session | None = None
        self.caller: Caller | None = None
        self.statements: dict[str, Statement] = {}
        self.portals: dict[str, Portal] = {}
        self.skip_until_sync = False
        self.tls = False
        self._out: list[bytes] = []

    # ------------------------------------------------------------ io

    def send(self, data: bytes) -> None:
        self._out.append(data)

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
        await self.writer.drain()

    async def next_message(self):
        while True:
            message = self.parser.next_message()
            if message is not None:
                return message
            data = await self.reader.read(_READ_SIZE)
            if not data:
                raise _Closed()
            self.parser.feed(data)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            try:
                started = await asyncio.wait_for(self._startup(), self.server.startup_timeout_s)
            except asyncio.TimeoutError:
                self.send(codec.error_response("FATAL", "08P01",
                                               "startup and authentication took too long"))
                await self.flush()
                return
            if not started:
                return
            if self.ticket is not None:
                self.ticket.release()
            await self._serve()
        except ProtocolViolation as err:
            # Malformed, truncated or oversized input: tell the client once, then drop it.
            self.send(codec.error_response("FATAL", "08P01", f"protocol violation: {err}"))
            try:
                await self.flush()
            except (ConnectionError, OSError):
                pass
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        self.server._forget(self)
        self.cancel_event.set()
        if self.session is not None:
            self.session.close()
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), timeout=2)
        except (ConnectionError, OSError, asyncio.TimeoutError, RuntimeError):
            pass

    async def _startup(self) -> bool:
        while True:
            message = await self.next_message()
            if isinstance(message, codec.SSLRequest):
                if self.server.ssl_context is not None and not self.tls:
                    if self.parser.buffered:
                        raise ProtocolViolation("data sent before the TLS handshake")
                    self.writer.write(b"S")
                    await self.writer.drain()
                    await self.writer.start_tls(self.server.ssl_context)
                    self.tls = True
                else:
                    self.writer.write(b"N")
                    await self.writer.drain()
            elif isinstance(message, codec.GSSENCRequest):
                self.writer.write(b"N")
                await self.writer.drain()
            elif isinstance(message, codec.CancelRequest):
                self.server.cancel(message.pid, message.secret)
                return False
            elif isinstance(message, codec.StartupMessage):
                return await self._authenticate(message.parameters)

    async def _authenticate(self, parameters: dict[str, str]) -> bool:
        user_name = parameters.get("user", "")
        service = self.server.service
        if not user_name:
            self.send(codec.error_response("FATAL", "28000", "no user name given"))
            await self.flush()
            return False
        throttle = self.server.login_throttle
        address = self.source.rpartition(":")[0] or "?"
        try:
            if throttle is not None:
                throttle.check(user_name, address)
        except TooManyRequests as err:
            service.record(None, "login", "refused", channel="pgwire", actor=user_name[:64],
                           source=self.source, code=err.code)
            self.send(codec.error_response("FATAL", err.sqlstate, err.message))
            await self.flush()
            return False
        try:
            if self.server.allow_cleartext and self.tls:
                user = await self._cleartext(user_name)
            else:
                user = await self._scram(user_name)
        except (ScramError, SqlgateError) as err:
            reason = str(err) if isinstance(err, ScramError) else err.message
            if throttle is not None:
                throttle.failed(user_name, address)
            service.record(None, "login", "refused", channel="pgwire", actor=user_name[:64],
                           source=self.source, code="authentication_failed",
                           details={"reason": reason[:200]})
            self.send(codec.error_response(
                "FATAL", "28P01", f'password authentication failed for user "{user_name}"'))
            await self.flush()
            return False
        if throttle is not None:
            throttle.succeeded(user_name, address)
        self.parser.max_message = codec.MAX_MESSAGE   # authenticated: full-size messages
        self.caller = Caller(user, channel="pgwire", source=self.source)
        self.pid = self.server._register(self)
        self.session = await asyncio.to_thread(
            Session, service, self.caller, backend_pid=self.pid, client_parameters=parameters)
        service.record(self.caller, "login", "ok",
                       details={"application_name": parameters.get("application_name", "")[:100],
                                "tls": self.tls})
        self.send(codec.authentication_ok())
        for name, value in self.session.parameter_status():
            self.send(codec.parameter_status(name, value))
        self.send(codec.backend_key_data(self.pid, self.secret))
        self.send(codec.ready_for_query("I"))
        await self.flush()
        return True

    async def _scram(self, user_name: str):
        users = self.server.service.users
        verifier = await asyncio.to_thread(users.scram_verifier, user_name)
        self.send(codec.authentication_sasl([MECHANISM]))
        await self.flush()
        first = await self._password_message()
        mechanism, client_first = parse_initial_response(first)
        if mechanism != MECHANISM:
            raise ScramError(f"SASL mechanism {mechanism!r} is not supported")
        exchange = ScramExchange(verifier, self.server.pepper, user_name)
        self.send(codec.authentication_sasl_continue(exchange.server_first(client_first)))
        await self.flush()
        final = await self._password_message()
        self.send(codec.authentication_sasl_final(exchange.server_final(final)))
        return await asyncio.to_thread(users.user, user_name)

    async def _cleartext(self, user_name: str):
        self.send(codec.authentication_cleartext())
        await self.flush()
        data = await self._password_message()
        password = data.rstrip(b"\x00").decode("utf-8", "replace")
        return await asyncio.to_thread(self.server.service.users.authenticate_password,
                                       user_name, password)

    async def _password_message(self) -> bytes:
        message = await self.next_message()
        if not isinstance(message, codec.PasswordData):
            raise ProtocolViolation("expected a password message during authentication")
        return message.data

    # ------------------------------------------------------------ main loop

    async def _serve(self) -> None:
        handlers = {
            codec.Query: self._on_query, codec.Parse: self._on_parse, codec.Bind: self._on_bind,
            codec.Describe: self._on_describe, codec.Execute: self._on_execute,
            codec.Close: self._on_close,
        }
        while True:
            message = await self.next_message()
            if isinstance(message, codec.Terminate):
                return
            if isinstance(message, codec.Sync):
                self.skip_until_sync = False
                self._end_implicit_transaction()
                self.send(codec.ready_for_query(self.session.transaction))
                await self.flush()
                continue
            if isinstance(message, codec.Flush):
                await self.flush()
                continue
            if isinstance(message, (codec.PasswordData, codec.StartupMessage)):
                raise ProtocolViolation("unexpected authentication message")
            if isinstance(message, codec.Unsupported):
                self._error(ProtocolError(f"message type {message.type!r} (COPY / function "
                                          f"call) is not supported"))
                if message.type == "F":  # a function call waits for ReadyForQuery
                    self.send(codec.ready_for_query(self.session.transaction))
                await self.flush()
                continue
            if isinstance(message, codec.Query):
                await self._on_query(message)
                await self.flush()
                continue
            if self.skip_until_sync:
                continue
            try:
                await handlers[type(message)](message)
            except SqlgateError as err:
                self._error(err)
                self.skip_until_sync = True
            except Exception:  # noqa: BLE001 - never let a bug leak details or kill the loop
                log.exception("pgwire: internal error")
                self._error(SqlgateError("internal error"))
                self.skip_until_sync = True
            if len(self._out) > 64:
                await self.flush()

    def _end_implicit_transaction(self) -> None:
        if self.session.transaction == "I":
            # Outside a transaction block every Sync ends the implicit transaction: portals go.
            self.portals.clear()

    def _error(self, err: SqlgateError) -> None:
        self.session.fail()
        self.send(codec.error_response("ERROR", err.sqlstate, err.message, hint=err.hint,
                                       detail=_detail(err)))

    # ------------------------------------------------------------ simple query

    async def _on_query(self, message: codec.Query) -> None:
        statements = split_statements(message.sql)
        if not statements:
            self.send(codec.empty_query_response())
        for sql in statements:
            try:
                outcome = await self._run_statement(sql)
            except SqlgateError as err:
                self._error(err)
                break
            except Exception:  # noqa: BLE001
                log.exception("pgwire: internal error")
                self._error(SqlgateError("internal error"))
                break
            if outcome.empty:
                self.send(codec.empty_query_response())
                continue
            if outcome.columns is not None:
                formats = [0] * len(outcome.columns)
                self.send(codec.row_description(outcome.columns, formats))
                for row in outcome.rows:
                    self.send(_data_row(row, outcome.columns, formats))
            self.send(codec.command_complete(outcome.tag))
        if self.session.transaction == "I":
            self.portals.clear()
        self.send(codec.ready_for_query(self.session.transaction))

    async def _run_statement(self, sql: str) -> Outcome:
        """Cursor statements are handled here (they name portals); the rest by the session."""
        declare = parse_declare(sql)
        if declare is not None:
            return await self._declare(declare)
        fetch = parse_fetch(sql)
        if fetch is not None:
            return await self._fetch(fetch)
        closing = parse_close(sql)
        if closing is not None:
            if self.portals.pop(closing, None) is None:
                raise _undefined_cursor(closing)
            return Outcome("CLOSE CURSOR")
        plan = self.session.plan(sql)
        outcome = await self._execute_plan(plan)
        words = first_words(sql, 3)
        if words and words[0] == "DEALLOCATE":
            self._deallocate(sql, words)
        if words and words[0] == "CLOSE" and len(words) > 1 and words[1] == "ALL":
            self.portals.clear()
        if words and words[0] == "DISCARD":
            self.statements.clear()
            self.portals.clear()
        return outcome

    def _deallocate(self, sql: str, words: list[str]) -> None:
        rest = sql.split(None, 1)[1].strip().rstrip(";").strip() if len(sql.split(None, 1)) > 1 else ""
        if rest.upper().startswith("PREPARE "):
            rest = rest[8:].strip()
        if rest.upper() == "ALL":
            self.statements.clear()
            return
        name = rest[1:-1].replace('""', '"') if rest.startswith('"') else rest.lower()
        if self.statements.pop(name, None) is None and self.statements.pop(rest, None) is None:
            raise NotFound(f'prepared statement "{name}" does not exist')

    async def _execute_plan(self, plan: Plan) -> Outcome:
        if plan.kind != "query":
            return await asyncio.to_thread(self.session.run, plan)
        self.cancel_event = threading.Event()
        cancel = self.cancel_event
        task = asyncio.ensure_future(asyncio.to_thread(self.session.run, plan, cancel))
        timeout = self.server.statement_timeout_s
        try:
            if timeout:
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    cancel.set()  # the engine interrupts; the answer (if charged) is not released
                    try:
                        await task
                    except SqlgateError:
                        pass
                    raise QueryCanceled("canceling statement due to statement timeout")
            return await task
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def _declare(self, declare: DeclareCursor) -> Outcome:
        if declare.name in self.portals:
            raise _duplicate_cursor(declare.name)
        if len(self.portals) >= _MAX_OBJECTS:
            raise LimitExceeded(f"at most {_MAX_OBJECTS} open portals per connection")
        plan = self.session.plan(declare.query)
        if plan.kind not in ("query", "catalog"):
            raise SqlSyntaxError("DECLARE CURSOR needs a SELECT query")
        self.portals[declare.name] = Portal(declare.name, plan, (1,) if declare.binary else ())
        return Outcome("DECLARE CURSOR")

    async def _fetch(self, fetch: FetchCursor) -> Outcome:
        portal = self.portals.get(fetch.name)
        if portal is None:
            raise _undefined_cursor(fetch.name)
        await self._materialise(portal)
        rows, _ = portal.take(fetch.count)
        if fetch.move:
            return Outcome(f"MOVE {len(rows)}")
        return Outcome(f"FETCH {len(rows)}", portal.outcome.columns, rows)

    async def _materialise(self, portal: Portal) -> None:
        """Compute the portal's answer once; later fetches page through it."""
        if portal.outcome is None:
            portal.outcome = await self._execute_plan(portal.plan)
            portal.columns = portal.outcome.columns

    # ------------------------------------------------------------ extended protocol

    async def _on_parse(self, message: codec.Parse) -> None:
        if message.name and message.name in self.statements:
            raise _Duplicate(f'prepared statement "{message.name}" already exists')
        numbers = placeholders(message.sql)
        count = max([len(message.param_types)] + numbers)
        if count > 65535:
            raise ProtocolError("too many parameters")
        plan = await asyncio.to_thread(self._plan_statement, message.sql)
        types = self.session.infer_parameter_types(plan, count, message.param_types)
        if len(self.statements) >= _MAX_OBJECTS and message.name not in self.statements:
            raise LimitExceeded(f"at most {_MAX_OBJECTS} prepared statements per connection")
        self.statements[message.name] = Statement(message.name, message.sql, plan, types)
        self.send(codec.parse_complete())

    def _plan_statement(self, sql: str) -> Plan:
        statements = split_statements(sql)
        if len(statements) > 1:
            raise SqlSyntaxError("cannot insert multiple commands into a prepared statement")
        if not statements:
            return Plan("empty", sql)
        if parse_declare(sql) or parse_fetch(sql) or parse_close(sql):
            return Plan("cursor", statements[0])
        return self.session.plan(statements[0])

    async def _on_bind(self, message: codec.Bind) -> None:
        statement = self.statements.get(message.statement)
        if statement is None:
            raise _undefined_statement(message.statement)
        types = statement.param_types
        if len(message.params) != len(types):
            raise ProtocolError(f"bind message supplies {len(message.params)} parameters, but "
                                f"prepared statement \"{statement.name}\" requires {len(types)}")
        formats = message.param_formats
        if len(formats) not in (0, 1, len(message.params)):
            raise ProtocolError("wrong number of parameter format codes")
        literals = {}
        for index, (value, oid) in enumerate(zip(message.params, types)):
            fmt = formats[index] if len(formats) > 1 else (formats[0] if formats else 0)
            literals[index + 1] = T.sql_literal(T.decode_parameter(value, oid, fmt == 1))
        sql = substitute(statement.sql, literals) if literals else statement.sql
        if statement.plan.kind in ("empty", "cursor"):
            plan = Plan(statement.plan.kind, sql)
        elif literals:
            plan = await asyncio.to_thread(self.session.plan, sql)
        else:
            plan = statement.plan
        if message.portal and message.portal in self.portals:
            raise _duplicate_cursor(message.portal)
        if len(self.portals) >= _MAX_OBJECTS and message.portal not in self.portals:
            raise LimitExceeded(f"at most {_MAX_OBJECTS} open portals per connection")
        self.portals[message.portal] = Portal(message.portal, plan, message.result_formats)
        self.send(codec.bind_complete())

    async def _on_describe(self, message: codec.Describe) -> None:
        if message.kind == "S":
            statement = self.statements.get(message.name)
            if statement is None:
                raise _undefined_statement(message.name)
            columns = await self._describe_statement(statement)
            self.send(codec.parameter_description(statement.param_types))
            self._send_row_description(columns, [0] * len(columns or ()))
            return
        portal = self.portals.get(message.name)
        if portal is None:
            raise _undefined_cursor(message.name)
        columns = await self._describe_portal(portal)
        formats = portal.formats(len(columns)) if columns is not None else []
        self._send_row_description(columns, formats)

    def _send_row_description(self, columns, formats) -> None:
        if columns is None:
            self.send(codec.no_data())
            return
        for column, fmt in zip(columns, formats):
            if fmt == 1 and not T.binary_supported(column.type_oid):
                raise InvalidParameter(f"binary format is not supported for column "
                                       f"{column.name!r}")
        self.send(codec.row_description(columns, formats))

    async def _describe_statement(self, statement: Statement) -> list[T.Column] | None:
        if statement.plan.kind == "cursor":
            return await self._cursor_columns(statement.sql)
        if statement.plan.kind in ("empty",):
            return None
        sql = statement.sql
        if statement.param_types:
            # Describe plans with typed placeholders only: nothing is executed or charged.
            sql = substitute(sql, {i + 1: _DUMMY.get(oid, "''")
                                   for i, oid in enumerate(statement.param_types)})
        plan = await asyncio.to_thread(self.session.plan, sql)
        return await asyncio.to_thread(self.session.describe, plan)

    async def _describe_portal(self, portal: Portal) -> list[T.Column] | None:
        if portal.outcome is not None:
            return portal.outcome.columns
        if portal.plan.kind == "cursor":
            return await self._cursor_columns(portal.plan.sql)
        if portal.plan.kind == "catalog":
            await self._materialise(portal)  # public metadata only: running it is free
            return portal.outcome.columns
        if portal.columns is None:
            portal.columns = await asyncio.to_thread(self.session.describe, portal.plan)
        return portal.columns

    async def _cursor_columns(self, sql: str) -> list[T.Column] | None:
        fetch = parse_fetch(sql)
        if fetch is None or fetch.move:
            return None
        cursor = self.portals.get(fetch.name)
        if cursor is None:
            raise _undefined_cursor(fetch.name)
        return await self._describe_portal(cursor)

    async def _on_execute(self, message: codec.Execute) -> None:
        portal = self.portals.get(message.portal)
        if portal is None:
            raise _undefined_cursor(message.portal)
        if portal.plan.kind == "empty":
            self.send(codec.empty_query_response())
            return
        if portal.outcome is None and portal.plan.kind in ("cursor", "session"):
            # Session and cursor statements run every time they are executed.
            outcome = await self._run_statement(portal.plan.sql)
            self._send_rows(portal, outcome.rows, outcome.columns)
            self.send(codec.command_complete(outcome.tag))
            return
        await self._materialise(portal)
        outcome = portal.outcome
        if outcome.columns is None:
            self.send(codec.command_complete(outcome.tag))
            return
        rows, more = portal.take(message.max_rows)
        self._send_rows(portal, rows, outcome.columns)
        if more:
            self.send(codec.portal_suspended())
        else:
            self.send(codec.command_complete(f"SELECT {len(rows)}"))

    def _send_rows(self, portal: Portal, rows, columns) -> None:
        if columns is None:
            return
        formats = portal.formats(len(columns))
        for row in rows:
            self.send(_data_row(row, columns, formats))

    async def _on_close(self, message: codec.Close) -> None:
        if message.kind == "S":
            self.statements.pop(message.name, None)
        else:
            self.portals.pop(message.name, None)
        self.send(codec.close_complete())


def _data_row(row, columns, formats) -> bytes:
    values = []
    for value, column, fmt in zip(row, columns, formats):
        if fmt == 1:
            values.append(T.encode_binary(value, column.type_oid))
        else:
            values.append(T.encode_text(value, column.type_oid))
    return codec.data_row(values)


def _detail(err: SqlgateError) -> str | None:
    if not err.details:
        return None
    # Details are public facts by contract (e.g. remaining budget), never data values.
    return "; ".join(f"{k}={v}" for k, v in sorted(err.details.items()))[:500]


class _Duplicate(SqlgateError):
    code = "duplicate_object"
    sqlstate = "42P05"
    http_status = 409


class _UndefinedObject(SqlgateError):
    code = "undefined_object"
    sqlstate = "26000"
    http_status = 404


class _UndefinedCursor(SqlgateError):
    code = "undefined_cursor"
    sqlstate = "34000"
    http_status = 404


class _DuplicateCursor(SqlgateError):
    code = "duplicate_cursor"
    sqlstate = "42P03"
    http_status = 409


def _undefined_statement(name: str) -> SqlgateError:
    return _UndefinedObject(f'prepared statement "{name}" does not exist')


def _undefined_cursor(name: str) -> SqlgateError:
    return _UndefinedCursor(f'portal "{name}" does not exist' if name else
                            "unnamed portal does not exist")


def _duplicate_cursor(name: str) -> SqlgateError:
    return _DuplicateCursor(f'cursor "{name}" already exists')
