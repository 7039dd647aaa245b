"""The Verifier: every check in order, and the verified-token cache.

A token travels: size cap and split (:mod:`bbverify.token`), header and
algorithm allowlist, key lookup (:mod:`bbverify.keys`), signature
(:mod:`bbverify.jwk`), payload parse, standard claims (``iss``, ``aud``,
``exp``, ``iat``, ``nbf``), Bitbucket claims and ``sub`` agreement, then the
rules (:mod:`bbverify.policies`) on every call, cached or not.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import requests

from . import keys as _keys
from .audit import Decision, DecisionHook, emit, wanted
from .claims import PipelineClaims, normalize_uuid
from .errors import ConfigurationError, InvalidToken, VerificationError
from .jwk import SUPPORTED_ALGORITHMS, VerifyingKey
from .policies import RequestContext, Rule, apply_rules, as_rules
from .stores import KeyStore
from .token import (
    DEFAULT_MAX_TOKEN_BYTES,
    Header,
    ParsedToken,
    decode_payload,
    parse_header,
    parse_json_object,
    split,
)

__all__ = ["BITBUCKET_ISSUER_TEMPLATE", "Verifier", "bitbucket_audience", "bitbucket_issuer", "verify"]

_log = logging.getLogger("bbverify")

BITBUCKET_ISSUER_TEMPLATE = (
    "https://api.bitbucket.org/2.0/workspaces/{workspace}/pipelines-config/identity/oidc"
)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
DEFAULT_LEEWAY = 10.0
MAX_LEEWAY = 300.0
DEFAULT_CACHE_SIZE = 4096
# JSON numbers beyond this are not dates (datetime stops at year 9999).
_MAX_TIMESTAMP = 253402300799


def bitbucket_issuer(workspace: str) -> str:
    """The issuer URL of a Bitbucket workspace, from its slug."""
    slug = workspace.strip().lower() if isinstance(workspace, str) else ""
    if not _SLUG_RE.fullmatch(slug):
        raise ConfigurationError(f"{workspace!r} is not a Bitbucket workspace slug", key="workspace")
    return BITBUCKET_ISSUER_TEMPLATE.format(workspace=slug)


def bitbucket_audience(workspace_uuid: str) -> str:
    """The default audience Bitbucket puts in a workspace's tokens (no braces)."""
    return "ari:cloud:bitbucket::workspace/" + normalize_uuid(workspace_uuid, key="workspace_uuid")[1:-1]


def _timestamp(payload: Mapping[str, Any], name: str, required: bool) -> float | None:
    if name not in payload:
        if required:
            raise InvalidToken(f"claim {name!r} is required", code="missing_claim")
        return None
    value = payload[name]
    # bool is an int subclass; 'true' is not a time.
    if type(value) not in (int, float) or not (0 <= value <= _MAX_TIMESTAMP):
        raise InvalidToken(f"claim {name!r} must be a NumericDate", code="malformed")
    return float(value)


_BITBUCKET_REQUIRED = ("workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid")
_REQUIRED_STRINGS = (*_BITBUCKET_REQUIRED, "sub")


def _check_bitbucket_claims(payload: Mapping[str, Any]) -> None:
    get = payload.get
    for name in _REQUIRED_STRINGS:
        value = get(name)
        # One test for the usual case (the JSON parser makes exact str); the
        # checks below decide, and word the error, for anything else.
        if type(value) is str and value:
            continue
        if value is None:
            raise InvalidToken(f"claim {name!r} is required", code="missing_claim")
        if not isinstance(value, str) or not value:
            raise InvalidToken(f"claim {name!r} must be a non-empty string", code="malformed")
    for name in ("deploymentEnvironmentUuid", "branchName"):
        if name in payload and not isinstance(payload[name], str):
            raise InvalidToken(f"claim {name!r} must be a string", code="malformed")
    env = payload.get("deploymentEnvironmentUuid")
    repo, step = payload["repositoryUuid"], payload["stepUuid"]
    expected = f"{repo}:{env}:{step}" if env is not None else f"{repo}:{step}"
    if payload["sub"] != expected:
        # Bitbucket builds sub from these claims; disagreement means the token
        # was not made by Bitbucket the way rules expect.
        raise InvalidToken(
            "claim 'sub' does not agree with repositoryUuid, deploymentEnvironmentUuid and stepUuid",
            code="subject_mismatch",
        )


class _TokenCache:
    """Bounded map of verified tokens, each kept no longer than its ``exp``.

    Reads take no lock (a dict lookup is atomic); writes evict the oldest
    entry when full, so memory stays bounded whatever the traffic.
    """

    __slots__ = ("_data", "_lock", "get", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: dict[str, tuple[PipelineClaims, float, Header, VerifyingKey]] = {}
        self._lock = threading.Lock()
        # The bound dict method itself: a cache hit is then one C call. The
        # dict is never replaced (clear() empties it), so the binding stays valid.
        self.get: Callable[[str], tuple[PipelineClaims, float, Header, VerifyingKey] | None]
        self.get = self._data.get

    def put(self, token: str, entry: tuple[PipelineClaims, float, Header, VerifyingKey]) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            data = self._data
            while len(data) >= self.maxsize:
                data.pop(next(iter(data)))
            data[token] = entry

    def discard(self, token: str) -> None:
        with self._lock:
            self._data.pop(token, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Verifier:
    """Verifies Bitbucket Pipelines OIDC tokens for one issuer and audience.

    Build one per service and share it (it is thread-safe). Building makes no
    network call; keys are fetched on first use or by :meth:`warm_up`.

    Args:
        workspace: the workspace slug; the issuer is derived from it.
        issuer: the exact issuer instead (a fake issuer in tests, say).
        audience: one audience or several; the token must carry one of them.
            Defaults to Bitbucket's own when ``workspace_uuid`` is given.
        workspace_uuid: the workspace UUID; when given, ``workspaceUuid`` in
            the token must match it.
        jwks_url: skip discovery and fetch keys here.
        keys: a ready key source (for example :class:`~bbverify.keys.StaticKeySet`).
        policies: rules applied on every call, after the token checks.
        algorithms: the signature algorithms accepted; ``RS256`` only by default.
        leeway: clock-skew allowance in seconds for ``exp``/``iat``/``nbf``
            (default 10, at most 300).
        clock: seconds since the epoch; injectable for tests.
        cache_size: how many verified tokens to remember (0 disables).
        on_decision: called with a :class:`~bbverify.audit.Decision` per call.
        timeout, cache_ttl, min_cache_ttl, max_cache_ttl, cooldown, max_stale,
        failure_backoff, max_backoff, fetch_interval, fetch_burst, key_store,
        store_poll, session: passed to :class:`~bbverify.keys.RemoteKeySet`
            (the fetch budget and shared stores are described in
            ``docs/configuration.md``).
    """

    def __init__(
        self,
        *,
        workspace: str | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        workspace_uuid: str | None = None,
        jwks_url: str | None = None,
        keys: _keys.KeySource | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache_size: int = DEFAULT_CACHE_SIZE,
        on_decision: DecisionHook | None = None,
        timeout: float = _keys.DEFAULT_TIMEOUT,
        cache_ttl: float = _keys.DEFAULT_CACHE_TTL,
        cooldown: float = _keys.DEFAULT_COOLDOWN,
        max_stale: float = _keys.DEFAULT_MAX_STALE,
        failure_backoff: float = _keys.DEFAULT_FAILURE_BACKOFF,
        session: requests.Session | None = None,
        min_cache_ttl: float = _keys.DEFAULT_MIN_CACHE_TTL,
        max_cache_ttl: float = _keys.DEFAULT_MAX_CACHE_TTL,
        max_backoff: float = _keys.DEFAULT_MAX_BACKOFF,
        fetch_interval: float = _keys.DEFAULT_FETCH_INTERVAL,
        fetch_burst: int = _keys.DEFAULT_FETCH_BURST,
        key_store: KeyStore | None = None,
        store_poll: float = _keys.DEFAULT_STORE_POLL,
    ) -> None:
        if issuer is None and workspace is None:
            raise ConfigurationError("give a workspace slug or an issuer", key="workspace")
        if workspace is not None:
            derived = bitbucket_issuer(workspace)
            if issuer is not None and issuer != derived:
                raise ConfigurationError(
                    f"issuer {issuer!r} disagrees with workspace {workspace!r} ({derived})", key="issuer"
                )
            issuer = derived
        assert issuer is not None
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("must be a non-empty string", key="issuer")
        self.issuer: str = issuer
        # "" is refused, not read as "unset": it would drop the workspace pin silently.
        self.workspace_uuid = (
            normalize_uuid(workspace_uuid, key="workspace_uuid") if workspace_uuid is not None else None
        )
        if audience is None and self.workspace_uuid is not None:
            audience = bitbucket_audience(self.workspace_uuid)
        self.audiences: frozenset[str] = self._check_audience(audience)

        algs = frozenset(algorithms) if not isinstance(algorithms, str) else frozenset({algorithms})
        bad = algs - SUPPORTED_ALGORITHMS
        if bad or not algs:
            raise ConfigurationError(
                f"{sorted(bad) or 'nothing'} not allowed; choose asymmetric algorithms from "
                f"{sorted(SUPPORTED_ALGORITHMS)} (HS* and none are never accepted)",
                key="algorithms",
            )
        self.algorithms = algs
        if not isinstance(leeway, int | float) or not 0 <= leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"must be between 0 and {MAX_LEEWAY:g} seconds", key="leeway")
        self.leeway = float(leeway)
        if not isinstance(max_token_bytes, int) or not 512 <= max_token_bytes <= 65536:
            raise ConfigurationError("must be between 512 and 65536", key="max_token_bytes")
        self.max_token_bytes = max_token_bytes
        self._clock = clock
        self.policies: tuple[Rule, ...] = as_rules(policies)
        for i, rule in enumerate(self.policies):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"policies[{i}]")
        self.on_decision = on_decision
        self._cache = _TokenCache(int(cache_size))
        self._headers: dict[str, Header] = {}
        if keys is None:
            keys = _keys.RemoteKeySet(
                issuer=self.issuer if jwks_url is None else None,
                jwks_url=jwks_url,
                allowed_algorithms=self.algorithms,
                timeout=timeout,
                cache_ttl=cache_ttl,
                cooldown=cooldown,
                max_stale=max_stale,
                failure_backoff=failure_backoff,
                session=session,
                min_cache_ttl=min_cache_ttl,
                max_cache_ttl=max_cache_ttl,
                max_backoff=max_backoff,
                fetch_interval=fetch_interval,
                fetch_burst=fetch_burst,
                key_store=key_store,
                store_poll=store_poll,
            )
            if jwks_url is not None:
                keys.issuer = self.issuer
        self.keys: _keys.KeySource = keys

    @staticmethod
    def _check_audience(audience: str | Sequence[str] | None) -> frozenset[str]:
        if audience is None:
            raise ConfigurationError(
                "an audience is required (Bitbucket's default is "
                "'ari:cloud:bitbucket::workspace/<workspace-uuid>'); or give workspace_uuid",
                key="audience",
            )
        values = [audience] if isinstance(audience, str) else list(audience)
        if not values or not all(isinstance(a, str) and a for a in values):
            raise ConfigurationError("must be a non-empty string or list of strings", key="audience")
        return frozenset(values)

    # -- public API -----------------------------------------------------------

    def warm_up(self) -> None:
        """Fetch the issuer's keys now; raise ``KeysUnavailable`` if that fails.

        Optional: call it at start-up to surface a misconfiguration early.
        """
        warm = getattr(self.keys, "warm_up", None)
        if warm is not None:
            warm()

    def verify(
        self,
        token: str | bytes,
        *,
        client_ip: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> PipelineClaims:
        """Verify ``token`` and apply the rules; return its claims.

        ``policies`` are extra (per-route) rules applied after the verifier's
        own. Raises only :class:`~bbverify.errors.VerificationError`
        subclasses.
        """
        claims: PipelineClaims | None = None
        try:
            claims = self._cached(token)
            if claims is None:
                parsed, header = self._prepare(token)
                keys = self.keys
                # The lock-free look-up first; get_key (which may fetch) only on a miss.
                key = keys.cached_key(header.kid, header.alg) or keys.get_key(header.kid, header.alg)
                claims = self._finish(token, parsed, header, key)
            self._authorize(claims, client_ip, policies, method, path)
        except VerificationError as exc:
            self._denied(exc, claims, client_ip)
            raise
        except Exception as exc:
            raise self._internal(exc, claims, client_ip) from None
        return claims

    async def averify(
        self,
        token: str | bytes,
        *,
        client_ip: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> PipelineClaims:
        """As :meth:`verify`, for event loops: a key fetch is awaited, never blocking."""
        claims: PipelineClaims | None = None
        try:
            claims = self._cached(token)
            if claims is None:
                parsed, header = self._prepare(token)
                keys = self.keys
                key = keys.cached_key(header.kid, header.alg) or await keys.aget_key(header.kid, header.alg)
                claims = self._finish(token, parsed, header, key)
            self._authorize(claims, client_ip, policies, method, path)
        except VerificationError as exc:
            self._denied(exc, claims, client_ip)
            raise
        except Exception as exc:
            raise self._internal(exc, claims, client_ip) from None
        return claims

    def cache_info(self) -> dict[str, int]:
        """Sizes of the internal caches (for tests and monitoring)."""
        return {"tokens": len(self._cache), "token_limit": self._cache.maxsize, "headers": len(self._headers)}

    def clear_cache(self) -> None:
        """Forget every verified token (keys are kept)."""
        self._cache.clear()

    # -- the steps --------------------------------------------------------------

    def _cached(self, token: object) -> PipelineClaims | None:
        if type(token) is not str:
            return None
        entry = self._cache.get(token)
        if entry is None:
            return None
        claims, not_after, header, key = entry
        # The key must still be the issuer's current key for this kid, so a
        # rotated-out key stops vouching for cached tokens too.
        if self._clock() >= not_after or self.keys.cached_key(header.kid, header.alg) is not key:
            self._cache.discard(token)
            return None
        return claims

    def _prepare(self, token: str | bytes) -> tuple[ParsedToken, Header]:
        parsed = split(token, self.max_token_bytes)
        header = self._headers.get(parsed.header_segment)
        if header is None:
            header = parse_header(parsed.header_segment, self.algorithms)
            # Bitbucket reuses one header per key, so this stays tiny; the cap
            # keeps hostile traffic from growing it.
            if len(self._headers) < 64:
                self._headers[parsed.header_segment] = header
        return parsed, header

    def _finish(
        self, token: str | bytes, parsed: ParsedToken, header: Header, key: VerifyingKey
    ) -> PipelineClaims:
        key.verify(header.alg, parsed.signature, parsed.signing_input)
        payload = parse_json_object(decode_payload(parsed), "payload")
        now = self._clock()
        leeway = self.leeway

        iss = payload.get("iss")
        if iss is None:
            raise InvalidToken("claim 'iss' is required", code="missing_claim")
        if iss != self.issuer:
            raise InvalidToken("token was issued by another issuer", code="issuer_mismatch")

        aud = payload.get("aud")
        if aud is None:
            raise InvalidToken("claim 'aud' is required", code="missing_claim")
        if isinstance(aud, str):
            ok = aud in self.audiences
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            ok = not self.audiences.isdisjoint(aud)
        else:
            raise InvalidToken("claim 'aud' must be a string or a list of strings", code="malformed")
        if not ok:
            raise InvalidToken("token is not meant for this audience", code="audience_mismatch")

        exp = _timestamp(payload, "exp", required=True)
        iat = _timestamp(payload, "iat", required=True)
        nbf = _timestamp(payload, "nbf", required=False) if "nbf" in payload else None  # Bitbucket sends none
        assert exp is not None and iat is not None
        if exp < iat:
            raise InvalidToken("claim 'exp' is before 'iat'", code="invalid_claim")
        if now >= exp + leeway:
            raise InvalidToken("token has expired", code="expired")
        if iat > now + leeway:
            raise InvalidToken("token was issued in the future", code="not_yet_valid")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken("token is not valid yet (nbf)", code="not_yet_valid")

        _check_bitbucket_claims(payload)
        if self.workspace_uuid is not None and payload["workspaceUuid"].lower() != self.workspace_uuid:
            raise InvalidToken("token belongs to another workspace", code="workspace_mismatch")

        claims = PipelineClaims.from_payload(payload)
        if type(token) is str:
            self._cache.put(token, (claims, exp + leeway, header, key))
        return claims

    def _authorize(
        self,
        claims: PipelineClaims,
        client_ip: str | None,
        extra: Rule | Sequence[Rule] | None,
        method: str | None,
        path: str | None,
    ) -> None:
        rules = self.policies + as_rules(extra) if extra else self.policies
        if rules:
            apply_rules(rules, claims, RequestContext(client_ip, self._clock(), method, path))
        hook = self.on_decision
        if wanted(True, hook):  # building a Decision nobody reads would cost more than a cache hit
            emit(Decision.build(claims, client_ip), hook)

    def _denied(self, exc: VerificationError, claims: PipelineClaims | None, client_ip: str | None) -> None:
        hook = self.on_decision
        if wanted(False, hook):
            emit(Decision.build(claims, client_ip, exc), hook)

    def _internal(self, exc: Exception, claims: PipelineClaims | None, client_ip: str | None) -> InvalidToken:
        # Should not happen; if it does, refuse the token rather than leak the error.
        _log.exception("unexpected error while verifying a token; refusing it")
        error = InvalidToken(
            f"token could not be verified ({type(exc).__name__})", code="verification_failed"
        )
        self._denied(error, claims, client_ip)
        return error


# -- one-call form -------------------------------------------------------------

_VERIFIERS: dict[Hashable, Verifier] = {}
_VERIFIERS_LOCK = threading.Lock()
_MAX_VERIFIERS = 32


def _freeze_option(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_freeze_option(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze_option(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


def verify(
    token: str | bytes,
    *,
    client_ip: str | None = None,
    **options: Any,
) -> PipelineClaims:
    """Verify one token in one call (for scripts).

    ``options`` are :class:`Verifier` arguments. The Verifier built for a
    given set of options is kept and reused, so its key cache survives
    between calls.
    """
    try:
        cache_key: Hashable = _freeze_option(options)
        hash(cache_key)
    except TypeError:
        return Verifier(**options).verify(token, client_ip=client_ip)
    verifier = _VERIFIERS.get(cache_key)
    if verifier is None:
        built = Verifier(**options)
        with _VERIFIERS_LOCK:
            verifier = _VERIFIERS.get(cache_key)
            if verifier is None:
                if len(_VERIFIERS) >= _MAX_VERIFIERS:
                    _VERIFIERS.pop(next(iter(_VERIFIERS)))
                verifier = _VERIFIERS[cache_key] = built
    return verifier.verify(token, client_ip=client_ip)
