"""The router's analyst front ends: the same HTTP API (/v1) and PG wire server as a domain.

A router home holds only what the router itself owns: its users (users.sqlite: who may query
which federated dataset, tokens, SCRAM verifiers), its audit log and its request store. It
holds no data and no ledger: every domain charges its own. `ServerState` is built around a
`Router` instead of a `Gateway`, so `server.http.app.create_app` and `server.pgwire` serve it
unchanged (both only talk to GatewayService and the gateway-like surface).

    sqlgate router --config router.yaml --home router-home [--port 8790] [--pg-port 5434]
        [--allow-insecure-passwords]
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from server.router.config import load_router_config
from server.router.router import Router


def open_router_state(home: str | Path, router: Router, **options: Any):
    """A ServerState whose 'gateway' is the router (owned by the state: closed with it)."""
    from server.audit import AuditLog
    from server.auth import UserStore
    from server.http.uploads import UploadSessions
    from server.requests import RequestStore
    from server.service import GatewayService
    from server.state import ServerConfig, ServerState

    config = ServerConfig.from_options(**options)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    users = UserStore(home / "users.sqlite")
    audit = AuditLog.in_home(home)
    service = GatewayService(router, users, audit,
                             max_concurrent_per_user=config.max_concurrent_per_user)
    return ServerState(home=home, gateway=router, users=users, audit=audit, service=service,
                       requests=RequestStore(home / "requests.sqlite"),
                       uploads=UploadSessions(home / "uploads",
                                              max_file_bytes=config.max_upload_bytes,
                                              ttl_s=config.upload_ttl_s),
                       config=config, executors={})


def run_router(config_path: str | Path, home: str | Path, host: str = "127.0.0.1",
               port: int = 8790, pg_port: int | None = 5434, *,
               ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
               log_level: str = "info", **options: Any) -> int:
    """Blocking: serve the router until SIGINT/SIGTERM (the `sqlgate router` command)."""
    from server.router.training_api import federated_training_routes
    from server.serve import announce, ensure_admin, plaintext_warning, serve

    router = Router(load_router_config(config_path))
    state = open_router_state(home, router, **options)
    try:
        token = ensure_admin(state)
        if token:
            print("sqlgate router: created user 'admin' (first start). Its token, shown once "
                  f"and saved to {Path(home) / 'admin.token'} (mode 0600):", flush=True)
            print(f"sqlgate router: admin token: {token}", flush=True)
        warning = plaintext_warning(host, bool(ssl_certfile and ssl_keyfile),
                                    state.config.allow_insecure_passwords)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        previous = {sig: signal.signal(sig, _stop_requested)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            serve(state, host, port, pg_port, ssl_certfile=ssl_certfile,
                  ssl_keyfile=ssl_keyfile, log_level=log_level, ready=announce,
                  extra_routes=federated_training_routes())
        except _Stopped:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        state.uploads.close()
        router.close()
    print("sqlgate router: stopped", flush=True)
    return 0


class _Stopped(Exception):
    pass


def _stop_requested(signum, frame):
    raise _Stopped()
