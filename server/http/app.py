"""The starlette app of a domain: `create_app(state, extra_routes=())`.

Other front ends mount their own routes through `extra_routes` (starlette `Route`, `Mount` or
`WebSocketRoute`), placed after the `/v1` routes; they reach the shared `ServerState` as
`request.app.state.sqlgate`. Unknown routes and methods answer with JSON errors too.
"""
from __future__ import annotations

from typing import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from server.http import routes_admin, routes_datasets, routes_query, routes_requests
from server.http.errors import handle_any, handle_http_exception, handle_sqlgate_error, json_response
from server.http.openapi import openapi_document
from sqlgate.errors import SqlgateError

try:
    from importlib.metadata import version as _dist_version
    VERSION = _dist_version("sqlgate")
except Exception:  # not installed (running from a checkout)
    VERSION = "0.1.0"


async def health(request: Request):
    return json_response({"status": "ok", "version": VERSION})


async def openapi(request: Request):
    return json_response(openapi_document(VERSION))


def v1_routes() -> list[BaseRoute]:
    return [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        *routes_query.routes(),
        *routes_datasets.routes(),
        *routes_requests.routes(),
        *routes_admin.routes(),
    ]


def create_app(state, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    app = Starlette(
        routes=[*v1_routes(), *extra_routes],
        exception_handlers={HTTPException: handle_http_exception,
                            SqlgateError: handle_sqlgate_error,
                            Exception: handle_any})
    app.state.sqlgate = state
    return app
