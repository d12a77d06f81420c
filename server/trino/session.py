"""Who is calling and with which Trino session: authentication and X-Trino-* request headers.

Authentication uses the domain's users: HTTP basic auth (name + password, the same
credentials as PG wire) or a bearer token. `X-Trino-User`, when sent, must name the
authenticated user: Trino clients send it on every request, and a mismatch would otherwise
let one user act under another's name in logs.
"""
from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Mapping

from server.auth import User, UserStore
from sqlgate.errors import AuthenticationFailed

from server.trino.errors import INVALID_SESSION_PROPERTY, TrinoError

CATALOG = "sqlgate"
SYSTEM_CATALOG = "system"

# Session properties a client may set (X-Trino-Session / SET SESSION).
SESSION_PROPERTIES = {"epsilon": "privacy cost (epsilon) of each query; the dataset's default "
                                 "when unset"}


@dataclass(frozen=True)
class TrinoSession:
    user: User
    catalog: str | None = None
    schema: str | None = None
    source: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    prepared: Mapping[str, str] = field(default_factory=dict)

    @property
    def epsilon(self) -> float | None:
        value = self.properties.get("epsilon")
        return None if value is None else parse_epsilon(value)


def authenticate(headers: Mapping[str, str], users: UserStore, *, throttle=None,
                 address: str = "?", password_check: Callable[[], None] | None = None) -> User:
    """The user behind a request, from basic auth or a bearer token; raises
    AuthenticationFailed (HTTP 401) otherwise. With a `throttle` (the server's LoginThrottle),
    repeated password failures of a name from an address are refused (TooManyRequests).
    `password_check` runs before any basic credentials are looked at and may refuse them
    (the routes refuse passwords sent in clear from other hosts: InsecureTransport)."""
    header = headers.get("authorization") or ""
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        if password_check is not None:
            password_check()
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed("malformed basic authorization header") from None
        name, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationFailed("malformed basic authorization header")
        if throttle is not None:
            throttle.check(name, address)
        try:
            user = users.authenticate_password(name, password)
        except AuthenticationFailed:
            if throttle is not None:
                throttle.failed(name, address)
            raise
        if throttle is not None:
            throttle.succeeded(name, address)
    elif scheme == "bearer":
        user = users.authenticate_token(credentials.strip())
    else:
        raise AuthenticationFailed("authentication required: use basic auth (user and "
                                   "password) or a bearer token")
    claimed = headers.get("x-trino-user")
    if claimed and claimed != user.name:
        raise AuthenticationFailed("X-Trino-User does not match the authenticated user")
    return user


def session_from_headers(headers: Mapping[str, str], user: User) -> TrinoSession:
    properties = _pairs(headers.get("x-trino-session"), unquote=urllib.parse.unquote)
    for name, value in properties.items():
        check_property(name, value)
    prepared = _pairs(headers.get("x-trino-prepared-statement"),
                      unquote=urllib.parse.unquote_plus)
    return TrinoSession(user=user, catalog=_blank_none(headers.get("x-trino-catalog")),
                        schema=_blank_none(headers.get("x-trino-schema")),
                        source=_blank_none(headers.get("x-trino-source")),
                        properties=properties, prepared=prepared)


def check_property(name: str, value: str) -> None:
    if name not in SESSION_PROPERTIES:
        raise TrinoError(INVALID_SESSION_PROPERTY,
                         f"session property '{name}' does not exist; sqlgate supports: "
                         f"{', '.join(sorted(SESSION_PROPERTIES))}")
    parse_epsilon(value)


def parse_epsilon(value: str) -> float:
    try:
        epsilon = float(value)
    except (TypeError, ValueError):
        epsilon = math.nan
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise TrinoError(INVALID_SESSION_PROPERTY,
                         "session property 'epsilon' must be a positive finite number")
    return epsilon


def _pairs(header: str | None, *, unquote) -> dict[str, str]:
    result: dict[str, str] = {}
    if not header:
        return result
    for item in header.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise TrinoError(INVALID_SESSION_PROPERTY, f"malformed header entry '{name.strip()}'"
                             f" (expected name=value)")
        result[name.strip()] = unquote(value.strip())
    return result


def _blank_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None
