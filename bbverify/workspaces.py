"""What a verifier trusts about one Bitbucket workspace: issuer, audiences, pin, keys, rules.

Each Bitbucket workspace is its own OIDC issuer, with its own key set, its
own default audience and its own UUID. A :class:`WorkspaceSpec` describes one
of them; :class:`bbverify.Verifier` accepts one (from its own arguments) or
several (``Verifier(workspaces=[...])``) and picks the one whose issuer is
exactly the token's ``iss``.

Facts (Bitbucket's "Integrate Pipelines with resource servers using OIDC"):

* issuer ``https://api.bitbucket.org/2.0/workspaces/{slug}/pipelines-config/identity/oidc``
  (so renaming the slug changes the issuer),
* default audience ``ari:cloud:bitbucket::workspace/{workspace-uuid}``
  (the UUID without braces); up to 10 custom audiences of at most 150
  characters each, and ``aud`` is then an array.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import keys as _keys
from .claims import normalize_uuid
from .errors import ConfigurationError
from .fetch import check_fetch_url
from .policies import Rule, as_rules

__all__ = [
    "BITBUCKET_ISSUER_TEMPLATE",
    "WorkspaceSpec",
    "bitbucket_audience",
    "bitbucket_issuer",
    "check_name",
]

BITBUCKET_ISSUER_TEMPLATE = (
    "https://api.bitbucket.org/2.0/workspaces/{workspace}/pipelines-config/identity/oidc"
)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_PREFIX, _, _SUFFIX = BITBUCKET_ISSUER_TEMPLATE.partition("{workspace}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")


def bitbucket_issuer(workspace: str) -> str:
    """The issuer URL of a Bitbucket workspace, from its slug.

    Raises :class:`ConfigurationError` (key ``workspace``) for a string that
    is not a slug (lowercase letters, digits, ``_.-``; at most 100).
    """
    slug = workspace.strip().lower() if isinstance(workspace, str) else ""
    if not _SLUG_RE.fullmatch(slug):
        pasted = slug_of(slug.rstrip("/")) if slug.startswith("https://") else None
        hint = (
            f"; that is an issuer URL: give workspace={pasted!r}, or issuer= with the exact URL"
            if pasted
            else " (the part after bitbucket.org/ in your workspace's address, e.g. 'acme')"
        )
        raise ConfigurationError(f"{workspace!r} is not a Bitbucket workspace slug{hint}", key="workspace")
    return BITBUCKET_ISSUER_TEMPLATE.format(workspace=slug)


def slug_of(issuer: str) -> str | None:
    """The workspace slug of a Bitbucket issuer URL, or ``None`` for any other issuer."""
    if issuer.startswith(_PREFIX) and issuer.endswith(_SUFFIX):
        slug = issuer[len(_PREFIX) : len(issuer) - len(_SUFFIX)]
        if _SLUG_RE.fullmatch(slug):
            return slug
    return None


def bitbucket_audience(workspace_uuid: str) -> str:
    """The default audience Bitbucket puts in a workspace's tokens (no braces)."""
    return "ari:cloud:bitbucket::workspace/" + normalize_uuid(workspace_uuid, key="workspace_uuid")[1:-1]


def check_name(name: object, key: str) -> str:
    """A policy or workspace name: 1-200 characters, letters, digits and ``_.:/-``.

    Raises :class:`ConfigurationError` naming ``key`` otherwise.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigurationError(
            f"{name!r} is not a valid name (letters, digits and _.:/-, starting with a letter or digit)",
            key=key,
        )
    return name


def check_audience(audience: str | Sequence[str] | None) -> frozenset[str]:
    """Validate one audience or several; raise :class:`ConfigurationError` (key ``audience``)."""
    if audience is None:
        raise ConfigurationError(
            "an audience is required (Bitbucket's default is "
            "'ari:cloud:bitbucket::workspace/<workspace-uuid>'); or give workspace_uuid",
            key="audience",
        )
    values = [audience] if isinstance(audience, str) else list(audience)
    if not values or not all(isinstance(a, str) and a for a in values):
        raise ConfigurationError("must be a non-empty string or list of strings", key="audience")
    for value in values:
        _refuse_bare_uuid(value)
    return frozenset(_normalize_default_audience(value) for value in values)


_ARI_PREFIX = "ari:cloud:bitbucket::workspace/"


def _normalize_default_audience(value: str) -> str:
    """Bitbucket's default audience, spelled as Bitbucket writes it: lower case, no braces.

    Users paste workspace UUIDs as the UI shows them (``{UUID}``, any case);
    an ``ari:`` audience written that way would never equal the token's
    ``aud`` and refuse every genuine token, so it is normalised here.
    """
    if value[: len(_ARI_PREFIX)].lower() != _ARI_PREFIX:
        return value
    try:
        return bitbucket_audience(value[len(_ARI_PREFIX) :].strip())
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{value!r}: the part after {_ARI_PREFIX!r} must be the workspace UUID ({exc.detail})",
            key="audience",
        ) from None


_BARE_UUID_RE = re.compile(
    r"\{?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}?", re.IGNORECASE
)


def _refuse_bare_uuid(value: str) -> None:
    """A workspace UUID alone is never Bitbucket's audience: every real token would fail.

    Bitbucket's default audience is ``ari:cloud:bitbucket::workspace/<uuid>``
    (Bitbucket's "Integrate Pipelines with resource servers using OIDC" page).
    """
    if _BARE_UUID_RE.fullmatch(value.strip()):
        bare = value.strip().strip("{}").lower()
        raise ConfigurationError(
            f"{value!r} is a bare UUID, not an audience; Bitbucket's default audience is "
            f"{bitbucket_audience(bare)!r}: give workspace_uuid={bare!r} (which also pins the "
            f"token's workspaceUuid) or audience={bitbucket_audience(bare)!r}",
            key="audience",
        )


class WorkspaceSpec:
    """One trusted workspace: its exact issuer, accepted audiences, optional pin, keys and rules.

    Args:
        workspace: the workspace slug; the issuer is derived from it.
        issuer: the exact issuer URL instead (a fake issuer in tests, say);
            must agree with ``workspace`` when both are given.
        audience: one audience or several (``str`` or sequence of ``str``);
            the token must carry one. Defaults to Bitbucket's default
            audience when ``workspace_uuid`` is given.
        workspace_uuid: when given, the token's ``workspaceUuid`` must be
            this UUID (braces optional, any case).
        jwks_url: fetch this workspace's keys here instead of discovery
            (``https://``; plain ``http://`` only on loopback).
        keys: a ready :class:`~bbverify.keys.KeySource` for this workspace
            (for example a :class:`~bbverify.keys.StaticKeySet`); excludes
            ``jwks_url``.
        policies: rules applied to this workspace's tokens only, after the
            verifier's own base rules.
        name: how decisions, logs and the ``workspace`` policy condition name
            it; defaults to the slug, else the issuer. In a verifier over
            several workspaces, a name may not be another workspace's slug or
            issuer (a condition naming it would be ambiguous).

    Raises :class:`ConfigurationError` (``key`` names the argument) on any
    mistake. Building one makes no network call.
    """

    __slots__ = ("audiences", "issuer", "jwks_url", "keys", "name", "policies", "slug", "workspace_uuid")

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
        name: str | None = None,
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
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("must be a non-empty string", key="issuer")
        if issuer.endswith("/") and slug_of(issuer.rstrip("/")) is not None:
            # iss is compared exactly (RFC 7519 4.1.1); Bitbucket's has no trailing slash.
            raise ConfigurationError(
                f"{issuer!r} ends with '/', but Bitbucket's issuer does not, so no token would match: "
                f"give {issuer.rstrip('/')!r} (or workspace={slug_of(issuer.rstrip('/'))!r})",
                key="issuer",
            )
        self.issuer: str = issuer
        #: The workspace slug when the issuer is a Bitbucket workspace's, else ``None``.
        self.slug: str | None = slug_of(issuer)
        # "" is refused, not read as "unset": it would drop the workspace pin silently.
        self.workspace_uuid: str | None = (
            normalize_uuid(workspace_uuid, key="workspace_uuid") if workspace_uuid is not None else None
        )
        if audience is None and self.workspace_uuid is not None:
            audience = bitbucket_audience(self.workspace_uuid)
        self.audiences: frozenset[str] = check_audience(audience)
        if jwks_url is not None:
            if keys is not None:
                # Two key sources would be a contradiction: one of them would be ignored.
                raise ConfigurationError(
                    "give keys= (a ready key source) or jwks_url= (fetch the keys there), not both",
                    key="jwks_url",
                )
            # Validated here, whatever else is given: https://, plain http only on loopback.
            check_fetch_url(jwks_url, "jwks_url")
        self.jwks_url = jwks_url
        self.keys = keys
        self.policies: tuple[Rule, ...] = as_rules(policies)
        for i, rule in enumerate(self.policies):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"policies[{i}]")
        name_key = "name"
        if name is None:
            # A name derived from the workspace or issuer is reported under that setting.
            name_key = "workspace" if isinstance(workspace, str) else "issuer"
            name = workspace.strip().lower() if isinstance(workspace, str) else issuer
        self.name: str = check_name(name, name_key)

    @classmethod
    def coerce(cls, value: WorkspaceSpec | Mapping[str, Any], key: str) -> WorkspaceSpec:
        """``value`` itself, or a spec built from a mapping of the same keyword arguments.

        Errors name the item: ``workspaces[1].audience``.
        """
        if isinstance(value, WorkspaceSpec):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"{type(value).__name__} is not a WorkspaceSpec or a mapping of its arguments", key=key
            )
        unknown = sorted(str(k) for k in value if k not in _SPEC_ARGS)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {unknown}; known: {', '.join(sorted(_SPEC_ARGS))}", key=key
            )
        try:
            return cls(**value)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.detail, key=f"{key}.{exc.key}" if exc.key else key) from None

    def __repr__(self) -> str:
        pin = f", workspace_uuid={self.workspace_uuid!r}" if self.workspace_uuid else ""
        return f"WorkspaceSpec(name={self.name!r}, issuer={self.issuer!r}{pin})"


_SPEC_ARGS = frozenset(
    {"workspace", "issuer", "audience", "workspace_uuid", "jwks_url", "keys", "policies", "name"}
)
