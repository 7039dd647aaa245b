"""The networks a client IP is checked against: address sets, configured or from Atlassian's feed.

:class:`AddressSet` answers "is this address in any of these networks?" in
O(log n): networks are merged into sorted, non-overlapping integer intervals
per IP version and searched with :mod:`bisect`, so a feed of thousands of
ranges costs the same per request as a handful.

:class:`AtlassianIPRanges` loads ``https://ip-ranges.atlassian.com/`` (or a
local copy of it), keeps the ranges matching a product, direction and
optionally region, and refreshes them in the background:

* the first load happens when it is built, and a failure raises
  :class:`~bbverify.errors.ConfigurationError` (fail at start-up), unless
  ``lazy=True``,
* after ``refresh_interval`` a refresh starts in a background thread on the
  next use; requests keep using the ranges they have and never wait for it,
* a refresh that fails, or that finds *no* matching range, keeps the last
  good ranges and logs a warning: an empty answer is far more likely a
  format change or an outage than Atlassian withdrawing every address,
* fetches are bounded: total deadline, body size cap, no redirects, HTTPS
  only (plain HTTP on loopback for tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import requests

from .errors import ConfigurationError, FeedError, FetchError
from .fetch import check_fetch_url, fetch_json, private_session
from .refresh import BackgroundLoader, settled

__all__ = [
    "DEFAULT_FEED_URL",
    "SAMPLE_FEED",
    "AddressSet",
    "AtlassianIPRanges",
    "FeedError",
    "IPAddress",
    "IPNetwork",
    "catch_all_versions",
    "load_cidrs",
    "parse_cidr",
    "parse_client_ip",
    "parse_feed",
]

_log = logging.getLogger("bbverify.ipranges")

DEFAULT_FEED_URL = "https://ip-ranges.atlassian.com/"
#: A small file shaped like Atlassian's feed, shipped for offline demos and
#: tests. Its ranges are examples, not current data: production uses the URL.
SAMPLE_FEED = Path(__file__).resolve().parent / "data" / "atlassian-ip-ranges.sample.json"
DEFAULT_REFRESH_INTERVAL = 3600.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_FAILURE_BACKOFF = 60.0
#: Longest a request waits for the very first load of a lazy feed.
FIRST_USE_WAIT = 2.0
# The real feed lists every Atlassian product and is well under a megabyte;
# the cap only stops a misbehaving server from filling memory.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_FEED_ITEMS = 200_000
# Longest textual IPv6 address with an embedded IPv4 part is 45 characters.
_MAX_IP_TEXT = 64

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- addresses and networks -----------------------------------------------------


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


# -- the feed -------------------------------------------------------------------


Selector: TypeAlias = frozenset[str] | None


def _selector(value: str | Iterable[str] | None, key: str) -> Selector:
    """``None`` (match anything), or the lower-cased accepted values."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ConfigurationError("must be a non-empty string or list of strings", key=key)
    return frozenset(v.strip().lower() for v in values)


def _matches(field: object, wanted: Selector) -> bool:
    if wanted is None:
        return True
    # The feed uses lists; tolerate a bare string in case that ever changes.
    values = [field] if isinstance(field, str) else field if isinstance(field, list) else []
    return any(isinstance(v, str) and v.lower() in wanted for v in values)


@dataclass(frozen=True, slots=True)
class FeedSnapshot:
    """One successful load of the feed."""

    ranges: AddressSet
    skipped: int  #: items that matched the filter but had no usable ``cidr``
    creation_date: str | None  #: the feed's own ``creationDate``, if any


def parse_feed(
    document: object,
    *,
    product: str | Iterable[str] | None = "bitbucket",
    direction: str | Iterable[str] | None = "egress",
    region: str | Iterable[str] | None = None,
    perimeter: str | Iterable[str] | None = None,
) -> FeedSnapshot:
    """Select the matching networks from a parsed feed; raise :class:`FeedError` if none.

    Each filter is ``None`` (anything) or a value / list of values compared
    case-insensitively with the item's list-valued field (``perimeter`` is a
    plain string in the feed).
    """
    wanted = (
        _selector(product, "product"),
        _selector(direction, "direction"),
        _selector(region, "region"),
        _selector(perimeter, "perimeter"),
    )
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise FeedError("feed is not a JSON object with an 'items' array")
    items = document["items"]
    if len(items) > MAX_FEED_ITEMS:
        raise FeedError(f"feed has {len(items)} items, more than the cap of {MAX_FEED_ITEMS}")
    networks: list[IPNetwork] = []
    skipped = 0
    for item in items:
        if not isinstance(item, dict):
            skipped += 1
            continue
        fields = (item.get("product"), item.get("direction"), item.get("region"), item.get("perimeter"))
        if not all(_matches(f, w) for f, w in zip(fields, wanted, strict=True)):
            continue
        try:
            network = parse_cidr(item.get("cidr"))
        except ConfigurationError:
            skipped += 1
            continue
        if network.prefixlen == 0:
            # 0.0.0.0/0, ::/0 or ::ffff:0:0/96 (every IPv4 address, mapped) would
            # admit every caller: a broken or tampered feed, never Bitbucket's ranges.
            _log.warning(
                "IP-range feed item %r covers every IPv%d address; refused, the rest of the feed is used",
                item.get("cidr"),
                network.version,
            )
            skipped += 1
            continue
        networks.append(network)
    covered = catch_all_versions(networks)
    if covered:
        # Split catch-alls (0.0.0.0/1 + 128.0.0.0/1) admit every caller just as 0.0.0.0/0
        # does; the selection is then broken or tampered as a whole, so none of it is used.
        raise FeedError(
            "feed items together cover every "
            + " and every ".join(f"IPv{v}" for v in covered)
            + " address; refused as broken or tampered"
        )
    if not networks:
        raise FeedError(
            "feed lists no usable range for "
            + ", ".join(f"{n}={sorted(w)}" for n, w in zip(_FILTERS, wanted, strict=True) if w is not None)
        )
    date = document.get("creationDate")
    return FeedSnapshot(AddressSet(networks), skipped, date if isinstance(date, str) else None)


_FILTERS = ("product", "direction", "region", "perimeter")


def _on_event_loop() -> bool:
    """True on a thread that runs an asyncio event loop (rules are sync code called from it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _number(value: object, key: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"must be a number of seconds, not {value!r}", key=key)
    if value < 0 or (positive and value == 0):
        raise ConfigurationError(f"must be {'positive' if positive else 'non-negative'}", key=key)
    return float(value)


class AtlassianIPRanges(BackgroundLoader[FeedSnapshot]):
    """Atlassian's IP ranges for one product and direction, kept fresh.

    Args:
        source: an ``https://`` URL (``http://`` only on loopback) or a file path.
        product: items kept by ``product`` (see :func:`parse_feed`); Bitbucket
            Pipelines traffic to your server is ``bitbucket``.
        direction: items kept by ``direction``; Pipelines calling you is ``egress``.
        region: items kept by ``region``. Atlassian advises against filtering by region.
        perimeter: items kept by ``perimeter``.
        refresh_interval: seconds between refreshes (default one hour).
        timeout: total deadline of one fetch.
        failure_backoff: seconds before retrying after a failed refresh.
        max_body_bytes: the feed body cap.
        lazy: do not load now; load on first use instead (no start-up error).
        session: a ``requests.Session`` (proxies, CA bundle); redirects stay off.
        clock: monotonic seconds; injectable for tests.
    """

    _thread_name = "bbverify-ipranges"

    def __init__(
        self,
        source: str | os.PathLike[str] = DEFAULT_FEED_URL,
        *,
        product: str | Iterable[str] | None = "bitbucket",
        direction: str | Iterable[str] | None = "egress",
        region: str | Iterable[str] | None = None,
        perimeter: str | Iterable[str] | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        lazy: bool = False,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url: str | None = None
        self._path: Path | None = None
        if isinstance(source, str) and "://" in source:
            self._url = check_fetch_url(source, "ip_ranges_feed")
        elif isinstance(source, str | os.PathLike) and str(source):
            self._path = Path(source)
        else:
            raise ConfigurationError(f"{source!r} is not a URL or a file path", key="ip_ranges_feed")
        self.product = _selector(product, "product")
        self.direction = _selector(direction, "direction")
        self.region = _selector(region, "region")
        self.perimeter = _selector(perimeter, "perimeter")
        self.refresh_interval = _number(refresh_interval, "refresh_interval", positive=True)
        self.timeout = _number(timeout, "timeout", positive=True)
        self.failure_backoff = _number(failure_backoff, "failure_backoff")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
            raise ConfigurationError("must be an integer of at least 1024", key="max_body_bytes")
        self.max_body_bytes = max_body_bytes
        self._session = session
        self._own_session = session is None
        self._clock = clock

        self._init_loader(clock)
        self._snapshot: FeedSnapshot | None = None
        self._loaded_at: float | None = None

        if not lazy and not self.refresh():
            raise ConfigurationError(
                f"could not load IP ranges from {self.source}: {self._last_error}", key="ip_ranges_feed"
            )

    # -- public -----------------------------------------------------------------

    @property
    def source(self) -> str:
        """The URL or path the ranges come from."""
        return self._url if self._url is not None else str(self._path)

    @property
    def last_error(self) -> str | None:
        """Why the last load failed, while none has succeeded since."""
        return self._last_error

    @property
    def loaded_at(self) -> float | None:
        """Clock time of the last good load (``None`` before the first)."""
        return self._loaded_at

    @property
    def creation_date(self) -> str | None:
        """The feed's ``creationDate`` at the last good load."""
        snap = self._snapshot
        return snap.creation_date if snap is not None else None

    def ranges(self) -> AddressSet | None:
        """The current ranges, starting a background refresh when one is due.

        Never waits for a refresh when ranges are loaded. Before the first
        good load (``lazy=True``) it starts one; on a thread without a running
        event loop it waits up to :data:`FIRST_USE_WAIT` seconds (or
        ``timeout``, if shorter), while on an event loop's thread it never
        waits (that would stall every request the loop serves). It returns
        ``None`` while there is still nothing, and the IP rule then denies
        with ``ip_ranges_unavailable``.
        """
        snap = self._snapshot
        if snap is not None:
            loaded = self._loaded_at
            assert loaded is not None
            if self._clock() - loaded >= self.refresh_interval and self._inflight is None:
                with self._lock:
                    self._start_locked(self._clock(), force=False)
            return snap.ranges
        with self._lock:
            future = self._start_locked(self._clock(), force=False)
        if not _on_event_loop():
            # A worker thread may wait briefly; then the request is denied.
            self._wait(future, min(self.timeout, FIRST_USE_WAIT))
        snap = self._snapshot
        return snap.ranges if snap is not None else None

    def refresh(self, timeout: float | None = None) -> bool:
        """Load now (ignoring the interval and backoff) and wait; True on success."""
        with self._lock:
            future = self._start_locked(self._clock(), force=True)
        return self._wait(future, self.timeout if timeout is None else timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a load in progress, if any; True when the ranges are loaded."""
        future = self._inflight
        if future is not None:
            self._wait(future, self.timeout if timeout is None else timeout)
        return self._snapshot is not None

    def __repr__(self) -> str:
        snap = self._snapshot
        count = len(snap.ranges) if snap is not None else "not loaded"
        return f"AtlassianIPRanges({self.source!r}, ranges={count})"

    # -- internals --------------------------------------------------------------

    def _start_locked(self, now: float, *, force: bool) -> Future[bool]:
        if self._inflight is not None:
            return self._inflight
        if not force and self._in_backoff(now, self.failure_backoff):
            return settled(False)
        if not force and self._loaded_at is not None and now - self._loaded_at < self.refresh_interval:
            return settled(True)
        return self._launch_locked(now)

    @classmethod
    def _wait(cls, future: Future[bool], timeout: float) -> bool:
        return bool(cls._wait_for(future, timeout))

    def _load(self) -> FeedSnapshot:
        document = self._read_url() if self._url is not None else self._read_file()
        return parse_feed(
            document,
            product=self.product,
            direction=self.direction,
            region=self.region,
            perimeter=self.perimeter,
        )

    def _install(self, value: FeedSnapshot, now: float) -> None:
        if value.skipped:
            _log.info("ignored %d unusable item(s) in %s", value.skipped, self.source)
        self._snapshot = value
        self._loaded_at = now
        _log.info("loaded %d IP range(s) from %s", len(value.ranges), self.source)

    def _failed(self, exc: BaseException) -> str:
        # Anything (network, JSON, filter finding nothing) keeps the last good ranges.
        message = str(exc) or type(exc).__name__
        kept = "keeping the last good ranges" if self._snapshot is not None else "no ranges loaded yet"
        _log.warning("loading IP ranges from %s failed (%s): %s", self.source, kept, message)
        return message

    def _after_fork(self) -> None:
        # Pooled connections are shared with the parent after a fork.
        if self._own_session:
            self._session = None

    def _read_file(self) -> object:
        assert self._path is not None
        with self._path.open("rb") as fh:
            body = fh.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            raise FeedError(f"{self._path} is larger than {self.max_body_bytes} bytes")
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise FeedError("feed is not JSON") from None

    def _read_url(self) -> object:
        assert self._url is not None
        if self._session is None:
            self._session = private_session()
        deadline = time.monotonic() + self.timeout
        try:
            return fetch_json(self._session, self._url, deadline=deadline, max_bytes=self.max_body_bytes)
        except FetchError as exc:
            raise FeedError(str(exc)) from None


def load_cidrs(
    source: str | os.PathLike[str] = DEFAULT_FEED_URL,
    *,
    product: str | Iterable[str] | None = "bitbucket",
    direction: str | Iterable[str] | None = "egress",
    region: str | Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[str]:
    """Load the feed once and return the matching CIDRs as strings (IPv4 first).

    For tooling (``bbverify ip-ranges``, generating firewall rules); raises
    :class:`~bbverify.errors.ConfigurationError` when the feed cannot be used.
    """
    feed = AtlassianIPRanges(source, product=product, direction=direction, region=region, timeout=timeout)
    ranges = feed.ranges()
    assert ranges is not None
    return [str(n) for n in ranges.networks]
