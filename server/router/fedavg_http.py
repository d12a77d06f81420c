"""The domain's federated-training routes, /federation/v1/fedavg/..., authenticated exactly like
the other federation routes (the router's bearer token, optional mTLS at the server).

Mount them in the domain's main HTTP app next to the federation routes; they need the
domain's ServerState (its RequestStore holds the owners' approvals):

    extra = [*plugin_routes(state), *federated_domain_routes(state, "domain.yaml")]
    app = create_app(state, extra_routes=extra)

which is, spelled out:

    service = DomainService(state.gateway, load_domain_config("domain.yaml"))
    fedavg = install_fedavg(state, service)       # after torch_bridge's install, if any
    app = create_app(state, extra_routes=[*domain_routes(service), *fedavg_routes(fedavg)])

A standalone federation endpoint (`sqlgate federation-domain`) has no approval workflow, so
it serves federated queries only, not federated training.

torch is imported only when a job starts on this domain.
"""
from __future__ import annotations


from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.http.endpoint import read_json
from server.router.config import load_domain_config
from server.router.domain import DomainService
from server.router.fedavg_domain import FedAvgDomain, install_fedavg
from server.router.fedavg_protocol import MAX_BODY_BYTES
from server.router.http import _guarded, domain_routes


def fedavg_routes(fedavg: FedAvgDomain, prefix: str = "/federation/v1/fedavg") -> list[Route]:
    service = fedavg.service

    def route(name: str, handler, with_peer: bool = False) -> Route:
        async def endpoint(request: Request) -> Response:
            peer = await run_in_threadpool(service.authenticate,
                                           request.headers.get("authorization"))
            body = await read_json(request, MAX_BODY_BYTES)
            args = (body, peer) if with_peer else (body,)
            try:
                result = await run_in_threadpool(handler, *args)
            except Exception as exc:
                await run_in_threadpool(fedavg.audit, name, peer, body, None, exc)
                raise
            await run_in_threadpool(fedavg.audit, name, peer, body, result, None)
            return JSONResponse(result)
        return Route(f"{prefix}/{name}", _guarded(endpoint), methods=["POST"])

    return [route("prepare", fedavg.prepare, with_peer=True), route("status", fedavg.status),
            route("ready", fedavg.ready), route("start", fedavg.start),
            route("round", fedavg.round), route("end", fedavg.end, with_peer=True)]


def federated_domain_routes(state, config_path) -> list[Route]:
    """All /federation/v1 routes of a domain server (queries and training) over its state.
    Call it after torch_bridge's `install` (plugin_routes), which it wraps."""
    service = DomainService(state.gateway, load_domain_config(config_path))
    return [*domain_routes(service), *fedavg_routes(install_fedavg(state, service))]
