"""Run a domain server: the HTTP API (uvicorn) and, when available, the PG wire server, in one
asyncio loop sharing one `ServerState`.

The PG wire server lives in `server.pgwire` (another package); it is imported defensively so
the HTTP server runs without it.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import uvicorn

from server.http.app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8765
DEFAULT_PG_PORT = 5433
ADMIN_TOKEN_FILE = "admin.token"
PEPPER_FILE = "pgwire.pepper"

_log = logging.getLogger("sqlgate.serve")


def ensure_admin(state) -> str | None:
    """On a domain without users, create `admin` and return its token (else None).

    The token is also written to HOME/admin.token (mode 0600) so a new operator can start;
    only its hash is kept in the user store.
    """
    if state.users.count_users():
        return None
    state.users.create_user("admin", "admin")
    token = state.users.issue_token("admin", label="bootstrap")
    path = Path(state.home) / ADMIN_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    from server.audit import AuditEvent
    state.audit.append(AuditEvent(channel="cli", action="users.bootstrap", decision="ok",
                                  actor="admin", role="admin", details={"user": "admin"}))
    return token


def scram_pepper(home) -> bytes:
    """The domain's persistent secret for PG wire mock SCRAM salts (HOME/pgwire.pepper, 0600),
    created on first use, so an unknown user's made-up salt is as stable as a real one."""
    path = Path(home) / PEPPER_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data[:32]
    except FileNotFoundError:
        pass
    data = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return data


def plugin_routes(state) -> list:
    """Routes (and runners) of the optional front ends that are installed: the web console,
    the Trino protocol and torch_bridge training jobs. A plugin that is missing is skipped; one
    that fails to load is skipped with a warning, so the /v1 API always comes up."""
    routes: list = []
    for name, load in (("console", _console_routes), ("trino", _trino_routes),
                       ("training", _training_routes)):
        try:
            routes.extend(load(state))
        except ImportError:
            continue
        except Exception as exc:  # a broken plugin must not take the API down
            _log.warning("the %s plugin could not be loaded (%s); serving without it", name,
                         type(exc).__name__)
    return routes


def _console_routes(state) -> list:
    from server.console import routes
    return routes(state)


def _trino_routes(state) -> list:
    from server.trino.routes import routes
    return routes(state)


def _training_routes(state) -> list:
    from torch_bridge.server_plugin import install, training_routes
    return training_routes(install(state))


def _pg_server_class():
    try:
        from server.pgwire import PgWireServer
    except ImportError:
        return None
    return PgWireServer


async def serve_async(state, http_host: str = DEFAULT_HOST, http_port: int = DEFAULT_HTTP_PORT,
                      pg_port: int | None = None, *, pg_host: str | None = None,
                      extra_routes: Sequence[Any] = (), ssl_certfile: str | None = None,
                      ssl_keyfile: str | None = None, log_level: str = "info",
                      ready: Callable[[dict], None] | None = None,
                      shutdown: asyncio.Event | None = None) -> None:
    """Serve until signalled (SIGINT/SIGTERM) or until `shutdown` is set.
    `ready({http_host, http_port, pg_port})` runs once listening (ports are the bound ones,
    so port 0 works)."""
    app = create_app(state, extra_routes)
    config = uvicorn.Config(app, host=http_host, port=http_port, log_level=log_level,
                            lifespan="off", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            server_header=False, access_log=log_level == "debug")
    http = uvicorn.Server(config)
    pg = None
    if pg_port is not None:
        server_class = _pg_server_class()
        if server_class is None:
            _log.warning("server.pgwire is not available; serving HTTP only")
        else:
            ssl_context = None
            if ssl_certfile and ssl_keyfile:
                ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ssl_context.load_cert_chain(ssl_certfile, ssl_keyfile)
            options: dict[str, Any] = {"ssl_context": ssl_context}
            parameters = inspect.signature(server_class).parameters
            if "statement_timeout_s" in parameters:
                options["statement_timeout_s"] = state.config.statement_timeout_s
            if "login_throttle" in parameters:
                options["login_throttle"] = getattr(state, "login_throttle", None)
            if "pepper" in parameters:
                options["pepper"] = scram_pepper(state.home)
            config = getattr(state, "config", None)
            for option, setting in (("startup_timeout_s", "pg_startup_timeout_s"),
                                    ("max_unauthenticated_per_address",
                                     "pg_max_unauthenticated_per_address")):
                if option in parameters and hasattr(config, setting):
                    options[option] = getattr(config, setting)
            pg = server_class(state.service, pg_host or http_host, pg_port, **options)
            await pg.start()
    try:
        task = asyncio.create_task(http.serve())
        while not http.started and not task.done():
            await asyncio.sleep(0.02)
        if http.started:
            bound = http_port
            for server in getattr(http, "servers", []):
                for sock in server.sockets:
                    bound = sock.getsockname()[1]
            info = {"http_host": http_host, "http_port": bound,
                    "pg_port": getattr(pg, "port", None) if pg else None}
            if ready is not None:
                ready(info)
        if shutdown is not None:
            waiter = asyncio.create_task(shutdown.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            http.should_exit = True
            waiter.cancel()
        await task
    finally:
        if pg is not None:
            await pg.close()


def plaintext_warning(host: str, tls: bool, allow_insecure_passwords: bool) -> str | None:
    """The startup warning for a server reachable from other hosts without TLS, else None."""
    from server.netaddr import is_loopback_host

    if tls or is_loopback_host(host):
        return None
    passwords = ("password logins over plain HTTP are ALLOWED (--allow-insecure-passwords): "
                 "passwords cross the network in clear"
                 if allow_insecure_passwords else
                 "password logins over plain HTTP from other hosts are refused (use tokens, "
                 "or --allow-insecure-passwords)")
    return (f"sqlgate: WARNING: serving on {host} without TLS: queries, answers and bearer "
            f"tokens cross the network unencrypted and a captured token can be replayed "
            f"until revoked; {passwords}. Use --ssl-certfile/--ssl-keyfile or a TLS proxy.")


def serve(state, http_host: str = DEFAULT_HOST, http_port: int = DEFAULT_HTTP_PORT,
          pg_port: int | None = None, **options: Any) -> None:
    """Blocking: run `serve_async` in a new event loop."""
    asyncio.run(serve_async(state, http_host, http_port, pg_port, **options))


def announce(info: dict) -> None:
    """The CLI's ready callback: one parseable line per listener."""
    print(f"sqlgate: HTTP API on http://{info['http_host']}:{info['http_port']}/v1", flush=True)
    if info.get("pg_port"):
        print(f"sqlgate: PG wire on {info['http_host']}:{info['pg_port']}", flush=True)
    sys.stdout.flush()
