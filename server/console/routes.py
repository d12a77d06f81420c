"""Starlette routes serving the console at /console (and its helper API when given a state)."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.console.assets import Asset, load_assets
from server.console.security import security_headers


def routes(state: Any = None, *, prefix: str = "/console") -> list[Route]:
    """Routes for `create_app(state, extra_routes=routes(state))`.

    Without a state only the static files are served (the console then needs a token pasted
    on the sign-in form); with one, /console/api adds password sign-in and the owner views'
    ledger history.
    """
    prefix = "/" + prefix.strip("/")
    assets = load_assets()

    def serve(asset: Asset):
        async def endpoint(request: Request) -> Response:
            headers = security_headers(cache=True)
            headers["ETag"] = asset.etag
            if asset.etag in _etags(request.headers.get("if-none-match")):
                return Response(status_code=304, headers=headers)
            body = b"" if request.method == "HEAD" else asset.body
            response = Response(body, media_type=asset.content_type, headers=headers)
            if request.method == "HEAD":
                response.headers["Content-Length"] = str(len(asset.body))
            return response
        return endpoint

    async def to_index(request: Request) -> Response:
        return RedirectResponse(prefix + "/", status_code=308,
                                headers=security_headers(cache=False))

    out = [Route(prefix, to_index, methods=["GET", "HEAD"]),
           Route(prefix + "/", serve(assets["index.html"]), methods=["GET", "HEAD"])]
    out += [Route(f"{prefix}/{name}", serve(asset), methods=["GET", "HEAD"])
            for name, asset in assets.items()]
    if state is not None:
        from server.console.api import api_routes
        out += api_routes(state, prefix=prefix + "/api")
    return out


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
