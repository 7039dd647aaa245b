"""The Verifier: orchestrates a token's path in one flow (driven blocking and awaited); caches tokens.

A token travels (one :class:`_Call`, written once; :meth:`Verifier.verify`
and :meth:`Verifier.averify` only drive its one network step): the
verified-token cache; else the JWS layer reads it (:mod:`bbverify.token`),
the workspace is picked by exact ``iss`` and the claims layer checks every
claim on the unverified payload (:mod:`bbverify.claims`), so a token that
cannot be genuine costs no key fetch; the key look-up in that workspace's
key source (:mod:`bbverify.keys`); the signature (:mod:`bbverify.jwk`) and
the time checks again; then the rules (:mod:`bbverify.policies`): base, the
workspace's own, the named policy, per-route, on every call, cached or not.
Each call ends in one audit record (:func:`bbverify.audit.record`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

import requests

from . import keys as _keys
from .audit import DecisionHook, record, wanted
from .claims import PipelineClaims, check_claims, recheck_times
from .context import RequestContext
from .errors import ConfigurationError, ErrorCode, InvalidToken, VerificationError
from .jwk import SUPPORTED_ALGORITHMS, VerifyingKey
from .policies import Rule, apply_rules, as_rules
from .stores import KeyStore
from .token import DEFAULT_MAX_TOKEN_BYTES, CompactJWS, JWSReader
from .workspaces import (
    BITBUCKET_ISSUER_TEMPLATE,
    WorkspaceSpec,
    bitbucket_audience,
    bitbucket_issuer,
    check_name,
)

__all__ = [
    "BITBUCKET_ISSUER_TEMPLATE",
    "Verifier",
    "WorkspaceSpec",
    "bitbucket_audience",
    "bitbucket_issuer",
    "verify",
]

_log = logging.getLogger("bbverify")

DEFAULT_LEEWAY = 10.0
MAX_LEEWAY = 300.0
DEFAULT_CACHE_SIZE = 4096


class _Trust:
    """A workspace as the verifier uses it: the spec, its key source and its rules.

    ``rules`` are the verifier's base rules followed by the workspace's own,
    joined once here rather than on every call. ``current_keys`` is the key
    source's :meth:`~bbverify.keys.RemoteKeySet.current_keys` (``None`` for a
    key source without one: its tokens are then not cached).
    """

    __slots__ = ("audiences", "current_keys", "issuer", "keys", "name", "rules", "spec", "workspace_uuid")

    def __init__(self, spec: WorkspaceSpec, keys: _keys.KeySource, base_rules: tuple[Rule, ...]) -> None:
        self.spec = spec
        self.name = spec.name
        self.issuer = spec.issuer
        self.audiences = spec.audiences
        self.workspace_uuid = spec.workspace_uuid
        self.rules: tuple[Rule, ...] = base_rules + spec.policies
        self.use_keys(keys)

    def use_keys(self, keys: _keys.KeySource) -> None:
        self.keys = keys
        self.current_keys: Callable[[], tuple[VerifyingKey, ...] | None] | None = getattr(
            keys, "current_keys", None
        )


class _CacheEntry(NamedTuple):
    """A verified token: its claims, until when they hold, and what vouched for them."""

    claims: PipelineClaims
    expires: float  #: seconds since the epoch: ``exp`` plus the leeway
    key_set: tuple[VerifyingKey, ...]  #: the key set whose key checked the signature
    trust: _Trust


_TOKEN_CACHES: weakref.WeakSet[_TokenCache] = weakref.WeakSet()


class _TokenCache:
    """Bounded map of verified tokens, each kept no longer than its ``exp``.

    Reads take no lock (a dict lookup is atomic); writes evict the oldest
    entry when full, so memory stays bounded whatever the traffic.
    """

    __slots__ = ("__weakref__", "_data", "_lock", "get", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: dict[str, _CacheEntry] = {}
        self._lock = threading.Lock()
        # The bound dict method itself: a cache hit is then one C call. The
        # dict is never replaced (clear() empties it), so the binding stays valid.
        self.get: Callable[[str], _CacheEntry | None]
        self.get = self._data.get
        _TOKEN_CACHES.add(self)  # for the lock's reset after a fork

    def put(self, token: str, entry: _CacheEntry) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            data = self._data
            while len(data) >= self.maxsize:
                data.pop(next(iter(data)))
            data[token] = entry

    def hit(self, token: object, now: float) -> _CacheEntry | None:
        """The entry of a verified ``token`` still valid at ``now``, else ``None`` (a stale one is dropped).

        It holds until its ``exp`` (plus leeway) while its workspace's key set
        is still the very one that vouched for it (identity, no key look-up):
        so a rotated-out key stops vouching for cached tokens too.
        """
        if type(token) is not str:
            return None
        entry = self.get(token)
        if entry is None:
            return None
        # An entry exists only for key sources with current_keys (check_signature).
        if now < entry.expires and entry.trust.current_keys() is entry.key_set:  # type: ignore[misc]
            return entry
        self.discard(token)
        return None

    def discard(self, token: str) -> None:
        with self._lock:
            self._data.pop(token, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


_WORKSPACE_ARGS = ("workspace", "issuer", "audience", "workspace_uuid", "jwks_url", "keys")


class Verifier:
    """Verifies Bitbucket Pipelines OIDC tokens for one workspace, or several.

    Build one per service and share it (it is thread-safe). Building makes no
    network call; keys are fetched on first use or by :meth:`warm_up`.

    One workspace is described by the arguments ``workspace`` ... ``keys``.
    Several are given as ``workspaces=[WorkspaceSpec(...), ...]`` (or
    mappings of :class:`~bbverify.workspaces.WorkspaceSpec` arguments)
    instead; each has its own issuer, audiences, optional UUID pin, key source
    and rules. A token is matched to a workspace by its (as yet unverified)
    ``iss``, exactly and only among the configured issuers, and then verified
    against that workspace's keys alone.

    Before any key lookup that may fetch, the unverified payload must be
    plausible for this verifier: a configured ``iss``, an accepted ``aud``,
    ``exp`` not past, ``iat`` and ``nbf`` not in the future, the Bitbucket
    claims present and strings, ``sub`` agreeing with them, ``workspaceUuid``
    the pinned one. So a token for another workspace is ``issuer_mismatch``
    (or ``workspace_mismatch``) and costs no fetch. All checks run again after the signature.

    Args:
        workspace: the workspace slug; the issuer is derived from it.
        issuer: the exact issuer instead (a fake issuer in tests, say).
        audience: one audience or several; the token must carry one of them.
            Defaults to Bitbucket's own when ``workspace_uuid`` is given.
        workspace_uuid: the workspace UUID; when given, ``workspaceUuid`` in
            the token must match it.
        jwks_url: skip discovery and fetch keys here (excludes ``keys``; validated
            like every fetch URL: https, plain http only on loopback).
        keys: a ready key source (for example :class:`~bbverify.keys.StaticKeySet`).
        workspaces: several workspaces (see above); excludes the six
            arguments before it.
        policies: base rules, applied on every call to every token, after
            the token checks.
        named_policies: ``{name: rule or rules}``; a call picks one with
            ``verify(..., policy=name)``. A sequence of rules means all of them.
        default_policy: the named policy applied when a call names none.
        algorithms: the signature algorithms accepted; ``RS256`` only by default.
        leeway: clock-skew allowance for ``exp``/``iat``/``nbf``, in seconds
            or a :class:`datetime.timedelta` as PyJWT accepts
            (default 10, at most 300).
        clock: seconds since the epoch; injectable for tests.
        cache_size: how many verified tokens to remember (0 disables).
        on_decision: called with a :class:`~bbverify.audit.Decision` per call.
        timeout: seconds, the total deadline of one key-set fetch. This and
            the following key-set settings are passed to each
            :class:`~bbverify.keys.RemoteKeySet` (the fetch budget and shared
            stores are described in ``docs/configuration.md``; each
            workspace's key source keeps its own budget and store entry).
        cache_ttl: seconds after which the key set is refreshed in the background.
        min_cache_ttl: seconds, the lower bound applied to ``max-age``.
        max_cache_ttl: seconds, the upper bound applied to ``max-age``.
        cooldown: seconds between refetches caused by an unknown ``kid``.
        max_stale: seconds the last good key set keeps serving while refreshes fail.
        failure_backoff: seconds, the first wait after a failed fetch.
        max_backoff: seconds, the largest wait after repeated failures.
        fetch_interval: seconds per fetch token of the fetch budget.
        fetch_burst: how many fetch tokens may be saved up.
        key_store: a shared key store (:mod:`bbverify.stores`), or ``None``.
        store_poll: seconds, the least interval between store reads for unknown ``kid`` values.
        session: a ``requests.Session`` for key fetches (egress proxy, CA bundle).

    Raises :class:`~bbverify.errors.ConfigurationError` (its ``key`` names
    the argument, ``workspaces[1].audience`` for an item) on any mistake.
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
        workspaces: Sequence[WorkspaceSpec | Mapping[str, Any]] | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        named_policies: Mapping[str, Rule | Sequence[Rule]] | None = None,
        default_policy: str | None = None,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float | timedelta = DEFAULT_LEEWAY,
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
        algs = frozenset(algorithms) if not isinstance(algorithms, str) else frozenset({algorithms})
        bad = algs - SUPPORTED_ALGORITHMS
        if bad or not algs:
            raise ConfigurationError(
                f"{sorted(bad) or 'nothing'} not allowed; choose asymmetric algorithms from "
                f"{sorted(SUPPORTED_ALGORITHMS)} (HS* and none are never accepted)",
                key="algorithms",
            )
        self._algorithms = algs
        if isinstance(leeway, timedelta):
            leeway = leeway.total_seconds()
        if not isinstance(leeway, int | float) or not 0 <= leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"must be between 0 and {MAX_LEEWAY:g} seconds", key="leeway")
        self.leeway = float(leeway)
        if not isinstance(max_token_bytes, int) or not 512 <= max_token_bytes <= 65536:
            raise ConfigurationError("must be between 512 and 65536", key="max_token_bytes")
        self.max_token_bytes = max_token_bytes
        self._clock = clock
        # Read-only after construction (properties below): the base rules are joined into
        # each workspace here, so a later assignment would be silently ignored (f12).
        self._policies: tuple[Rule, ...] = as_rules(policies)
        for i, rule in enumerate(self._policies):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"policies[{i}]")
        self._named = self._check_named(named_policies)
        if default_policy is not None:
            self.check_policy(default_policy, key="default_policy")
        self._default_policy: str | None = default_policy
        self.on_decision = on_decision
        self._cache = _TokenCache(int(cache_size))
        self._reader = JWSReader(algs, max_token_bytes)

        fetch_options: dict[str, Any] = {
            "timeout": timeout,
            "cache_ttl": cache_ttl,
            "cooldown": cooldown,
            "max_stale": max_stale,
            "failure_backoff": failure_backoff,
            "session": session,
            "min_cache_ttl": min_cache_ttl,
            "max_cache_ttl": max_cache_ttl,
            "max_backoff": max_backoff,
            "fetch_interval": fetch_interval,
            "fetch_burst": fetch_burst,
            "key_store": key_store,
            "store_poll": store_poll,
        }
        if workspaces is None:
            spec = WorkspaceSpec(
                workspace=workspace,
                issuer=issuer,
                audience=audience,
                workspace_uuid=workspace_uuid,
                jwks_url=jwks_url,
                keys=keys,
            )
            trusts = [_Trust(spec, self._key_source(spec, fetch_options), self._policies)]
        else:
            given = {
                "workspace": workspace,
                "issuer": issuer,
                "audience": audience,
                "workspace_uuid": workspace_uuid,
                "jwks_url": jwks_url,
                "keys": keys,
            }
            trusts = self._check_workspaces(workspaces, given, fetch_options)
        self._trusts: tuple[_Trust, ...] = tuple(trusts)
        self._by_issuer: dict[str, _Trust] = {t.issuer: t for t in trusts}
        self._workspaces: tuple[WorkspaceSpec, ...] = tuple(t.spec for t in trusts)

    # Settings fixed at construction are read-only: each is built into the workspaces'
    # key sources and rules, so assigning one later would be silently ignored (f12).

    @property
    def workspaces(self) -> tuple[WorkspaceSpec, ...]:
        """The trusted workspaces, in the order given (read-only)."""
        return self._workspaces

    @property
    def algorithms(self) -> frozenset[str]:
        """The accepted signature algorithms (read-only)."""
        return self._algorithms

    def _check_workspaces(
        self,
        workspaces: Sequence[WorkspaceSpec | Mapping[str, Any]],
        given: Mapping[str, Any],
        fetch_options: dict[str, Any],
    ) -> list[_Trust]:
        clash = [name for name in _WORKSPACE_ARGS if given[name] is not None]
        if clash:
            raise ConfigurationError(
                f"give either workspaces=[...] or {', '.join(clash)}, not both "
                "(each workspace carries its own issuer, audience, pin and keys)",
                key=clash[0],
            )
        if isinstance(workspaces, str | bytes | Mapping) or not isinstance(workspaces, Sequence):
            raise ConfigurationError("must be a list of WorkspaceSpec (or mappings)", key="workspaces")
        if not workspaces:
            raise ConfigurationError("give at least one workspace", key="workspaces")
        trusts: list[_Trust] = []
        issuers: dict[str, int] = {}
        names: dict[str, int] = {}
        for i, item in enumerate(workspaces):
            key = f"workspaces[{i}]"
            spec = WorkspaceSpec.coerce(item, key)
            for what, seen, value in (("issuer", issuers, spec.issuer), ("name", names, spec.name)):
                if value in seen:
                    raise ConfigurationError(
                        f"{value!r} is also the {what} of workspaces[{seen[value]}]; each must be unique",
                        key=f"{key}.{what}",
                    )
                seen[value] = i
            try:
                source = self._key_source(spec, fetch_options)
            except ConfigurationError as exc:
                if exc.key in fetch_options:
                    raise
                raise ConfigurationError(exc.detail, key=f"{key}.{exc.key}") from None
            for j, other in enumerate(trusts):
                if other.keys is source:
                    # One key set behind two issuers would let either workspace's keys
                    # vouch for the other's tokens.
                    raise ConfigurationError(
                        f"is the same key source as workspaces[{j}]; each workspace needs its own",
                        key=f"{key}.keys",
                    )
            trusts.append(_Trust(spec, source, self._policies))
        # A name must not be another workspace's slug or issuer: names default to the slug
        # (else the issuer), so a condition `workspace = ["acme"]` would otherwise silently
        # mean whichever item is *named* acme, not the workspace whose slug is acme (f10).
        aliases = {alias: j for j, t in enumerate(trusts) for alias in (t.spec.slug, t.issuer) if alias}
        for i, t in enumerate(trusts):
            shadowed = aliases.get(t.name)
            if shadowed is not None and shadowed != i:
                raise ConfigurationError(
                    f"{t.name!r} is the slug or issuer of workspaces[{shadowed}]; name each workspace so "
                    "that no name stands for another workspace",
                    key=f"workspaces[{i}].name",
                )
        return trusts

    def _key_source(self, spec: WorkspaceSpec, options: dict[str, Any]) -> _keys.KeySource:
        # One key source per workspace: a key of workspace B can never vouch
        # for a token claiming workspace A's issuer. Nothing is fetched here.
        if spec.keys is not None:
            return spec.keys
        source = _keys.RemoteKeySet(
            issuer=spec.issuer if spec.jwks_url is None else None,
            jwks_url=spec.jwks_url,
            allowed_algorithms=self._algorithms,
            **options,
        )
        if spec.jwks_url is not None:
            source.issuer = spec.issuer
        return source

    @staticmethod
    def _check_named(named: Mapping[str, Rule | Sequence[Rule]] | None) -> dict[str, tuple[Rule, ...]]:
        if named is None:
            return {}
        if not isinstance(named, Mapping):
            raise ConfigurationError("must be a mapping of policy names to rules", key="named_policies")
        out: dict[str, tuple[Rule, ...]] = {}
        for name, value in named.items():
            check_name(name, "named_policies")
            rules = as_rules(value)
            if not rules:
                raise ConfigurationError(
                    "is empty; a policy needs at least one rule (an empty one would admit every "
                    "verified token)",
                    key=f"named_policies.{name}",
                )
            for i, rule in enumerate(rules):
                if not callable(rule):
                    raise ConfigurationError(
                        f"{rule!r} is not a rule (a callable)", key=f"named_policies.{name}[{i}]"
                    )
            out[name] = rules
        return out

    # -- one workspace's view (for single-workspace verifiers) -------------------

    def _only(self, what: str) -> _Trust:
        if len(self._trusts) != 1:
            raise AttributeError(
                f"a verifier over {len(self._trusts)} workspaces has no single {what}; see .workspaces"
            )
        return self._trusts[0]

    @property
    def issuer(self) -> str:
        """The issuer (single-workspace verifiers; ``AttributeError`` with several)."""
        return self._only("issuer").issuer

    @property
    def audiences(self) -> frozenset[str]:
        """The accepted audiences (single-workspace verifiers; ``AttributeError`` with several)."""
        return self._only("audiences").audiences

    @property
    def workspace_uuid(self) -> str | None:
        """The pinned workspace UUID, if any (single-workspace verifiers)."""
        return self._only("workspace_uuid").workspace_uuid

    @property
    def keys(self) -> _keys.KeySource:
        """The key source (single-workspace verifiers; ``AttributeError`` with several)."""
        return self._only("keys").keys

    @property
    def issuers(self) -> tuple[str, ...]:
        """Every trusted issuer, in the order configured."""
        return tuple(t.issuer for t in self._trusts)

    def key_source(self, issuer: str) -> _keys.KeySource:
        """The key source of the workspace whose issuer is exactly ``issuer``.

        Raises ``KeyError`` for an issuer this verifier does not trust.
        """
        return self._by_issuer[issuer].keys

    # -- named policies ---------------------------------------------------------

    @property
    def policies(self) -> tuple[Rule, ...]:
        """The base rules (read-only: they are fixed when the verifier is built)."""
        return self._policies

    @property
    def named_policies(self) -> Mapping[str, tuple[Rule, ...]]:
        """``{name: rules}`` of the named policies, as a read-only mapping."""
        return MappingProxyType(self._named)

    @property
    def default_policy(self) -> str | None:
        """The named policy applied when a call names none (read-only)."""
        return self._default_policy

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The names of the named policies, in the order configured."""
        return tuple(self._named)

    def check_policy(self, name: str | None, *, key: str = "policy") -> None:
        """Raise :class:`ConfigurationError` unless ``name`` is ``None`` or a configured policy.

        Adapters call this when a route is built, so that a misspelt policy
        name fails at start-up rather than on the first request.
        """
        if name is None:
            return
        if not isinstance(name, str) or name not in self._named:
            known = ", ".join(repr(n) for n in self._named) or "none are configured"
            raise ConfigurationError(f"unknown policy {name!r}; named policies: {known}", key=key)

    def record_refusal(
        self,
        error: VerificationError,
        context: RequestContext,
        *,
        policy: str | None = None,
        claims: PipelineClaims | None = None,
    ) -> None:
        """Audit a refusal an adapter or the gateway decided without this verifier.

        For refusals the verifier never saw (no token, a malformed
        ``Authorization`` header, a route the gateway denies, a missing
        scope): one :class:`~bbverify.audit.Decision` through
        :func:`bbverify.audit.record`, like the verifier's own, to the audit
        logger and ``on_decision``. ``policy`` is the route's named policy
        (``None``: this verifier's default policy); the workspace name and
        issuer come from ``claims`` (their exact ``iss``) when given. Never
        raises.
        """
        if not wanted(False, self.on_decision):
            return
        trust = None
        if claims is not None:
            iss = claims.issuer
            trust = self._by_issuer.get(iss) if type(iss) is str else None
        record(
            error,
            context,
            self.on_decision,
            claims=claims,
            workspace_name=trust.name if trust is not None else None,
            issuer=trust.issuer if trust is not None else None,
            policy=policy if policy is not None else self._default_policy,
        )

    def _policy_rules(self, name: str | None) -> tuple[Rule, ...]:
        if name is None:
            name = self._default_policy
            if name is None:
                return ()
        rules = self._named.get(name) if type(name) is str else None
        if rules is None:
            self.check_policy(name)  # raises: a programming error, not a refusal of the token
        assert rules is not None
        return rules

    # -- public API -----------------------------------------------------------

    def warm_up(self) -> None:
        """Fetch every workspace's keys now; raise ``KeysUnavailable`` if that fails.

        Optional: call it at start-up to surface a misconfiguration early.
        """
        for trust in self._trusts:
            warm = getattr(trust.keys, "warm_up", None)
            if warm is not None:
                warm()

    async def awarm_up(self) -> None:
        """As :meth:`warm_up`, for ASGI lifespan handlers: the fetches are awaited, never blocking.

        Every workspace's keys are fetched concurrently, each within its key
        set's ``timeout`` (seconds); raises
        :class:`~bbverify.errors.KeysUnavailable` if one cannot be had::

            @contextlib.asynccontextmanager
            async def lifespan(app):
                await verifier.awarm_up()
                yield
        """

        async def warm(source: object) -> None:
            awarm = getattr(source, "awarm_up", None)
            if awarm is not None:
                await awarm()
                return
            blocking = getattr(source, "warm_up", None)
            if blocking is not None:
                # A key source of your own with only a blocking warm_up: keep it off the loop.
                await asyncio.to_thread(blocking)

        await asyncio.gather(*(warm(trust.keys) for trust in self._trusts))

    def __repr__(self) -> str:
        # Settings only, for logs and debuggers: never a key, never a token.
        parts: list[str] = []
        if len(self._trusts) == 1:
            trust = self._trusts[0]
            parts += [f"issuer={trust.issuer!r}", f"audiences={sorted(trust.audiences)!r}"]
            if trust.workspace_uuid is not None:
                parts.append(f"workspace_uuid={trust.workspace_uuid!r}")
        else:
            parts.append(f"workspaces={list(self.workspaces)!r}")
        parts.append(f"policies={list(self.policies)!r}")
        if self._named:
            parts.append(f"named_policies={list(self._named)!r}")
        sources = [_describe_key_source(trust.keys) for trust in self._trusts]
        parts.append(f"keys={sources[0]}" if len(sources) == 1 else f"keys=[{', '.join(sources)}]")
        return f"Verifier({', '.join(parts)})"

    def verify(
        self, token: str | bytes, *, context: RequestContext | None = None, policy: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        client_ip: str | None = None, method: str | None = None, path: str | None = None,
    ) -> PipelineClaims:
        """Verify ``token`` and apply the rules; return its claims.

        Rules run in this order: the verifier's base rules, the token's
        workspace's rules, the named ``policy`` (the default policy when
        ``None``), then ``policies``, extra (per-route) rules. Raises
        :class:`~bbverify.errors.VerificationError` subclasses for the token;
        :class:`~bbverify.errors.ConfigurationError` for a ``policy`` name
        that is not configured (a programming error; adapters check names
        with :meth:`check_policy` when they are built).

        ``context`` is the request's :class:`~bbverify.context.RequestContext`
        (client IP, method, path), built once by an adapter; scripts may give
        ``client_ip=``, ``method=`` and ``path=`` instead (giving both raises
        ``TypeError``). The rules see the context with ``now`` from this
        verifier's clock.
        """
        hit = self._cache.hit(token, self._clock())
        if hit is not None and self._settled(hit, context, client_ip, method, path, policy, policies):
            return hit.claims
        with _Call(self, token, context, client_ip, method, path, policy, policies) as call:
            if (keys := call.start(hit)) is not None:
                call.check_signature(keys.get_key(call.kid, call.alg))
            return call.admit()

    async def averify(
        self, token: str | bytes, *, context: RequestContext | None = None, policy: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        client_ip: str | None = None, method: str | None = None, path: str | None = None,
    ) -> PipelineClaims:
        """As :meth:`verify`, for event loops: a key fetch is awaited, never blocking."""
        hit = self._cache.hit(token, self._clock())
        if hit is not None and self._settled(hit, context, client_ip, method, path, policy, policies):
            return hit.claims
        with _Call(self, token, context, client_ip, method, path, policy, policies) as call:
            if (keys := call.start(hit)) is not None:
                call.check_signature(await keys.aget_key(call.kid, call.alg))
            return call.admit()

    def _settled(
        self,
        hit: _CacheEntry,
        context: object,
        client_ip: object,
        method: object,
        path: object,
        policy: object,
        extra: object,
    ) -> bool:
        """Whether the cache's answer ``hit`` is the whole answer: no rule to run, no decision to record.

        The arguments must also be ones the full flow would accept (a context
        that is a :class:`RequestContext`, and not beside ``client_ip``,
        ``method`` or ``path``); otherwise the flow raises its ``TypeError``.
        """
        if context is not None:
            if type(context) is not RequestContext:
                return False
            if client_ip is not None or method is not None or path is not None:
                return False
        return (
            policy is None
            and extra is None
            and not hit.trust.rules
            and self._default_policy is None
            and not wanted(True, self.on_decision)
        )

    def cache_info(self) -> dict[str, int]:
        """Sizes of the internal caches (for tests and monitoring)."""
        return {"tokens": len(self._cache), "token_limit": self._cache.maxsize, "headers": len(self._reader)}

    def clear_cache(self) -> None:
        """Forget every verified token (keys are kept)."""
        self._cache.clear()

    def _workspace_of(self, payload: Mapping[str, Any]) -> _Trust:
        """The trusted workspace whose issuer is exactly the payload's ``iss``."""
        iss = payload.get("iss")
        if iss is None:
            raise InvalidToken("claim 'iss' is required", code=ErrorCode.MISSING_CLAIM)
        # Exact match among the configured issuers only; type() first, since a
        # list is unhashable and a str subclass could compare in odd ways.
        trust = self._by_issuer.get(iss) if type(iss) is str else None
        if trust is None:
            raise InvalidToken("token was issued by another issuer", code=ErrorCode.ISSUER_MISMATCH)
        return trust


class _Call:
    """One call of :meth:`Verifier.verify` or :meth:`Verifier.averify`: the token's path, written once.

    The steps, in order: the verified-token cache; else the JWS read
    (:mod:`bbverify.token`), the workspace picked by exact ``iss`` and every
    claim check on the unverified payload (:mod:`bbverify.claims`), so that a
    token which cannot be genuine costs no key fetch (issue 13: Bitbucket
    allows 60 anonymous requests an hour per address); then the key look-up,
    the one step that may wait on the network, which the two methods drive
    (blocking or awaited) between :meth:`start` and :meth:`check_signature`;
    then the signature and every claim check again at the time after any
    fetch; then the rules (:meth:`admit`). A failing step ends in
    :meth:`refused`, which records the refusal (:func:`bbverify.audit.record`)
    and lets only :class:`~bbverify.errors.VerificationError` out.
    """

    __slots__ = (
        "claims",
        "client_ip",
        "context",
        "extra",
        "jws",
        "method",
        "named",
        "path",
        "policy",
        "token",
        "trust",
        "verifier",
    )

    jws: CompactJWS  #: set by start() on a token the cache did not answer

    def __init__(
        self,
        verifier: Verifier,
        token: str | bytes,
        context: RequestContext | None,
        client_ip: str | None,
        method: str | None,
        path: str | None,
        policy: str | None,
        extra: Rule | Sequence[Rule] | None,
    ) -> None:
        if context is not None:
            if client_ip is not None or method is not None or path is not None:
                raise TypeError("give either context= or client_ip=/method=/path=, not both")
            if not isinstance(context, RequestContext):
                raise TypeError(f"context must be a RequestContext, not {type(context).__name__}")
        self.verifier = verifier
        # An unknown policy name is a programming error, raised before anything is recorded.
        self.named = verifier._policy_rules(policy)
        self.token = token
        # The context is built only when a rule or an audit record needs it.
        self.context = context
        self.client_ip = client_ip
        self.method = method
        self.path = path
        self.policy = policy
        self.extra = extra
        self.trust: _Trust | None = None
        self.claims: PipelineClaims | None = None

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # Whatever a step raised leaves as its refusal (or its fail-closed
        # stand-in); BaseException (cancellation, KeyboardInterrupt) passes through.
        if isinstance(exc, Exception):
            raise self.refused(exc)

    def refused(self, exc: Exception) -> VerificationError:
        """Record the refusal of this call; return what to raise: ``exc`` itself, or its fail-closed stand-in.

        Only :class:`~bbverify.errors.VerificationError` leaves the verifier:
        anything else (a bug, a broken key source) is logged and refused as
        ``verification_failed``.
        """
        if isinstance(exc, VerificationError):
            self._record(exc)
            return exc
        # Should not happen; if it does, refuse the token rather than leak the error.
        _log.error("unexpected error while verifying a token; refusing it", exc_info=exc)
        error = InvalidToken(
            f"token could not be verified ({type(exc).__name__})", code=ErrorCode.VERIFICATION_FAILED
        )
        error.__suppress_context__ = True  # as 'raise ... from None': the log has the cause
        self._record(error)
        return error

    @property
    def kid(self) -> str | None:
        return self.jws.header.kid

    @property
    def alg(self) -> str:
        return self.jws.header.alg

    def start(self, hit: _CacheEntry | None) -> _keys.KeySource | None:
        """Take the cache answer ``hit`` (return ``None``), or read and check the token (return its keys)."""
        if hit is not None:
            self.trust, self.claims = hit.trust, hit.claims
            return None
        verifier = self.verifier
        self.jws = jws = verifier._reader.read(self.token)
        self.trust = trust = verifier._workspace_of(jws.payload)
        self._check_claims(trust)
        return trust.keys

    def check_signature(self, key: VerifyingKey) -> None:
        """The signature with ``key``, every claim check again, then the claims (cached)."""
        jws = self.jws
        trust = self.trust
        assert trust is not None
        jws.verify_signature(key)
        payload = jws.payload
        # The time checks again, at the time after any fetch (the other checks
        # read only the payload, which the signature has now vouched for).
        recheck_times(payload, now=self.verifier._clock(), leeway=self.verifier.leeway)
        self.claims = claims = PipelineClaims.from_payload(payload)
        token = self.token
        current = trust.current_keys
        if type(token) is str and current is not None:
            key_set = current()
            # Cached only under the key set that holds this very key (a refresh may have
            # installed another since the look-up).
            if key_set is not None and key in key_set:  # VerifyingKey compares by identity
                verifier = self.verifier
                verifier._cache.put(
                    token, _CacheEntry(claims, float(payload["exp"]) + verifier.leeway, key_set, trust)
                )

    def _check_claims(self, trust: _Trust) -> None:
        verifier = self.verifier
        check_claims(
            self.jws.payload,
            audiences=trust.audiences,
            workspace_uuid=trust.workspace_uuid,
            now=verifier._clock(),
            leeway=verifier.leeway,
        )

    def admit(self) -> PipelineClaims:
        """Apply the rules to the verified claims; record the allow; return the claims."""
        verifier = self.verifier
        claims, trust = self.claims, self.trust
        assert claims is not None and trust is not None
        rules = trust.rules
        if self.named:
            rules = rules + self.named
        if self.extra:
            rules = rules + as_rules(self.extra)
        if rules:
            apply_rules(rules, claims, self._context(verifier._clock()))
        self._record(None)
        return claims

    def _context(self, now: float) -> RequestContext:
        context = self.context
        if context is None:
            return RequestContext(self.client_ip, now, self.method, self.path)
        return context.at(now)

    def _record(self, error: VerificationError | None) -> None:
        verifier = self.verifier
        hook = verifier.on_decision
        # Building a Decision (and a context) nobody reads would cost more than a cache hit.
        if not wanted(error is None, hook):
            return
        trust = self.trust
        policy = self.policy
        record(
            error,
            self._context(verifier._clock()),
            hook,
            claims=self.claims,
            workspace_name=trust.name if trust is not None else None,
            issuer=trust.issuer if trust is not None else None,
            policy=policy if policy is not None else verifier.default_policy,
        )


# -- one-call form -------------------------------------------------------------

# Key sources shared by one-call verify(), keyed by what decides which keys
# are fetched and how: issuer, key-set URL, algorithms, fetch settings and the
# session's identity (the entry holds the session, so its id is not reused).
# Rules, hooks and named policies are not part of the key: a fresh Verifier is
# built per call around the shared key sources, so rule objects (hashable or
# not) never cause a refetch. Least recently used entries go past the cap.
_KeySourceKey = tuple[Hashable, ...]
_KEY_SOURCES: OrderedDict[_KeySourceKey, tuple[_keys.RemoteKeySet, object]] = OrderedDict()
_KEY_SOURCES_LOCK = threading.Lock()
_MAX_KEY_SOURCES = 64
_FETCH_OPTIONS = ("timeout", "cache_ttl", "cooldown", "max_stale", "failure_backoff")


def _shared_keys(verifier: Verifier, options: Mapping[str, Any]) -> None:
    """Give each of ``verifier``'s workspaces the shared key source for its issuer and settings."""
    session = options.get("session")
    settings = tuple(repr(options.get(name)) for name in _FETCH_OPTIONS)
    for trust in verifier._trusts:
        built = trust.keys
        if not isinstance(built, _keys.RemoteKeySet) or trust.spec.keys is not None:
            continue  # a key source the caller gave is used as given
        key: _KeySourceKey = (
            trust.issuer,
            trust.spec.jwks_url,
            verifier.algorithms,
            settings,
            id(session) if session is not None else None,
        )
        with _KEY_SOURCES_LOCK:
            entry = _KEY_SOURCES.get(key)
            if entry is not None:
                _KEY_SOURCES.move_to_end(key)
            else:
                while len(_KEY_SOURCES) >= _MAX_KEY_SOURCES:
                    _KEY_SOURCES.popitem(last=False)
                entry = _KEY_SOURCES[key] = (built, session)
        trust.use_keys(entry[0])


def _describe_key_source(keys: object) -> str:
    """Where keys come from, never the keys themselves."""
    if isinstance(keys, _keys.RemoteKeySet):
        if keys.jwks_url:  # configured, or found by discovery
            return f"RemoteKeySet(jwks_url={keys.jwks_url!r})"
        discovery = (keys.issuer or "").rstrip("/") + "/.well-known/openid-configuration"
        return f"RemoteKeySet(discovery={discovery!r})"
    return type(keys).__name__


def verify(
    token: str | bytes,
    *,
    context: RequestContext | None = None,
    client_ip: str | None = None,
    **options: Any,
) -> PipelineClaims:
    """Verify one token in one call (for scripts).

    ``options`` are :class:`Verifier` arguments. The issuer's key set is
    fetched once and shared by every call with the same issuer, key-set URL,
    algorithms, fetch settings (``timeout``, ``cache_ttl``, ``cooldown``,
    ``max_stale``, ``failure_backoff``) and ``session`` object, whatever the
    rules, hooks and policies; up to 64 such key sets are kept, least
    recently used evicted first. A ``keys=`` source you pass is used as given.

    Raises ``ConfigurationError`` for bad options, and otherwise only
    :class:`~bbverify.errors.VerificationError` subclasses.
    """
    verifier = Verifier(**options)
    _shared_keys(verifier, options)
    return verifier.verify(token, context=context, client_ip=client_ip)


def _after_fork_in_child() -> None:
    # Locks held by a parent thread at fork time would stay held forever.
    global _KEY_SOURCES_LOCK
    _KEY_SOURCES_LOCK = threading.Lock()
    for cache in list(_TOKEN_CACHES):
        cache._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
