"""Parses client addresses and configured networks, and answers membership in O(log n).

:func:`parse_client_ip` turns what an adapter hands over into an address
object, strictly; :func:`parse_cidr` does the same for a configured network.
:class:`AddressSet` answers "is this address in any of these networks?" in
O(log n): networks are merged into sorted, non-overlapping integer intervals
per IP version and searched with :mod:`bisect`, so a feed of thousands of
ranges costs the same per request as a handful. :func:`catch_all_versions`
is the one check that a set of networks covers every address of a version.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import TypeAlias

from .errors import ConfigurationError

__all__ = [
    "AddressSet",
    "IPAddress",
    "IPNetwork",
    "catch_all_versions",
    "parse_cidr",
    "parse_client_ip",
]

# Longest textual IPv6 address with an embedded IPv4 part is 45 characters.
_MAX_IP_TEXT = 64

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


# Pipelines call from few addresses, and ipaddress parsing costs more than the
# rest of the IP rule; successes are remembered, in a bounded map.
_PARSED: dict[str, IPAddress] = {}
_PARSED_MAX = 4096


def parse_client_ip(value: object) -> IPAddress:
    """Parse a client address strictly; raise ``ValueError`` saying why not.

    IPv4-mapped IPv6 (``::ffff:192.0.2.1``) becomes the IPv4 address, so a
    dual-stack socket and an IPv4 allow list agree. Zone ids (``fe80::1%eth0``),
    brackets, ports and surrounding spaces are refused: an adapter hands over
    a bare address, and anything else means the address was not resolved.
    """
    if not isinstance(value, str):
        raise ValueError(f"client IP must be a string, not {type(value).__name__}")
    cached = _PARSED.get(value)
    if cached is not None:
        return cached
    if not value or len(value) > _MAX_IP_TEXT:
        raise ValueError("client IP is empty or too long")
    if "%" in value:
        raise ValueError("client IP carries a zone id (link-local addresses are never admitted)")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"client IP {value[:_MAX_IP_TEXT]!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[value] = address
    return address


def parse_cidr(value: object, *, key: str | None = None) -> IPNetwork:
    """Parse a configured CIDR (``192.0.2.0/24``, ``2001:db8::/32`` or a bare address).

    Host bits set (``192.0.2.7/24``) are an error rather than silently
    widened or narrowed: the setting is ambiguous, so the operator decides.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{value!r} is not a CIDR string", key=key)
    text = value.strip()
    if "%" in text:
        raise ConfigurationError(f"{text!r}: zone ids are not allowed in ranges", key=key)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        # Valid once host bits are allowed: then host bits were strict mode's only objection.
        try:
            wide = ipaddress.ip_network(text, strict=False)
        except ValueError:
            wide = None
        if wide is not None:
            host = text.split("/", 1)[0]
            raise ConfigurationError(
                f"{text!r} has host bits set; write {str(wide)!r} for the network "
                f"or {host + ('/32' if wide.version == 4 else '/128')!r} for the one address",
                key=key,
            ) from None
        raise ConfigurationError(f"{text!r} is not an IPv4 or IPv6 network ({exc})", key=key) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d/n names IPv4 addresses; client IPs are unmapped, so map the range too.
        if network.prefixlen < 96:
            raise ConfigurationError(f"{text!r} mixes IPv4-mapped and other IPv6 space", key=key)
        return ipaddress.IPv4Network((network.network_address.ipv4_mapped, network.prefixlen - 96))
    return network


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    intervals.sort()
    starts: list[int] = []
    ends: list[int] = []
    for start, end in intervals:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def catch_all_versions(networks: Iterable[IPNetwork]) -> tuple[int, ...]:
    """The IP versions (4, 6) of which ``networks`` together cover every address.

    ``0.0.0.0/0`` does, and so do ``0.0.0.0/1`` + ``128.0.0.0/1`` or any other
    split: the one coverage check behind the IP-range feed and ``trusted_proxies``.
    Returns ``()`` when neither version is covered.
    """
    by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for n in networks:
        by_version[n.version].append((int(n.network_address), int(n.broadcast_address)))
    full = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
    covered: list[int] = []
    for version, intervals in by_version.items():
        starts, ends = _merge(intervals)
        if starts == [0] and ends == [full[version]]:
            covered.append(version)
    return tuple(covered)


class AddressSet:
    """An immutable set of IPv4 and IPv6 networks with O(log n) membership.

    ``address in s`` takes an :class:`ipaddress.IPv4Address` or
    :class:`~ipaddress.IPv6Address` (see :func:`parse_client_ip`).
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        unique = sorted(set(networks), key=lambda n: (n.version, n.network_address, n.prefixlen))
        #: The networks as given (duplicates removed), for display.
        self.networks: tuple[IPNetwork, ...] = tuple(unique)
        v4 = [(int(n.network_address), int(n.broadcast_address)) for n in unique if n.version == 4]
        v6 = [(int(n.network_address), int(n.broadcast_address)) for n in unique if n.version == 6]
        self._v4 = _merge(v4)
        self._v6 = _merge(v6)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, ipaddress.IPv4Address):
            starts, ends = self._v4
        elif isinstance(address, ipaddress.IPv6Address):
            starts, ends = self._v6
        else:
            return False
        value = int(address)
        i = bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __len__(self) -> int:
        return len(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        shown = ", ".join(str(n) for n in self.networks[:4])
        more = f", ... {len(self.networks) - 4} more" if len(self.networks) > 4 else ""
        return f"AddressSet([{shown}{more}])"
