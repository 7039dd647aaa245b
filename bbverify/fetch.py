"""Bounded HTTP fetches of small JSON documents (key sets, discovery, IP feeds).

Both remote sources bbverify reads, the issuer's key set and Atlassian's IP
feed, are fetched the same careful way, implemented once here:

* HTTPS only, plain HTTP only on loopback (tests, the demo),
* no redirects, and nothing but 200 accepted,
* no compression (the body is read raw so it can be capped as it arrives,
  and a small gzip body can expand enormously),
* a cap on the body, checked against ``Content-Length`` and while reading,
* one total deadline for the whole fetch (connect, TLS, status line,
  headers, body), not per socket read.

``requests`` timeouts apply to each socket operation, so a server that sends
one byte just before every timeout would hold a fetch open indefinitely. The
deadline is therefore enforced by a watchdog: every socket a fetch opens or
reuses is registered (by :class:`DeadlineAdapter`'s connection classes), and
when the deadline passes, one watchdog thread shuts those sockets down, which
wakes the blocked read with an error whatever the server is doing.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import ConfigurationError, FetchError

__all__ = [
    "DeadlineAdapter",
    "FetchError",
    "JsonResponse",
    "capped_array",
    "check_fetch_url",
    "fetch_json",
    "fetch_json_response",
    "is_loopback_host",
    "private_session",
    "read_body",
]

_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "bbverify"}


@dataclass(frozen=True)
class JsonResponse:
    """A fetched JSON document, or a ``304 Not Modified`` (``document`` is then ``None``).

    ``headers`` is the response's case-insensitive header mapping.
    """

    status: int
    headers: Mapping[str, str]
    document: object


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, what: str = "url") -> str:
    """Accept HTTPS URLs, and plain HTTP only on loopback (tests, the demo)."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError("must be a non-empty URL", key=what)
    # Refuse what parsers read differently (urlsplit vs urllib3, which requests uses to
    # connect): backslashes, userinfo, whitespace and control or non-ASCII characters.
    # The host judged here must be the host connected to (finding f11).
    if not url.isascii() or not url.isprintable() or any(c in url for c in "\\ \t"):
        raise ConfigurationError(f"{url!r}: backslashes, spaces and non-ASCII are not allowed", key=what)
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigurationError(f"{url!r}: user information (user@host) is not allowed", key=what)
    try:
        from urllib3.util import parse_url

        connect_host = parse_url(url).host
    except ValueError:
        raise ConfigurationError(f"{url!r} is not a URL requests can fetch", key=what) from None
    if connect_host is None or connect_host.lower().strip("[]") != (parts.hostname or "").strip("[]"):
        raise ConfigurationError(f"{url!r}: its host is ambiguous", key=what)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ConfigurationError(f"{url!r} must be https:// (plain http is allowed only on loopback)", key=what)


# -- the watchdog ----------------------------------------------------------------


class _Watch:
    """One fetch: its deadline (``time.monotonic()``) and the connections it uses."""

    __slots__ = ("_lock", "deadline", "expired", "finished", "sockets")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[_Ident] = []
        self.expired = False
        self.finished = False
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        ident = _ident(sock)
        if ident is None:
            return
        with self._lock:
            if self.finished:
                return
            self.sockets.append(ident)
            late = self.expired
        if late:  # registered after the deadline: cut it at once
            _shut(ident)

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sockets = list(self.sockets)
        for ident in sockets:
            _shut(ident)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            self.sockets.clear()


#: A connection as (file descriptor, local address, peer address).
_Ident = tuple[int, Any, Any]


def _ident(sock: socket.socket) -> _Ident | None:
    # The descriptor, not the socket object: TLS wraps a connected socket by
    # moving its descriptor into a new SSLSocket and detaching the original,
    # so the object registered before the handshake is dead after it.
    try:
        return sock.fileno(), sock.getsockname(), sock.getpeername()
    except OSError:
        return None


def _shut(ident: _Ident) -> None:
    """Shut down the connection ``ident`` names, if its descriptor still holds it.

    ``shutdown()`` wakes a thread blocked reading the socket (``close()``
    from another thread does not). It is applied to a duplicate of the
    descriptor, after checking that the duplicate is still the same
    connection (same local and peer address), so a descriptor closed and
    reused meanwhile is never touched.
    """
    fd, local, peer = ident
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    with sock, contextlib.suppress(OSError):
        if sock.getsockname() == local and sock.getpeername() == peer:
            sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that expires fetches at their deadlines (a heap of watches)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, deadline: float) -> _Watch:
        watch = _Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bbverify-fetch-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def _run(self) -> None:
        while True:
            with self._cond:
                # Drop finished fetches from the top so the heap stays small.
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    # Idle: exit after a while rather than linger (bounded wait).
                    if not self._cond.wait(timeout=30.0) and not self._heap:
                        self._thread = None
                        return
                    continue
                deadline, _, watch = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(timeout=delay)
                    continue
                heapq.heappop(self._heap)
            watch.expire()


_WATCHDOG = _Watchdog()
_CURRENT = threading.local()


def _track(sock: socket.socket | None) -> None:
    watch: _Watch | None = getattr(_CURRENT, "watch", None)
    if watch is not None and sock is not None:
        watch.add(sock)


class _TrackedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _track(sock)  # before TLS: the handshake is under the deadline too
        return sock


class _TrackedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _track(sock)
        return sock


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _track(getattr(conn, "sock", None))  # a reused keep-alive connection
        return conn


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _track(getattr(conn, "sock", None))
        return conn


class DeadlineAdapter(HTTPAdapter):
    """A ``requests`` transport whose sockets :func:`fetch_json` can cut at its deadline.

    :func:`private_session` mounts it. If you pass your own session (an
    egress proxy, a CA bundle), mount it there too so that the total deadline
    holds against a server that trickles bytes::

        session.mount("https://", DeadlineAdapter())

    Without it the fetch still gives up at its deadline between reads, and the
    background loader abandons a load past its deadline, but a stalled socket
    read lasts up to the timeout of one read.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


def private_session() -> requests.Session:
    """A session that ignores proxy variables and ``.netrc``, for predictable fetches.

    Its transport is a :class:`DeadlineAdapter`. Deployments behind an egress
    proxy pass their own ``requests.Session``.
    """
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", DeadlineAdapter())
    session.mount("http://", DeadlineAdapter())
    return session


def fetch_json(session: requests.Session, url: str, *, deadline: float, max_bytes: int) -> object:
    """GET ``url`` and parse its JSON body, within ``deadline`` (a ``time.monotonic()`` value).

    The fetch ends by ``deadline`` whatever the server does (see the module
    docs). Raises :class:`FetchError` for every refusal described in the
    module docs and for a passed deadline; other transport errors from
    ``requests`` pass through for the caller to log.
    """
    return fetch_json_response(session, url, deadline=deadline, max_bytes=max_bytes).document


def fetch_json_response(
    session: requests.Session,
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    conditional: Mapping[str, str] | None = None,
) -> JsonResponse:
    """As :func:`fetch_json`, also returning the status and headers.

    ``conditional`` adds ``If-None-Match``/``If-Modified-Since`` (RFC 9110
    section 13.1); a ``304`` is then accepted and returned with ``document``
    ``None``. Any other status but 200 raises :class:`FetchError` carrying it.
    """
    headers = dict(_HEADERS)
    for name, value in (conditional or {}).items():
        if name not in ("If-None-Match", "If-Modified-Since"):
            raise ValueError(f"not a conditional request header: {name!r}")
        headers[name] = value
    # The real clock, always: an injected test clock must never let a fetch run forever.
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("deadline passed before the request")
    watch = _WATCHDOG.watch(deadline)
    outer = getattr(_CURRENT, "watch", None)
    _CURRENT.watch = watch
    try:
        status, response_headers, body = _get(
            session, url, remaining, deadline, max_bytes, headers, bool(conditional)
        )
    except FetchError:
        if watch.expired:
            raise FetchError(f"{url} did not answer within the deadline") from None
        raise
    except Exception:
        if watch.expired or time.monotonic() >= deadline:
            raise FetchError(f"{url} did not answer within the deadline") from None
        raise
    finally:
        watch.finish()
        _CURRENT.watch = outer
    if watch.expired:
        # The body may have been cut short by the watchdog and still parse.
        raise FetchError(f"{url} did not answer within the deadline")
    if status == 304:
        return JsonResponse(304, response_headers, None)
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise FetchError(f"{url} did not return JSON") from None
    return JsonResponse(200, response_headers, document)


def _get(
    session: requests.Session,
    url: str,
    remaining: float,
    deadline: float,
    max_bytes: int,
    headers: Mapping[str, str],
    conditional: bool,
) -> tuple[int, Mapping[str, str], bytes]:
    with session.get(
        url, timeout=(remaining, remaining), allow_redirects=False, stream=True, headers=headers
    ) as resp:
        if resp.status_code == 304 and conditional:
            return 304, resp.headers, b""
        if resp.status_code != 200:
            raise FetchError(
                f"{url} answered HTTP {resp.status_code}", status=resp.status_code, headers=resp.headers
            )
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchError(f"{url} answered with Content-Encoding {encoding[:40]!r}, not identity")
        declared = resp.headers.get("Content-Length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"{url} body of {declared} bytes exceeds the cap of {max_bytes}")
        too_large = FetchError(f"{url} body exceeds the cap of {max_bytes} bytes")
        too_slow = FetchError(f"{url} did not finish in time")
        return 200, resp.headers, read_body(resp, max_bytes, deadline, too_large, too_slow)


def capped_array(
    document: object, member: str, cap: int, what: str, error: type[ValueError] = ValueError
) -> list[Any]:
    """The array ``document[member]`` of a fetched JSON document, at most ``cap`` entries long.

    Args:
        document: the parsed JSON document.
        member: the object member holding the array (``keys`` of a JWKS, RFC 7517
            section 5; ``items`` of Atlassian's IP-range feed).
        cap: the most entries accepted (a bound on the work a document can cause).
        what: the document's name in the error message.
        error: the ``ValueError`` subclass raised.

    Raises:
        ValueError: (``error``) ``document`` is not an object with that array, or the array is too long.
    """
    if not isinstance(document, dict) or not isinstance(document.get(member), list):
        raise error(f"{what} is not a JSON object with a '{member}' array")
    entries: list[Any] = document[member]
    if len(entries) > cap:
        raise error(f"{what} has {len(entries)} {member}, more than the cap of {cap}")
    return entries


def read_body(
    resp: requests.Response, max_bytes: int, deadline: float, too_large: Exception, too_slow: Exception
) -> bytes:
    """Read a streamed response's body, at most ``max_bytes`` and until ``deadline``.

    Args:
        resp: a response made with ``stream=True``.
        max_bytes: the body cap in bytes.
        deadline: a :func:`time.monotonic` time in seconds.
        too_large, too_slow: the error raised past the cap or past the deadline.

    Raises:
        Exception: ``too_large`` or ``too_slow``; transport errors as ``requests`` raises them.
    """
    # read1 (urllib3 >= 2.2) returns whatever has arrived, so the deadline
    # is also checked between small reads; older urllib3 (which the declared
    # floors allow) has only read(), bounded by the caller's timeout.
    raw = resp.raw
    read = getattr(raw, "read1", None) or raw.read
    chunks: list[bytes] = []
    size = 0
    while chunk := read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise too_slow
        chunks.append(chunk)
    return b"".join(chunks)


def _after_fork_in_child() -> None:
    # The watchdog thread does not survive a fork; its lock may be held.
    _WATCHDOG._reset()
    _CURRENT.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
