"""Sans-IO codec for PostgreSQL protocol v3: frontend messages in, backend messages out.

`FrontendParser` is fed raw bytes and returns typed messages; it never touches a socket, so
it is tested directly (including fuzzing). Anything malformed, truncated inside a message
body or larger than `max_message` raises `ProtocolViolation`; the server then sends one
error and closes that connection only.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_MESSAGE = 16 * 1024 * 1024
MAX_STARTUP = 10_000

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection must be closed."""


# ---------------------------------------------------------------- frontend messages


@dataclass(frozen=True)
class StartupMessage:
    version: int
    parameters: dict[str, str]


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: bytes


@dataclass(frozen=True)
class Query:
    sql: str


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True)
class Describe:
    kind: str  # 'S' statement, 'P' portal
    name: str


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True)
class Sync:
    pass


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Terminate:
    pass


@dataclass(frozen=True)
class PasswordData:
    """'p': a password, SASLInitialResponse or SASLResponse; meaning depends on auth state."""

    data: bytes


@dataclass(frozen=True)
class Unsupported:
    """A well-framed message we do not serve (COPY data, function call)."""

    type: str


class _Reader:
    def __init__(self, body: bytes):
        self.body = body
        self.pos = 0

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def cstring(self) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolViolation("unterminated string in message")
        raw = self.body[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid UTF-8 in message") from None

    def byte(self) -> str:
        return chr(self._take(1)[0])

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise ProtocolViolation("message body is shorter than its fields")
        chunk = self.body[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def take(self, n: int) -> bytes:
        return self._take(n)

    def done(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolViolation("message body has trailing bytes")


class FrontendParser:
    """Feed bytes, pull messages. The first message has no type byte (startup phase)."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.max_message = max_message
        self._buffer = bytearray()
        self.startup = True

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_message(self):
        """The next complete message, or None if more bytes are needed."""
        if self.startup:
            return self._next_startup()
        if len(self._buffer) < 5:
            return None
        kind = chr(self._buffer[0])
        length = struct.unpack("!i", self._buffer[1:5])[0]
        if length < 4:
            raise ProtocolViolation("invalid message length")
        if length > self.max_message:
            raise ProtocolViolation(f"message of {length} bytes exceeds the {self.max_message} "
                                    f"byte limit")
        if len(self._buffer) < 1 + length:
            return None
        body = bytes(self._buffer[5:1 + length])
        del self._buffer[:1 + length]
        return _parse_regular(kind, body)

    def _next_startup(self):
        if len(self._buffer) < 4:
            return None
        length = struct.unpack("!i", self._buffer[:4])[0]
        if length < 8 or length > MAX_STARTUP:
            raise ProtocolViolation("invalid startup packet length")
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[4:length])
        del self._buffer[:length]
        reader = _Reader(body)
        code = reader.int32()
        if code == SSL_REQUEST:
            reader.done()
            return SSLRequest()
        if code == GSSENC_REQUEST:
            reader.done()
            return GSSENCRequest()
        if code == CANCEL_REQUEST:
            pid = reader.int32()
            secret = reader.take(len(body) - 8)
            if not 4 <= len(secret) <= 256:
                raise ProtocolViolation("invalid cancel request")
            return CancelRequest(pid, secret)
        if code >> 16 != 3:
            raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
        parameters: dict[str, str] = {}
        while True:
            key = reader.cstring()
            if not key:
                break
            parameters[key] = reader.cstring()
        reader.done()
        self.startup = False
        return StartupMessage(code, parameters)


def _parse_regular(kind: str, body: bytes):
    reader = _Reader(body)
    if kind == "Q":
        message = Query(reader.cstring())
    elif kind == "P":
        name, sql = reader.cstring(), reader.cstring()
        count = reader.int16()
        if count < 0:
            raise ProtocolViolation("negative parameter count")
        message = Parse(name, sql, tuple(reader.int32() & 0xFFFFFFFF for _ in range(count)))
    elif kind == "B":
        portal, statement = reader.cstring(), reader.cstring()
        formats = tuple(reader.int16() for _ in range(_count(reader)))
        params = []
        for _ in range(_count(reader)):
            size = reader.int32()
            if size < -1:
                raise ProtocolViolation("invalid parameter length")
            params.append(None if size == -1 else reader.take(size))
        results = tuple(reader.int16() for _ in range(_count(reader)))
        if any(f not in (0, 1) for f in formats + results):
            raise ProtocolViolation("format codes must be 0 (text) or 1 (binary)")
        message = Bind(portal, statement, formats, tuple(params), results)
    elif kind == "D":
        which, name = reader.byte(), reader.cstring()
        if which not in ("S", "P"):
            raise ProtocolViolation("Describe must target 'S' or 'P'")
        message = Describe(which, name)
    elif kind == "E":
        message = Execute(reader.cstring(), reader.int32())
    elif kind == "C":
        which, name = reader.byte(), reader.cstring()
        if which not in ("S", "P"):
            raise ProtocolViolation("Close must target 'S' or 'P'")
        message = Close(which, name)
    elif kind == "S":
        message = Sync()
    elif kind == "H":
        message = Flush()
    elif kind == "X":
        message = Terminate()
    elif kind == "p":
        return PasswordData(body)
    elif kind in ("d", "c", "f", "F"):
        return Unsupported(kind)
    else:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    reader.done()
    return message


def _count(reader: _Reader) -> int:
    count = reader.int16()
    if count < 0:
        raise ProtocolViolation("negative count")
    return count


# ---------------------------------------------------------------- backend messages


def _message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.replace("\x00", "").encode("utf-8") + b"\x00"


def authentication_ok() -> bytes:
    return _message(b"R", struct.pack("!i", 0))


def authentication_cleartext() -> bytes:
    return _message(b"R", struct.pack("!i", 3))


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return _message(b"R", struct.pack("!i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _message(b"R", struct.pack("!i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _message(b"R", struct.pack("!i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return _message(b"K", struct.pack("!i", pid) + secret)


def ready_for_query(status: str = "I") -> bytes:
    return _message(b"Z", status.encode())


def row_description(columns, formats: list[int]) -> bytes:
    body = struct.pack("!h", len(columns))
    for column, fmt in zip(columns, formats):
        body += _cstr(column.name) + struct.pack(
            "!ihihih", column.table_oid, column.column_number, column.type_oid,
            column.type_size, -1, fmt)
    return _message(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(struct.pack("!i", -1))
        else:
            parts.append(struct.pack("!i", len(value)))
            parts.append(value)
    return _message(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return _message(b"C", _cstr(tag))


def empty_query_response() -> bytes:
    return _message(b"I")


def parse_complete() -> bytes:
    return _message(b"1")


def bind_complete() -> bytes:
    return _message(b"2")


def close_complete() -> bytes:
    return _message(b"3")


def no_data() -> bytes:
    return _message(b"n")


def portal_suspended() -> bytes:
    return _message(b"s")


def parameter_description(oids: list[int]) -> bytes:
    return _message(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def error_response(severity: str, sqlstate: str, message: str, hint: str | None = None,
                   detail: str | None = None) -> bytes:
    return _message(b"E", _fields(severity, sqlstate, message, hint, detail))


def notice_response(severity: str, sqlstate: str, message: str) -> bytes:
    return _message(b"N", _fields(severity, sqlstate, message, None, None))


def _fields(severity, sqlstate, message, hint, detail) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate)
    body += b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return body + b"\x00"
