"""The issuer's signing keys: discovery, fetch, cache, cooldown.

:class:`RemoteKeySet` behaves like a careful remote JWKS client:

* nothing is fetched when it is built; the first verification (or
  :meth:`RemoteKeySet.warm_up`) fetches,
* one fetch at a time: every caller that needs keys waits on the same
  in-flight fetch (threads block on it, coroutines await it without a thread),
* a fetch has a total deadline, follows no redirect, accepts only 200, and
  caps the body and the number of keys,
* an unknown ``kid`` refetches at most once per ``cooldown``; a token
  without a usable ``kid`` and a bad signature never refetch,
* a failed or empty fetch never replaces good keys: they keep serving until
  ``max_stale`` after the last good fetch, and the failure is logged,
* after ``cache_ttl`` a refresh starts in the background while the cached
  keys keep answering, so steady traffic never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol, TypeAlias

import requests

from .errors import ConfigurationError, ErrorCode, FetchError, InvalidToken, KeysUnavailable, UnusableKey
from .fetch import check_fetch_url, fetch_json, is_loopback_host, private_session
from .jwk import SUPPORTED_ALGORITHMS, VerifyingKey, parse_jwk
from .refresh import BackgroundLoader, settled

__all__ = ["KeySource", "RemoteKeySet", "StaticKeySet", "check_fetch_url", "is_loopback_host"]

_log = logging.getLogger("bbverify.keys")

DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE_TTL = 600.0
DEFAULT_COOLDOWN = 30.0
DEFAULT_MAX_STALE = 3600.0
DEFAULT_FAILURE_BACKOFF = 5.0
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_KEYS = 64


class KeySource(Protocol):
    """Where a verifier gets keys. :class:`RemoteKeySet` is the usual one."""

    def get_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """Return the key for ``kid``/``alg``, fetching if needed (blocking)."""
        ...

    async def aget_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """As :meth:`get_key`, awaiting any fetch instead of blocking."""
        ...

    def cached_key(self, kid: str | None, alg: str) -> VerifyingKey | None:
        """The key if it is usable now without any fetch, else ``None``."""
        ...


def _select(
    by_kid: Mapping[str, VerifyingKey], all_keys: tuple[VerifyingKey, ...], kid: str | None, alg: str
) -> VerifyingKey | None:
    if kid is not None:
        key = by_kid.get(kid)
        return key if key is not None and key.accepts(alg) else None
    # A token without 'kid' is accepted only when exactly one key could sign it;
    # guessing among several would let any of them vouch for it.
    candidates = [k for k in all_keys if k.accepts(alg)]
    return candidates[0] if len(candidates) == 1 else None


def _unknown_key(kid: str | None) -> InvalidToken:
    if kid is None:
        return InvalidToken(
            "token has no 'kid' and the key set has no single key for its algorithm",
            code=ErrorCode.UNKNOWN_KEY,
        )
    return InvalidToken(
        f"no usable key with kid {kid[:64]!r} in the issuer's key set", code=ErrorCode.UNKNOWN_KEY
    )


#: Usable keys by kid, and every usable key (kid-less ones included).
KeyIndex: TypeAlias = tuple[dict[str, VerifyingKey], tuple[VerifyingKey, ...]]


def build_key_index(
    document: object, allowed_algorithms: frozenset[str], *, min_rsa_bits: int, max_keys: int, source: str
) -> KeyIndex:
    """Parse a JWKS document into usable keys; raise ``ValueError`` if none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS is not a JSON object with a 'keys' array")
    entries = document["keys"]
    if len(entries) > max_keys:
        raise ValueError(f"JWKS holds {len(entries)} keys, more than the cap of {max_keys}")
    keys: list[VerifyingKey] = []
    for i, entry in enumerate(entries):
        try:
            keys.append(parse_jwk(entry, allowed_algorithms, min_rsa_bits=min_rsa_bits))
        except UnusableKey as exc:
            _log.info("skipping key %d from %s: %s", i, source, exc)
    by_kid: dict[str, VerifyingKey] = {}
    duplicated: set[str] = set()
    for key in keys:
        if key.kid is None:
            continue
        if key.kid in by_kid:
            duplicated.add(key.kid)
        by_kid[key.kid] = key
    for kid in duplicated:
        # Two keys under one kid: neither can be trusted to be "the" key.
        _log.warning("kid %r appears more than once in %s; it is unusable", kid, source)
        del by_kid[kid]
    usable = tuple(k for k in keys if k.kid is None or k.kid in by_kid)
    if not usable:
        raise ValueError("JWKS has no usable signing key")
    return by_kid, usable


class StaticKeySet:
    """A fixed key set from a JWKS mapping (offline use, tests, pinned keys)."""

    def __init__(
        self,
        jwks: Mapping[str, Any],
        *,
        allowed_algorithms: frozenset[str] = frozenset({"RS256"}),
        min_rsa_bits: int = 2048,
    ) -> None:
        try:
            self._by_kid, self._all = build_key_index(
                dict(jwks),
                allowed_algorithms,
                min_rsa_bits=min_rsa_bits,
                max_keys=DEFAULT_MAX_KEYS,
                source="static JWKS",
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc), key="jwks") from None

    def cached_key(self, kid: str | None, alg: str) -> VerifyingKey | None:
        return _select(self._by_kid, self._all, kid, alg)

    def status(self) -> dict[str, Any]:
        """As :meth:`RemoteKeySet.status`: always loaded, never stale, no fetches."""
        return {
            "loaded": True,
            "stale": False,
            "age_seconds": None,
            "keys": len(self._all),
            "fetches": 0,
            "failures": 0,
            "last_error": None,
        }

    def get_key(self, kid: str | None, alg: str) -> VerifyingKey:
        key = self.cached_key(kid, alg)
        if key is None:
            raise _unknown_key(kid)
        return key

    async def aget_key(self, kid: str | None, alg: str) -> VerifyingKey:
        return self.get_key(kid, alg)


class RemoteKeySet(BackgroundLoader[KeyIndex]):
    """The issuer's JWKS, fetched over HTTPS and cached (see the module docs).

    Give ``jwks_url`` to skip discovery; otherwise the key set's address comes
    from ``{issuer}/.well-known/openid-configuration``, whose ``issuer`` must
    equal ``issuer`` exactly. Pass ``session`` to use your own
    ``requests.Session`` (proxies, CA bundle); redirects stay disabled.
    """

    _thread_name = "bbverify-jwks"

    def __init__(
        self,
        issuer: str | None = None,
        jwks_url: str | None = None,
        *,
        allowed_algorithms: frozenset[str] = frozenset({"RS256"}),
        timeout: float = DEFAULT_TIMEOUT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cooldown: float = DEFAULT_COOLDOWN,
        max_stale: float = DEFAULT_MAX_STALE,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_keys: int = DEFAULT_MAX_KEYS,
        min_rsa_bits: int = 2048,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_url is None and issuer is None:
            raise ConfigurationError("give an issuer (for discovery) or a jwks_url", key="jwks_url")
        self.issuer = issuer
        self._jwks_url = check_fetch_url(jwks_url, "jwks_url") if jwks_url else None
        if issuer is not None and self._jwks_url is None:
            check_fetch_url(issuer, "issuer")
        for name, value in (
            ("timeout", timeout),
            ("cache_ttl", cache_ttl),
            ("cooldown", cooldown),
            ("max_stale", max_stale),
            ("failure_backoff", failure_backoff),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"must be a non-negative number of seconds, not {value!r}", key=name)
        if timeout <= 0:
            raise ConfigurationError("must be positive", key="timeout")
        if min_rsa_bits < 2048:
            raise ConfigurationError("RSA keys under 2048 bits are never accepted", key="min_rsa_bits")
        unknown = set(allowed_algorithms) - SUPPORTED_ALGORITHMS
        if unknown or not allowed_algorithms:
            raise ConfigurationError(
                f"unsupported algorithms {sorted(unknown)}; choose from {sorted(SUPPORTED_ALGORITHMS)}",
                key="algorithms",
            )
        self.allowed_algorithms = frozenset(allowed_algorithms)
        self.timeout = float(timeout)
        self.cache_ttl = float(cache_ttl)
        self.cooldown = float(cooldown)
        self.max_stale = max(float(max_stale), self.cache_ttl)
        self.failure_backoff = float(failure_backoff)
        self.max_body_bytes = int(max_body_bytes)
        self.max_keys = int(max_keys)
        self.min_rsa_bits = int(min_rsa_bits)
        self._session = session
        self._now = monotonic

        self._init_loader(monotonic)
        self._by_kid: dict[str, VerifyingKey] = {}
        self._all: tuple[VerifyingKey, ...] = ()
        self._fetched_at: float | None = None  # last good fetch
        self._attempted_at: float | None = None  # last fetch start

    # -- public -------------------------------------------------------------

    @property
    def jwks_url(self) -> str | None:
        """The key set's URL: configured, or found by discovery (else ``None``)."""
        return self._jwks_url

    @property
    def last_error(self) -> str | None:
        """Why the last fetch failed, while it has not succeeded since."""
        return self._last_error

    def status(self) -> dict[str, Any]:
        """A snapshot for monitoring (:mod:`bbverify.metrics`, the gateway's ``/readyz``).

        Keys: ``loaded`` (bool: keys usable now, fresh or stale-but-allowed),
        ``stale`` (bool: older than ``cache_ttl`` yet still served, the issuer
        being unreachable or a refresh under way), ``age_seconds`` (float or
        ``None`` before the first good fetch), ``keys`` (int), ``fetches`` and
        ``failures`` (ints since start), ``last_error`` (str or ``None``).
        """
        fetched = self._fetched_at
        age = None if fetched is None else max(0.0, self._now() - fetched)
        return {
            "loaded": age is not None and age < self.max_stale,
            "stale": age is not None and self.cache_ttl <= age < self.max_stale,
            "age_seconds": age,
            "keys": len(self._all),
            "fetches": self.fetch_count,
            "failures": self.failure_count,
            "last_error": self._last_error,
        }

    def warm_up(self) -> None:
        """Fetch now (for application start-up); raise ``KeysUnavailable`` on failure."""
        future = self._start_fetch(force=True)
        self._wait(future)
        with self._lock:
            if self._fetched_at is None or self._failed_at is not None:
                raise self._unavailable()

    def cached_key(self, kid: str | None, alg: str) -> VerifyingKey | None:
        """The key if usable without any fetch now (stale-but-allowed counts)."""
        fetched = self._fetched_at
        if fetched is None:
            return None
        age = self._now() - fetched
        if age >= self.max_stale:
            return None
        if age >= self.cache_ttl and self._inflight is None:
            # Callers that only ever hit their own caches (the verified-token
            # cache) must still refresh, or a removed key would keep vouching.
            self._start_fetch(force=False)
        return _select(self._by_kid, self._all, kid, alg)

    def get_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """Return the key, waiting (at most ``timeout``) for a fetch if one is needed."""
        for _ in range(2):
            key, future = self._resolve(kid, alg)
            if key is not None:
                return key
            assert future is not None
            self._wait(future)
        return self._after_fetch(kid, alg)

    async def aget_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """As :meth:`get_key`, but awaits the shared fetch without blocking the loop."""
        for _ in range(2):
            key, future = self._resolve(kid, alg)
            if key is not None:
                return key
            assert future is not None
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
            except TimeoutError:
                raise KeysUnavailable(
                    f"key set fetch did not finish within {self.timeout:g}s",
                    retry_after=math.ceil(self.failure_backoff or 1),
                ) from None
        return self._after_fetch(kid, alg)

    # -- internals ----------------------------------------------------------

    def _after_fetch(self, kid: str | None, alg: str) -> VerifyingKey:
        with self._lock:
            usable = self._fetched_at is not None and self._now() - self._fetched_at < self.max_stale
            if not usable:
                raise self._unavailable()
            key = _select(self._by_kid, self._all, kid, alg)
        if key is None:
            raise _unknown_key(kid)
        return key

    def _unavailable(self) -> KeysUnavailable:
        now = self._now()
        wait = self.failure_backoff
        if self._failed_at is not None:
            wait = max(1.0, self._failed_at + self.failure_backoff - now)
        reason = self._last_error or "no key set has been fetched yet"
        return KeysUnavailable(
            f"the issuer's signing keys are unavailable ({reason})", retry_after=math.ceil(wait)
        )

    def _resolve(self, kid: str | None, alg: str) -> tuple[VerifyingKey | None, Future[bool] | None]:
        """Decide, under the lock, between a cached key, a fetch to wait on, or an error.

        Returns ``(key, None)`` or ``(None, future)``; raises on a final answer.
        """
        with self._lock:
            now = self._now()
            fetched = self._fetched_at
            usable = fetched is not None and now - fetched < self.max_stale
            if usable:
                key = _select(self._by_kid, self._all, kid, alg)
                if key is not None:
                    if now - fetched >= self.cache_ttl:  # type: ignore[operator]
                        self._start_fetch_locked(now, force=False)  # refresh in the background
                    return key, None
                if self._inflight is not None:
                    return None, self._inflight
                if kid is None or not self._may_refetch(now):
                    raise _unknown_key(kid)
                return None, self._start_fetch_locked(now, force=True)
            if self._inflight is not None:
                return None, self._inflight
            if self._in_backoff(now, self.failure_backoff):
                raise self._unavailable()
            return None, self._start_fetch_locked(now, force=True)

    def _may_refetch(self, now: float) -> bool:
        if self._attempted_at is not None and now - self._attempted_at < self.cooldown:
            return False
        return not self._in_backoff(now, self.failure_backoff)

    def _start_fetch(self, *, force: bool) -> Future[bool]:
        with self._lock:
            return self._start_fetch_locked(self._now(), force=force)

    def _start_fetch_locked(self, now: float, *, force: bool) -> Future[bool]:
        if self._inflight is not None:
            return self._inflight
        if not force and self._in_backoff(now, self.failure_backoff):
            # Background refreshes respect the backoff; the stale keys keep serving.
            return settled(False)
        self._attempted_at = now
        return self._launch_locked(now)

    def _wait(self, future: Future[bool]) -> None:
        if self._wait_for(future, self.timeout) is None:
            raise KeysUnavailable(
                f"key set fetch did not finish within {self.timeout:g}s",
                retry_after=math.ceil(self.failure_backoff or 1),
            )

    def _load(self) -> KeyIndex:
        # Network deadlines use the real clock: ``monotonic`` is injectable for
        # cache ages, and a frozen test clock must not let a fetch run forever.
        return self._fetch(time.monotonic() + self.timeout)

    def _install(self, value: KeyIndex, now: float) -> None:
        self._by_kid, self._all = value
        self._fetched_at = now
        _log.info("fetched %d usable key(s) from %s", len(self._all), self._jwks_url)

    def _failed(self, exc: BaseException) -> str:
        # Anything at all (network, JSON, a bug in a custom session) is a
        # failed fetch: the previous keys stay and the failure is logged.
        if isinstance(exc, requests.RequestException):
            # The full transport error is for the log; the short form may
            # reach clients in a 503 description.
            message = f"{type(exc).__name__} while fetching {exc.request.url if exc.request else 'keys'}"
            _log.warning("fetching the issuer's key set failed: %s (%s)", message, exc)
        else:
            message = str(exc) or type(exc).__name__
            _log.warning("fetching the issuer's key set failed: %s", message)
        return message

    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = private_session()
        return self._session

    def _get_json(self, url: str, deadline: float) -> object:
        return fetch_json(self._http(), url, deadline=deadline, max_bytes=self.max_body_bytes)

    def _fetch(self, deadline: float) -> KeyIndex:
        if self._jwks_url is None:
            assert self.issuer is not None
            discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            config = self._get_json(discovery_url, deadline)
            if not isinstance(config, dict):
                raise FetchError("discovery document is not a JSON object")
            if config.get("issuer") != self.issuer:
                raise FetchError(
                    f"discovery names issuer {str(config.get('issuer'))[:200]!r}, not {self.issuer!r}"
                )
            jwks_uri = config.get("jwks_uri")
            try:
                url = check_fetch_url(jwks_uri, "jwks_uri")  # type: ignore[arg-type]
            except ConfigurationError as exc:
                raise FetchError(f"discovery gave an unusable jwks_uri: {exc}") from None
            if self.issuer.startswith("https://") and not url.startswith("https://"):
                # A TLS issuer must not hand its keys out over plain HTTP, loopback or not.
                raise FetchError("discovery of an https issuer named a plain-http jwks_uri")
            self._jwks_url = url
        document = self._get_json(self._jwks_url, deadline)
        return build_key_index(
            document,
            self.allowed_algorithms,
            min_rsa_bits=self.min_rsa_bits,
            max_keys=self.max_keys,
            source=self._jwks_url,
        )
