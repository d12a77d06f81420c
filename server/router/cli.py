"""`sqlgate router`, `sqlgate federation-domain`, `sqlgate federation-init`.

Hook (sqlgate/cli.py or server/cli.py): `from server.router.cli import add_commands;
add_commands(sub)`. Handlers read `args.home` when the main parser defines `--home`.
"""
from __future__ import annotations

import argparse
import os
import sys

from sqlgate.errors import SqlgateError

DEFAULT_ROUTER_HTTP_PORT = 8790
DEFAULT_ROUTER_PG_PORT = 5434
# Not the domain's --home: the router's users must not be a domain's users by accident.
DEFAULT_ROUTER_HOME = "sqlgate-router-home"


def add_commands(sub) -> None:
    router = sub.add_parser("router", help="serve the federation router: HTTP /v1 and PG wire "
                                           "over several domains")
    router.add_argument("--config", required=True, help="router YAML (federation-init writes one)")
    router.add_argument("--router-home",
                        default=os.environ.get("SQLGATE_ROUTER_HOME", DEFAULT_ROUTER_HOME),
                        help="the router's own directory: its users and audit log, no data "
                             f"(env SQLGATE_ROUTER_HOME; default {DEFAULT_ROUTER_HOME})")
    router.add_argument("--host", default=os.environ.get("SQLGATE_HOST", "127.0.0.1"))
    router.add_argument("--port", type=int, default=DEFAULT_ROUTER_HTTP_PORT,
                        help="HTTP port (0 = any free)")
    router.add_argument("--pg-port", type=int, default=DEFAULT_ROUTER_PG_PORT)
    router.add_argument("--no-pg", action="store_true", help="do not start the PG wire server")
    router.add_argument("--ssl-certfile")
    router.add_argument("--ssl-keyfile")
    router.add_argument("--log-level", default="info")
    # The same flag, environment variable and parsing as `sqlgate serve`: the router's /v1,
    # Trino and console front ends refuse passwords in clear exactly like a domain's.
    from server.cli import _env_flag
    router.add_argument("--allow-insecure-passwords", action="store_true",
                        default=_env_flag("SQLGATE_ALLOW_INSECURE_PASSWORDS"),
                        help="accept passwords (HTTP Basic, console sign-in) over plain HTTP "
                             "from other hosts (env SQLGATE_ALLOW_INSECURE_PASSWORDS=1; "
                             "default: refused, use TLS or tokens)")
    router.set_defaults(handler=_router)

    domain = sub.add_parser("federation-domain",
                            help="serve only this domain's federation endpoint (/federation/v1)")
    domain.add_argument("--config", required=True, help="domain YAML")
    domain.add_argument("--domain-home", default=None,
                        help="the domain's gateway directory (default: --home)")
    domain.add_argument("--host", default="127.0.0.1")
    domain.add_argument("--port", type=int, default=8791)
    domain.add_argument("--postgres", metavar="CONNINFO",
                        help="run bounded SQL on this PostgreSQL database instead of DuckDB")
    domain.set_defaults(handler=_domain)

    init = sub.add_parser("federation-init",
                          help="write router + domain configs with fresh pair keys and tokens")
    init.add_argument("--domain", action="append", required=True, metavar="NAME=URL")
    init.add_argument("--noise-domain", required=True)
    init.add_argument("--dataset", action="append", required=True)
    init.add_argument("--max-domains-per-unit", type=int, default=1)
    init.add_argument("--out", required=True)
    init.set_defaults(handler=_init)


def _home(args, own: str | None) -> str:
    home = own or getattr(args, "home", None)
    if not home:
        raise SystemExit("sqlgate: give the domain's directory (--domain-home or --home)")
    return home


def _router(args) -> int:
    from server.router.frontend import run_router
    return run_router(args.config, args.router_home, args.host, args.port,
                      None if args.no_pg else args.pg_port, ssl_certfile=args.ssl_certfile,
                      ssl_keyfile=args.ssl_keyfile, log_level=args.log_level,
                      allow_insecure_passwords=args.allow_insecure_passwords)


def _domain(args) -> int:
    from server.router.serve import run_domain
    executor = None
    if args.postgres:
        from sqlgate.backends import PostgresExecutor
        executor = PostgresExecutor(args.postgres)
    run_domain(args.config, _home(args, args.domain_home), args.host, args.port,
               executor=executor)
    return 0


def _init(args) -> int:
    from server.router.bootstrap import federation_files
    domains = {}
    for item in args.domain:
        name, _, url = item.partition("=")
        if not name or not url:
            print("sqlgate: --domain takes NAME=URL", file=sys.stderr)
            return 2
        domains[name] = url
    try:
        files = federation_files(domains, noise_domain=args.noise_domain, datasets=args.dataset,
                                 max_domains_per_unit=args.max_domains_per_unit)
    except ValueError as err:
        print(f"sqlgate: {err}", file=sys.stderr)
        return 2
    for name, path in files.write(args.out).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m server.router ...` (the same commands without the sqlgate CLI)."""
    parser = argparse.ArgumentParser(prog="python -m server.router")
    parser.add_argument("--home", default=os.environ.get("SQLGATE_HOME"))
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except SqlgateError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return 1
