"""A real `sqlgate serve` subprocess on loopback for load, fault and fuzz tests.

`prepare_home` builds a domain directory before the server starts (the planted `hr` dataset,
analysts with tokens and passwords, grants, budgets); `LiveServer.start` runs
`sqlgate serve --port 0 --pg-port 0` on 127.0.0.1 and reads the bound ports from its
announcement; `kill()` sends SIGKILL, `stop()` SIGINT. `rss_bytes()` reads the server's
resident memory from /proc. `PgRaw` is a raw PG wire v3 socket with a SCRAM-SHA-256 client,
for sending malformed messages after a real login.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlgate.metadata import Budget
from tests.security.sentinel import hr_frames, hr_metadata

CLI = [sys.executable, "-c", "import sys; from sqlgate.cli import main; sys.exit(main())"]
PASSWORD = "live-test-password"
_HTTP = re.compile(r"HTTP API on http://127\.0\.0\.1:(\d+)/v1")
_PG = re.compile(r"PG wire on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Analyst:
    name: str
    token: str
    password: str = PASSWORD


def prepare_home(home: Path, budgets: dict[str, float]) -> dict[str, Analyst]:
    """The `hr` dataset and one analyst per entry of `budgets` (epsilon, delta 0)."""
    from server.auth import UserStore
    from sqlgate.gateway import Gateway

    home.mkdir(parents=True, exist_ok=True)
    with Gateway(home) as gw:
        gw.add_dataset(hr_metadata(), hr_frames())
        for name, epsilon in budgets.items():
            gw.set_budget(name, "hr", Budget(epsilon, 0.0), set_by="test")
    users = UserStore(home / "users.sqlite")
    analysts = {}
    for name in budgets:
        users.create_user(name, "analyst", password=PASSWORD)
        users.grant(name, "hr", "query")
        analysts[name] = Analyst(name, users.issue_token(name))
    return analysts


@dataclass
class LiveServer:
    home: Path
    process: subprocess.Popen
    http_port: int
    pg_port: int
    output: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, home: Path, *options: str, timeout_s: float = 90.0) -> "LiveServer":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ("SQLGATE_HTTP_PORT", "SQLGATE_PG_PORT", "SQLGATE_HOST"):
            env.pop(name, None)
        process = subprocess.Popen(
            [*CLI, "--home", str(home), "serve", "--host", "127.0.0.1", "--port", "0",
             "--pg-port", "0", "--log-level", "warning", *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        output: list[str] = []
        ports: dict[str, int] = {}
        ready = threading.Event()

        def read():
            for line in process.stdout:
                output.append(line)
                for key, pattern in (("http", _HTTP), ("pg", _PG)):
                    match = pattern.search(line)
                    if match:
                        ports[key] = int(match.group(1))
                if len(ports) == 2:
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout_s) or len(ports) != 2:
            process.kill()
            process.wait()
            raise RuntimeError("sqlgate serve did not start:\n" + "".join(output))
        return cls(home, process, ports["http"], ports["pg"], output)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dsn(self, analyst: Analyst) -> str:
        return (f"postgresql://{analyst.name}:{analyst.password}@127.0.0.1:{self.pg_port}/sqlgate"
                "?sslmode=disable&connect_timeout=300")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS for the server process")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- raw PG wire


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup(parameters: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack("!i", version)
    for key, value in parameters.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


class PgRaw:
    """One raw connection. `login()` performs StartupMessage + SCRAM-SHA-256."""

    def __init__(self, port: int, timeout_s: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._buffer = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def read_message(self) -> tuple[bytes, bytes]:
        kind = self._read_exact(1)
        (length,) = struct.unpack("!i", self._read_exact(4))
        return kind, self._read_exact(length - 4)

    def read_until(self, kinds: set[bytes]) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            kind, body = self.read_message()
            messages.append((kind, body))
            if kind in kinds:
                return messages

    def login(self, user: str, password: str) -> None:
        self.send(startup({"user": user, "database": "sqlgate"}))
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        server_first = body[4:].decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        self.send(message(b"p", final))
        replies = self.read_until({b"Z", b"E"})
        assert replies[-1][0] == b"Z", replies

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(message(b"Q", sql.encode() + b"\x00"))
        return self.read_until({b"Z"})
