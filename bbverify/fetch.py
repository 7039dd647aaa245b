"""Bounded HTTP fetches of small JSON documents (key sets, discovery, IP feeds).

Both remote sources bbverify reads, the issuer's key set and Atlassian's IP
feed, are fetched the same careful way, implemented once here:

* HTTPS only, plain HTTP only on loopback (tests, the demo),
* no redirects, and nothing but 200 accepted,
* no compression (the body is read raw so it can be capped as it arrives,
  and a small gzip body can expand enormously),
* a cap on the body, checked against ``Content-Length`` and while reading,
* one total deadline for the whole fetch, not per socket read.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from .errors import ConfigurationError, FetchError

__all__ = [
    "FetchError",
    "JsonResponse",
    "check_fetch_url",
    "fetch_json",
    "fetch_json_response",
    "is_loopback_host",
    "private_session",
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
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ConfigurationError(f"{url!r} must be https:// (plain http is allowed only on loopback)", key=what)


def private_session() -> requests.Session:
    """A session that ignores proxy variables and ``.netrc``, for predictable fetches.

    Deployments behind an egress proxy pass their own ``requests.Session``.
    """
    session = requests.Session()
    session.trust_env = False
    return session


def fetch_json(session: requests.Session, url: str, *, deadline: float, max_bytes: int) -> object:
    """GET ``url`` and parse its JSON body, within ``deadline`` (a ``time.monotonic()`` value).

    Raises :class:`FetchError` for every refusal described in the module docs;
    transport errors from ``requests`` pass through for the caller to log.
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
    with session.get(
        url, timeout=(remaining, remaining), allow_redirects=False, stream=True, headers=headers
    ) as resp:
        if resp.status_code == 304 and conditional:
            return JsonResponse(304, resp.headers, None)
        if resp.status_code != 200:
            raise FetchError(
                f"{url} answered HTTP {resp.status_code}", status=resp.status_code, headers=resp.headers
            )
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchError(f"{url} answered with Content-Encoding {encoding[:40]!r}, not identity")
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"{url} body of {declared} bytes exceeds the cap of {max_bytes}")
        chunks: list[bytes] = []
        size = 0
        while True:
            # read1 returns whatever has arrived, so a drip-feeding server is
            # caught by the deadline between small reads.
            chunk = resp.raw.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{url} body exceeds the cap of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError(f"{url} did not finish in time")
            chunks.append(chunk)
        response_headers = resp.headers
    try:
        document = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, RecursionError):
        raise FetchError(f"{url} did not return JSON") from None
    return JsonResponse(200, response_headers, document)
