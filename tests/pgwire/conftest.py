"""A running PG wire server on 127.0.0.1 (free port) over a small DP dataset.

Users: alice (analyst, granted `town`), bob (analyst, no grants), both with passwords.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from server.audit import AuditLog
from server.auth import UserStore
from server.pgwire import PgWireServer
from server.service import GatewayService
from sqlgate.gateway import Gateway
from tests.core.conftest import people_frame, people_metadata

PASSWORD = "alice-secret-pw"
BOB_PASSWORD = "bob-secret-pw1"


@dataclass
class Running:
    server: PgWireServer
    service: GatewayService
    gateway: Gateway
    audit: AuditLog

    @property
    def port(self) -> int:
        return self.server.port

    def dsn(self, user: str = "alice", password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/sqlgate"

    def spent(self, user: str = "alice") -> float:
        return self.gateway.budget(user, "town").spent_epsilon

    def queries(self, user: str = "alice") -> int:
        return self.gateway.budget(user, "town").queries


def make_service(home):
    gateway = Gateway(home / "domain")
    gateway.add_dataset(people_metadata(), {"people": people_frame(n=2000)})
    users = UserStore(home / "users.sqlite")
    users.create_user("alice", "analyst", password=PASSWORD)
    users.create_user("bob", "analyst", password=BOB_PASSWORD)
    users.grant("alice", "town", "query")
    audit = AuditLog.in_home(home)
    return gateway, GatewayService(gateway, users, audit), audit


@pytest.fixture(scope="package")
def pg(tmp_path_factory):
    home = tmp_path_factory.mktemp("pgwire")
    gateway, service, audit = make_service(home)
    server = PgWireServer(service, host="127.0.0.1", port=0).start_in_thread()
    yield Running(server, service, gateway, audit)
    server.stop()
    gateway.close()
