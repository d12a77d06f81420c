"""`sqlgate serve`, `sqlgate user ...`, `sqlgate grant ...`, `sqlgate audit verify`.

Hooked from sqlgate/cli.py; `args.home` is the domain directory (`--home`, env SQLGATE_HOME).
User and grant commands touch only users.sqlite and the audit log, never the engine, so they
work while a server runs on the same domain.
"""
from __future__ import annotations

import getpass
import os
import signal
import sys
from pathlib import Path

from server.serve import DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_PG_PORT


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"sqlgate: {name} must be an integer port") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"sqlgate: {name} must be a number") from None


def _env_flag(name: str) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"sqlgate: {name} must be 1 or 0")


def add_commands(sub) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API (and PG wire when available)")
    serve.add_argument("--host", default=os.environ.get("SQLGATE_HOST", DEFAULT_HOST),
                       help="address to bind (env SQLGATE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int,
                       default=_env_int("SQLGATE_HTTP_PORT", DEFAULT_HTTP_PORT),
                       help="HTTP port (env SQLGATE_HTTP_PORT; default 8765; 0 = any free)")
    serve.add_argument("--pg-port", type=int, default=_env_int("SQLGATE_PG_PORT", DEFAULT_PG_PORT),
                       help="PG wire port (env SQLGATE_PG_PORT; default 5433)")
    serve.add_argument("--no-pg", action="store_true", help="do not start the PG wire server")
    serve.add_argument("--statement-timeout", type=float,
                       default=float(os.environ.get("SQLGATE_STATEMENT_TIMEOUT", 30.0)),
                       help="seconds per engine statement (env SQLGATE_STATEMENT_TIMEOUT)")
    serve.add_argument("--max-body-bytes", type=int,
                       default=_env_int("SQLGATE_MAX_BODY_BYTES", 1 << 20))
    serve.add_argument("--max-upload-bytes", type=int,
                       default=_env_int("SQLGATE_MAX_UPLOAD_BYTES", 2 << 30))
    serve.add_argument("--max-concurrent", type=int,
                       default=_env_int("SQLGATE_MAX_CONCURRENT", 4),
                       help="queries in flight per user")
    serve.add_argument("--allow-insecure-passwords", action="store_true",
                       default=_env_flag("SQLGATE_ALLOW_INSECURE_PASSWORDS"),
                       help="accept passwords (HTTP Basic, console sign-in) over plain HTTP "
                            "from other hosts (env SQLGATE_ALLOW_INSECURE_PASSWORDS=1; "
                            "default: refused, use TLS or tokens)")
    serve.add_argument("--max-pending-requests", type=int,
                       default=_env_int("SQLGATE_MAX_PENDING_REQUESTS", 100),
                       help="pending approval requests per analyst (env "
                            "SQLGATE_MAX_PENDING_REQUESTS; default 100)")
    serve.add_argument("--max-upload-sessions", type=int,
                       default=_env_int("SQLGATE_MAX_UPLOAD_SESSIONS", 8),
                       help="open upload sessions per owner (env SQLGATE_MAX_UPLOAD_SESSIONS; "
                            "default 8)")
    serve.add_argument("--max-upload-total-bytes", type=int,
                       default=_env_int("SQLGATE_MAX_UPLOAD_TOTAL_BYTES", 16 << 30),
                       help="bytes all open uploads may hold on disk together (env "
                            "SQLGATE_MAX_UPLOAD_TOTAL_BYTES; default 16 GiB)")
    serve.add_argument("--pg-startup-timeout", type=float,
                       default=_env_float("SQLGATE_PG_STARTUP_TIMEOUT", 10.0),
                       help="seconds a PG wire client has to finish logging in (env "
                            "SQLGATE_PG_STARTUP_TIMEOUT; default 10)")
    serve.add_argument("--pg-max-unauthenticated", type=int,
                       default=_env_int("SQLGATE_PG_MAX_UNAUTHENTICATED", 32),
                       help="PG wire connections one address may hold before logging in; "
                            "loopback exempt (env SQLGATE_PG_MAX_UNAUTHENTICATED; default 32)")
    serve.add_argument("--ledger-dsn", default=os.environ.get("SQLGATE_LEDGER_DSN") or None,
                       help="PostgreSQL conninfo of the privacy ledger (env SQLGATE_LEDGER_DSN; "
                            "default: SQLite in the home)")
    serve.add_argument("--ssl-certfile", default=os.environ.get("SQLGATE_SSL_CERTFILE"))
    serve.add_argument("--ssl-keyfile", default=os.environ.get("SQLGATE_SSL_KEYFILE"))
    serve.add_argument("--log-level", default=os.environ.get("SQLGATE_LOG_LEVEL", "info"))
    serve.add_argument("--no-plugins", action="store_true",
                       help="serve /v1 only (no web console, Trino endpoint or training jobs)")
    serve.add_argument("--federation", default=os.environ.get("SQLGATE_FEDERATION") or None,
                       help="federation domain YAML: also serve /federation/v1 to a router "
                            "(env SQLGATE_FEDERATION)")
    serve.set_defaults(handler=_serve)

    user = sub.add_parser("user", help="manage users and tokens")
    usub = user.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="create a user and print its first token (once)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "owner", "analyst"))
    add.add_argument("--password", action="store_true",
                     help="also set a password (prompted; read from stdin when not a terminal)")
    add.set_defaults(handler=_user_add)
    token = usub.add_parser("token", help="issue a new token for a user (printed once)")
    token.add_argument("name")
    token.add_argument("--label", default=None)
    token.set_defaults(handler=_user_token)
    lst = usub.add_parser("list", help="list users, their grants and tokens")
    lst.set_defaults(handler=_user_list)

    grant = sub.add_parser("grant", help="grant (or --revoke) a dataset permission")
    grant.add_argument("name")
    grant.add_argument("dataset")
    grant.add_argument("permission", choices=("query", "own"))
    grant.add_argument("--revoke", action="store_true")
    grant.set_defaults(handler=_grant)

    audit = sub.add_parser("audit", help="the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="verify the hash chain")
    verify.set_defaults(handler=_audit_verify)

    from server.router.cli import add_commands as add_router_commands
    add_router_commands(sub)


# ---------------------------------------------------------------- helpers


def _users(args):
    from server.auth import UserStore
    return UserStore(Path(args.home) / "users.sqlite")


def _record(args, action: str, **fields) -> None:
    from server.audit import AuditEvent, AuditLog
    AuditLog.in_home(Path(args.home)).append(AuditEvent(
        channel="cli", action=action, decision="ok", actor=os.environ.get("USER"), **fields))


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("sqlgate: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


# ---------------------------------------------------------------- commands


def _serve(args) -> int:
    from server.serve import (announce, ensure_admin, plaintext_warning, plugin_routes,
                              serve)
    from server.state import ServerState

    with ServerState.open(Path(args.home), statement_timeout_s=args.statement_timeout,
                          max_body_bytes=args.max_body_bytes,
                          max_upload_bytes=args.max_upload_bytes,
                          max_concurrent_per_user=args.max_concurrent,
                          ledger_dsn=args.ledger_dsn,
                          allow_insecure_passwords=args.allow_insecure_passwords,
                          max_pending_requests_per_user=args.max_pending_requests,
                          max_upload_sessions_per_owner=args.max_upload_sessions,
                          max_upload_total_bytes=args.max_upload_total_bytes,
                          pg_startup_timeout_s=args.pg_startup_timeout,
                          pg_max_unauthenticated_per_address=args.pg_max_unauthenticated
                          ) as state:
        token = ensure_admin(state)
        if token:
            print("sqlgate: created user 'admin' (first start). Its token, shown once and saved "
                  f"to {Path(args.home) / 'admin.token'} (mode 0600):", flush=True)
            print(f"sqlgate: admin token: {token}", flush=True)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: turn
        # that into a normal exit so the state (engine, files) is closed cleanly.
        warning = plaintext_warning(args.host, bool(args.ssl_certfile and args.ssl_keyfile),
                                    args.allow_insecure_passwords)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        previous = {sig: signal.signal(sig, _stop_requested)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        extra = [] if args.no_plugins else list(plugin_routes(state))
        if args.federation:
            # Federated queries and federated training (owners approve in this domain's
            # request store); after plugin_routes, whose training runner it wraps.
            from server.router.fedavg_http import federated_domain_routes
            extra.extend(federated_domain_routes(state, args.federation))
        try:
            serve(state, args.host, args.port, None if args.no_pg else args.pg_port,
                  ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                  log_level=args.log_level, ready=announce,
                  # console (/console), Trino (/v1/statement), training jobs: see plugin_routes
                  extra_routes=extra)
        except _Stopped:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("sqlgate: stopped", flush=True)
    return 0


class _Stopped(Exception):
    pass


def _stop_requested(signum, frame):
    raise _Stopped()


def _user_add(args) -> int:
    users = _users(args)
    password = _read_password() if args.password else None
    user = users.create_user(args.name, args.role, password=password)
    token = users.issue_token(user.name, label="cli")
    _record(args, "users.create", details={"user": user.name, "role": user.role,
                                           "password_set": password is not None})
    print(f"created {user.role} '{user.name}'. Token (shown once, keep it secret):")
    print(token)
    return 0


def _user_token(args) -> int:
    users = _users(args)
    token = users.issue_token(args.name, label=args.label)
    _record(args, "tokens.issue", details={"user": args.name})
    print(token)
    return 0


def _user_list(args) -> int:
    users = _users(args)
    grants = users.grants()
    for user in users.users():
        mine = [f"{g['permission']}:{g['dataset']}" for g in grants if g["user"] == user.name]
        tokens = [t for t in users.tokens(user.name) if not t.revoked]
        print(f"{user.name:<20} {user.role:<8} tokens={len(tokens):<3} "
              f"grants={', '.join(mine) or '-'}")
    return 0


def _grant(args) -> int:
    users = _users(args)
    if args.revoke:
        users.revoke(args.name, args.dataset, args.permission)
    else:
        users.grant(args.name, args.dataset, args.permission)
    _record(args, "grants.revoke" if args.revoke else "grants.grant", dataset=args.dataset,
            details={"user": args.name, "permission": args.permission})
    catalog = Path(args.home) / "catalog" / f"{args.dataset.lower()}.json"
    note = "" if catalog.exists() else " (no such dataset yet; the grant applies once it exists)"
    print(f"{'revoked' if args.revoke else 'granted'} {args.permission} on {args.dataset} "
          f"{'from' if args.revoke else 'to'} {args.name}{note}")
    return 0


def _audit_verify(args) -> int:
    from server.audit import AuditLog
    report = AuditLog.in_home(Path(args.home)).verify()
    if report.ok:
        print(f"audit chain OK: {report.records} records")
        return 0
    print(f"audit chain BROKEN at record {report.first_bad_seq}: {report.reason} "
          f"({report.records} records verified before it)")
    return 1
