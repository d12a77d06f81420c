"""A domain's federation endpoint (/federation/v1, router -> domain only), as starlette routes
to mount in the domain's main HTTP app (`create_app(state, extra_routes=...)`) or to serve
alone (`domain_app`). The router's analyst API is the shared /v1 app (server/router/frontend.py).

Errors are always {"error": {code, message, sqlstate, hint?, details?}} with the error's HTTP
status; unexpected exceptions become a generic 500 whose text never includes the exception's
(it could quote data).
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.http.endpoint import read_json
from server.router.domain import DomainService
from sqlgate.errors import InvalidParameter, SqlgateError

_log = logging.getLogger("sqlgate.router")
_MAX_BODY = 1 << 20


def _error_response(err: SqlgateError) -> JSONResponse:
    return JSONResponse({"error": err.to_dict()}, status_code=err.http_status)


def _guarded(handler: Callable[[Request], Awaitable[Response]]):
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SqlgateError as err:
            return _error_response(err)
        except Exception:
            _log.exception("internal error in %s", request.url.path)
            return JSONResponse({"error": {"code": "internal_error", "sqlstate": "XX000",
                                           "message": "internal error"}}, status_code=500)
    return endpoint


# ---------------------------------------------------------------- domain (federation API)


def domain_routes(service: DomainService, prefix: str = "/federation/v1") -> list[Route]:
    """Routes to mount in a domain's own HTTP server (or serve alone with domain_app)."""

    def authed(handler: Callable[[Request], Any]):
        async def endpoint(request: Request) -> Response:
            await run_in_threadpool(service.authenticate, request.headers.get("authorization"))
            return JSONResponse(await handler(request))
        return _guarded(endpoint)

    async def health(request: Request):
        return {"domain": service.name, "ok": True}

    async def datasets(request: Request):
        return await run_in_threadpool(service.datasets)

    async def metadata(request: Request):
        return await run_in_threadpool(service.metadata, request.path_params["name"])

    async def budget(request: Request):
        analyst = request.query_params.get("analyst")
        if not analyst:
            raise InvalidParameter("'analyst' is required")
        return await run_in_threadpool(service.budget, analyst, request.path_params["dataset"])

    async def prepare(request: Request):
        body = await read_json(request, _MAX_BODY)
        return await run_in_threadpool(service.prepare, body)

    async def share(request: Request):
        body = await read_json(request, _MAX_BODY)
        return await run_in_threadpool(service.share, body)

    return [
        Route(f"{prefix}/health", authed(health), methods=["GET"]),
        Route(f"{prefix}/datasets", authed(datasets), methods=["GET"]),
        Route(f"{prefix}/datasets/{{name}}", authed(metadata), methods=["GET"]),
        Route(f"{prefix}/budgets/{{dataset}}", authed(budget), methods=["GET"]),
        Route(f"{prefix}/prepare", authed(prepare), methods=["POST"]),
        Route(f"{prefix}/share", authed(share), methods=["POST"]),
    ]


def domain_app(service: DomainService) -> Starlette:
    return Starlette(routes=domain_routes(service))
