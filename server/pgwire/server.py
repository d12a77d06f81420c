"""The asyncio PG wire server: accepts connections, routes CancelRequests, runs in a thread
for tests and the CLI."""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
import threading

from server.pgwire import codec
from server.pgwire.admission import DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS, Admission
from server.pgwire.connection import Connection

log = logging.getLogger("sqlgate.pgwire")


class PgWireServer:
    def __init__(self, service, host: str = "127.0.0.1", port: int = 5433,
                 ssl_context: ssl.SSLContext | None = None,
                 statement_timeout_s: float | None = None, *, allow_cleartext: bool = False,
                 max_connections: int = 256, startup_timeout_s: float = 10.0,
                 login_throttle=None, pepper: bytes | None = None,
                 max_unauthenticated_per_address: int | None =
                 DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
                 unauthenticated_cap_exempts_loopback: bool = True):
        """`allow_cleartext` lets clients send a password in clear, and only over TLS;
        without it (the default) SCRAM-SHA-256 is the only method. `max_connections` and
        `startup_timeout_s` bound what unauthenticated or idle peers can hold;
        `max_unauthenticated_per_address` (None: no cap) bounds the connections one address
        (IPv6: one /64) may hold before authenticating, loopback exempt unless
        `unauthenticated_cap_exempts_loopback` is False (see server.pgwire.admission)."""
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.statement_timeout_s = statement_timeout_s
        self.allow_cleartext = allow_cleartext
        self.max_connections = max_connections
        self.startup_timeout_s = startup_timeout_s
        # The server's LoginThrottle (ServerState.login_throttle), shared with the HTTP front
        # ends: repeated failed logins of a name from an address are refused for a while.
        self.login_throttle = login_throttle
        self.admission = Admission(limit=max_unauthenticated_per_address,
                                   exempt_loopback=unauthenticated_cap_exempts_loopback)
        self._open = 0
        # Secret behind the made-up SCRAM salts of unknown users. Pass a persistent one
        # (serve() keeps it in HOME): a per-process pepper changes those salts at every
        # restart while real users' salts stay put, which would tell names apart.
        self.pepper = pepper if pepper is not None else secrets.token_bytes(32)
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[int, Connection] = {}
        self._tasks: set[asyncio.Task] = set()
        self._next_pid = 1000 + secrets.randbelow(1000)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    # ------------------------------------------------------------ asyncio API

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  limit=2 ** 16)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("pgwire listening on %s:%s", self.host, self.port)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for connection in list(self._connections.values()):
            connection.cancel_event.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stopped is not None:
            self._stopped.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._open += 1
        ticket = None
        try:
            if self._open > self.max_connections:
                await _refuse(writer, "53300", "sorry, too many clients already")
                return
            peer = writer.get_extra_info("peername") or ("?", 0)
            ticket = self.admission.admit(str(peer[0]))
            if ticket is None:
                await _refuse(writer, "53300", "too many connections from this address are "
                                               "still authenticating; try again shortly")
                return
            await Connection(self, reader, writer, ticket).run()
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one connection's failure never stops the server
            log.exception("pgwire: connection failed")
        finally:
            if ticket is not None:
                ticket.release()
            self._open -= 1
            self._tasks.discard(task)

    # ------------------------------------------------------------ cancel

    def _register(self, connection: Connection) -> int:
        pid = self._next_pid
        self._next_pid += 1
        self._connections[pid] = connection
        return pid

    def _forget(self, connection: Connection) -> None:
        if self._connections.get(connection.pid) is connection:
            del self._connections[connection.pid]

    def cancel(self, pid: int, secret: bytes) -> bool:
        connection = self._connections.get(pid)
        # Constant-time compare: the secret is the only thing standing between a stranger
        # and cancelling someone else's query.
        if connection is None or not hmac.compare_digest(connection.secret, secret):
            return False
        connection.cancel_event.set()
        return True

    # ------------------------------------------------------------ thread helper

    def start_in_thread(self) -> "PgWireServer":
        """Run the server on its own event loop thread; returns once it is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as err:  # noqa: BLE001 - reported to the caller
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self.serve_forever())
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=main, name=f"pgwire-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.close(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._thread.join(timeout)
            self._thread = None


async def _refuse(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    try:
        writer.write(codec.error_response("FATAL", sqlstate, message))
        await writer.drain()
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout=2)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
