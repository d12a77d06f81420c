"""Federation: a router that answers one DP query over several domains (gateways) sharing a
horizontally partitioned dataset, combining their bounded partial aggregates by secure
summation (server/secure_sum.py) with the noise added once, by a designated noise domain.

    Router(config)             gateway-like: query / explain / describe / datasets / budget
    open_router_state(home, r) a ServerState around the router: the shared HTTP app and PG
                               wire server serve it (`sqlgate router`, server/router/cli.py)
    DomainService(gw, cfg)     a domain's side: prepare (plan + budget check), share (charge, mask)
    domain_routes(service)     its /federation/v1 routes, to mount in the domain's HTTP app
    federation_routes(gw, cfg) the same from a config file; domain_app / run_domain: alone
"""
from server.router.config import (DomainConfig, RouterConfig, load_domain_config,
                                  load_router_config, parse_domain_config, parse_router_config)
from server.router.domain import DomainService
from server.router.errors import FederationFailed, FederationMismatch
from server.router.frontend import open_router_state, run_router
from server.router.http import domain_app, domain_routes
from server.router.protocol import Federation
from server.router.router import FederatedBudget, Router
from server.router.serve import federation_routes, run_domain

__all__ = ["DomainConfig", "DomainService", "FederatedBudget", "Federation", "FederationFailed",
           "FederationMismatch", "Router", "RouterConfig", "domain_app", "domain_routes",
           "load_domain_config", "load_router_config", "parse_domain_config",
           "federation_routes", "open_router_state", "parse_router_config", "run_domain",
           "run_router"]
