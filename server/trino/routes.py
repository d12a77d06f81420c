"""The Trino client REST protocol: POST /v1/statement, GET/DELETE nextUri, GET /v1/info.

Mounted into the domain's HTTP app (`create_app(state, extra_routes=routes(state))`), so
Trino connectors (Superset, Metabase, Tableau, Grafana, DBeaver, the `trino` Python package)
talk to sqlgate as if it were a Trino coordinator with one catalog, `sqlgate`, whose schemas
are the datasets the user may query.

Flow of a DP statement: POST starts the query in a worker thread (charging happens inside
the gateway, before release) and waits briefly: a quick answer comes back at once, else
QUEUED with a nextUri. GETs on nextUri wait briefly too; once done, each page is a slice of
the one stored noisy answer. DELETE cancels (the worker's cancel event).
Catalog and session statements are answered directly on the POST.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.catalog_audit import audited_catalog
from server.http.transport import insecure_passwords_allowed, require_password_transport
from server.service import Caller, GatewayService
from sqlgate.errors import (AuthenticationFailed, InvalidParameter, LimitExceeded,
                            NotFound, SqlgateError, TooManyRequests)

from server.trino import errors as trino_errors
from server.trino.metadata import SQLGATE_VERSION, CatalogView, run_in_sandbox
from server.trino.session import TrinoSession, authenticate, session_from_headers
from server.trino.statements import (DescribeOutput, DPQuery, ExplainQuery, SandboxQuery,
                                     StaticResult, plan_statement)
from server.trino.store import FAILED, FINISHED, QUEUED, RUNNING, QueryStore, StoredQuery
from server.trino.types import column, json_value, trino_type_for_duckdb, trino_type_for_sqlgate

MAX_STATEMENT_BYTES = 1 << 20
DP_RESULT_WARNING = {"code": 0x0100_0000, "name": "SQLGATE_DIFFERENTIAL_PRIVACY"}


@dataclass(frozen=True)
class TrinoOptions:
    page_rows: int = 1000          # rows per nextUri page
    wait_s: float = 1.0            # how long a nextUri GET waits for a running query
    post_wait_s: float = 1.0       # how long the POST waits, so quick answers need no poll
    max_queries: int = 1000        # statements kept at once (all users)
    ttl_s: float = 900.0           # how long an answer stays fetchable after it is done


def routes(state_or_service: Any, options: TrinoOptions | None = None) -> list[Route]:
    """Starlette routes for the Trino protocol, built on a ServerState or GatewayService."""
    service: GatewayService = getattr(state_or_service, "service", state_or_service)
    protocol = TrinoProtocol(service, options or TrinoOptions(),
                             throttle=getattr(state_or_service, "login_throttle", None),
                             allow_insecure_passwords=insecure_passwords_allowed(
                                 state_or_service))
    return [
        Route("/v1/statement", protocol.post_statement, methods=["POST"]),
        Route("/v1/statement/executing/{query_id}/{slug}/{token:int}", protocol.next_page,
              methods=["GET"]),
        Route("/v1/statement/executing/{query_id}/{slug}/{token:int}", protocol.cancel,
              methods=["DELETE"]),
        Route("/v1/query/{query_id}", protocol.query_info, methods=["GET"]),
        Route("/v1/info", protocol.info, methods=["GET"]),
    ]


class TrinoProtocol:
    def __init__(self, service: GatewayService, options: TrinoOptions, *, throttle=None,
                 allow_insecure_passwords: bool = False):
        self.service = service
        self.options = options
        self.throttle = throttle
        # Basic auth over plain HTTP from another host is refused unless the operator
        # allowed it (server.http.transport).
        self.allow_insecure_passwords = allow_insecure_passwords
        self.store = QueryStore(max_queries=options.max_queries, ttl_s=options.ttl_s)

    # ------------------------------------------------------------ endpoints

    async def post_statement(self, request: Request) -> Response:
        user = await self._authenticate(request)
        if isinstance(user, Response):
            return user
        caller = Caller(user=user, channel="trino", source=_source(request))
        try:
            sql = (await _bounded_body(request)).decode("utf-8")
        except UnicodeDecodeError:
            return self._failed_now(request, InvalidParameter("the statement is not valid "
                                                              "UTF-8"))
        except SqlgateError as err:
            return self._failed_now(request, err)
        try:
            query = self.store.create(user.name, sql)
        except SqlgateError as err:
            return self._failed_now(request, err)
        try:
            session = session_from_headers(request.headers, user)
            view = CatalogView(tuple(await run_in_threadpool(self.service.datasets, caller)),
                               user.name, str(request.base_url).rstrip("/"))
            plan = await run_in_threadpool(plan_statement, sql, session, view)
        except Exception as err:  # noqa: BLE001 - every failure becomes a Trino error
            query.fail(trino_errors.query_error(err))
            return self._respond(request, query, 0)
        if isinstance(plan, DPQuery):
            worker = threading.Thread(target=self._run_dp, args=(query, caller, session, plan),
                                      name=f"trino-{query.query_id}", daemon=True)
            query.state = QUEUED
            worker.start()
            await _wait_done(query, self.options.post_wait_s)
            return self._respond(request, query, 0)
        await run_in_threadpool(self._run_direct, query, caller, session, view, plan)
        return self._respond(request, query, 0)

    async def next_page(self, request: Request) -> Response:
        user = await self._authenticate(request)
        if isinstance(user, Response):
            return user
        params = request.path_params
        try:
            query = self.store.get(params["query_id"], params["slug"], user.name)
        except NotFound as err:
            return JSONResponse({"error": err.to_dict()}, status_code=404)
        await _wait_done(query, self.options.wait_s)
        return self._respond(request, query, params["token"])

    async def cancel(self, request: Request) -> Response:
        user = await self._authenticate(request)
        if isinstance(user, Response):
            return user
        params = request.path_params
        try:
            query = self.store.get(params["query_id"], params["slug"], user.name)
        except NotFound:
            return Response(status_code=204)
        query.cancel.set()
        # The answer (if any) is forgotten: a cancelled statement has nothing left to page.
        self.store.drop(query.query_id)
        return Response(status_code=204)

    async def query_info(self, request: Request) -> Response:
        user = await self._authenticate(request)
        if isinstance(user, Response):
            return user
        try:
            query = self.store.get(request.path_params["query_id"], None, user.name)
        except NotFound as err:
            return JSONResponse({"error": err.to_dict()}, status_code=404)
        return JSONResponse({"queryId": query.query_id, "state": query.state,
                             "query": query.sql, "warnings": query.warnings,
                             "error": query.error})

    async def info(self, request: Request) -> Response:
        return JSONResponse({"nodeVersion": {"version": SQLGATE_VERSION},
                             "environment": "sqlgate", "coordinator": True, "starting": False,
                             "uptime": "0.00s"})

    async def _authenticate(self, request: Request):
        """The user, or the 401/429 response to send; refusals are audited like /v1's."""
        address = request.client.host if request.client else "?"
        try:
            return await run_in_threadpool(
                authenticate, request.headers, self.service.users, throttle=self.throttle,
                address=address, password_check=lambda: require_password_transport(
                    request, self.allow_insecure_passwords))
        except (AuthenticationFailed, TooManyRequests) as err:
            await run_in_threadpool(
                self.service.record, None, "auth", "refused", channel="trino",
                actor=_claimed_name(request.headers), source=_source(request), code=err.code,
                details={"method": request.method, "path": request.url.path})
            if err.http_status != 401:     # 429 throttled, 403 password in clear
                return JSONResponse({"error": err.to_dict()}, status_code=err.http_status)
            return _unauthorized(err)

    # ------------------------------------------------------------ execution

    def _run_dp(self, query: StoredQuery, caller: Caller, session: TrinoSession,
                plan: DPQuery) -> None:
        query.state = RUNNING
        try:
            result = self.service.query(caller, plan.sql, epsilon=session.epsilon,
                                        cancel=query.cancel)
            columns = [column(c.name, _dp_type(c.type, [r[i] for r in result.rows]))
                       for i, c in enumerate(result.columns)]
            types = [c["type"] for c in columns]
            rows = [[json_value(v, t) for v, t in zip(row, types)] for row in result.rows]
            query.finish(columns, rows, warnings=[_dp_warning(result)])
        except Exception as err:  # noqa: BLE001
            query.fail(trino_errors.query_error(err))

    def _run_direct(self, query: StoredQuery, caller: Caller, session: TrinoSession,
                    view: CatalogView, plan) -> None:
        try:
            if isinstance(plan, SandboxQuery):
                # Catalog queries count against the same per-user concurrency limit and are
                # audited like PG wire's (the statement as sent, never the rows).
                with audited_catalog(self.service, caller, query.sql) as record:
                    with self.service.limiter.slot(caller.name):
                        table = run_in_sandbox(plan.sql, plan.views, view)
                    record["rows_out"] = len(table.rows)
                columns = [column(name, trino_type_for_duckdb(kind))
                           for name, kind in table.columns]
                types = [c["type"] for c in columns]
                rows = [[json_value(v, t) for v, t in zip(row, types)] for row in table.rows]
                query.finish(columns, rows)
            elif isinstance(plan, StaticResult):
                if plan.columns:
                    columns = [column(name, kind) for name, kind in plan.columns]
                    rows = [[json_value(v, c["type"]) for v, c in zip(row, columns)]
                            for row in plan.rows]
                else:
                    # Trino answers session statements with one boolean row and an update type.
                    columns, rows = [column("result", "boolean")], [[True]]
                query.finish(columns, rows, update_type=plan.update_type, headers=plan.headers)
            elif isinstance(plan, ExplainQuery):
                explanation = self.service.explain(caller, plan.sql, epsilon=session.epsilon)
                query.finish([column("Query Plan", "varchar")],
                             [[_explain_text(explanation)]])
            elif isinstance(plan, DescribeOutput):
                outputs = self.service.describe(caller, plan.sql)
                columns = [column(name, kind) for name, kind in (
                    ("Column Name", "varchar"), ("Catalog", "varchar"), ("Schema", "varchar"),
                    ("Table", "varchar"), ("Type", "varchar"), ("Type Size", "bigint"),
                    ("Aliased", "boolean"))]
                rows = [[c.name, "", "", "", trino_type_for_sqlgate(c.type),
                         8 if c.type in ("int", "float") else 0, False] for c in outputs]
                query.finish(columns, rows)
            else:  # pragma: no cover - plan_statement returns one of the above
                raise TypeError(type(plan).__name__)
        except Exception as err:  # noqa: BLE001
            query.fail(trino_errors.query_error(err))

    # ------------------------------------------------------------ responses

    def _respond(self, request: Request, query: StoredQuery, token: int) -> Response:
        base = str(request.base_url).rstrip("/")
        body: dict[str, Any] = {
            "id": query.query_id,
            "infoUri": f"{base}/v1/query/{query.query_id}",
            "stats": _stats(query.state),
            "warnings": query.warnings,
        }
        headers: dict[str, str] = {}
        if query.state == FAILED:
            body["error"] = query.error
        elif query.state == FINISHED:
            page = self.options.page_rows
            if query.columns is not None:
                body["columns"] = query.columns
            chunk = query.rows[token * page:(token + 1) * page]
            if chunk:
                body["data"] = chunk
            if query.update_type:
                body["updateType"] = query.update_type
            if (token + 1) * page < len(query.rows):
                body["nextUri"] = self._next_uri(base, query, token + 1)
                body["stats"] = _stats(RUNNING)
            headers.update(query.headers)
        else:
            body["nextUri"] = self._next_uri(base, query, token)
        return JSONResponse(body, headers=headers)

    @staticmethod
    def _next_uri(base: str, query: StoredQuery, token: int) -> str:
        return f"{base}/v1/statement/executing/{query.query_id}/{query.slug}/{token}"

    @staticmethod
    def _failed_now(request: Request, err: BaseException) -> Response:
        """A statement refused before it got an id (too big, not text, server full)."""
        body = {"id": "failed", "infoUri": f"{str(request.base_url).rstrip('/')}/v1/info",
                "stats": _stats(FAILED), "warnings": [],
                "error": trino_errors.query_error(err)}
        return JSONResponse(body)


def _dp_type(type_name: str, values: list) -> str:
    """The Trino type of a DP column. Post-processing (ROUND, ratios) can turn a declared int
    into fractions; clients would truncate those as bigint, so they are sent as double."""
    trino_type = trino_type_for_sqlgate(type_name)
    if trino_type == "bigint" and any(isinstance(v, float) and not v.is_integer()
                                      for v in values):
        return "double"
    return trino_type


def _stats(state: str) -> dict:
    # Counters stay zero: processed rows and bytes would reveal the size of private data.
    return {"state": state, "queued": state == QUEUED, "scheduled": state != QUEUED,
            "nodes": 1, "totalSplits": 0, "queuedSplits": 0, "runningSplits": 0,
            "completedSplits": 0, "cpuTimeMillis": 0, "wallTimeMillis": 0,
            "queuedTimeMillis": 0, "elapsedTimeMillis": 0, "processedRows": 0,
            "processedBytes": 0, "physicalInputBytes": 0, "peakMemoryBytes": 0,
            "spilledBytes": 0}


def _dp_warning(result) -> dict:
    cost = result.cost.to_dict()
    parts = [f"epsilon={cost.get('epsilon')}", f"delta={cost.get('delta')}"]
    cis = ", ".join(f"{c.name} ±{c.ci95:.4g}" for c in result.columns
                    if c.noisy and c.ci95 is not None)
    message = (f"sqlgate: differentially private answer (query {result.query_id}); cost "
               f"{' '.join(parts)}{' (cached, no new cost)' if result.cached else ''}"
               f"{'; 95% CI half-width: ' + cis if cis else ''}")
    return {"warningCode": DP_RESULT_WARNING, "message": message}


def _explain_text(explanation) -> str:
    cost = explanation.cost.to_dict()
    lines = [f"dataset: {explanation.dataset}",
             f"cost: epsilon={cost.get('epsilon')} delta={cost.get('delta')}",
             f"mechanism: {explanation.mechanism}; keys: {explanation.key_release}"]
    for c in explanation.columns:
        lines.append(f"  {c.name} ({c.type}): " + (f"noisy, 95% CI ±{c.ci95:.4g}"
                                                   if c.noisy and c.ci95 is not None
                                                   else "noisy" if c.noisy else "public"))
    lines.append("rewritten SQL: " + explanation.rewritten_sql)
    return "\n".join(lines)


async def _wait_done(query: StoredQuery, timeout_s: float) -> None:
    """Wait up to `timeout_s` for a statement to finish, without holding a worker thread
    (many clients polling at once must not starve the thread pool)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not query.done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


async def _bounded_body(request: Request) -> bytes:
    """The request body, refused past MAX_STATEMENT_BYTES without reading all of it."""
    declared = request.headers.get("content-length")
    too_big = LimitExceeded(f"statements are limited to {MAX_STATEMENT_BYTES} bytes")
    if declared is not None and declared.isdigit() and int(declared) > MAX_STATEMENT_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_STATEMENT_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _unauthorized(err: AuthenticationFailed) -> Response:
    return JSONResponse({"error": err.to_dict()}, status_code=401,
                        headers={"WWW-Authenticate": 'Basic realm="sqlgate"'})


def _claimed_name(headers) -> str | None:
    """The user name a refused request claimed (Basic user or X-Trino-User), for the audit
    log; never the password."""
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(credentials.strip(), validate=True).decode(
                "utf-8").partition(":")[0][:64] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    claimed = headers.get("x-trino-user")
    return claimed[:64] if claimed else None


def _source(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None
