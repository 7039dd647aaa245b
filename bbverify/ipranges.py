"""Loads Atlassian's IP-range feed and keeps the ranges of one product and direction fresh.

Address parsing and sets live in :mod:`bbverify.addresses`; their names are
re-exported here for compatibility.

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
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import requests

from .addresses import (
    AddressSet,
    IPAddress,
    IPNetwork,
    catch_all_versions,
    parse_cidr,
    parse_client_ip,
)
from .checks import seconds
from .errors import ConfigurationError, FeedError, FetchError
from .fetch import capped_array, check_fetch_url, fetch_json
from .refresh import BackgroundLoader, from_loader, settled

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
    items = capped_array(document, "items", MAX_FEED_ITEMS, "feed", FeedError)
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
    date = document.get("creationDate") if isinstance(document, dict) else None
    return FeedSnapshot(AddressSet(networks), skipped, date if isinstance(date, str) else None)


_FILTERS = ("product", "direction", "region", "perimeter")


def _on_event_loop() -> bool:
    """True on a thread that runs an asyncio event loop (rules are sync code called from it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AtlassianIPRanges:
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
        self.refresh_interval = seconds(refresh_interval, "refresh_interval", positive=True)
        self.timeout = seconds(timeout, "timeout", positive=True)
        self.failure_backoff = seconds(failure_backoff, "failure_backoff")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
            raise ConfigurationError("must be an integer of at least 1024", key="max_body_bytes")
        self.max_body_bytes = max_body_bytes
        self._clock = clock

        # The single-flight load (deadline, fork safety) is the loader's;
        # when a refresh is due is this class's.
        self._loader: BackgroundLoader[FeedSnapshot] = BackgroundLoader(
            self._load, self._install, self._failed, session=session, timeout=self.timeout, clock=clock,
            name="bbverify-ipranges",
        )
        self._snapshot: FeedSnapshot | None = None
        self._loaded_at: float | None = None

        if not lazy and not self.refresh():
            raise ConfigurationError(
                f"could not load IP ranges from {self.source}: {self.last_error}", key="ip_ranges_feed"
            )

    # -- public -----------------------------------------------------------------

    @property
    def source(self) -> str:
        """The URL or path the ranges come from."""
        return self._url if self._url is not None else str(self._path)

    last_error: str | None = from_loader("last_error", "Why the last load failed, if none succeeded since.")
    fetch_count: int = from_loader("fetch_count", "How many loads were started.")
    failure_count: int = from_loader("failure_count", "How many loads failed (for :mod:`bbverify.metrics`).")

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
            if self._clock() - loaded >= self.refresh_interval and self._loader.inflight is None:
                with self._loader.lock:
                    self._start_locked(self._clock(), force=False)
            return snap.ranges
        with self._loader.lock:
            future = self._start_locked(self._clock(), force=False)
        if not _on_event_loop():
            # A worker thread may wait briefly; then the request is denied.
            self._wait(future, min(self.timeout, FIRST_USE_WAIT))
        snap = self._snapshot
        return snap.ranges if snap is not None else None

    def refresh(self, timeout: float | None = None) -> bool:
        """Load now (ignoring the interval and backoff) and wait; True on success."""
        with self._loader.lock:
            future = self._start_locked(self._clock(), force=True)
        return self._wait(future, self.timeout if timeout is None else timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a load in progress, if any; True when the ranges are loaded."""
        future = self._loader.inflight
        if future is not None:
            self._wait(future, self.timeout if timeout is None else timeout)
        return self._snapshot is not None

    def __repr__(self) -> str:
        snap = self._snapshot
        count = len(snap.ranges) if snap is not None else "not loaded"
        return f"AtlassianIPRanges({self.source!r}, ranges={count})"

    # -- internals --------------------------------------------------------------

    def _start_locked(self, now: float, *, force: bool) -> Future[bool]:
        if self._loader.inflight is not None:
            return self._loader.inflight
        if not force and self._loader.in_backoff(now, self.failure_backoff):
            return settled(False)
        if not force and self._loaded_at is not None and now - self._loaded_at < self.refresh_interval:
            return settled(True)
        return self._loader.launch_locked(now)

    @staticmethod
    def _wait(future: Future[bool], timeout: float) -> bool:
        return bool(BackgroundLoader.wait_for(future, timeout))

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
        deadline = time.monotonic() + self.timeout
        try:
            session = self._loader.session()
            return fetch_json(session, self._url, deadline=deadline, max_bytes=self.max_body_bytes)
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
