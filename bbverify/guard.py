"""The adapter-side flow every adapter shares: exclusions, the client, verification, one refusal type.

A :class:`Guard` is built once per middleware, decorator or dependency and
checks its settings then (a misspelt policy fails at start-up). Per request it
finds the client (:mod:`bbverify.proxies`), reads the bearer token
(:mod:`bbverify.bearer`), asks the :class:`~bbverify.Verifier`, and turns a
refusal into one :class:`Refusal` that every adapter renders the same way:
its status, headers and body, or the framework-native answer ``on_error``
chose. Decisions about tokens stay in the verifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from .addresses import IPAddress
from .bearer import DEFAULT_REALM, ErrorResponse, bearer_token, check_realm, error_response
from .claims import PipelineClaims
from .context import RequestContext
from .errors import ConfigurationError, VerificationError
from .identity import CLAIMS_KEY, CLIENT_IP_KEY, POLICY_KEY, VERIFIER_KEY
from .policies import Rule, as_rules
from .proxies import TrustedProxies, TrustedProxiesSpec, client_address, client_ip
from .verifier import Verifier

__all__ = ["ErrorHandler", "Guard", "GuardOptions", "Refusal", "route_policies"]

_log = logging.getLogger("bbverify")
# Bounds of Guard.context's memo: entries, and the characters of one key (a
# long path or header is built afresh rather than kept).
_CONTEXT_MEMO_MAX = 1024
_CONTEXT_KEY_MAX = 512

#: A hook that turns an error into the response to send (see :class:`Guard`).
ErrorHandler = Callable[[VerificationError], object]


class GuardOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Guard` that every adapter takes under the same names."""

    policies: Rule | Sequence[Rule] | None
    exclude_paths: Iterable[str] | None
    exclude_prefixes: Iterable[str] | None
    trusted_proxies: TrustedProxiesSpec
    realm: str
    on_error: ErrorHandler | None
    policy: str | None


@dataclass(frozen=True)
class Refusal(ErrorResponse):
    """The one refusal type: what an adapter sends for a refused request.

    ``status`` (``int``), ``headers`` (``(name, value)`` pairs) and ``body``
    (``bytes``) are the answer: the RFC 6750 default, or the
    :class:`ErrorResponse` that ``on_error`` returned. ``error`` is the
    :class:`~bbverify.errors.VerificationError` refused. ``native`` is a
    framework-native answer ``on_error`` returned instead (an ASGI or WSGI
    app, a Flask or Django response), which the adapter sends when its
    framework can; ``None`` otherwise.
    """

    error: VerificationError
    native: object | None = None

    @property
    def response(self) -> ErrorResponse:
        """The plain :class:`ErrorResponse` (status, headers, body) of this refusal."""
        return ErrorResponse(self.status, self.headers, self.body)


def route_policies(
    policies: Rule | Sequence[Rule] | None, route_rules: Sequence[Rule]
) -> Rule | Sequence[Rule] | None:
    """The per-route rules given as ``policies=`` or, the older spelling, as ``*route_rules``.

    ``policies=`` is the name every adapter uses; the positional rules stay
    documented for FastAPI, Starlette and Flask. Giving both is
    :class:`~bbverify.errors.ConfigurationError` (key ``policies``): one of
    the two lists would look applied and might not be what was meant.
    """
    if not route_rules:
        return policies
    if policies is not None:
        raise ConfigurationError(
            "give the route's rules as policies=[...] or as positional rules, not both", key="policies"
        )
    return route_rules


def _check_paths(paths: Iterable[str] | None, key: str) -> frozenset[str]:
    if paths is None:
        return frozenset()
    if isinstance(paths, str):
        paths = [paths]
    out = set()
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ConfigurationError(f"{p!r} must be a path starting with '/'", key=key)
        out.add(p)
    return frozenset(out)


class Guard:
    """The request flow every adapter runs; one per middleware, decorator or dependency.

    Args:
        verifier: the :class:`~bbverify.Verifier` that decides.
        policies: rules added to the verifier's own for requests this guard
            protects (per-route rules).
        exclude_paths: paths served without a token (exact match).
        exclude_prefixes: path prefixes served without a token (``"/public/"``
            opens everything below it; mind the trailing slash). ``"/"`` is
            refused (:class:`ConfigurationError`): it would open every path.
        trusted_proxies: ``None`` (default: the socket peer is the client), a
            hop count, or proxy CIDRs; see :func:`client_ip`.
        realm: the ``realm`` of ``WWW-Authenticate``.
        on_error: ``on_error(error)`` returns the answer to send instead of the
            default: an :class:`ErrorResponse`, or whatever the framework
            accepts (an ASGI app such as a Starlette ``Response``, a Flask
            response value). Returning ``None`` keeps the default answer.
        policy: the verifier's named policy for requests this guard protects
            (``None``: the verifier's default policy, if any). Checked here,
            so a misspelt name fails at start-up (``ConfigurationError``).
    """

    def __init__(
        self,
        verifier: Verifier,
        policies: Rule | Sequence[Rule] | None = None,
        *,
        exclude_paths: Iterable[str] | None = None,
        exclude_prefixes: Iterable[str] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
        on_error: ErrorHandler | None = None,
        policy: str | None = None,
    ) -> None:
        if not isinstance(verifier, Verifier):
            raise ConfigurationError(f"{verifier!r} is not a bbverify.Verifier", key="verifier")
        self.verifier = verifier
        verifier.check_policy(policy)
        self.policy = policy
        #: The named policy this guard's requests pass (``policy``, else the verifier's default).
        self.applied_policy = policy if policy is not None else verifier.default_policy
        self.policies: tuple[Rule, ...] = as_rules(policies)
        for i, rule in enumerate(self.policies):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"route_rules[{i}]")
        self.exclude_paths = _check_paths(exclude_paths, "exclude_paths")
        self.exclude_prefixes = tuple(sorted(_check_paths(exclude_prefixes, "exclude_prefixes")))
        if "/" in self.exclude_prefixes:
            # Every path starts with "/": the guard would protect nothing, silently.
            raise ConfigurationError(
                "'/' would serve every path without a token; list the public paths or prefixes "
                "(or do not install the middleware)",
                key="exclude_prefixes",
            )
        self.trusted_proxies = TrustedProxies.parse(trusted_proxies)
        self.realm = check_realm(realm)
        if on_error is not None and not callable(on_error):
            raise ConfigurationError("must be a callable", key="on_error")
        self.on_error = on_error
        self._contexts: dict[tuple[object, ...], RequestContext] = {}

    def is_excluded(self, path: str) -> bool:
        """True when ``path`` is served without a token."""
        return path in self.exclude_paths or any(path.startswith(p) for p in self.exclude_prefixes)

    def client_ip(self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]) -> str | None:
        """The client address under this guard's proxy settings, as text (``None``: unknown)."""
        return client_ip(peer, forwarded_for, self.trusted_proxies)

    def client_address(
        self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]
    ) -> IPAddress | None:
        """The client address under this guard's proxy settings, as an :mod:`ipaddress` object."""
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def context(
        self,
        peer: str | bytes | None,
        forwarded_for: Sequence[str | bytes],
        method: str | None,
        path: str | None,
    ) -> RequestContext:
        """The request's one :class:`~bbverify.context.RequestContext`, built once per request.

        ``peer`` is the socket peer (an address, :data:`~bbverify.proxies.UNIX_SOCKET_PEER`
        or ``None``) and ``forwarded_for`` the ``X-Forwarded-For`` lines; the
        client address is the proxy walk's address object
        (:func:`~bbverify.proxies.client_address`), never re-parsed from text.
        ``method`` and ``path`` are the request's (the path it routes on).
        ``now`` is left at 0: the verifier stamps its own clock.

        Contexts are frozen, so one built for the same peer, header, method
        and path serves again (a bounded memo of short requests): building
        one costs more than verifying a cached token.
        """
        key = (peer, method, path, *forwarded_for)
        contexts = self._contexts
        context = contexts.get(key)
        if context is None:
            context = RequestContext(self.client_address(peer, forwarded_for), 0.0, method, path)
            if sum(len(part or "") for part in key) <= _CONTEXT_KEY_MAX:
                if len(contexts) >= _CONTEXT_MEMO_MAX:
                    contexts.clear()
                contexts[key] = context
        return context

    def token(
        self, authorization: Sequence[str | bytes], context: RequestContext, *, policy: str | None = None
    ) -> str:
        """The bearer token; a refusal is audited like the verifier's own (:meth:`record_refusal`).

        ``policy`` names the route's policy when it is not this guard's (the
        gateway's routes); ``None``: this guard's ``policy``.
        """
        try:
            return bearer_token(authorization)
        except VerificationError as exc:
            self.verifier.record_refusal(exc, context, policy=policy if policy is not None else self.policy)
            raise

    def record_refusal(
        self, error: VerificationError, context: RequestContext, claims: PipelineClaims | None = None
    ) -> None:
        """Audit a refusal this guard decided (the verifier never saw it), under this guard's policy.

        One :class:`~bbverify.audit.Decision` through
        :meth:`bbverify.Verifier.record_refusal`, naming the guard's applied
        policy, and the workspace and issuer of ``claims`` when given.
        """
        self.verifier.record_refusal(error, context, policy=self.policy, claims=claims)

    def verify(self, authorization: Sequence[str | bytes], *, context: RequestContext) -> PipelineClaims:
        """Parse the header and verify the token under ``context`` (blocking; for WSGI and Flask).

        Returns the :class:`~bbverify.PipelineClaims`; raises only
        :class:`~bbverify.errors.VerificationError`.
        """
        token = self.token(authorization, context)
        extra = self.policies or None
        return self.verifier.verify(token, context=context, policy=self.policy, policies=extra)

    async def averify(
        self, authorization: Sequence[str | bytes], *, context: RequestContext
    ) -> PipelineClaims:
        """As :meth:`verify`, awaiting any key fetch (for ASGI)."""
        token = self.token(authorization, context)
        extra = self.policies or None
        return await self.verifier.averify(token, context=context, policy=self.policy, policies=extra)

    def store(self, carrier: MutableMapping[str, object], claims: PipelineClaims, client: str | None) -> None:
        """Record a verified request in its carrier (ASGI scope, WSGI environ, Django ``META``).

        Writes :data:`~bbverify.identity.CLAIMS_KEY`, ``CLIENT_IP_KEY``,
        ``VERIFIER_KEY`` and ``POLICY_KEY``, which :meth:`reusable`,
        :func:`~bbverify.identity.request_claims` and
        :func:`~bbverify.identity.request_client_ip` read back.
        """
        carrier[CLAIMS_KEY] = claims
        carrier[CLIENT_IP_KEY] = client
        carrier[VERIFIER_KEY] = self.verifier
        carrier[POLICY_KEY] = self.applied_policy

    def reused(self, carrier: MutableMapping[str, object]) -> PipelineClaims | None:
        """The claims an outer layer stored in ``carrier``, if they settle this request (:meth:`reusable`)."""
        return self.reusable(carrier.get(CLAIMS_KEY), carrier.get(VERIFIER_KEY), carrier.get(POLICY_KEY))

    def reusable(self, claims: object, verifier: object, policy: object = None) -> PipelineClaims | None:
        """Claims an outer middleware already verified, if they settle this request.

        They do when the same verifier produced them under the same named
        policy (``policy``, as recorded under :data:`POLICY_KEY`) and this
        guard adds no rules of its own; otherwise the request is verified
        again (cheap: the verifier caches the token).
        """
        if (
            isinstance(claims, PipelineClaims)
            and verifier is self.verifier
            and not self.policies
            and policy == self.applied_policy
        ):
            return claims
        return None

    def error_response(self, error: VerificationError) -> ErrorResponse:
        """The default answer for ``error`` under this guard's realm."""
        return error_response(error, self.realm)

    def refusal(self, error: VerificationError) -> Refusal:
        """The :class:`Refusal` for ``error``: what ``on_error`` chose, else the RFC 6750 default.

        An :class:`ErrorResponse` from ``on_error`` becomes the refusal's
        status, headers and body; any other non-``None`` value is kept as
        ``native`` (with the default status, headers and body) for the
        adapter to send if its framework can.
        """
        custom = self.custom_error(error)
        if isinstance(custom, ErrorResponse):
            return Refusal(custom.status, custom.headers, custom.body, error)
        default = self.error_response(error)
        return Refusal(default.status, default.headers, default.body, error, custom)

    def custom_error(self, error: VerificationError) -> object | None:
        """What ``on_error`` returns for ``error`` (``None`` when unset or on failure)."""
        if self.on_error is None:
            return None
        try:
            return self.on_error(error)
        except Exception:
            _log.exception("on_error hook raised; sending the default answer")
            return None
