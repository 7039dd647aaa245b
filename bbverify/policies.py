"""Access rules that run after the token checks, on every call.

A rule is any callable ``rule(claims, context)``. It allows by returning
``None`` or ``True`` and denies by raising :class:`~bbverify.errors.PolicyDenied`
(or by returning ``False``, which denies with code ``policy_denied``). Any
other exception a user rule raises also denies: bbverify fails closed.

Built-in rules check their configuration when they are built (a bad UUID or
CIDR raises :class:`~bbverify.errors.ConfigurationError` at start-up) and
deny with a stable ``code`` and a message that tells an operator what to
change:

==========================  =======================================================
rule                        codes
==========================  =======================================================
:class:`Workspaces`         ``workspace_not_allowed``
:class:`Repositories`       ``repository_not_allowed``
:class:`Environments`       ``environment_required``, ``environment_not_allowed``
:class:`Branches`           ``branch_required``, ``branch_not_allowed``
:class:`IPRanges`           ``ip_not_allowed``, ``client_ip_unknown``,
                            ``client_ip_invalid``, ``ip_ranges_unavailable``
:class:`StepDuration`       ``step_too_long``, ``token_lifetime_too_long``
:class:`Issuers`            ``workspace_not_allowed``
:class:`ClaimMatches`       ``claim_required``, ``claim_not_allowed``
:func:`any_of`, :func:`not_`  ``policy_denied`` (``any_of``: or an undecided code)
==========================  =======================================================

:func:`all_of` passes the first inner denial through unchanged.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any, TypeAlias, cast

from .claims import PipelineClaims, normalize_uuid, try_normalize_uuid
from .context import RequestContext
from .errors import ConfigurationError, ErrorCode, PolicyDenied
from .ipranges import DEFAULT_FEED_URL, AddressSet, AtlassianIPRanges, IPNetwork, parse_cidr

__all__ = [
    "UNDECIDED_CODES",
    "Branches",
    "ClaimMatches",
    "Environments",
    "IPRanges",
    "Issuers",
    "Repositories",
    "RequestContext",
    "Rule",
    "StepDuration",
    "Workspaces",
    "all_of",
    "any_of",
    "apply_rules",
    "as_rules",
    "check_rule",
    "not_",
    "rule_name",
]

_log = logging.getLogger("bbverify.policies")


Rule: TypeAlias = Callable[[PipelineClaims, RequestContext], object]


def rule_name(rule: object) -> str:
    """A short human name for a rule, used in denials and audit records."""
    name = getattr(rule, "name", None)
    if isinstance(name, str):
        return name
    return getattr(rule, "__qualname__", None) or type(rule).__name__


def apply_rules(rules: Iterable[Rule], claims: PipelineClaims, context: RequestContext) -> None:
    """Run ``rules`` in order (all must allow); raise ``PolicyDenied`` on the first denial.

    A rule that returns ``False`` denies (``policy_denied``); one that raises
    anything but ``PolicyDenied``, or returns anything but ``None``/``True``,
    denies with ``policy_error``: bbverify fails closed.
    """
    # The fail-closed handling lives here alone; check_rule is this for one rule.
    # (A try block costs nothing until something raises.)
    for rule in rules:
        try:
            result = rule(claims, context)
        except PolicyDenied:
            raise
        except Exception as exc:
            raise _rule_failed(rule, exc) from None
        if result is not None and result is not True:
            raise _rule_returned(rule, result)


def check_rule(rule: Rule, claims: PipelineClaims, context: RequestContext) -> None:
    """Run one rule, turning ``False`` and stray exceptions into ``PolicyDenied``."""
    apply_rules((rule,), claims, context)


def _rule_failed(rule: Rule, exc: Exception) -> PolicyDenied:
    # A buggy user rule must not let a request through, nor crash the app.
    # Called inside the except block, so the log carries the rule's traceback.
    _log.exception("rule %s raised; denying", rule_name(rule))
    return PolicyDenied(
        f"rule {rule_name(rule)} failed with {type(exc).__name__}; denied to fail closed",
        code=ErrorCode.POLICY_ERROR,
        rule=rule_name(rule),
    )


def _rule_returned(rule: Rule, result: object) -> PolicyDenied:
    if result is False:
        return PolicyDenied(
            f"rule {rule_name(rule)} returned False", code=ErrorCode.POLICY_DENIED, rule=rule_name(rule)
        )
    # Only None and True admit. Anything else is a bug, most often an ``async def``
    # rule whose coroutine (truthy, never run) would otherwise have admitted.
    if inspect.iscoroutine(result):
        result.close()  # it will never run; closing spares a "never awaited" warning
    what = type(result).__name__
    _log.error("rule %s returned a %s, not None/True/False; denying", rule_name(rule), what)
    return PolicyDenied(
        f"rule {rule_name(rule)} returned a {what} (rules admit only with None or True); "
        "denied to fail closed",
        code=ErrorCode.POLICY_ERROR,
        rule=rule_name(rule),
    )


def as_rules(rules: Rule | Sequence[Rule] | None) -> tuple[Rule, ...]:
    """Normalise ``None``, one rule, or a sequence of rules to a tuple."""
    if rules is None:
        return ()
    if callable(rules):
        return (rules,)
    return tuple(rules)


# -- built-in rules ---------------------------------------------------------------


class _BuiltinRule:
    """Shared plumbing: a ``name`` and a helper to deny in that name."""

    name: str = "rule"

    def _deny(self, message: str, code: str) -> PolicyDenied:
        return PolicyDenied(message, code=code, rule=self.name)

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:  # pragma: no cover
        raise NotImplementedError


def _flatten(values: tuple[str | Iterable[str], ...]) -> list[object]:
    # Accept Repositories("a", "b") as well as Repositories(["a", "b"]).
    out: list[object] = []
    for v in values:
        if isinstance(v, str) or not isinstance(v, Iterable):
            out.append(v)
        else:
            out.extend(v)
    return out


def _uuid_set(values: tuple[str | Iterable[str], ...], key: str) -> tuple[str, ...]:
    items = _flatten(values)
    if not items:
        raise ConfigurationError("give at least one UUID (an empty allow list would admit nobody)", key=key)
    normalised = [normalize_uuid(v, key=f"{key}[{i}]") for i, v in enumerate(items)]
    return tuple(dict.fromkeys(normalised))


class _AllowList(_BuiltinRule):
    """Admit tokens whose claim is one of the configured values.

    Each subclass names its claim (a :class:`PipelineClaims` field) in the
    class statement, ``class Issuers(_AllowList, claim="issuer")``, and words
    its denial in ``_refusal``.
    """

    _claim: Callable[[PipelineClaims], str | None]
    _values: tuple[str, ...] = ()
    _allowed: frozenset[str] = frozenset()

    def __init_subclass__(cls, *, claim: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if claim:
            # attrgetter reads the claim in C: no method call per request.
            cls._claim = staticmethod(attrgetter(claim))

    def _allow(self, values: tuple[str, ...]) -> None:
        self._values = values
        self._allowed = frozenset(values)

    def _also_admits(self, value: str) -> bool:
        """Whether a value that is not literally allowed still is (another spelling); no by default."""
        return False

    def _refusal(self, value: str) -> PolicyDenied:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        value = self._claim(claims) or ""
        # The literal look-up first: a genuine token spells the claim as configured.
        if value not in self._allowed and not self._also_admits(value):
            raise self._refusal(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(v) for v in self._values)})"


class _UUIDAllowList(_AllowList):
    """An allow list of UUIDs, compared in Bitbucket's spelling; subclasses set ``_what`` and ``_code``."""

    _what = ""
    _code = ""

    def __init__(self, *uuids: str | Iterable[str]) -> None:
        self.uuids: tuple[str, ...] = _uuid_set(uuids, self.name)
        self._allow(self.uuids)

    def _also_admits(self, value: str) -> bool:
        # Bitbucket already writes {lowercase}; normalise only other spellings.
        return try_normalize_uuid(value) in self._allowed

    def _refusal(self, value: str) -> PolicyDenied:
        return self._deny(
            f"{self._what} {value} is not allowed; add it to the {type(self).__name__} rule "
            f"if it should have access",
            self._code,
        )


class Workspaces(_UUIDAllowList, claim="workspace_uuid"):
    """Admit only tokens whose ``workspaceUuid`` is one of ``uuids``.

    The verifier's ``workspace_uuid`` already pins one workspace; this rule
    is for a server that admits several (with one issuer per workspace).
    """

    name = "workspaces"
    _what = "workspace"
    _code = ErrorCode.WORKSPACE_NOT_ALLOWED


class Repositories(_UUIDAllowList, claim="repository_uuid"):
    """Admit only tokens whose ``repositoryUuid`` is one of ``uuids`` (braces optional, any case)."""

    name = "repositories"
    _what = "repository"
    _code = ErrorCode.REPOSITORY_NOT_ALLOWED


class Environments(_UUIDAllowList, claim="deployment_environment_uuid"):
    """Admit only deployment steps whose ``deploymentEnvironmentUuid`` is one of ``uuids``.

    A token from a step without a deployment environment is denied with
    ``environment_required``.
    """

    name = "environments"
    _what = "deployment environment"
    _code = ErrorCode.ENVIRONMENT_NOT_ALLOWED

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        if claims.deployment_environment_uuid is None:
            raise self._deny(
                "this rule only admits deployment steps, and the token has no deploymentEnvironmentUuid; "
                "run the step with 'deployment: <environment>' in bitbucket-pipelines.yml",
                ErrorCode.ENVIRONMENT_REQUIRED,
            )
        super().__call__(claims, context)


_GLOB_CHARS = frozenset("*?[")


class Branches(_BuiltinRule):
    """Admit only tokens whose ``branchName`` equals a name or matches a glob.

    Patterns use :func:`fnmatch.fnmatchcase` (case-sensitive, ``*`` also
    crosses ``/``): ``"main"``, ``"release/*"``. A token without
    ``branchName`` (tag and custom pipelines) is denied with
    ``branch_required`` unless ``allow_missing=True``.
    """

    name = "branches"

    def __init__(self, *patterns: str | Iterable[str], allow_missing: bool = False) -> None:
        items = _flatten(patterns)
        if not items:
            raise ConfigurationError("give at least one branch name or pattern", key="branches")
        for i, p in enumerate(items):
            if not isinstance(p, str) or not p.strip() or p != p.strip():
                raise ConfigurationError(
                    f"{p!r} is not a branch name or pattern (non-empty, no surrounding spaces)",
                    key=f"branches[{i}]",
                )
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(str(p) for p in items))
        self._exact = frozenset(p for p in self.patterns if _GLOB_CHARS.isdisjoint(p))
        self._globs = tuple(p for p in self.patterns if not _GLOB_CHARS.isdisjoint(p))
        if not isinstance(allow_missing, bool):
            raise ConfigurationError("must be true or false", key="allow_missing_branch")
        self.allow_missing = allow_missing

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        branch = claims.branch_name
        if branch is None:
            if self.allow_missing:
                return
            raise self._deny(
                "the token has no branchName (a tag or custom pipeline?); this rule admits only "
                f"branches {list(self.patterns)}; pass allow_missing=True to admit such steps",
                ErrorCode.BRANCH_REQUIRED,
            )
        if branch in self._exact or any(fnmatch.fnmatchcase(branch, g) for g in self._globs):
            return
        raise self._deny(
            f"branch {branch[:200]!r} is not allowed; allowed branches: {list(self.patterns)}",
            ErrorCode.BRANCH_NOT_ALLOWED,
        )

    def __repr__(self) -> str:
        args = ", ".join(repr(p) for p in self.patterns)
        return f"Branches({args}{', allow_missing=True' if self.allow_missing else ''})"


class IPRanges(_BuiltinRule):
    """Admit only requests whose client IP is inside the given networks.

    ``cidrs`` are IPv4 or IPv6 networks (or single addresses), checked when
    the rule is built. ``feed`` adds the ranges of an
    :class:`~bbverify.ipranges.AtlassianIPRanges` (see
    :meth:`from_atlassian_feed`); the rule admits the union of both.

    The client IP is the one the adapter resolved. A request without one is
    denied with ``client_ip_unknown``, a malformed one (zone id, port, junk)
    with ``client_ip_invalid``; IPv4-mapped IPv6 addresses match IPv4 ranges.
    """

    name = "ip_ranges"

    def __init__(self, cidrs: str | Iterable[str] = (), *, feed: AtlassianIPRanges | None = None) -> None:
        items = [cidrs] if isinstance(cidrs, str) else list(cidrs)
        networks: list[IPNetwork] = [parse_cidr(c, key=f"ip_ranges[{i}]") for i, c in enumerate(items)]
        if not networks and feed is None:
            raise ConfigurationError(
                "give at least one CIDR or a feed (an empty list would admit nobody)", key="ip_ranges"
            )
        self.static = AddressSet(networks)
        self.feed = feed

    @classmethod
    def from_atlassian_feed(
        cls,
        source: str | os.PathLike[str] = DEFAULT_FEED_URL,
        product: str | Iterable[str] | None = "bitbucket",
        direction: str | Iterable[str] | None = "egress",
        *,
        refresh_interval: float = 3600.0,
        region: str | Iterable[str] | None = None,
        extra: Iterable[str] = (),
        lazy: bool = False,
        **options: Any,
    ) -> IPRanges:
        """A rule admitting Atlassian's published ranges (plus ``extra`` CIDRs).

        ``source`` is the feed URL (default ``https://ip-ranges.atlassian.com/``)
        or a local copy. Loads now and raises ``ConfigurationError`` if that
        fails, unless ``lazy=True``. ``options`` go to
        :class:`~bbverify.ipranges.AtlassianIPRanges` (``timeout``,
        ``failure_backoff``, ``session``, ``clock``, ...).
        """
        feed = AtlassianIPRanges(
            source,
            product=product,
            direction=direction,
            region=region,
            refresh_interval=refresh_interval,
            lazy=lazy,
            **options,
        )
        return cls(extra, feed=feed)

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        # The context parsed the client IP once; no rule parses it again.
        address = context.client_address
        if address is None:
            if context.client_ip_error is not None:
                raise self._deny(context.client_ip_error, ErrorCode.CLIENT_IP_INVALID)
            raise self._deny(
                "the client IP is unknown, so the IP rule cannot admit the request; check that the "
                "adapter passes client_ip (and its trusted-proxy setting)",
                ErrorCode.CLIENT_IP_UNKNOWN,
            )
        if address in self.static:
            return
        if self.feed is not None:
            ranges = self.feed.ranges()
            if ranges is None:
                raise self._deny(
                    f"the IP ranges from {self.feed.source} are not loaded yet "
                    f"({self.feed.last_error or 'loading'}); retry shortly",
                    ErrorCode.IP_RANGES_UNAVAILABLE,
                )
            if address in ranges:
                return
        raise self._deny(
            f"client IP {address} is not in the allowed ranges; if this pipeline runs there legitimately "
            "(a self-hosted runner, say), add its range to the IPRanges rule, or check that a proxy "
            "in front of this service is trusted so that the real client IP is used",
            ErrorCode.IP_NOT_ALLOWED,
        )

    def __repr__(self) -> str:
        parts = [repr([str(n) for n in self.static.networks])] if self.static else []
        if self.feed is not None:
            parts.append(f"feed={self.feed!r}")
        return f"IPRanges({', '.join(parts)})"


class StepDuration(_BuiltinRule):
    """Admit only tokens from steps no longer than ``max_minutes`` (plus a start buffer).

    Bitbucket issues a step's token for the step's ``max-time`` plus a start
    buffer of ``start_buffer_minutes`` (5 by default). With ``limit =
    (max_minutes + start_buffer_minutes) * 60`` seconds the rule denies:

    * ``step_too_long`` when ``now - iat > limit``: the step has been running
      longer than this service accepts (a token copied out of a log ages out
      here before it expires),
    * ``token_lifetime_too_long`` when ``exp - iat > limit``: the step was
      configured with a longer ``max-time`` than this service accepts.
      ``check_lifetime=False`` turns this check off, leaving only the age
      check: tokens of longer steps are then admitted during their first
      ``limit`` seconds.
    """

    name = "step_duration"

    def __init__(
        self, max_minutes: float, *, start_buffer_minutes: float = 5.0, check_lifetime: bool = True
    ) -> None:
        for key, value in (("max_minutes", max_minutes), ("start_buffer_minutes", start_buffer_minutes)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"must be a number of minutes, not {value!r}", key=key)
        if max_minutes <= 0:
            raise ConfigurationError(f"must be positive, not {max_minutes!r}", key="max_minutes")
        if start_buffer_minutes < 0:
            raise ConfigurationError(
                f"must not be negative, not {start_buffer_minutes!r}", key="start_buffer_minutes"
            )
        if not isinstance(check_lifetime, bool):
            raise ConfigurationError("must be true or false", key="check_lifetime")
        self.max_minutes = float(max_minutes)
        self.start_buffer_minutes = float(start_buffer_minutes)
        self.check_lifetime = check_lifetime
        self.limit_seconds = (self.max_minutes + self.start_buffer_minutes) * 60.0

    def _limit_text(self) -> str:
        return f"{self.max_minutes:g}+{self.start_buffer_minutes:g} minutes this service accepts"

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        # The payload's own numbers (checked to be finite dates by the claims
        # layer): the same instants as issued_at/expires_at, without datetime arithmetic.
        raw = claims.raw
        iat = raw["iat"]
        limit = self.limit_seconds
        age = context.now - iat
        if age > limit:
            raise self._deny(
                f"the step started {age / 60:.0f} minutes ago, longer than the {self._limit_text()}; "
                "call this service earlier in the step, or raise max_minutes",
                ErrorCode.STEP_TOO_LONG,
            )
        lifetime = raw["exp"] - iat
        if self.check_lifetime and lifetime > limit:
            raise self._deny(
                f"the token is valid for {lifetime / 60:.0f} minutes, more than the {self._limit_text()}; "
                "set the step's max-time to at most max_minutes, or raise max_minutes",
                ErrorCode.TOKEN_LIFETIME_TOO_LONG,
            )

    def __repr__(self) -> str:
        extra = ""
        if self.start_buffer_minutes != 5.0:
            extra += f", start_buffer_minutes={self.start_buffer_minutes:g}"
        if not self.check_lifetime:
            extra += ", check_lifetime=False"
        return f"StepDuration(max_minutes={self.max_minutes:g}{extra})"


class Issuers(_AllowList, claim="issuer"):
    """Admit only tokens whose ``iss`` is exactly one of ``issuers``.

    For a verifier over several workspaces: a route or policy that admits
    only some of them. (The verifier already refuses every issuer it does
    not trust; this rule narrows further.) Build it with workspace slugs via
    :func:`bbverify.bitbucket_issuer`, or with the exact issuer URLs.
    """

    name = "workspace"

    def __init__(self, *issuers: str | Iterable[str]) -> None:
        items = _flatten(issuers)
        if not items:
            raise ConfigurationError("give at least one issuer", key="workspace")
        for i, value in enumerate(items):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{value!r} is not an issuer URL", key=f"workspace[{i}]")
        self.issuers: tuple[str, ...] = tuple(dict.fromkeys(cast(list[str], items)))
        self._allow(self.issuers)

    def _refusal(self, value: str) -> PolicyDenied:
        return self._deny(
            f"tokens of workspace issuer {value[:200]!r} are not allowed here; "
            f"allowed issuers: {list(self.issuers)}",
            ErrorCode.WORKSPACE_NOT_ALLOWED,
        )


#: Claim values a :class:`ClaimMatches` condition may name (JSON scalars; floats excluded:
#: Bitbucket sends no fractional claims and float equality is a trap).
ClaimValue: TypeAlias = str | int | bool


class ClaimMatches(_BuiltinRule):
    """Admit only tokens whose claim ``claim`` matches one of ``values``.

    For any claim of the payload, including claims Bitbucket adds later
    (``pipelineRunUuid``, say). ``values`` are strings, integers or booleans:

    * a string holding ``*``, ``?`` or ``[`` is a glob
      (:func:`fnmatch.fnmatchcase`: case-sensitive, ``*`` also crosses
      ``/``); any other string must equal the claim exactly,
    * an integer or boolean must equal the claim with the same JSON type
      (``true`` never matches ``1``).

    A claim that is a list (``aud``, say) matches when any of its items
    does. The claim's absence denies with ``claim_required``, a mismatch with
    ``claim_not_allowed``. UUID claims keep Bitbucket's braces and lower
    case: write them that way, or use :class:`Repositories` and friends,
    which normalise.
    """

    name = "claim"

    def __init__(self, claim: str, *values: ClaimValue | Iterable[ClaimValue]) -> None:
        if not isinstance(claim, str) or not claim or claim != claim.strip():
            raise ConfigurationError(f"{claim!r} is not a claim name", key="claims")
        flat: list[object] = []
        for v in values:
            if isinstance(v, str | int | bool) or not isinstance(v, Iterable):
                flat.append(v)
            else:
                flat.extend(v)
        if not flat:
            raise ConfigurationError("give at least one value (an empty list would admit nobody)", key=claim)
        for i, item in enumerate(flat):
            if not isinstance(item, str | int | bool) or (isinstance(item, str) and not item):
                raise ConfigurationError(
                    f"{item!r} is not a claim value (a non-empty string, an integer or a boolean)",
                    key=f"{claim}[{i}]",
                )
        self.claim = claim
        self.name = f"claim:{claim}"
        self.values: tuple[ClaimValue, ...] = tuple(cast(list[ClaimValue], flat))
        # Keyed by (type, value) so that True, 1 and "1" stay three different values.
        self._exact = frozenset((type(v), v) for v in self.values if not _is_glob(v))
        self._globs = tuple(v for v in self.values if isinstance(v, str) and _is_glob(v))

    def _matches(self, value: object) -> bool:
        if type(value) not in (str, int, bool):
            return False
        if (type(value), value) in self._exact:
            return True
        return isinstance(value, str) and any(fnmatch.fnmatchcase(value, g) for g in self._globs)

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        raw = claims.raw
        if self.claim not in raw:
            raise self._deny(
                f"the token has no {self.claim!r} claim, which this rule requires",
                ErrorCode.CLAIM_REQUIRED,
            )
        value = raw[self.claim]
        items = value if isinstance(value, tuple) else (value,)  # JSON arrays are frozen to tuples
        if any(self._matches(item) for item in items):
            return
        shown = repr(value)[:200]
        raise self._deny(
            f"claim {self.claim!r} is {shown}, not one of the allowed values {list(self.values)}",
            ErrorCode.CLAIM_NOT_ALLOWED,
        )

    def __repr__(self) -> str:
        return f"ClaimMatches({self.claim!r}, {', '.join(repr(v) for v in self.values)})"


def _is_glob(value: object) -> bool:
    return isinstance(value, str) and not _GLOB_CHARS.isdisjoint(value)


# -- composition --------------------------------------------------------------------

#: Denial codes meaning "the rule could not decide" rather than "the rule says no".
#: :func:`not_` passes these through instead of inverting them, so that a broken
#: rule, or a request whose client IP is unknown, is never admitted by negation.
UNDECIDED_CODES = frozenset(
    {
        ErrorCode.POLICY_ERROR,
        ErrorCode.CLIENT_IP_UNKNOWN,
        ErrorCode.CLIENT_IP_INVALID,
        ErrorCode.IP_RANGES_UNAVAILABLE,
    }
)


def _check_rules(rules: tuple[object, ...], what: str) -> tuple[Rule, ...]:
    if not rules:
        raise ConfigurationError("give at least one rule", key=what)
    for i, r in enumerate(rules):
        if not callable(r):
            raise ConfigurationError(f"{r!r} is not a rule (a callable)", key=f"{what}[{i}]")
    return rules  # type: ignore[return-value]


class _AllOf(_BuiltinRule):
    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.name = f"all_of({', '.join(rule_name(r) for r in rules)})"

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        apply_rules(self.rules, claims, context)

    def __repr__(self) -> str:
        return f"all_of({', '.join(repr(r) for r in self.rules)})"


class _AnyOf(_BuiltinRule):
    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.name = f"any_of({', '.join(rule_name(r) for r in rules)})"

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        reasons: list[str] = []
        code: str = ErrorCode.POLICY_DENIED
        for rule in self.rules:
            try:
                check_rule(rule, claims, context)
            except PolicyDenied as denied:
                reasons.append(f"{denied.rule}: {denied.code}: {denied.message}")
                if denied.code in UNDECIDED_CODES and code not in UNDECIDED_CODES:
                    # An alternative that could not decide might have admitted, so
                    # the whole is undecided too: not_() must not invert it to admit.
                    code = denied.code
            else:
                return
        raise self._deny("no alternative admitted the request (" + "; ".join(reasons) + ")", code)

    def __repr__(self) -> str:
        return f"any_of({', '.join(repr(r) for r in self.rules)})"


class _Not(_BuiltinRule):
    def __init__(self, rule: Rule, message: str | None) -> None:
        self.rule = rule
        self.name = f"not_({rule_name(rule)})"
        self.message = message

    def __call__(self, claims: PipelineClaims, context: RequestContext) -> None:
        try:
            check_rule(self.rule, claims, context)
        except PolicyDenied as denied:
            if denied.code in UNDECIDED_CODES:
                raise
            return
        raise self._deny(
            self.message or f"{rule_name(self.rule)} admits this request, and this rule excludes it",
            ErrorCode.POLICY_DENIED,
        )

    def __repr__(self) -> str:
        return f"not_({self.rule!r})"


def all_of(*rules: Rule) -> Rule:
    """A rule admitting when every rule admits; the first denial passes through unchanged."""
    return _AllOf(_check_rules(rules, "all_of"))


def any_of(*rules: Rule) -> Rule:
    """A rule admitting when at least one rule admits (tried in order).

    When all deny, it denies with ``policy_denied`` and a message collecting
    each alternative's reason; if one of them could not decide (a code in
    :data:`UNDECIDED_CODES`), it denies with that code instead, so that
    :func:`not_` never inverts it.
    """
    return _AnyOf(_check_rules(rules, "any_of"))


def not_(rule: Rule, *, message: str | None = None) -> Rule:
    """A rule admitting exactly when ``rule`` denies (for exclusions, e.g. a blocked repository).

    Denies with ``policy_denied`` (and ``message`` if given) when ``rule``
    admits. Denials in :data:`UNDECIDED_CODES` pass through: ``not_`` never
    turns "could not decide" into "admit".
    """
    return _Not(_check_rules((rule,), "not_")[0], message)
