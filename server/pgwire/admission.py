"""How many not-yet-authenticated connections each client address may hold.

Without a per-address cap one address could open `max_connections` sockets, never finish the
startup, and lock everyone else out for the whole startup timeout, again and again. Each
connection takes a `Ticket` when accepted and returns it once authenticated (or closed), so
only the pre-authentication phase is capped; an authenticated client may keep as many
sessions as the global limit allows.

Loopback peers are exempt by default: a local pooler or proxy (pgbouncer, an SSH tunnel, a
TLS terminator) makes every remote client look like 127.0.0.1. IPv6 peers are grouped by /64,
the block one host usually controls, so rotating through its own addresses does not help.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from server.netaddr import is_loopback_host, parse_ip

DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS = 32


def address_key(host: str) -> str:
    """The group a peer address is counted in: the IPv4 address, or the IPv6 /64."""
    address = parse_ip(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class Ticket:
    """One connection's place in its address's count; `release()` is idempotent."""

    admission: "Admission | None"
    key: str

    def release(self) -> None:
        if self.admission is not None:
            self.admission._release(self.key)
            self.admission = None


@dataclass
class Admission:
    """Counts unauthenticated connections per address group. Used from the server's event
    loop only, so it needs no lock."""

    limit: int | None = DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS   # None: no cap
    exempt_loopback: bool = True
    _pending: dict[str, int] = field(default_factory=dict)

    def admit(self, host: str) -> Ticket | None:
        """A ticket for a new connection from `host`, or None when its group is full."""
        if self.limit is None or (self.exempt_loopback and is_loopback_host(host)):
            return Ticket(None, "")
        key = address_key(host)
        if self._pending.get(key, 0) >= self.limit:
            return None
        self._pending[key] = self._pending.get(key, 0) + 1
        return Ticket(self, key)

    def pending(self, host: str) -> int:
        return self._pending.get(address_key(host), 0)

    def _release(self, key: str) -> None:
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)
