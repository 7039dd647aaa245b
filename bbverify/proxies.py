"""The client address: the socket peer, and what trusted proxies say in ``X-Forwarded-For``.

Every adapter and the gateway find the client the same way here
(:func:`client_ip`, :class:`TrustedProxies`), so IP rules decide alike
whatever serves the request. Never raises on request data: an address that
cannot be known is ``None``, which IP rules deny.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .addresses import IPAddress, catch_all_versions, parse_cidr
from .errors import ConfigurationError

__all__ = [
    "MAX_FORWARDED_ENTRIES",
    "UNIX_SOCKET_PEER",
    "TrustedProxies",
    "TrustedProxiesSpec",
    "client_address",
    "client_ip",
    "normalize_ip",
    "parse_address",
    "wsgi_peer",
]

#: The peer adapters report for a connection over a Unix socket (no address).
#: Only a ``trusted_proxies`` list naming ``"unix"`` trusts it as a proxy.
UNIX_SOCKET_PEER = "unix"


def wsgi_peer(remote_addr: object) -> str | None:
    """The socket peer from a WSGI ``REMOTE_ADDR``: an address, :data:`UNIX_SOCKET_PEER`, or ``None``.

    WSGI servers listening on a Unix socket spell the peer several ways, all
    meaning "a local process on the socket", never an IP address:

    * ``""``: gunicorn (``--bind unix:...``; ``accept()`` gives an unnamed peer),
    * ``"<local>"``: Werkzeug's server (``run_simple("unix://...")``,
      ``flask run --host unix://...``),
    * a path (``/run/nginx.sock``) or an abstract name (``@name``, or a
      leading NUL): gunicorn when the connecting process bound its socket.

    Each is the one Unix-socket peer that only ``trusted_proxies=["unix",
    ...]`` trusts. Anything else is returned as it is (parsed later as an IP).
    """
    if not isinstance(remote_addr, str):
        return None
    if not remote_addr or remote_addr == "<local>" or remote_addr[0] in "/@\x00":
        return UNIX_SOCKET_PEER
    return remote_addr


# Cap on X-Forwarded-For entries considered; a longer chain is hostile or broken.
MAX_FORWARDED_ENTRIES = 64

_ADDRESSES: dict[str, IPAddress | None] = {}
_MEMO_MAX = 1024
_UNSEEN = object()


def parse_address(value: str | bytes | None) -> IPAddress | None:
    """One address as proxies write it, as an :mod:`ipaddress` object; ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:8080``, ``2001:db8::1``, ``[2001:db8::1]``
    and ``[2001:db8::1]:8080``. An IPv4-mapped IPv6 address
    (``::ffff:1.2.3.4``) becomes the IPv4 address, so IPv4 rules apply to it.
    An address with a zone id (``fe80::1%eth0``) gives ``None``, the same rule
    as :func:`bbverify.ipranges.parse_client_ip` applies: a scoped address
    names a host only on one interface, so no range can admit it. Anything
    else (``unknown``, obfuscated names, junk) gives ``None``; this function
    never raises.

    Results for text are memoised: parsing with :mod:`ipaddress` costs more
    than verifying a cached token, and the same few peers and proxies send
    every request. The cap bounds the memo whatever addresses arrive.
    """
    if not isinstance(value, str):
        return _parse_address(value)
    hit = _ADDRESSES.get(value, _UNSEEN)
    if hit is not _UNSEEN:
        return hit  # type: ignore[return-value]
    result = _parse_address(value)
    if len(_ADDRESSES) >= _MEMO_MAX:
        _ADDRESSES.clear()
    _ADDRESSES[value] = result
    return result


def normalize_ip(value: str | bytes | None) -> str | None:
    """Canonical text of one address as proxies write it (``str``), or ``None`` if it is not one.

    The text form of :func:`parse_address`; never raises.
    """
    address = parse_address(value)
    return None if address is None else str(address)


def _parse_address(value: str | bytes | None) -> IPAddress | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    text = value.strip(' \t"')
    if not text or len(text) > 100 or not text.isascii():
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not (port.isascii() and port.isdigit()):
            return None
        text = host
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """Which proxies in front of the application may be believed about the client.

    Build it with :meth:`parse`. Either ``hops`` (how many proxies stand in
    front of the app, the socket peer being the last) or ``networks`` (the
    proxies' address ranges) and ``unix`` (a peer on a Unix socket is a
    proxy) are set, never both.
    """

    hops: int = 0
    networks: tuple[_Network, ...] = field(default=())
    unix: bool = False
    # Memo of _judge, by the text as it arrived: parsing an address and
    # matching it costs more than verifying a cached token, and the same few
    # proxies send every request. Bounded below.
    _memo: dict[str, tuple[IPAddress | None, bool]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @classmethod
    def parse(cls, value: TrustedProxiesSpec) -> TrustedProxies | None:
        """Accept ``None``, a hop count, a list of CIDRs, or a string of either.

        Strings are read as configuration: ``"2"`` is two hops and
        ``"10.0.0.0/8, 192.168.0.0/16"`` is a CIDR list. The entry ``"unix"``
        in a list trusts a peer on a Unix socket (a proxy such as nginx in
        front of ``uvicorn --uds``). Raises
        :class:`~bbverify.errors.ConfigurationError` on anything else,
        including a CIDR with host bits set (``10.0.0.7/8``: the intent is
        ambiguous) and any set of CIDRs that together cover every IPv4 or
        every IPv6 address (any caller could then choose its own address).
        """
        if value is None or isinstance(value, TrustedProxies):
            return value
        if isinstance(value, bool):
            raise ConfigurationError(
                "must be a hop count or a list of CIDRs, not a bool", key="trusted_proxies"
            )
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            # Only ASCII digits are a hop count: str.isdigit() also takes "²" (int() fails)
            # and "٣" (int() reads 3), neither of which an operator means as a count.
            if text.isascii() and text.isdigit():
                value = int(text)
            elif text.isdigit():
                raise ConfigurationError(
                    f"hop count {text!r} must be written in ASCII digits 0-9", key="trusted_proxies"
                )
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, int):
            if not 0 <= value <= MAX_FORWARDED_ENTRIES:
                raise ConfigurationError(
                    f"hop count must be between 0 and {MAX_FORWARDED_ENTRIES}", key="trusted_proxies"
                )
            return cls(hops=value) if value else None
        if not isinstance(value, Iterable):
            raise ConfigurationError("must be a hop count or a list of CIDRs", key="trusted_proxies")
        networks: list[_Network] = []
        unix = False
        for i, cidr in enumerate(value):
            if isinstance(cidr, str) and cidr.strip().lower() == UNIX_SOCKET_PEER:
                unix = True
                continue
            # The same strict parser as IPRanges: host bits, zone ids and junk are refused.
            networks.append(parse_cidr(cidr, key=f"trusted_proxies[{i}]"))
        # Covering everything is refused whatever its shape (0.0.0.0/1 + 128.0.0.0/1):
        # trusting every address as a proxy lets any caller choose its own IP.
        for version in catch_all_versions(networks):
            raise ConfigurationError(
                f"these ranges together trust every IPv{version} address as a proxy, so any "
                "caller could set its own IP; list your proxies' addresses, or give a hop count",
                key="trusted_proxies",
            )
        if not networks and not unix:
            return None
        return cls(networks=tuple(networks), unix=unix)

    def _judge(self, value: str | bytes | None) -> tuple[IPAddress | None, bool]:
        """``(address, trusted)`` for one hop as it arrived (``None``: not an address)."""
        memo = self._memo
        hit = memo.get(value) if isinstance(value, str) else None
        if hit is not None:
            return hit
        address = parse_address(value)
        trusted = address is not None and any(
            address.version == net.version and address in net for net in self.networks
        )
        if isinstance(value, str):
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[value] = (address, trusted)
        return address, trusted

    def resolve(self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]) -> str | None:
        """The client address behind these proxies, as text (``None`` when unknown); see :func:`client_ip`."""
        address = self.resolve_address(peer, forwarded_for)
        return None if address is None else str(address)

    def resolve_address(
        self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]
    ) -> IPAddress | None:
        """As :meth:`resolve`, as an address object (what the request context keeps)."""
        entries: list[str] = []
        for line in forwarded_for:
            # Non-ASCII entries survive the split and are judged (as junk) one by one.
            text = line.decode("latin-1") if isinstance(line, bytes) else line
            if not isinstance(text, str):
                return None
            entries.extend(part for part in (p.strip() for p in text.split(",")) if part)
        if len(entries) > MAX_FORWARDED_ENTRIES:
            return None
        if self.hops:
            # Hop counting never looks at the peer (the last proxy), so a peer
            # without an address (a Unix socket) changes nothing.
            if len(entries) < self.hops:
                # Fewer entries than proxies: the request did not come the way
                # the deployment says it must, so no address can be believed.
                return None
            return parse_address(entries[-self.hops])
        candidate: IPAddress | None = None
        if not (peer == UNIX_SOCKET_PEER and self.unix):  # else: the peer is the proxy, with no address
            candidate, trusted = self._judge(peer)
            if candidate is None or not trusted:
                return candidate  # no peer address, or not a proxy: the header is the client's own claim
        for entry in reversed(entries):
            address, trusted = self._judge(entry)
            if address is None:
                return None
            candidate = address
            if not trusted:
                return address
        # Every hop is a trusted proxy: the request started inside, at the leftmost one.
        return candidate


TrustedProxiesSpec = int | str | Sequence[str] | TrustedProxies | None


def client_address(
    peer: str | bytes | None,
    forwarded_for: Sequence[str | bytes] = (),
    trusted_proxies: TrustedProxies | None = None,
) -> IPAddress | None:
    """The client address for IP rules, as an :mod:`ipaddress` object; ``None`` when it cannot be known.

    * Without trusted proxies, the socket peer; ``X-Forwarded-For`` is ignored.
    * With a hop count ``N``: the ``N``-th ``X-Forwarded-For`` entry from the
      right (each of the ``N`` proxies appended the address it saw; the
      socket peer is the last proxy). Fewer than ``N`` entries gives ``None``.
    * With CIDRs: walk ``[X-Forwarded-For entries..., peer]`` from the right,
      skipping trusted addresses; the first untrusted one is the client. If
      the peer itself is not trusted, it is the client.

    A junk entry where the client should be gives ``None``, so IP rules deny.
    Several ``X-Forwarded-For`` lines are joined in order. Never raises.
    """
    if trusted_proxies is None:
        return parse_address(peer)
    try:
        return trusted_proxies.resolve_address(peer, forwarded_for)
    except Exception:
        return None


def client_ip(
    peer: str | bytes | None,
    forwarded_for: Sequence[str | bytes] = (),
    trusted_proxies: TrustedProxies | None = None,
) -> str | None:
    """The client address for IP rules as text (``str``); ``None`` when it cannot be known.

    The text form of :func:`client_address` (same walk, same rules). Never raises.
    """
    address = client_address(peer, forwarded_for, trusted_proxies)
    return None if address is None else str(address)
