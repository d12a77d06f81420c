"""Serve a domain's federation endpoint: mounted in its main HTTP app, or alone with uvicorn.

Mounted (preferred: one process holds the domain's engine and ledger):
    extra_routes = federation_routes(state.gateway, "domain.yaml")
    serve(state, ..., extra_routes=[*console_routes, *extra_routes])
Alone (a domain that runs no analyst server): `sqlgate federation-domain --config --home`.
"""
from __future__ import annotations

import ssl
from pathlib import Path

from server.router.config import TlsConfig, load_domain_config
from server.router.domain import DomainService
from server.router.http import domain_app, domain_routes


def federation_routes(gateway, config_path: str | Path) -> list:
    """The /federation/v1 routes of this domain, over its (already open) gateway."""
    return domain_routes(DomainService(gateway, load_domain_config(config_path)))


def run_domain(config_path: str | Path, home: str | Path, host: str = "127.0.0.1",
               port: int = 8791, *, executor=None) -> None:
    """Serve this domain's federation endpoint (/federation/v1) over its Gateway at `home`.

    `executor` (e.g. sqlgate.backends.PostgresExecutor) runs the bounded SQL elsewhere."""
    import uvicorn
    from sqlgate.gateway import Gateway
    config = load_domain_config(config_path)
    gateway = Gateway(home)
    if executor is not None:
        from sqlgate.backends import use_executor
        use_executor(gateway, executor)  # the catalog still reads metadata from DuckDB
    service = DomainService(gateway, config)
    try:
        uvicorn.run(domain_app(service), host=host, port=port, log_level="warning",
                    **uvicorn_tls(config.tls))
    finally:
        gateway.close()


def uvicorn_tls(tls: TlsConfig | None) -> dict:
    """Server-side TLS; with a CA configured, clients must present a certificate (mTLS)."""
    if tls is None or not tls.cert:
        return {}
    kwargs = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    if tls.ca:
        kwargs.update(ssl_ca_certs=tls.ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return kwargs
