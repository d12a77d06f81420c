"""The one wrapper every `/v1` handler runs in: authenticate, check the role, read a bounded
JSON body, run the handler (blocking work in the thread pool), map errors to JSON, and write
one audit record per request whatever the outcome.

Handlers receive a `Call` and return a dict/list (sent as JSON) or a starlette `Response`.
Handlers that call `GatewayService.query/explain` set `call.audited = True` first: the service
writes that record itself (with the rewritten SQL and cost).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import threading
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Awaitable, Callable, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from server.audit import AuditEvent, decision_for
from server.auth import User
from server.http.errors import error_response, json_response
from server.http.transport import insecure_passwords_allowed, require_password_transport
from server.service import Caller
from sqlgate.errors import (AuthenticationFailed, InvalidParameter, LimitExceeded,
                            PermissionDenied, TooManyRequests)

CHANNEL = "http"
Handler = Callable[["Call"], Any]
T = TypeVar("T")
# How often a long call checks whether its client went away (one cheap receive() each).
DISCONNECT_POLL_S = 0.1


@dataclass
class Call:
    request: Request
    state: Any                                  # server.state.ServerState
    caller: Caller
    body: Any = None
    audit: dict[str, Any] = dataclass_field(default_factory=dict)  # this call's audit fields
    audited: bool = False

    @property
    def user(self) -> User:
        return self.caller.user

    def param(self, name: str) -> str:
        return self.request.path_params[name]

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query_params.get(name, default)

    def int_query(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidParameter(f"query parameter '{name}' must be an integer") from None
        if not low <= value <= high:
            raise InvalidParameter(f"query parameter '{name}' must be between {low} and {high}")
        return value

    def field(self, name: str, kind: type | tuple = str, *, required: bool = True,
              default: Any = None) -> Any:
        """A field of the JSON body, type-checked (bool is not accepted as a number)."""
        body = self.body if isinstance(self.body, dict) else {}
        if name not in body or body[name] is None:
            if required:
                raise InvalidParameter(f"the request body needs '{name}'")
            return default
        value = body[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise InvalidParameter(f"'{name}' must be a {names}")
        return value

    def require_role(self, *roles: str) -> None:
        if self.user.role not in roles:
            raise PermissionDenied(f"this needs the role {' or '.join(roles)}")


_JSON_NAMES = {str: "string", int: "number", float: "number", bool: "boolean", dict: "object",
               list: "array"}


def client_source(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None


def authenticate(state, request: Request) -> User:
    """Bearer token, or HTTP Basic user/password checked against the SCRAM verifier."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("authentication is required: send 'Authorization: Bearer "
                                   "<token>' (or HTTP Basic with user and password)")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return state.users.authenticate_token(value.strip())
    if scheme == "basic":
        # Before decoding or checking anything: a password sent in clear from another host
        # is refused whether it is right or wrong (and never counts as a failed login).
        require_password_transport(request, insecure_passwords_allowed(state))
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed("malformed HTTP Basic credentials") from None
        name, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationFailed("malformed HTTP Basic credentials")
        return checked_password(state, name, password, request.client.host
                                if request.client else "?")
    raise AuthenticationFailed("unsupported authorization scheme; use Bearer or Basic")


def checked_password(state, name: str, password: str, address: str) -> User:
    """A password check under the server's login throttle (429 after repeated failures of
    this name from this address), so HTTP Basic is no faster a guessing channel than the
    console sign-in."""
    throttle = getattr(state, "login_throttle", None)
    if throttle is None:
        return state.users.authenticate_password(name, password)
    throttle.check(name, address)
    try:
        user = state.users.authenticate_password(name, password)
    except AuthenticationFailed:
        throttle.failed(name, address)
        raise
    throttle.succeeded(name, address)
    return user


async def run_until_disconnect(request: Request, cancel: threading.Event,
                               fn: Callable[[], T], *, poll_s: float = DISCONNECT_POLL_S) -> T:
    """`fn()` in the thread pool; `cancel` is set as soon as the client disconnects (or this
    request task is cancelled), so `fn` should pass it on to the engine.

    The call is always awaited to its end: it stops at the cancel by itself, and whatever it
    did before (a charge already committed) stands. Call only once the body has been read:
    the polling consumes the request's receive channel.
    """
    task = asyncio.ensure_future(run_in_threadpool(fn))
    try:
        while not cancel.is_set():
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                break
            if await request.is_disconnected():
                cancel.set()
        return await task
    except asyncio.CancelledError:
        cancel.set()
        raise


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` while streaming."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise LimitExceeded(f"the request body is larger than the limit of {limit} bytes",
                            details={"limit_bytes": limit})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceeded(f"the request body is larger than the limit of {limit} bytes",
                                details={"limit_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidParameter("the request body is not valid JSON") from None
    except RecursionError:  # [[[[...]]]] within the size limit: a clear 400, not a 500
        raise InvalidParameter("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return body


def endpoint(action: str, handler: Handler, *, json_body: bool = False,
             roles: tuple[str, ...] | None = None) -> Callable[[Request], Awaitable[Response]]:
    """An ASGI endpoint around `handler` (sync handlers run in the thread pool)."""
    is_async = inspect.iscoroutinefunction(handler)

    async def run(request: Request) -> Response:
        state = request.app.state.sqlgate
        source = client_source(request)
        call: Call | None = None
        outcome: BaseException | None = None
        try:
            user = await run_in_threadpool(authenticate, state, request)
            call = Call(request=request, state=state, caller=Caller(user, CHANNEL, source))
            if roles is not None:
                call.require_role(*roles)
            if json_body:
                call.body = await read_json(request, state.config.max_body_bytes)
            result = await handler(call) if is_async else await run_in_threadpool(handler, call)
            response = result if isinstance(result, Response) else json_response(result)
        except Exception as exc:  # every failure becomes a JSON error
            outcome = exc
            response = error_response(exc)
        await run_in_threadpool(_audit, state, action, request, source, call, outcome,
                                response.status_code)
        return response

    run.__name__ = getattr(handler, "__name__", action)
    return run


def _audit(state, action: str, request: Request, source: str | None, call: Call | None,
           outcome: BaseException | None, status: int) -> None:
    if call is not None and call.audited:
        return
    decision, code = decision_for(outcome)
    if outcome is None and call is not None:
        # Handlers may name a finer decision (approved, denied) in call.audit.
        decision = call.audit.pop("decision", "ok")
    fields = dict(call.audit) if call is not None else {}
    details = dict(fields.pop("details", None) or {})
    details.update(method=request.method, path=request.url.path, status=status)
    user = call.user if call is not None else None
    if user is None and isinstance(outcome, (AuthenticationFailed, TooManyRequests)):
        action = "auth"
    state.audit.append(AuditEvent(
        channel=CHANNEL, action=action, decision=decision,
        actor=user.name if user else None, role=user.role if user else None, source=source,
        code=code, details=details, **fields))
