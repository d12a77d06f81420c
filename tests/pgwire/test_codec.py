"""Sans-IO pieces: message codec, value encodings, SQL text helpers, SCRAM server."""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.auth import scram_verifier_for
from server.pgwire import codec
from server.pgwire import types as T
from server.pgwire.scram import ScramError, ScramExchange
from server.pgwire.sqltext import placeholders, split_statements, substitute
from sqlgate.errors import InvalidParameter


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _started() -> codec.FrontendParser:
    parser = codec.FrontendParser(max_message=1024)
    body = struct.pack("!i", 196608) + b"user\x00al\x00\x00"
    parser.feed(struct.pack("!i", len(body) + 4) + body)
    assert parser.next_message() == codec.StartupMessage(196608, {"user": "al"})
    return parser


def test_messages_parse_incrementally():
    parser = _started()
    bind = (b"p1\x00s1\x00" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2)
            + struct.pack("!i", 4) + b"\x00\x00\x00\x07" + struct.pack("!i", -1)
            + struct.pack("!hh", 1, 0))
    stream = (_msg(b"P", b"s1\x00SELECT $1\x00" + struct.pack("!hi", 1, 23)) + _msg(b"B", bind)
              + _msg(b"D", b"Pp1\x00") + _msg(b"E", b"p1\x00" + struct.pack("!i", 5))
              + _msg(b"S", b""))
    messages = []
    for byte in stream:  # one byte at a time: framing must not depend on read sizes
        parser.feed(bytes([byte]))
        while (message := parser.next_message()) is not None:
            messages.append(message)
    assert messages == [
        codec.Parse("s1", "SELECT $1", (23,)),
        codec.Bind("p1", "s1", (1,), (b"\x00\x00\x00\x07", None), (0,)),
        codec.Describe("P", "p1"), codec.Execute("p1", 5), codec.Sync()]


@pytest.mark.parametrize("data", [
    _msg(b"Q", b"no terminator"),
    _msg(b"D", b"X\x00"),
    _msg(b"B", b"p\x00s\x00" + struct.pack("!h", 1) + struct.pack("!h", 7)),
    _msg(b"E", b"p\x00\x00"),
    b"Q" + struct.pack("!i", 2),
    b"Q" + struct.pack("!i", 4096),   # over this parser's 1 KiB limit
    _msg(b"?", b""),
    _msg(b"S", b"trailing"),
])
def test_malformed_messages_are_protocol_violations(data):
    parser = _started()
    parser.feed(data)
    with pytest.raises(codec.ProtocolViolation):
        parser.next_message()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parser_fuzz_only_raises_protocol_violation(data):
    for parser in (codec.FrontendParser(max_message=1024), _started()):
        parser.feed(data)
        try:
            while parser.next_message() is not None:
                pass
        except codec.ProtocolViolation:
            pass


def test_startup_variants():
    parser = codec.FrontendParser()
    parser.feed(struct.pack("!ii", 8, codec.SSL_REQUEST) + struct.pack("!ii", 8, codec.GSSENC_REQUEST))
    assert isinstance(parser.next_message(), codec.SSLRequest)
    assert isinstance(parser.next_message(), codec.GSSENCRequest)
    parser.feed(struct.pack("!iiii", 16, codec.CANCEL_REQUEST, 77, 99))
    assert parser.next_message() == codec.CancelRequest(77, struct.pack("!i", 99))
    bad = codec.FrontendParser()
    bad.feed(struct.pack("!ii", 8, 2 << 16))  # protocol 2
    with pytest.raises(codec.ProtocolViolation):
        bad.next_message()


def test_binary_and_text_encodings_round_trip():
    assert T.encode_binary(7, T.INT8) == struct.pack("!q", 7)
    assert T.encode_binary(1.5, T.FLOAT8) == struct.pack("!d", 1.5)
    assert T.encode_binary(dt.date(2000, 1, 2), T.DATE) == struct.pack("!i", 1)
    assert T.encode_text(True, T.BOOL) == b"t"
    assert T.encode_text(float("nan"), T.FLOAT8) == b"NaN"
    assert T.encode_text(["a b", None], T.TEXT_ARRAY) == b'{"a b",NULL}'
    for value in ("0", "12.5", "-0.0001", "123456789.000001", "10000"):
        number = decimal.Decimal(value)
        assert T._decode_numeric(T.encode_binary(number, T.NUMERIC)) == number
    assert T.decode_parameter(struct.pack("!q", -3), T.INT8, True) == -3
    assert T.decode_parameter(b"2024-02-29", T.DATE, False) == dt.date(2024, 2, 29)
    assert T.decode_parameter(b"on", T.BOOL, False) is True
    with pytest.raises(InvalidParameter):
        T.decode_parameter(b"twelve", T.INT8, False)
    with pytest.raises(InvalidParameter):
        T.decode_parameter(b"\x00", T.INT8, True)


def test_split_and_substitute_respect_literals():
    sql = "SELECT ';' AS a, $$;$$ AS b -- ; comment\n; /* ; */ SELECT \"x;y\"; ;"
    assert split_statements(sql) == ["SELECT ';' AS a, $$;$$ AS b -- ; comment",
                                      '/* ; */ SELECT "x;y"']
    text = "SELECT $1, '$2', \"$3\" -- $4\n FROM t WHERE a = $2"
    assert placeholders(text) == [1, 2]
    literal = T.sql_literal("x' OR '1'='1")
    assert substitute(text, {1: "1", 2: literal}) == (
        "SELECT (1), '$2', \"$3\" -- $4\n FROM t WHERE a = ('x'' OR ''1''=''1')")
    with pytest.raises(InvalidParameter):
        substitute("SELECT $3", {1: "1"})
    with pytest.raises(InvalidParameter):
        T.sql_literal("nul\x00byte")


def _client_final(password: str, client_first_bare: str, server_first: str):
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    return f"{without_proof},p={proof}".encode(), salted, auth


def test_scram_exchange():
    verifier = scram_verifier_for("correct horse", iterations=4096)
    exchange = ScramExchange(verifier, b"pepper", "alice")
    server_first = exchange.server_first(b"n,,n=,r=abc").decode()
    final, salted, auth = _client_final("correct horse", "n=,r=abc", server_first)
    server_final = exchange.server_final(final)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert server_final == b"v=" + base64.b64encode(
        hmac.new(server_key, auth, hashlib.sha256).digest())
    wrong = ScramExchange(verifier, b"pepper", "alice")
    server_first = wrong.server_first(b"n,,n=,r=abc").decode()
    with pytest.raises(ScramError):
        wrong.server_final(_client_final("wrong horse", "n=,r=abc", server_first)[0])
    # Unknown users get a stable made-up salt and always fail.
    ghost = ScramExchange(None, b"pepper", "ghost")
    server_first = ghost.server_first(b"n,,n=,r=abc").decode()
    assert "s=" in server_first
    with pytest.raises(ScramError):
        ghost.server_final(_client_final("anything", "n=,r=abc", server_first)[0])
    with pytest.raises(ScramError):
        ScramExchange(verifier, b"p", "a").server_first(b"p=tls-server-end-point,,n=,r=x")
