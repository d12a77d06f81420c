"""PostgreSQL wire protocol v3 endpoint for sqlgate.

`PgWireServer(service, host="127.0.0.1", port=5433, ssl_context=None, statement_timeout_s=None)`
serves a `server.service.GatewayService` to real PostgreSQL clients (psql, psycopg, asyncpg,
pgJDBC, node-postgres...): SCRAM-SHA-256 logins against the same users as HTTP, DP answers
for analyst SQL, a synthetic catalog for introspection. See docs/INTERFACES.md.
"""
from server.pgwire.server import PgWireServer

__all__ = ["PgWireServer"]
