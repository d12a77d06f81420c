"""The console's own endpoints, for what the /v1 API does not offer a browser:

    POST /console/api/login    {name, password} -> {token, user}   password for a new token
                               (failures throttled per name and address: 429; refused over
                               plain HTTP from another host: 403 insecure_transport)
    POST /console/api/logout   (bearer)         -> {}              revokes that token
    GET  /console/api/spend?dataset=D (bearer, owner of D)
         -> {dataset, analysts: [...], charges: [{analyst, at, epsilon, delta, rho, measure}]}

Every call is audited on channel "console". Errors use the /v1 JSON shape. Spend history
holds costs and times only: no query text, no answers.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.audit import decision_for
from server.auth import bearer_token
from server.console.security import security_headers
from server.console.throttle import LoginThrottle
from server.http.endpoint import read_json
from server.http.transport import (InsecureTransport, insecure_passwords_allowed,
                                   require_password_transport)
from server.service import Caller
from sqlgate.errors import (AuthenticationFailed, InvalidParameter, NotFound,
                            SqlgateError, TooManyRequests)

_log = logging.getLogger("sqlgate.console")
_MAX_BODY = 16 * 1024
CHANNEL = "console"


def api_routes(state: Any, *, prefix: str = "/console/api",
               throttle: LoginThrottle | None = None) -> list[Route]:
    users, service = state.users, state.service
    # One throttle for every password front end of the server (see ServerState).
    throttle = throttle or getattr(state, "login_throttle", None) or LoginThrottle()
    allow_insecure = insecure_passwords_allowed(state)

    def source(request: Request) -> str | None:
        return f"{request.client.host}:{request.client.port}" if request.client else None

    def caller_of(request: Request) -> Caller:
        user = users.authenticate_token(bearer_token(request.headers.get("authorization")))
        return Caller(user, CHANNEL, source(request))

    async def login(request: Request) -> Response:
        try:
            # Refused before the body is read: a password sent in clear from another host is
            # not accepted, right or wrong, and does not count as a failed sign-in.
            require_password_transport(request, allow_insecure)
        except InsecureTransport as err:
            await run_in_threadpool(service.record, None, "login", "refused", channel=CHANNEL,
                                    source=source(request), code=err.code)
            raise
        body = await read_json(request, _MAX_BODY)
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
            raise InvalidParameter("name and password are required")

        def work() -> dict:
            address = request.client.host if request.client else "?"
            try:
                throttle.check(name, address)
                user = users.authenticate_password(name, password)
            except (AuthenticationFailed, TooManyRequests) as err:
                # Name only (never the password); failed sign-ins are worth an owner's look.
                service.record(None, "login", "refused", channel=CHANNEL, actor=name[:64],
                               source=source(request), code=err.code)
                if isinstance(err, AuthenticationFailed):
                    throttle.failed(name, address)
                raise
            throttle.succeeded(name, address)
            token = users.issue_token(user.name, label="console")
            service.record(Caller(user, CHANNEL, source(request)), "login", "ok",
                           details={"token_id": _token_id(token)})
            return {"token": token, "user": user.to_dict()}

        return _json(await run_in_threadpool(work))

    def audited(request: Request, action: str, work: Callable[[Caller], dict]) -> dict:
        """Authenticate, run, and audit the outcome, refusals included (as /v1 does)."""
        caller = None
        try:
            caller = caller_of(request)
            return work(caller)
        except SqlgateError as err:
            decision, _ = decision_for(err)
            if caller is None:
                service.record(None, action, decision, channel=CHANNEL,
                               source=source(request), code=err.code)
            else:
                service.record(caller, action, decision, code=err.code)
            raise

    async def logout(request: Request) -> Response:
        token = bearer_token(request.headers.get("authorization"))

        def work(caller: Caller) -> dict:
            users.revoke_token(caller.name, _token_id(token))
            service.record(caller, "logout", "ok", details={"token_id": _token_id(token)})
            return {}

        return _json(await run_in_threadpool(audited, request, "logout", work))

    async def spend(request: Request) -> Response:
        dataset = request.query_params.get("dataset")
        if not dataset:
            raise InvalidParameter("'dataset' is required")

        def work(caller: Caller) -> dict:
            name = service.require(caller, dataset, "own")
            accountant = getattr(state.gateway, "accountant", None)
            if accountant is None:   # e.g. a federation router: each domain keeps its ledger
                raise NotFound("this server keeps no privacy ledger; ask the domain's server")
            # Refunded charges (the query failed before any noise) spend nothing.
            charges = [c for c in accountant.history(dataset=name)
                       if c.get("refunded_at") is None]
            granted = {g["user"] for g in users.grants(name) if g["permission"] == "query"}
            analysts = sorted(granted | {c["analyst"] for c in charges})
            service.record(caller, "spend_history", "ok", dataset=name,
                           rows_out=len(charges))
            return {"dataset": name, "analysts": analysts, "charges": [
                {"analyst": c["analyst"], "at": str(c["created_at"]),
                 "measure": c["measure"], "epsilon": c["epsilon"], "delta": c["delta"],
                 "rho": c["rho"]} for c in charges]}

        return _json(await run_in_threadpool(audited, request, "spend_history", work))

    return [
        Route(f"{prefix}/login", _guarded(login), methods=["POST"]),
        Route(f"{prefix}/logout", _guarded(logout), methods=["POST"]),
        Route(f"{prefix}/spend", _guarded(spend), methods=["GET"]),
    ]


def _token_id(token: str | None) -> str:
    """The public id UserStore.tokens() shows for a token (first 12 hex of its SHA-256)."""
    return hashlib.sha256((token or "").encode("utf-8")).hexdigest()[:12]


def _json(body: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=security_headers(cache=False))


def _guarded(handler: Callable[[Request], Awaitable[Response]]):
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SqlgateError as err:
            return _json({"error": err.to_dict()}, err.http_status)
        except Exception:
            # The exception text could quote anything: log it here, answer generically.
            _log.exception("internal error in %s", request.url.path)
            return _json({"error": {"code": "internal_error", "sqlstate": "XX000",
                                    "message": "internal error"}}, 500)
    return endpoint
