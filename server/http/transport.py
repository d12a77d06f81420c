"""Is it safe to receive a password on this HTTP request?

HTTP Basic credentials and the console sign-in body carry the password itself, so over plain
HTTP anyone on the path reads it. A password is therefore accepted only when the request came
over TLS (`https`, also as reported by a trusted reverse proxy through uvicorn's proxy
headers) or from a loopback client (the same host: a local tool, or a local TLS-terminating
proxy). Operators can lift the rule with `allow_insecure_passwords` (flag
`--allow-insecure-passwords`, env SQLGATE_ALLOW_INSECURE_PASSWORDS=1).

Bearer tokens stay allowed over plain HTTP: they are revocable and never reused elsewhere,
but a token sent in clear can still be replayed until revoked, so deployments off loopback
should use TLS anyway (the server warns at startup).
"""
from __future__ import annotations

from starlette.requests import Request

from server.netaddr import is_loopback_host
from sqlgate.errors import AuthenticationFailed

__all__ = ["InsecureTransport", "is_loopback_host", "insecure_passwords_allowed",
           "password_allowed", "require_password_transport"]


class InsecureTransport(AuthenticationFailed):
    """A password was sent over plain HTTP from another host. 403, not 401: retrying with
    other credentials cannot help, and a 401 challenge would make browsers prompt again."""

    code = "insecure_transport"
    sqlstate = "28000"
    http_status = 403


def is_secure_request(request: Request) -> bool:
    return request.url.scheme in ("https", "wss")


def password_allowed(request: Request, allow_insecure: bool) -> bool:
    if allow_insecure or is_secure_request(request):
        return True
    client = request.client
    return is_loopback_host(client.host if client else None)


def require_password_transport(request: Request, allow_insecure: bool) -> None:
    """Raise InsecureTransport when a password must not be accepted on `request`."""
    if not password_allowed(request, allow_insecure):
        raise InsecureTransport(
            "password authentication over plain HTTP is refused from other hosts: the "
            "password would cross the network unencrypted",
            hint="connect over HTTPS (TLS), or authenticate with 'Authorization: Bearer "
                 "<token>'")


def insecure_passwords_allowed(state) -> bool:
    """The server's `allow_insecure_passwords` setting (False when there is no config, e.g.
    a front end built on a bare GatewayService)."""
    return bool(getattr(getattr(state, "config", None), "allow_insecure_passwords", False))
