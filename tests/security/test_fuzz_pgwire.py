"""Fuzzing the PG wire server of a real `sqlgate serve` process with hypothesis.

Random bytes before the startup, malformed startup packets (bad lengths, versions,
parameters, truncation), and after a real SCRAM login random, truncated, mis-typed and
oversize messages. After every example the server process is alive and an independent
session opened at the start (the bystander) still gets answers; at the end the server's
resident memory has stayed bounded.
"""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._require import require_module
from tests.security.live import PASSWORD, LiveServer, PgRaw, message, prepare_home

EXAMPLES = 15
QUIET_S = 0.3  # a server waiting for more bytes is quiet: stop reading then
MEMORY_GROWTH_LIMIT = 300 * 1024 * 1024
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


class Domain:
    def __init__(self, server: LiveServer, analysts):
        psycopg = require_module("psycopg")
        self.server = server
        self.analysts = analysts
        self.bystander = psycopg.connect(server.dsn(analysts["bystander"]), autocommit=True)
        self.bystander.execute("SET sqlgate.epsilon = 0.01")
        self.checks = 0
        self.rss_start = server.rss_bytes()

    def healthy(self) -> None:
        assert self.server.alive(), "the server died:\n" + "".join(self.server.output[-40:])
        self.checks += 1
        rows = self.bystander.execute(
            f"SELECT COUNT(*) FROM people WHERE age > {self.checks % 90} "
            f"AND salary > {self.checks}").fetchall()
        assert len(rows) == 1


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    require_module("psycopg")
    home = tmp_path_factory.mktemp("fuzz-pg") / "home"
    analysts = prepare_home(home, {"fuzzer": 100.0, "bystander": 1000.0})
    server = LiveServer.start(home)
    try:
        d = Domain(server, analysts)
        yield d
        d.healthy()
        growth = server.rss_bytes() - d.rss_start
        assert growth < MEMORY_GROWTH_LIMIT, f"server RSS grew by {growth >> 20} MB"
        d.bystander.close()
    finally:
        server.stop()


def _drain(raw: PgRaw, limit: int = 64) -> list[bytes]:
    """Read replies until the server closes, goes quiet, or `limit` messages; return their
    kinds, with an AuthenticationOk (R, code 0) reported as b"OK"."""
    kinds = []
    try:
        for _ in range(limit):
            kind, body = raw.read_message()
            authenticated = kind == b"R" and body[:4] == b"\x00\x00\x00\x00"
            kinds.append(b"OK" if authenticated else kind)
    except (ConnectionError, OSError, struct.error):
        pass
    return kinds


def _assert_no_session(kinds: list[bytes]) -> None:
    """Without a password exchange no session may start: never AuthenticationOk or
    ReadyForQuery."""
    assert b"OK" not in kinds and b"Z" not in kinds, kinds


def _quiet_raw(domain: Domain) -> PgRaw:
    return PgRaw(domain.server.pg_port, timeout_s=QUIET_S)


@FUZZ
@given(data=st.binary(min_size=1, max_size=2048))
def test_garbage_before_startup(domain, data):
    raw = _quiet_raw(domain)
    try:
        raw.send(data)
        _assert_no_session(_drain(raw))
    except OSError:
        pass
    finally:
        raw.close()
    domain.healthy()


_VERSIONS = st.sampled_from([196608, 196609, 131072, 80877103, 80877102, 80877104, 0, -1,
                             2**31 - 1])
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@st.composite
def startup_packets(draw):
    version = draw(_VERSIONS)
    params = draw(st.dictionaries(
        st.sampled_from(["user", "database", "options", "application_name", "client_encoding",
                         "replication", "x" * 200]) | _TEXT, _TEXT, max_size=5))
    body = struct.pack("!i", version)
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    if draw(st.booleans()):
        body += b"\x00"
    declared = draw(st.sampled_from(["exact", "short", "long", "huge", "negative", "random"]))
    length = {"exact": len(body) + 4, "short": max(0, len(body) - 3), "long": len(body) + 50,
              "huge": 2**31 - 1, "negative": -8,
              "random": draw(st.integers(-2**31, 2**31 - 1))}[declared]
    packet = struct.pack("!i", length) + body
    cut = draw(st.integers(1, len(packet)))
    return packet[:cut] if draw(st.booleans()) else packet


@FUZZ
@given(packet=startup_packets())
def test_malformed_startup(domain, packet):
    raw = _quiet_raw(domain)
    try:
        raw.send(packet)
        _assert_no_session(_drain(raw))
    except OSError:
        pass
    finally:
        raw.close()
    domain.healthy()


_TYPES = st.sampled_from(list(b"QPBDESCHFXdcfpvz\x00\xff")).map(lambda b: bytes([b]))


@st.composite
def frontend_messages(draw):
    kind = draw(_TYPES)
    shape = draw(st.sampled_from(["random", "random", "bind", "parse", "truncated",
                                  "oversize", "negative"]))
    if shape == "random":
        return message(kind, draw(st.binary(max_size=512)))
    if shape == "parse":
        name = draw(st.binary(max_size=8)).replace(b"\x00", b"")
        sql = draw(st.sampled_from([b"SELECT COUNT(*) FROM people WHERE age > $1",
                                    b"SELECT $1", b"", b"\xff\xfe", b"SELECT COUNT(*) FROM people"]))
        count = draw(st.integers(-5, 70000) | st.just(2))
        oids = b"".join(struct.pack("!i", draw(st.integers(-2**31, 2**31 - 1)))
                        for _ in range(min(max(count, 0), 4)))
        declared = struct.pack("!h", max(-32768, min(32767, count)))
        return message(b"P", name + b"\x00" + sql + b"\x00" + declared + oids)
    if shape == "bind":
        formats = draw(st.lists(st.integers(-3, 3), max_size=4))
        values = draw(st.lists(st.binary(max_size=16) | st.none(), max_size=4))
        body = b"\x00\x00" + struct.pack("!h", len(formats))
        body += b"".join(struct.pack("!h", f) for f in formats)
        body += struct.pack("!h", draw(st.integers(-2, 70)) if draw(st.booleans()) else len(values))
        for value in values:
            body += struct.pack("!i", -1) if value is None else (
                struct.pack("!i", draw(st.sampled_from([len(value), len(value) + 9, -7, 2**30])))
                + value)
        body += struct.pack("!h", 1) + struct.pack("!h", draw(st.integers(-2, 5)))
        return message(b"B", body)
    if shape == "truncated":
        full = message(kind, draw(st.binary(min_size=1, max_size=64)))
        return full[:draw(st.integers(1, len(full) - 1))]
    if shape == "oversize":
        return kind + struct.pack("!i", draw(st.sampled_from([2**31 - 1, 16 * 1024 * 1024 + 5,
                                                             2**30])))
    return kind + struct.pack("!i", draw(st.integers(-2**31, 3)))


@FUZZ
@given(messages=st.lists(frontend_messages(), min_size=1, max_size=5),
       sync=st.booleans())
def test_messages_after_login(domain, messages, sync):
    raw = PgRaw(domain.server.pg_port, timeout_s=10)
    try:
        raw.login("fuzzer", PASSWORD)
        raw.sock.settimeout(QUIET_S)
        for data in messages:
            raw.send(data)
        if sync:
            raw.send(message(b"S"))
        kinds = _drain(raw)
        # The server answers protocol errors with ErrorResponse and never with data rows it
        # did not compute from a whole, valid query.
        assert all(k in b"123CDEGHIKNRSTZnst" for k in kinds), kinds
    except OSError:
        pass
    finally:
        raw.close()
    domain.healthy()


def test_oversize_message_is_refused_without_buffering_it(domain):
    before = domain.server.rss_bytes()
    raw = PgRaw(domain.server.pg_port, timeout_s=10)
    try:
        raw.login("fuzzer", PASSWORD)
        raw.send(b"Q" + struct.pack("!i", 2**31 - 1))
        sent = 0
        try:
            for _ in range(64):  # up to 64 MB: far beyond the 16 MB message limit
                raw.send(b"x" * (1 << 20))
                sent += 1
        except OSError:
            pass  # the server closed the connection: what we want
        kinds = _drain(raw)
        assert b"Z" not in kinds[1:] or b"E" in kinds
    finally:
        raw.close()
    domain.healthy()
    assert domain.server.rss_bytes() - before < 200 * 1024 * 1024


def test_many_half_open_connections_do_not_block_others(domain):
    """Slow-loris: 150 connections each send half a startup packet and stall."""
    sockets = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", domain.server.pg_port), timeout=10)
            sock.sendall(struct.pack("!i", 60) + struct.pack("!i", 196608) + b"user\x00")
            sockets.append(sock)
        domain.healthy()
        fresh = PgRaw(domain.server.pg_port, timeout_s=30)
        try:
            fresh.login("fuzzer", PASSWORD)
            replies = fresh.simple_query("SELECT COUNT(*) FROM people WHERE age > 77")
            assert replies[-1][0] == b"Z" and any(k == b"D" for k, _ in replies)
        finally:
            fresh.close()
    finally:
        for sock in sockets:
            sock.close()
    domain.healthy()


def test_wrong_password_and_unknown_user_look_alike(domain):
    outcomes = []
    for user, password in (("fuzzer", "wrong-password-1"), ("nobody-here", "wrong-password-1")):
        raw = PgRaw(domain.server.pg_port, timeout_s=10)
        try:
            with pytest.raises(AssertionError) as failed:
                raw.login(user, password)
            text = str(failed.value)
            outcomes.append(text.replace(user, "U"))
            assert "28P01" in text
        finally:
            raw.close()
    assert outcomes[0] == outcomes[1]
    domain.healthy()


@pytest.mark.slow
@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=st.lists(frontend_messages(), min_size=1, max_size=12), sync=st.booleans())
def test_messages_after_login_long(domain, messages, sync):
    test_messages_after_login.hypothesis.inner_test(domain, messages, sync)
