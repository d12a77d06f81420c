"""Per-address cap on PG wire connections that have not authenticated yet, and the shorter
startup timeout (review finding: one address could hold all 256 slots with idle, never
authenticating connections for 30 s each)."""
from __future__ import annotations

import asyncio
import queue
import socket
import struct
import threading
import time

import pytest

from server.pgwire import PgWireServer
from server.pgwire.admission import Admission, address_key
from tests.pgwire.conftest import make_service
from tests.pgwire.test_protocol import _closed_by_server, _recv_message, _startup, login

HALF_STARTUP = struct.pack("!i", 60) + struct.pack("!i", 196608) + b"user\x00"


def _wait_for(condition, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        time.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


def _half_open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HALF_STARTUP)
    return sock


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    gateway, service, _ = make_service(tmp_path_factory.mktemp("pgwire-admission"))
    yield service
    gateway.close()


@pytest.fixture
def capped(service):
    # Loopback is exempt by default; tests can only use 127.0.0.1, so count it here.
    server = PgWireServer(service, port=0, max_unauthenticated_per_address=3,
                          unauthenticated_cap_exempts_loopback=False).start_in_thread()
    yield server
    server.stop()


def test_an_address_cannot_hold_more_unauthenticated_connections_than_the_cap(capped):
    port = capped.port
    stalled = [_half_open(port) for _ in range(3)]
    try:
        _wait_for(lambda: capped.admission.pending("127.0.0.1") == 3, "3 pending connections")
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            extra.sendall(_startup("alice"))
            kind, body = _recv_message(extra)
            assert kind == b"E" and b"C53300\x00" in body and b"authenticating" in body
            assert _closed_by_server(extra)
        finally:
            extra.close()
        # One stalled peer goes away: its place is free again and a real login succeeds.
        stalled.pop().close()
        _wait_for(lambda: capped.admission.pending("127.0.0.1") == 2, "a freed place")
        session = login(port)
        # Authenticated sessions do not count against the cap.
        _wait_for(lambda: capped.admission.pending("127.0.0.1") == 2, "the login's release")
        session.close()
    finally:
        for sock in stalled:
            sock.close()
    _wait_for(lambda: capped.admission.pending("127.0.0.1") == 0, "every place released")


def test_authenticated_sessions_never_use_up_the_cap(capped):
    sessions = [login(capped.port) for _ in range(5)]     # more than the cap of 3
    try:
        assert capped.admission.pending("127.0.0.1") == 0
        stalled = [_half_open(capped.port) for _ in range(3)]
        try:
            _wait_for(lambda: capped.admission.pending("127.0.0.1") == 3, "3 pending")
        finally:
            for sock in stalled:
                sock.close()
    finally:
        for sock in sessions:
            sock.close()


def test_loopback_is_exempt_by_default(service):
    server = PgWireServer(service, port=0, max_unauthenticated_per_address=2).start_in_thread()
    stalled = [_half_open(server.port) for _ in range(4)]
    try:
        login(server.port).close()      # would be refused if 127.0.0.1 were counted
        assert server.admission.pending("127.0.0.1") == 0
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_defaults():
    server = PgWireServer(service=None, port=0)
    assert server.startup_timeout_s == 10.0
    assert server.admission.limit == 32 and server.admission.exempt_loopback


def test_admission_counts_per_address_group():
    admission = Admission(limit=2, exempt_loopback=True)
    a1, a2 = admission.admit("198.51.100.1"), admission.admit("198.51.100.1")
    assert a1 and a2 and admission.admit("198.51.100.1") is None
    assert admission.admit("198.51.100.2") is not None          # another address
    # IPv6 peers count per /64 (one host's block); IPv4-mapped ones as IPv4.
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:3::5") != address_key("2001:db8:1:2::5")
    assert address_key("::ffff:198.51.100.1") == "198.51.100.1"
    v6 = [admission.admit(f"2001:db8:1:2::{i}") for i in range(1, 4)]
    assert v6[0] and v6[1] and v6[2] is None
    a1.release()
    a1.release()                                                # idempotent
    assert admission.pending("198.51.100.1") == 1
    assert admission.admit("198.51.100.1") is not None
    assert all(admission.admit("127.0.0.1") for _ in range(10))  # loopback exempt
    unlimited = Admission(limit=None)
    assert all(unlimited.admit("198.51.100.1") for _ in range(100))


def test_serve_applies_the_configured_startup_timeout_and_cap(tmp_path):
    """`serve_async` hands ServerConfig's PG wire settings to the PG wire server: with a
    0.5 s startup timeout an idle peer is told so and dropped."""
    from server import serve as serve_module
    from server.state import ServerState

    infos: queue.Queue = queue.Queue()
    stop: list = []
    captured: list = []
    real_class = serve_module._pg_server_class()

    class Recording(real_class):       # the real server, remembered when it starts
        async def start(self):
            captured.append(self)
            await super().start()

    def run(state):
        async def main():
            shutdown = asyncio.Event()
            stop.append((asyncio.get_running_loop(), shutdown))
            await serve_module.serve_async(state, "127.0.0.1", 0, 0, ready=infos.put,
                                           shutdown=shutdown, log_level="warning")
        asyncio.run(main())

    original = serve_module._pg_server_class
    serve_module._pg_server_class = lambda: Recording
    try:
        with ServerState.open(tmp_path / "home", pg_startup_timeout_s=0.5,
                              pg_max_unauthenticated_per_address=7) as state:
            thread = threading.Thread(target=run, args=(state,), daemon=True)
            thread.start()
            info = infos.get(timeout=60)
            try:
                [pg] = captured
                assert pg.startup_timeout_s == 0.5 and pg.admission.limit == 7
                idle = socket.create_connection(("127.0.0.1", info["pg_port"]), timeout=20)
                try:
                    kind, body = _recv_message(idle)
                    assert kind == b"E" and b"took too long" in body
                    assert _closed_by_server(idle)
                finally:
                    idle.close()
            finally:
                loop, shutdown = stop[0]
                loop.call_soon_threadsafe(shutdown.set)
                thread.join(60)
    finally:
        serve_module._pg_server_class = original
