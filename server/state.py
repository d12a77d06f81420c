"""Everything one running domain server holds: gateway, users, audit log, service, approval
requests, upload sessions and limits. Front ends (HTTP, PG wire, Trino, console) share one
`ServerState`; there is no global state.

    state = ServerState.open("sqlgate-home", max_body_bytes=1 << 20)
    app = server.http.app.create_app(state)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from server.audit import AuditLog
from server.auth import UserStore
from server.console.throttle import LoginThrottle
from server.requests import ApprovalRequest, RequestStore
from server.service import DEFAULT_MAX_CONCURRENT_PER_USER, GatewayService
from server.http.uploads import UploadSessions
from sqlgate.errors import InvalidParameter

# A runner for an approved request kind: called with (state, request) in a worker thread
# after the request moved to `running`. It reports through state.requests.set_progress /
# finish / fail; it may return before the work is done (e.g. after starting its own thread).
# If it raises, the request is marked failed with a generic message.
RequestExecutor = Callable[["ServerState", ApprovalRequest], None]


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 1 << 20                 # JSON request bodies
    max_upload_bytes: int = 2 << 30               # one uploaded table file
    statement_timeout_s: float = 30.0             # per engine statement
    max_concurrent_per_user: int = DEFAULT_MAX_CONCURRENT_PER_USER
    exact_row_limit: int = 10_000                 # rows of an approved exact request
    sample_row_limit: int = 1_000                 # rows of an approved sample request
    mock_row_limit: int = 10_000                  # rows of a mock table / mock-run
    upload_ttl_s: float = 24 * 3600.0             # idle upload sessions are dropped
    engine_threads: int | None = None
    ledger_dsn: str | None = None                 # PostgreSQL privacy ledger; None: SQLite in home
    # Passwords (HTTP Basic, console sign-in) over plain HTTP from non-loopback clients are
    # refused unless this is set (server.http.transport).
    allow_insecure_passwords: bool = False
    # Disk quotas: each pending request and each upload session holds disk until someone acts.
    max_pending_requests_per_user: int = 100      # 429 beyond it
    max_upload_sessions_per_owner: int = 8        # open sessions per uploader; 429 beyond it
    max_upload_total_bytes: int = 16 << 30        # all open sessions together; 413 beyond it
    # PG wire: time to finish startup + authentication, and how many connections one client
    # address (loopback exempt) may hold before authenticating.
    pg_startup_timeout_s: float = 10.0
    pg_max_unauthenticated_per_address: int = 32

    @classmethod
    def from_options(cls, **options: Any) -> "ServerConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidParameter(f"unknown server option(s): {', '.join(unknown)}")
        config = cls(**options)
        for name in ("max_body_bytes", "max_upload_bytes", "max_concurrent_per_user",
                     "exact_row_limit", "sample_row_limit", "mock_row_limit",
                     "max_pending_requests_per_user", "max_upload_sessions_per_owner",
                     "max_upload_total_bytes", "pg_max_unauthenticated_per_address"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameter(f"server option {name} must be a positive integer")
        if not isinstance(config.allow_insecure_passwords, bool):
            raise InvalidParameter("server option allow_insecure_passwords must be a boolean")
        for name in ("statement_timeout_s", "upload_ttl_s", "pg_startup_timeout_s"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidParameter(f"server option {name} must be a positive number")
        return config


@dataclass
class ServerState:
    home: Path
    gateway: Any                                   # sqlgate.gateway.Gateway
    users: UserStore
    audit: AuditLog
    service: GatewayService
    requests: RequestStore
    uploads: UploadSessions
    config: ServerConfig
    # Runners for approved requests by kind; exact and sample are built in (server.http.approvals),
    # torch_bridge registers "training".
    executors: dict[str, RequestExecutor] = field(default_factory=dict)
    # Failed password checks per (name, client address), shared by every front end that takes
    # a password (HTTP Basic on /v1 and Trino, console sign-in, PG wire), so a guesser cannot
    # move to another front end to escape the limit.
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)

    @classmethod
    def open(cls, home: str | Path, **config: Any) -> "ServerState":
        """Open (or create) a domain directory: data.duckdb + ledger.sqlite (Gateway),
        users.sqlite, audit.sqlite + audit.key, requests.sqlite, uploads/ (temporary)."""
        from server.http.approvals import builtin_executors
        from sqlgate.gateway import Gateway

        cfg = ServerConfig.from_options(**config)
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        ledger = None
        if cfg.ledger_dsn:
            # Several server processes can share one PostgreSQL ledger (advisory locks).
            from accountant import PostgresLedger
            ledger = PostgresLedger(cfg.ledger_dsn)
        gateway = Gateway(home, ledger=ledger, statement_timeout_s=cfg.statement_timeout_s,
                          threads=cfg.engine_threads)
        try:
            users = UserStore(home / "users.sqlite")
            audit = AuditLog.in_home(home)
            service = GatewayService(gateway, users, audit,
                                     max_concurrent_per_user=cfg.max_concurrent_per_user)
            requests = RequestStore(home / "requests.sqlite")
            uploads = UploadSessions(home / "uploads", max_file_bytes=cfg.max_upload_bytes,
                                     ttl_s=cfg.upload_ttl_s,
                                     max_sessions_per_owner=cfg.max_upload_sessions_per_owner,
                                     max_total_bytes=cfg.max_upload_total_bytes)
        except BaseException:
            gateway.close()
            raise
        return cls(home=home, gateway=gateway, users=users, audit=audit, service=service,
                   requests=requests, uploads=uploads, config=cfg,
                   executors=builtin_executors())

    def close(self) -> None:
        self.uploads.close()
        self.gateway.close()

    def __enter__(self) -> "ServerState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
