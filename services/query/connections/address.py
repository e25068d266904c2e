"""The SSRF guard of users' connections: resolve the host once, refuse every address that is not public.

Every address the name resolves to is checked; the connection then goes to the checked
address itself (never to the name again), so DNS rebinding cannot move it afterwards.
CONNECTIONS_ALLOWED_NETWORKS lets an operator open chosen private ranges (docs/connections.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shared.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> every address the host resolves to (as text)."""

METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("172.16.0.0/12"), ipaddress.ip_network("192.168.0.0/16"))


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo client, NAT64), which is what it reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address (loopback, private, link-local, metadata, ...), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_v4(ip)
        if inner is not None:
            reason = classify(inner)
            return f"{reason} (inside an IPv6 address)" if reason else None
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if ip in METADATA:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _ULA:
        return "unique-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _PRIVATE):
        return "private"
    if ip.is_reserved or ip.is_private or not ip.is_global:
        return "reserved"  # documentation, benchmarking, broadcast, future use and the other special ranges
    return None


def parse_networks(raw: str, variable: str = "CONNECTIONS_ALLOWED_NETWORKS") -> tuple[IPNetwork, ...]:
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{variable}: {item!r} is not a network (CIDR, e.g. 10.1.0.0/16 or fd12::/48)") from None
    return tuple(networks)


def parse_ports(raw: str, variable: str = "CONNECTIONS_ALLOWED_PORTS") -> frozenset[int] | None:
    """`5432,3306,6000-6010`; None (every port 1-65535) when empty."""
    ports: set[int] = set()
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        low, _, high = item.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ConfigError(f"{variable}: {item!r} is not a port or a range of ports") from None
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"{variable}: {item!r} is outside 1-65535")
        ports.update(range(first, last + 1))
    return frozenset(ports) if ports else None


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for `host` (numeric forms such as 127.1 or 2130706433 included)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class AddressRefused(Exception):
    """Raised when the host does not resolve, or resolves to an address that is not allowed (said the same way to the user)."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses and ports users' connections may reach."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] | None = None

    def refusal(self, ip: IPAddress, port: int) -> str | None:
        """Why (ip, port) may not be reached, or None. For logs and tests: the user hears only "cannot reach"."""
        if self.allowed_ports is not None and port not in self.allowed_ports:
            return "port not in CONNECTIONS_ALLOWED_PORTS"
        plain = ipaddress.ip_address(str(ip).split("%", 1)[0]) if isinstance(ip, ipaddress.IPv6Address) else ip
        if any(plain.version == net.version and plain in net for net in self.allowed_networks):
            return None
        reason = classify(ip)
        return f"{reason} address" if reason else None

    async def resolve(self, host: str, port: int, resolver: Resolver = system_resolver) -> IPAddress:
        """Resolve `host` once and check every answer; the address to connect to. Raises AddressRefused."""
        name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            answers: Sequence[str] = await resolver(name, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"does not resolve ({type(exc).__name__})") from None
        addresses = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer))
            except ValueError:
                raise AddressRefused(f"resolver answered {answer!r}, not an address") from None
        if not addresses:
            raise AddressRefused("resolves to no address")
        for ip in addresses:
            reason = self.refusal(ip, port)
            if reason is not None:
                raise AddressRefused(f"resolves to {ip}: {reason}")
        return addresses[0]
