"""Review findings on PG wire authentication.

* Before authentication a client could announce 16 MiB messages (x 256 connections).
* Unknown users get a made-up SCRAM salt derived from the server's pepper. A per-process
  pepper changed those salts at every restart while real users' salts stay put, so probing a
  name before and after a restart told real names from made-up ones; `serve` now keeps the
  pepper in HOME.
"""
from __future__ import annotations

import base64
import os
import socket
import stat
import struct

from server.pgwire import PgWireServer
from server.serve import PEPPER_FILE, scram_pepper
from tests._require import require_module
from tests.pgwire.conftest import make_service
from tests.pgwire.test_protocol import _message, _recv_message, _startup


def _salt(port: int, user: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_startup(user))
        kind, body = _recv_message(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10
        first = ("n,,n=,r=" + base64.b64encode(os.urandom(18)).decode()).encode()
        sock.sendall(_message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        kind, body = _recv_message(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11
        attrs = dict(item.split("=", 1) for item in body[4:].decode().split(","))
        return base64.b64decode(attrs["s"])


def test_pepper_file_is_private_and_stable(tmp_path):
    first = scram_pepper(tmp_path)
    assert len(first) == 32
    mode = stat.S_IMODE(os.stat(tmp_path / PEPPER_FILE).st_mode)
    assert mode == 0o600
    assert scram_pepper(tmp_path) == first
    other = tmp_path / "other"
    other.mkdir()
    assert scram_pepper(other) != first


def test_unknown_users_salt_survives_a_restart(tmp_path):
    gateway, service, _ = make_service(tmp_path)
    pepper = scram_pepper(tmp_path)
    salts = {}
    try:
        for run in range(2):    # two server processes' lifetimes on the same home
            server = PgWireServer(service, host="127.0.0.1", port=0,
                                  pepper=pepper).start_in_thread()
            try:
                salts[run] = (_salt(server.port, "alice"), _salt(server.port, "mallory"),
                              _salt(server.port, "mallory"))
            finally:
                server.stop()
    finally:
        gateway.close()
    (alice0, ghost0, ghost0b), (alice1, ghost1, _) = salts[0], salts[1]
    assert alice0 == alice1            # a real user's salt is stored
    assert ghost0 == ghost0b == ghost1  # and a made-up one now behaves the same way
    assert ghost0 != alice0


def test_big_messages_before_authentication_are_refused_at_once(pg):
    """A client that has not authenticated cannot announce (and make us buffer) a 1 MiB
    message: the header alone gets FATAL 08P01, without waiting for the body."""
    with socket.create_connection(("127.0.0.1", pg.port), timeout=10) as sock:
        sock.sendall(_startup("alice"))
        kind, _ = _recv_message(sock)
        assert kind == b"R"
        sock.sendall(b"p" + struct.pack("!i", 1 << 20) + b"x" * 100)
        kind, body = _recv_message(sock)
        assert kind == b"E" and b"08P01" in body
        assert sock.recv(1) == b""      # closed
    # Authenticated clients still send statements far above the authentication limit.
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        padding = " " * 60_000
        assert conn.execute("SELECT 1" + padding).fetchall() == [(1,)]

