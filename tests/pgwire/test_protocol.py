"""Raw protocol behaviour: TLS/GSS refusal, malformed and oversized input, cancel, timeouts."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.pgwire import PgWireServer
from server.service import GatewayService
from tests._require import require_module
from tests.pgwire.conftest import PASSWORD, make_service


# ---------------------------------------------------------------- a tiny raw client


def _recv_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _recv_exact(sock, 5)
    length = struct.unpack("!i", header[1:])[0]
    return header[:1], _recv_exact(sock, length - 4)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _startup(user: str) -> bytes:
    body = struct.pack("!i", 196608) + b"user\x00" + user.encode() + b"\x00database\x00x\x00\x00"
    return struct.pack("!i", len(body) + 4) + body


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def login(port: int, user: str = "alice", password: str = PASSWORD) -> socket.socket:
    """SCRAM-SHA-256 client side (RFC 5802), enough to reach ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_startup(user))
    kind, body = _recv_message(sock)
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10
    assert b"SCRAM-SHA-256\x00" in body
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    sock.sendall(_message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
    kind, body = _recv_message(sock)
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11
    server_first = body[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored, auth_message, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    sock.sendall(_message(b"p", f"{without_proof},p={proof}".encode()))
    kind, body = _recv_message(sock)
    if kind == b"E":
        raise PermissionError(body)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    assert body[4:] == b"v=" + expected  # the server proved it holds the verifier
    while kind != b"Z":
        kind, body = _recv_message(sock)
    return sock


def _simple(sock: socket.socket, sql: str) -> list[tuple[bytes, bytes]]:
    sock.sendall(_message(b"Q", sql.encode() + b"\x00"))
    out = []
    while True:
        kind, body = _recv_message(sock)
        out.append((kind, body))
        if kind == b"Z":
            return out


def _server_is_healthy(port: int) -> None:
    sock = login(port)
    try:
        kinds = [k for k, _ in _simple(sock, "SELECT 1")]
        assert kinds == [b"T", b"D", b"C", b"Z"]
    finally:
        sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# ---------------------------------------------------------------- tests


def test_scram_login_and_wrong_password(pg):
    sock = login(pg.port)
    sock.close()
    with pytest.raises(PermissionError) as info:
        login(pg.port, password="not-the-password")
    assert b"28P01" in info.value.args[0]
    with pytest.raises(PermissionError):
        login(pg.port, user="ghost")


def test_ssl_and_gssenc_requests_are_refused_cleanly(pg):
    sock = socket.create_connection(("127.0.0.1", pg.port), timeout=10)
    try:
        sock.sendall(struct.pack("!ii", 8, 80877104))  # GSSENCRequest
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert sock.recv(1) == b"N"
        sock.sendall(_startup("alice"))
        kind, _ = _recv_message(sock)
        assert kind == b"R"
    finally:
        sock.close()


def test_multi_statement_simple_query_stops_at_first_error(pg):
    sock = login(pg.port)
    try:
        out = _simple(sock, "SELECT 1; SELECT pid FROM people; SELECT 2")
        kinds = [k for k, _ in out]
        assert kinds == [b"T", b"D", b"C", b"E", b"Z"]
        assert b"C42501\x00" in out[3][1]
        assert [k for k, _ in _simple(sock, "")] == [b"I", b"Z"]
    finally:
        sock.close()


def test_oversized_message_closes_only_that_connection(pg):
    sock = login(pg.port)
    try:
        sock.sendall(b"Q" + struct.pack("!i", 64 * 1024 * 1024) + b"SELECT")
        kind, body = _recv_message(sock)
        assert kind == b"E" and b"C08P01\x00" in body
        assert _closed_by_server(sock)
    finally:
        sock.close()
    _server_is_healthy(pg.port)


def test_truncated_and_garbage_messages(pg):
    sock = login(pg.port)
    sock.sendall(b"Q" + struct.pack("!i", 100) + b"SELECT 1")  # then hang up mid-message
    sock.close()
    sock = login(pg.port)
    try:
        sock.sendall(_message(b"P", b"no-terminator"))  # body shorter than its fields
        kind, body = _recv_message(sock)
        assert kind == b"E" and b"C08P01\x00" in body
        assert _closed_by_server(sock)
    finally:
        sock.close()
    sock = socket.create_connection(("127.0.0.1", pg.port), timeout=10)
    sock.sendall(struct.pack("!i", 3) + b"xxxx")  # invalid startup length
    assert _closed_by_server(sock)
    sock.close()
    _server_is_healthy(pg.port)


def _accepts_logins(port: int) -> None:
    """Cheap liveness probe: a fresh connection gets the SASL challenge."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(_startup("alice"))
        kind, body = _recv_message(sock)
        assert kind == b"R" and b"SCRAM-SHA-256" in body
    finally:
        sock.close()


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(min_size=1, max_size=300), after_login=st.booleans())
def test_fuzzed_input_never_kills_the_server(pg, payload, after_login):
    sock = login(pg.port) if after_login else socket.create_connection(("127.0.0.1", pg.port),
                                                                        timeout=10)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_server(sock)
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    _accepts_logins(pg.port)


def test_server_healthy_after_fuzzing(pg):
    _server_is_healthy(pg.port)


# ---------------------------------------------------------------- cancel and timeouts


class _WaitsForCancel(GatewayService):
    """A query that only ends when cancelled: makes cancel observable without timing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = threading.Event()

    def query(self, caller, sql, *, epsilon=None, cancel=None):
        if "age > 99" in sql:
            self.started.set()
            if not cancel.wait(60):
                raise AssertionError("never cancelled")
        return super().query(caller, sql, epsilon=epsilon, cancel=cancel)


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    home = tmp_path_factory.mktemp("pgwire-slow")
    gateway, service, audit = make_service(home)
    service = _WaitsForCancel(gateway, service.users, audit)
    servers = {
        "plain": PgWireServer(service, port=0).start_in_thread(),
        "timeout": PgWireServer(service, port=0, statement_timeout_s=0.2).start_in_thread(),
        "limited": PgWireServer(service, port=0, max_connections=1,
                                startup_timeout_s=0.5).start_in_thread(),
    }
    yield service, servers
    for server in servers.values():
        server.stop()
    gateway.close()


def test_cancel_request_cancels_the_running_query(slow):
    psycopg = require_module("psycopg")
    service, servers = slow
    service.started.clear()
    dsn = f"postgresql://alice:{PASSWORD}@127.0.0.1:{servers['plain'].port}/sqlgate"
    with psycopg.connect(dsn, autocommit=True) as conn:
        def cancel_when_started():
            assert service.started.wait(30)
            # cancel_safe (libpq 17 non-blocking cancel) releases the GIL while it waits; the
            # blocking cancel() would hold it and starve this in-process server.
            conn.cancel_safe()

        canceller = threading.Thread(target=cancel_when_started)
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT COUNT(*) FROM people WHERE age > 99")
        canceller.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_with_wrong_secret_does_nothing(slow):
    _, servers = slow
    server = servers["plain"]
    assert not server.cancel(123456, b"1234")
    sock = login(server.port)
    try:
        [connection] = [c for c in server._connections.values()]
        wrong = bytes(b ^ 0xFF for b in connection.secret)
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        raw.sendall(struct.pack("!iii", 16, 80877102, connection.pid) + wrong)
        assert _closed_by_server(raw)
        raw.close()
        assert not connection.cancel_event.is_set()
    finally:
        sock.close()


def test_statement_timeout_cancels(slow):
    psycopg = require_module("psycopg")
    _, servers = slow
    dsn = f"postgresql://alice:{PASSWORD}@127.0.0.1:{servers['timeout'].port}/sqlgate"
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT COUNT(*) FROM people WHERE age > 99")
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory):
    import ssl
    import subprocess

    from tests._require import require_program
    openssl = require_program("openssl")
    home = tmp_path_factory.mktemp("pgwire-tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(home / "key.pem"),
                    "-out", str(home / "cert.pem")], check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(home / "cert.pem", home / "key.pem")
    gateway, service, _ = make_service(home)
    servers = {
        "scram": PgWireServer(service, port=0, ssl_context=context).start_in_thread(),
        "cleartext": PgWireServer(service, port=0, ssl_context=context,
                                  allow_cleartext=True).start_in_thread(),
    }
    yield servers
    for server in servers.values():
        server.stop()
    gateway.close()


@pytest.mark.parametrize("kind", ["scram", "cleartext"])
def test_tls_when_a_certificate_is_configured(tls_servers, kind):
    psycopg = require_module("psycopg")
    port = tls_servers[kind].port
    dsn = f"postgresql://alice:{PASSWORD}@127.0.0.1:{port}/sqlgate"
    with psycopg.connect(dsn + "?sslmode=require", autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT COUNT(*) FROM people").fetchone()[0] > 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://alice:wrong-password@127.0.0.1:{port}/sqlgate"
                        "?sslmode=require")
    # Without TLS, a cleartext password is never asked for: SCRAM only.
    with psycopg.connect(dsn + "?sslmode=disable", autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------- extended protocol, raw


def _exchange(sock: socket.socket, *messages: bytes) -> list[tuple[bytes, bytes]]:
    sock.sendall(b"".join(messages) + _message(b"S", b""))
    out = []
    while True:
        kind, body = _recv_message(sock)
        out.append((kind, body))
        if kind == b"Z":
            return out


def test_describe_infers_types_and_executes_nothing(pg):
    sql = b"SELECT region, COUNT(*) AS n FROM people WHERE age > $1 GROUP BY region ORDER BY region"
    sock = login(pg.port)
    try:
        before = pg.queries()
        bind = (b"cur\x00\x00" + struct.pack("!hh", 1, 0) + struct.pack("!h", 1)
                + struct.pack("!i", 2) + b"33" + struct.pack("!hh", 1, 1))  # binary results
        out = _exchange(
            sock, _message(b"P", b"\x00" + sql + b"\x00" + struct.pack("!h", 0)),
            _message(b"D", b"S\x00"), _message(b"B", bind), _message(b"D", b"Pcur\x00"))
        kinds = [k for k, _ in out]
        assert kinds == [b"1", b"t", b"T", b"2", b"T", b"Z"]
        assert struct.unpack("!hI", out[1][1]) == (1, 20)  # $1 inferred as int8 from `age`
        assert pg.queries() == before  # parse/bind/describe: nothing executed
        # Outside a transaction block, Sync ends the implicit transaction and its portals,
        # like PostgreSQL: nothing was ever executed or charged for this one.
        out = _exchange(sock, _message(b"E", b"cur\x00" + struct.pack("!i", 2)))
        assert [k for k, _ in out] == [b"E", b"Z"] and b"C34000\x00" in out[0][1]
        assert pg.queries() == before
    finally:
        sock.close()


def test_execute_row_limit_inside_transaction(pg):
    sql = b"SELECT region, COUNT(*) AS n FROM people WHERE age > 44 GROUP BY region ORDER BY region"
    sock = login(pg.port)
    try:
        before = pg.queries()
        assert [k for k, _ in _simple(sock, "BEGIN")][-1] == b"Z"
        bind = b"cur\x00\x00" + struct.pack("!hhh", 0, 0, 0)
        out = _exchange(sock, _message(b"P", b"\x00" + sql + b"\x00" + struct.pack("!h", 0)),
                        _message(b"B", bind))
        assert [k for k, _ in out] == [b"1", b"2", b"Z"] and out[-1][1] == b"T"
        rows, kinds = [], []
        for _ in range(3):
            out = _exchange(sock, _message(b"E", b"cur\x00" + struct.pack("!i", 3)))
            kinds.append([k for k, _ in out])
            rows += [body for k, body in out if k == b"D"]
        assert kinds[0] == [b"D", b"D", b"D", b"s", b"Z"]   # PortalSuspended after 3 rows
        assert kinds[1] == [b"D", b"C", b"Z"]               # the 4th region, then complete
        assert kinds[2] == [b"C", b"Z"]                     # exhausted: nothing new
        assert len(rows) == 4 and len(set(rows)) == 4
        assert pg.queries() == before + 1                   # one answer, charged once
        assert [k for k, _ in _simple(sock, "COMMIT")][-1] == b"Z"
    finally:
        sock.close()


def test_connection_limit_and_startup_timeout(slow):
    _, servers = slow
    port = servers["limited"].port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        # The idle peer holds the only slot: the next one is refused with 53300.
        for _ in range(50):
            extra = socket.create_connection(("127.0.0.1", port), timeout=10)
            extra.sendall(_startup("alice"))
            kind, body = _recv_message(extra)
            extra.close()
            if kind == b"E":
                break
            time.sleep(0.05)  # the idle connection was not accepted yet; try again
        assert kind == b"E" and b"C53300\x00" in body
        # A peer that never finishes its startup is dropped.
        assert _closed_by_server(idle)
    finally:
        idle.close()
    for _ in range(100):  # the slot frees once the server has finished closing
        try:
            login(port).close()
            break
        except (ConnectionError, AssertionError):
            time.sleep(0.05)
    else:
        raise AssertionError("the server never accepted a login again")
