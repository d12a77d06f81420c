"""Client address helpers shared by the HTTP and PG wire front ends."""
from __future__ import annotations

import ipaddress


def parse_ip(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in `host` ("[::1]" and "fe80::1%eth0" forms accepted), else None."""
    if not host:
        return None
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def is_loopback_host(host: str | None) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x.y.z) and "localhost".
    Anything else, including a missing or unparsable address, is not loopback."""
    if host and host.lower() == "localhost":
        return True
    address = parse_ip(host)
    if address is None:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))
