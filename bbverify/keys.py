"""Serves the issuer's signing keys (JWKS) to the verifier: discovered, fetched, cached, kept fresh.

:class:`RemoteKeySet` behaves like a careful remote JWKS client:

* nothing is fetched when it is built; the first verification (or
  :meth:`RemoteKeySet.warm_up`) fetches,
* one fetch at a time: every caller that needs keys waits on the same
  in-flight fetch (threads block on it, coroutines await it without a thread),
* a fetch has a total deadline, follows no redirect, accepts only 200, and
  caps the body and the number of keys,
* every request to the issuer is paid from a fetch budget
  (:mod:`bbverify.budget`): a token bucket, a floor (``cooldown``) between
  refetches for unknown ``kid`` values, exponential backoff with jitter after
  failures, and ``Retry-After`` on 429/503; a token without a usable ``kid``
  and a bad signature never refetch,
* ``Cache-Control: max-age`` sets the refresh time within
  ``[min_cache_ttl, max_cache_ttl]``; ``ETag``/``Last-Modified`` make the next
  fetch conditional, and a 304 renews the cache,
* with a shared ``key_store`` (:mod:`bbverify.stores`) one process of a host
  or fleet fetches while the others read its result; the budget then lives in
  the store and holds for the fleet as a whole,
* a failed or empty fetch never replaces good keys: they keep serving until
  ``max_stale`` after the last good fetch, and the failure is logged,
* after ``cache_ttl`` a refresh starts in the background while the cached
  keys keep answering, so steady traffic never waits on the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import requests

from . import budget as _budget
from .checks import seconds
from .errors import (
    ConfigurationError,
    ErrorCode,
    FetchError,
    InvalidToken,
    KeysUnavailable,
    StoreUnavailable,
    UnusableKey,
)
from .fetch import (
    JsonResponse,
    capped_array,
    check_fetch_url,
    fetch_json_response,
    is_loopback_host,
)
from .jwk import SUPPORTED_ALGORITHMS, VerifyingKey, parse_jwk
from .refresh import BackgroundLoader, from_loader, settled
from .stores import KeyStore

__all__ = ["KeySource", "RemoteKeySet", "StaticKeySet", "check_fetch_url", "is_loopback_host"]

_log = logging.getLogger("bbverify.keys")

DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE_TTL = 600.0
DEFAULT_MIN_CACHE_TTL = 300.0
DEFAULT_MAX_CACHE_TTL = 3600.0
DEFAULT_COOLDOWN = _budget.DEFAULT_COOLDOWN
DEFAULT_MAX_STALE = 3600.0
DEFAULT_FAILURE_BACKOFF = _budget.DEFAULT_FAILURE_BACKOFF
DEFAULT_MAX_BACKOFF = _budget.DEFAULT_MAX_BACKOFF
DEFAULT_FETCH_INTERVAL = _budget.DEFAULT_INTERVAL
DEFAULT_FETCH_BURST = _budget.DEFAULT_BURST
#: Seconds between reads of a shared store prompted by an unknown ``kid``.
DEFAULT_STORE_POLL = 15.0
#: The format tag of store entries.
ENTRY_FORMAT = "bbverify.keys/1"
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
    entries = capped_array(document, "keys", max_keys, "JWKS")
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

    def current_keys(self) -> tuple[VerifyingKey, ...]:
        """The key set (always the same: a static key set never changes)."""
        return self._all

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


@dataclass(frozen=True)
class _Outcome:
    """What a load produced: keys to install (or ``None``: nothing new), and their metadata.

    ``fetched_wall`` is when the keys were fetched or last confirmed (wall
    clock); ``ttl`` how long they count as fresh from then (seconds).
    """

    index: KeyIndex | None = None
    fetched_wall: float | None = None
    ttl: float = DEFAULT_CACHE_TTL
    etag: str | None = None
    last_modified: str | None = None
    document: object = None
    error: str | None = None
    #: Read from the shared key store (another process fetched them), not fetched here.
    from_store: bool = False


@dataclass(frozen=True)
class _Entry:
    """A store entry after it was parsed and checked like a fresh fetch."""

    raw: bytes
    index: KeyIndex | None
    document: object
    jwks_url: str | None
    fetched_wall: float | None
    ttl: float
    etag: str | None
    last_modified: str | None
    budget: _budget.BudgetState
    #: The entry's key fields as stored, kept when this process cannot use
    #: them (other settings, a clock ahead) so that it never drops another
    #: process's good keys when it writes its budget.
    kept: Mapping[str, Any] | None = None


class RemoteKeySet:
    """The issuer's JWKS, fetched over HTTPS and cached (see the module docs).

    Give ``jwks_url`` to skip discovery; otherwise the key set's address comes
    from ``{issuer}/.well-known/openid-configuration``, whose ``issuer`` must
    equal ``issuer`` exactly. Pass ``session`` to use your own
    ``requests.Session`` (proxies, CA bundle, credentials); redirects stay
    disabled.

    Args (seconds unless said otherwise):
        timeout: deadline of one whole fetch (discovery and key set).
        cache_ttl: keys are refreshed in the background after this, unless the
            answer's ``Cache-Control: max-age`` says otherwise.
        min_cache_ttl, max_cache_ttl: bounds applied to ``max-age``.
        cooldown: floor between refetches caused by an unknown ``kid``.
        max_stale: stale keys keep serving this long after the last good fetch.
        failure_backoff, max_backoff: first and largest wait after failures.
        fetch_interval, fetch_burst: the token bucket (one fetch token per
            ``fetch_interval``, at most ``fetch_burst`` saved up).
        key_store: a shared :mod:`bbverify.stores` store, or ``None``.
        store_poll: least interval between store reads for unknown ``kid`` values.
        monotonic: clock for this process's cache ages and budget.
        clock: wall clock (seconds since the epoch) for store entries, shared
            budgets and HTTP dates.

    Raises:
        ConfigurationError: for any unusable setting.
    """

    def __init__(
        self,
        issuer: str | None = None,
        jwks_url: str | None = None,
        *,
        allowed_algorithms: frozenset[str] = frozenset({"RS256"}),
        timeout: float = DEFAULT_TIMEOUT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        min_cache_ttl: float = DEFAULT_MIN_CACHE_TTL,
        max_cache_ttl: float = DEFAULT_MAX_CACHE_TTL,
        cooldown: float = DEFAULT_COOLDOWN,
        max_stale: float = DEFAULT_MAX_STALE,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        fetch_interval: float = DEFAULT_FETCH_INTERVAL,
        fetch_burst: int = DEFAULT_FETCH_BURST,
        key_store: KeyStore | None = None,
        store_poll: float = DEFAULT_STORE_POLL,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_keys: int = DEFAULT_MAX_KEYS,
        min_rsa_bits: int = 2048,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
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
            ("min_cache_ttl", min_cache_ttl),
            ("max_cache_ttl", max_cache_ttl),
            ("cooldown", cooldown),
            ("max_stale", max_stale),
            ("failure_backoff", failure_backoff),
            ("store_poll", store_poll),
        ):
            seconds(value, name)
        seconds(timeout, "timeout", positive=True)
        if min_cache_ttl > max_cache_ttl:
            raise ConfigurationError("must not exceed max_cache_ttl", key="min_cache_ttl")
        if min_rsa_bits < 2048:
            raise ConfigurationError("RSA keys under 2048 bits are never accepted", key="min_rsa_bits")
        unknown = set(allowed_algorithms) - SUPPORTED_ALGORITHMS
        if unknown or not allowed_algorithms:
            raise ConfigurationError(
                f"unsupported algorithms {sorted(unknown)}; choose from {sorted(SUPPORTED_ALGORITHMS)}",
                key="algorithms",
            )
        if key_store is not None and not all(
            callable(getattr(key_store, m, None)) for m in ("read", "write", "lock")
        ):
            raise ConfigurationError("is not a key store (read, write, lock)", key="key_store")
        lock_ttl = getattr(key_store, "lock_ttl", None)
        if isinstance(lock_ttl, int | float) and not isinstance(lock_ttl, bool) and lock_ttl <= timeout:
            # The holder's fetch must end before its lock expires, or two
            # processes fetch at once and the fleet's budget is spent twice.
            raise ConfigurationError(
                f"the key store's lock_ttl ({lock_ttl:g}s) must exceed the fetch timeout ({timeout:g}s)",
                key="key_store.lock_ttl",
            )
        self.allowed_algorithms = frozenset(allowed_algorithms)
        self.timeout = float(timeout)
        self.cache_ttl = float(cache_ttl)
        self.min_cache_ttl = float(min_cache_ttl)
        self.max_cache_ttl = float(max_cache_ttl)
        self.cooldown = float(cooldown)
        self.max_stale = max(float(max_stale), self.cache_ttl)
        self.failure_backoff = float(failure_backoff)
        self.budget = _budget.FetchBudget(
            interval=fetch_interval,
            burst=fetch_burst,
            cooldown=cooldown,
            failure_backoff=failure_backoff,
            max_backoff=max(seconds(max_backoff, "max_backoff"), seconds(failure_backoff, "failure_backoff")),
        )
        self.key_store = key_store
        self.store_poll = float(store_poll)
        self.max_body_bytes = int(max_body_bytes)
        self.max_keys = int(max_keys)
        self.min_rsa_bits = int(min_rsa_bits)
        self._now = monotonic
        self._wall = clock
        self._store_name: str = self._jwks_url or str(issuer)

        # The single-flight load (deadline, fork safety) is the loader's;
        # when a load is due, and what it does, is this class's.
        self._loader: BackgroundLoader[_Outcome] = BackgroundLoader(
            self._load, self._install, self._failed, session=session, timeout=self.timeout, clock=monotonic,
            name="bbverify-jwks",
        )
        self._by_kid: dict[str, VerifyingKey] = {}
        self._all: tuple[VerifyingKey, ...] = ()
        self._document: object = None
        self._fetched_at: float | None = None  # last good fetch or confirmation (monotonic)
        self._fresh_until: float | None = None  # refresh after this (monotonic)
        self._fetched_wall: float | None = None  # the same moment on the wall clock
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._local_budget = self.budget.new_state()  # monotonic times
        self._reason = "required"
        self._store_checked_at: float | None = None  # monotonic
        self._store_entry: _Entry | None = None
        # The fleet's budget as this process last saw it in the store (wall
        # clock); None until then, and again while the store is unavailable.
        self._store_budget: _budget.BudgetState | None = None
        # Why the last load had to do without the store (None: it answered).
        self._store_failure: StoreUnavailable | None = None
        self._store_used = False
        #: Requests this key source sent to the issuer (discovery and key set).
        self.request_count = 0

    # -- public -------------------------------------------------------------

    fetch_count: int = from_loader("fetch_count", "How many loads were started (store or issuer).")
    failure_count: int = from_loader("failure_count", "How many loads failed (for :mod:`bbverify.metrics`).")
    last_error: str | None = from_loader("last_error", "Why the last fetch failed, if none succeeded since.")
    # The loader's lock guards this object's state too (a load installs under
    # it); it is replaced after a fork, so it is read through, never copied.
    _lock: threading.RLock = from_loader("lock", "The lock of this key set's state.")
    _inflight: Future[bool] | None = from_loader("inflight", "The load under way, if any.")
    _wait_for = staticmethod(BackgroundLoader.wait_for)

    @property
    def jwks_url(self) -> str | None:
        """The key set's URL: configured, or found by discovery (else ``None``)."""
        return self._jwks_url

    def status(self) -> dict[str, Any]:
        """A snapshot for monitoring (:mod:`bbverify.metrics`, the gateway's ``/readyz``).

        Keys: ``loaded`` (bool: keys usable now, fresh or stale-but-allowed),
        ``stale`` (bool: older than ``cache_ttl`` yet still served, the issuer
        being unreachable or a refresh under way), ``age_seconds`` (float or
        ``None`` before the first good fetch), ``keys`` (int), ``fetches`` and
        ``failures`` (ints since start), ``last_error`` (str or ``None``),
        ``budget_remaining`` (float: fetch tokens left now: the fleet's
        bucket as last read from or written to the shared store, or this
        process's own bucket when there is no store or the last load had to
        do without it), ``budget_source`` (``"store"`` or ``"process"``),
        ``key_store`` (``None`` without a store; ``"unknown"`` before its
        first use, ``"ok"`` when it last answered, ``"unavailable"`` when the
        last load fell back to this process's own budget because of an
        outage, ``"misconfigured"`` when it fell back because the store
        refused this process: credentials, ACL permissions, file ownership)
        and ``key_store_error`` (str or ``None``: why).
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
            "last_error": self._loader.last_error,
            **self._budget_status(),
            **self._store_status(),
        }

    def _store_status(self) -> dict[str, Any]:
        if self.key_store is None:
            return {"key_store": None, "key_store_error": None}
        failure = self._store_failure
        if failure is not None:
            return {
                "key_store": "misconfigured" if failure.permanent else "unavailable",
                "key_store_error": str(failure),
            }
        return {"key_store": "ok" if self._store_used else "unknown", "key_store_error": None}

    def _budget_status(self) -> dict[str, Any]:
        shared = self._store_budget
        if shared is not None:
            return {"budget_remaining": self.budget.remaining(shared, self._wall()), "budget_source": "store"}
        return {
            "budget_remaining": self.budget.remaining(self._local_budget, self._now()),
            "budget_source": "process",
        }

    @property
    def source_name(self) -> str:
        """The name of this key source in a shared store: its configured key-set URL, else its issuer."""
        return self._store_name

    def warm_up(self) -> None:
        """Load keys now (from the store or the issuer); raise ``KeysUnavailable`` on failure."""
        with self._lock:
            future = self._launch_if_due(self._now(), "warm_up", gate=False)
        self._wait(future)
        self._check_warm()

    def _check_warm(self) -> None:
        """The verdict of a warm-up: raise ``KeysUnavailable`` unless keys are usable now."""
        with self._lock:
            if self._fetched_at is None or self._now() - self._fetched_at >= self.max_stale:
                raise self._unavailable()

    def refresh_if_due(self) -> None:
        """Start a fetch in the background if a check would start one now; never waits.

        Unlike :meth:`warm_up` it respects the failure backoff and the fetch
        budget, so callers that poll (a readiness probe) cannot drive fetches.
        """
        with self._lock:
            self._launch_if_due(self._now(), "required")

    async def awarm_up(self) -> None:
        """As :meth:`warm_up`, awaiting the fetch (at most ``timeout`` seconds) without blocking the loop."""
        # The same load and the same verdict as warm_up; only the wait differs.
        with self._lock:
            future = self._launch_if_due(self._now(), "warm_up", gate=False)
        await self._await(future)
        self._check_warm()

    def cached_key(self, kid: str | None, alg: str) -> VerifyingKey | None:
        """The key if usable without any fetch now (stale-but-allowed counts); never starts a fetch."""
        fetched = self._fetched_at
        if fetched is None or self._now() - fetched >= self.max_stale:
            return None
        return _select(self._by_kid, self._all, kid, alg)

    def current_keys(self) -> tuple[VerifyingKey, ...] | None:
        """The key set now in use (its identity changes when another is installed), or ``None``.

        ``None`` when no key set is usable without a fetch (none yet, or past
        ``max_stale``). For callers that remember what a key vouched for (the
        verifier's token cache): a cached answer holds only while this is the
        very key set it came from. Never waits; when the key set is due for
        its ``cache_ttl`` refresh, that refresh starts in the background, so
        a service whose traffic is all cache hits still drops removed keys.
        """
        fetched = self._fetched_at
        if fetched is None:
            return None
        now = self._now()
        if now - fetched >= self.max_stale:
            return None
        if self._fresh_until is not None and now >= self._fresh_until and self._inflight is None:
            with self._lock:
                self._launch_if_due(now, "refresh")
        return self._all

    def _ready_key(self, kid: str | None, alg: str) -> VerifyingKey | None:
        """The key when it is usable and no refresh is due (the usual case), read without the lock."""
        fetched, fresh_until = self._fetched_at, self._fresh_until
        if fetched is None or fresh_until is None:
            return None
        now = self._now()
        if now >= fresh_until or now - fetched >= self.max_stale:
            return None
        return _select(self._by_kid, self._all, kid, alg)

    def get_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """Return the key, waiting (at most ``timeout``) for a fetch if one is needed."""
        steps = self._look_up(kid, alg)
        step = next(steps)
        while isinstance(step, Future):
            self._wait(step)
            step = next(steps)
        return step

    async def aget_key(self, kid: str | None, alg: str) -> VerifyingKey:
        """As :meth:`get_key`, but awaits the shared fetch without blocking the loop."""
        steps = self._look_up(kid, alg)
        step = next(steps)
        while isinstance(step, Future):
            await self._await(step)
            step = next(steps)
        return step

    def _look_up(self, kid: str | None, alg: str) -> Iterator[Future[bool] | VerifyingKey]:
        """The key look-up, written once for :meth:`get_key` and :meth:`aget_key`.

        Yields each shared fetch the caller must wait for (blocking or
        awaited; at most two), then the key; raises ``InvalidToken`` or
        ``KeysUnavailable`` on a final answer.
        """
        key = self._ready_key(kid, alg)
        if key is None:
            for _ in range(2):
                key, future = self._resolve(kid, alg)
                if key is not None:
                    break
                assert future is not None
                yield future
            else:
                key = self._after_fetch(kid, alg)
        yield key

    # -- deciding -----------------------------------------------------------

    def _usable(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.max_stale

    def _after_fetch(self, kid: str | None, alg: str) -> VerifyingKey:
        with self._lock:
            if not self._usable(self._now()):
                raise self._unavailable()
            key = _select(self._by_kid, self._all, kid, alg)
        if key is None:
            raise _unknown_key(kid)
        return key

    def _unavailable(self) -> KeysUnavailable:
        now = self._now()
        wait = max(1.0, self.budget.wait(self._local_budget, now))
        if self.key_store is not None:
            wait = max(1.0, min(wait, self.store_poll))
        reason = self._loader.last_error or "no key set has been fetched yet"
        return KeysUnavailable(
            f"the issuer's signing keys are unavailable ({reason})", retry_after=math.ceil(wait)
        )

    def _resolve(self, kid: str | None, alg: str) -> tuple[VerifyingKey | None, Future[bool] | None]:
        """Decide, under the lock, between a cached key, a fetch to wait on, or an error.

        Returns ``(key, None)`` or ``(None, future)``; raises on a final answer.
        """
        with self._lock:
            now = self._now()
            if self._usable(now):
                key = _select(self._by_kid, self._all, kid, alg)
                if key is not None:
                    if self._fresh_until is not None and now >= self._fresh_until:
                        self._launch_if_due(now, "refresh")  # refresh in the background
                    return key, None
                if self._inflight is not None:
                    return None, self._inflight
                if kid is None or not self._due(now, "unknown_kid"):
                    raise _unknown_key(kid)
                return None, self._launch_if_due(now, "unknown_kid")
            if self._inflight is not None:
                return None, self._inflight
            if not self._due(now, "required"):
                raise self._unavailable()
            return None, self._launch_if_due(now, "required")

    def _due(self, now: float, reason: str) -> bool:
        """Whether a load for ``reason`` may start now (called under the lock).

        With a store, the load itself consults the fleet's budget; here only
        the store reads are paced. Without one, this process's budget decides.
        """
        if self.key_store is not None:
            checked = self._store_checked_at
            return checked is None or now - checked >= min(self.store_poll, self.cooldown) or now < checked
        return self.budget.allows(self._local_budget, now, unknown_kid=reason == "unknown_kid")

    def _launch_if_due(self, now: float, reason: str, *, gate: bool = True) -> Future[bool]:
        if self._inflight is not None:
            return self._inflight
        if gate and not self._due(now, reason):
            return settled(False)
        self._reason = reason
        if self.key_store is not None:
            self._store_checked_at = now
        return self._loader.launch_locked(now)

    def _wait(self, future: Future[bool]) -> None:
        if self._loader.wait_for(future, self.timeout) is None:
            raise self._too_slow()

    async def _await(self, future: Future[bool]) -> None:
        """As :meth:`_wait`, awaiting the shared fetch without blocking the event loop."""
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except TimeoutError:
            raise self._too_slow() from None

    def _too_slow(self) -> KeysUnavailable:
        return KeysUnavailable(
            f"key set fetch did not finish within {self.timeout:g}s",
            retry_after=math.ceil(self.failure_backoff or 1),
        )

    # -- loading (on the loader thread) ---------------------------------------

    def _load(self) -> _Outcome:
        # Network deadlines use the real clock: ``monotonic`` is injectable for
        # cache ages, and a frozen test clock must not let a fetch run forever.
        deadline = time.monotonic() + self.timeout
        with self._lock:
            reason = self._reason
        if self.key_store is not None:
            try:
                return self._load_shared(self.key_store, reason, deadline)
            except StoreUnavailable as exc:
                # Never fail a request because the store is down: this
                # process fetches on its own, within its own budget.
                if exc.permanent:
                    _log.error("key store refused this process (fix its settings), fetching alone: %s", exc)
                else:
                    _log.warning("key store unavailable, fetching without it: %s", exc)
                self._store_budget = None
                self._store_failure = exc
        return self._load_local(reason, deadline)

    def _load_local(self, reason: str, deadline: float) -> _Outcome:
        unknown_kid = reason == "unknown_kid"
        with self._lock:
            now = self._now()
            if not self.budget.allows(
                self._local_budget, now, unknown_kid=unknown_kid, forced=reason == "warm_up"
            ):
                return _Outcome()  # the budget is spent; the current keys stay
            # One token per attempt: a failed discovery never pays for the key
            # set it did not ask for (see bbverify.budget on the first discovery).
            self.budget.spend(self._local_budget, now)
            conditional = self._conditional(self._etag, self._last_modified, self._document)
            previous = self._document
        try:
            outcome = self._outcome(self._fetch(deadline, conditional), previous)
        except BaseException as exc:
            with self._lock:
                self.budget.failed(self._local_budget, self._now(), self._retry_after(exc))
            raise
        with self._lock:
            self.budget.succeeded(self._local_budget)
        return outcome

    def _load_shared(self, store: KeyStore, reason: str, deadline: float) -> _Outcome:
        name = self.source_name
        entry = self._read_entry(store, name)
        self._store_failure = None  # the store answered
        self._store_used = True
        if entry is not None and self._serves(entry, reason):
            return self._from_entry(entry)
        # Without usable keys, wait for another process's fetch (or for the
        # lock); with keys, do not queue behind it: its result is read on the
        # next poll, and the keys we have keep answering meanwhile.
        # The wait is at most half the fetch deadline, so that a process left
        # without keys by a lock held too long still has time to fetch alone.
        needed = reason in ("required", "warm_up")
        wait = max(0.0, (deadline - time.monotonic()) / 2) if needed else 0.0
        with store.lock(name, wait) as held:
            entry = self._read_entry(store, name)
            if entry is not None and self._serves(entry, reason):
                return self._from_entry(entry)
            if not held:
                with self._lock:
                    usable = self._usable(self._now())
                if needed and not usable:
                    # A wedged or foreign lock holder must not fail every
                    # request: fetch on our own, within our own budget.
                    raise StoreUnavailable("the store's fetch lock stayed held")
                return _Outcome()
            wall = self._wall()
            state = (
                self.budget.clamp(entry.budget, wall) if entry is not None else self.budget.new_state()
            )
            unknown_kid = reason == "unknown_kid"
            if not self.budget.allows(state, wall, unknown_kid=unknown_kid, forced=reason == "warm_up"):
                return self._from_entry(entry) if entry is not None and entry.index else _Outcome()
            if entry is not None and entry.jwks_url and self._jwks_url is None:
                self._adopt_jwks_url(entry.jwks_url)
            self.budget.spend(state, wall)
            # Record the spending before the request, so a crash mid-fetch still counts.
            self._write_entry(store, name, entry, state)
            previous = entry.document if entry is not None and entry.index else None
            etag = entry.etag if entry is not None else None
            modified = entry.last_modified if entry is not None else None
            try:
                outcome = self._outcome(
                    self._fetch(deadline, self._conditional(etag, modified, previous)), previous
                )
            except BaseException as exc:
                self.budget.failed(state, self._wall(), self._retry_after(exc))
                self._write_entry(store, name, entry, state)
                raise
            self.budget.succeeded(state)
            self._write_entry(store, name, None, state, outcome)
            return outcome

    def _serves(self, entry: _Entry, reason: str) -> bool:
        """Whether a store entry answers this load without a fetch."""
        if entry.index is None or entry.fetched_wall is None:
            return False
        age = self._wall() - entry.fetched_wall
        if age >= self.max_stale:
            return False
        ours = self._fetched_wall
        if reason == "unknown_kid":
            # Newer than ours: another process refetched; use its result.
            return ours is None or entry.fetched_wall > ours
        if reason == "refresh":
            return age < entry.ttl
        if reason == "warm_up":
            return self._fetched_wall is None or entry.fetched_wall > self._fetched_wall
        return True  # required: anything usable beats nothing; a refresh follows

    @staticmethod
    def _conditional(etag: str | None, modified: str | None, document: object) -> dict[str, str]:
        if document is None:
            return {}  # nothing to fall back on if the server said 304
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if modified:
            headers["If-Modified-Since"] = modified
        return headers

    def _retry_after(self, exc: BaseException) -> float | None:
        if isinstance(exc, FetchError) and exc.status in (429, 503):
            return _budget.parse_retry_after(exc.headers.get("Retry-After"), self._wall())
        return None

    def _ttl(self, headers: Mapping[str, str]) -> float:
        max_age = _budget.parse_max_age(headers.get("Cache-Control"))
        if max_age is None:
            return self.cache_ttl
        return min(self.max_cache_ttl, max(self.min_cache_ttl, max_age))

    def _outcome(self, response: JsonResponse, previous: object) -> _Outcome:
        document = previous if response.status == 304 else response.document
        index = self._index(document)
        etag = response.headers.get("ETag")
        modified = response.headers.get("Last-Modified")
        return _Outcome(
            index=index,
            fetched_wall=self._wall(),
            ttl=self._ttl(response.headers),
            etag=etag[:200] if etag else None,
            last_modified=modified[:100] if modified else None,
            document=document,
        )

    def _index(self, document: object) -> KeyIndex:
        try:
            return build_key_index(
                document,
                self.allowed_algorithms,
                min_rsa_bits=self.min_rsa_bits,
                max_keys=self.max_keys,
                source=str(self._jwks_url),
            )
        except ValueError as exc:
            raise FetchError(str(exc)) from None

    def _from_entry(self, entry: _Entry | None) -> _Outcome:
        if entry is None or entry.index is None:
            return _Outcome()
        if entry.jwks_url and self._jwks_url is None:
            self._adopt_jwks_url(entry.jwks_url)
        return _Outcome(
            index=entry.index,
            fetched_wall=entry.fetched_wall,
            ttl=entry.ttl,
            etag=entry.etag,
            last_modified=entry.last_modified,
            document=entry.document,
            from_store=True,
        )

    def _adopt_jwks_url(self, url: str) -> None:
        self._jwks_url = url

    # -- the store entry -------------------------------------------------------

    def _read_entry(self, store: KeyStore, name: str) -> _Entry | None:
        raw = store.read(name)
        if raw is None:
            return None
        cached = self._store_entry
        if cached is not None and cached.raw == raw:
            self._store_budget = cached.budget
            return cached
        try:
            entry = self._parse_entry(raw, name)
        except (ValueError, FetchError, ConfigurationError, RecursionError) as exc:
            # The store is trusted no more than the network: a bad entry is
            # ignored (and overwritten by the next fetch), but its budget
            # counts as spent, so garbage never refills the fleet's bucket.
            _log.warning("ignoring the key store's entry for %s: %s", name, exc)
            entry = self._keyless_entry(raw, self.budget.spent_state(self._wall()))
            self._store_budget = entry.budget
            return entry
        self._store_entry = entry
        self._store_budget = entry.budget
        return entry

    def _parse_entry(self, raw: bytes, name: str) -> _Entry:
        """Parse an entry; raise ``ValueError`` only when it is not ours at all.

        The fleet's budget is kept even when the keys are unusable here (other
        ``allowed_algorithms``/``min_rsa_bits``/``max_keys``, a ``fetched_at``
        from a clock too far ahead): losing it would hand this process a full
        bucket, and writing without the keys would drop them for the others.
        """
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != ENTRY_FORMAT:
            raise ValueError("not a bbverify key store entry")
        if data.get("source") != name:
            raise ValueError(f"entry of another key source ({str(data.get('source'))[:200]!r})")
        wall = self._wall()
        # A malformed budget makes the whole entry ignored; _read_entry then
        # counts the fleet's budget as spent (never a full bucket).
        budget = self.budget.clamp(_budget.BudgetState.from_dict(data.get("budget")), wall)
        kept_fields = ("jwks", "jwks_url", "fetched_at", "ttl", "etag", "last_modified")
        kept = {k: data[k] for k in kept_fields if k in data}
        jwks_url = data.get("jwks_url")
        try:
            if jwks_url is not None:
                # Checked like discovery's answer.
                jwks_url = check_fetch_url(jwks_url, "jwks_url")
                if self._jwks_url is not None and jwks_url != self._jwks_url:
                    raise ValueError("entry names another key-set URL")
                if self.issuer and self.issuer.startswith("https://") and not jwks_url.startswith("https://"):
                    raise ValueError("entry names a plain-http key-set URL for an https issuer")
            return self._parse_keys(raw, data, name, jwks_url, budget, wall)
        except (ValueError, FetchError, ConfigurationError, RecursionError, TypeError) as exc:
            _log.warning("ignoring the key store's entry for %s (its budget still counts): %s", name, exc)
            return self._keyless_entry(
                raw, budget, kept=kept if "jwks" in kept and data.get("jwks_url") is not None else None
            )

    def _keyless_entry(
        self, raw: bytes, budget: _budget.BudgetState, *, kept: dict[str, Any] | None = None
    ) -> _Entry:
        """An entry this process cannot take keys from: only its budget (and what to keep) counts."""
        return _Entry(
            raw=raw,
            index=None,
            document=None,
            jwks_url=None,
            fetched_wall=None,
            ttl=self.cache_ttl,
            etag=None,
            last_modified=None,
            budget=budget,
            kept=kept,
        )

    def _parse_keys(
        self,
        raw: bytes,
        data: Mapping[str, Any],
        name: str,
        jwks_url: str | None,
        budget: _budget.BudgetState,
        wall: float,
    ) -> _Entry:
        document = data.get("jwks")
        fetched = data.get("fetched_at")
        index: KeyIndex | None = None
        if document is not None:
            if len(json.dumps(document)) > self.max_body_bytes:
                raise ValueError("key set is larger than max_body_bytes")
            if (
                isinstance(fetched, bool)
                or not isinstance(fetched, int | float)
                or not math.isfinite(fetched)
            ):
                raise ValueError("fetched_at is not a number")
            if fetched > wall + _budget.MAX_CLOCK_SKEW:
                # Written by a clock far ahead: how old the keys are is unknown.
                raise ValueError("fetched_at is in the future")
            # A clock a little ahead: the keys count as fetched now, not later.
            fetched = min(float(fetched), wall)
            index = build_key_index(
                document,
                self.allowed_algorithms,
                min_rsa_bits=self.min_rsa_bits,
                max_keys=self.max_keys,
                source=f"the key store's entry for {name}",
            )
        ttl = data.get("ttl", self.cache_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl < 0:
            raise ValueError("ttl is not a number of seconds")
        etag, modified = data.get("etag"), data.get("last_modified")
        if not isinstance(etag, str | None) or not isinstance(modified, str | None):
            raise ValueError("validators are not strings")
        return _Entry(
            raw=raw,
            index=index,
            document=document if index is not None else None,
            jwks_url=jwks_url,
            fetched_wall=float(fetched) if index is not None and fetched is not None else None,
            ttl=min(self.max_cache_ttl, max(self.min_cache_ttl, float(ttl))),
            etag=etag[:200] if etag else None,
            last_modified=modified[:100] if modified else None,
            budget=budget,
        )

    def _write_entry(
        self,
        store: KeyStore,
        name: str,
        entry: _Entry | None,
        state: _budget.BudgetState,
        outcome: _Outcome | None = None,
    ) -> None:
        data: dict[str, Any] = {"format": ENTRY_FORMAT, "source": name, "jwks_url": self._jwks_url}
        # The keys to write: this load's, else the entry's (both carry the same fields).
        keys: _Outcome | _Entry | None = None
        if outcome is not None and outcome.index is not None:
            keys = outcome
        elif entry is not None and entry.index is not None:
            keys = entry
        if keys is not None:
            data.update(
                jwks=keys.document,
                fetched_at=keys.fetched_wall,
                ttl=keys.ttl,
                etag=keys.etag,
                last_modified=keys.last_modified,
            )
        elif entry is not None and entry.kept is not None:
            # Keys this process cannot use may serve the others: keep them as
            # they were (with their key-set URL, kept too), only the budget changes.
            data.update(entry.kept)
        data["budget"] = state.to_dict()
        store.write(name, json.dumps(data, separators=(",", ":")).encode("utf-8"))
        self._store_budget = _budget.BudgetState(**state.to_dict())

    # -- installing ---------------------------------------------------------

    def _install(self, value: _Outcome, now: float) -> None:
        if value.index is None or value.fetched_wall is None:
            return  # nothing new (budget spent, or another process is fetching)
        # The entry's age on the wall clock, carried over to our clock.
        age = max(0.0, self._wall() - value.fetched_wall)
        if self._fetched_wall is not None and value.fetched_wall < self._fetched_wall and self._fetched_at:
            return  # older than what we have
        changed = value.document != self._document
        self._by_kid, self._all = value.index
        self._document = value.document
        self._fetched_at = now - age
        self._fetched_wall = value.fetched_wall
        self._fresh_until = self._fetched_at + value.ttl
        self._etag, self._last_modified = value.etag, value.last_modified
        if changed and value.from_store:
            count, url = len(self._all), self._jwks_url
            _log.info("installed %d usable key(s) from the key store (fetched from %s)", count, url)
        elif changed:
            _log.info("installed %d usable key(s) from %s", len(self._all), self._jwks_url)

    def _failed(self, exc: BaseException) -> str:
        # Anything at all (network, JSON, a bug in a custom session) is a
        # failed fetch: the previous keys stay and the failure is logged.
        if isinstance(exc, requests.RequestException):
            # The full transport error is for the log; the short form may
            # reach clients in a 503 description.
            message = f"{type(exc).__name__} while fetching {exc.request.url if exc.request else 'keys'}"
            _log.warning("fetching the issuer's key set failed: %s (%s)", message, exc)
        elif isinstance(exc, FetchError | KeysUnavailable | OSError):
            message = str(exc) or type(exc).__name__
            _log.warning("fetching the issuer's key set failed: %s", message)
        else:
            # Anything else (a store client's surprise, a bug) is for the log
            # only: a 503 description never carries Python internals.
            message = "an internal error while loading the key set"
            _log.warning("fetching the issuer's key set failed: %s", message, exc_info=exc)
        return message

    # -- fetching -------------------------------------------------------------

    def _get(self, url: str, deadline: float, conditional: Mapping[str, str] | None = None) -> JsonResponse:
        with self._lock:
            self.request_count += 1
        session = self._loader.session()
        return fetch_json_response(
            session, url, deadline=deadline, max_bytes=self.max_body_bytes, conditional=conditional
        )

    def _fetch(self, deadline: float, conditional: Mapping[str, str]) -> JsonResponse:
        if self._jwks_url is None:
            assert self.issuer is not None
            discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            config = self._get(discovery_url, deadline).document
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
            conditional = {}  # validators belong to the old URL's answer, if any
        return self._get(self._jwks_url, deadline, conditional)
