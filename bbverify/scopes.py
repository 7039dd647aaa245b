"""Scopes: the names Starlette ``@requires`` and FastAPI ``Security(scopes=...)`` check.

A verified token grants ``pipeline``; a token of a deployment step also
grants ``deployment``. A missing scope is a 403 ``insufficient_scope``
(RFC 6750 section 3.1), audited like the verifier's own refusals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .claims import PipelineClaims
from .context import RequestContext
from .errors import ConfigurationError, ErrorCode, PolicyDenied
from .identity import POLICY_KEY, VERIFIER_KEY, request_client_ip
from .paths import routing_path, wsgi_path
from .verifier import Verifier

__all__ = ["KNOWN_SCOPES", "check_scope_names", "check_scopes", "scopes_for"]

#: The scopes a verified token can hold, as Starlette ``@requires`` and FastAPI
#: ``Security(..., scopes=[...])`` name them: every verified token has
#: ``pipeline``; tokens of deployment steps (``deploymentEnvironmentUuid``
#: present) also have ``deployment``.
KNOWN_SCOPES = ("pipeline", "deployment")

# check_scopes(policy=) left out: the policy the claims passed, as stored in the carrier.
_STORED = object()


def scopes_for(claims: PipelineClaims) -> list[str]:
    """``["pipeline"]``, plus ``"deployment"`` for tokens of deployment steps."""
    return ["pipeline", "deployment"] if claims.is_deployment else ["pipeline"]


def check_scope_names(scopes: Iterable[str], key: str = "scopes") -> tuple[str, ...]:
    """``scopes`` as a tuple, or :class:`ConfigurationError` for a name not in :data:`KNOWN_SCOPES`.

    A misspelt scope would otherwise never be granted (every request
    refused) or, worse, be ignored; it is a configuration mistake.
    """
    if isinstance(scopes, str):
        scopes = [scopes]
    out = tuple(scopes)
    for i, scope in enumerate(out):
        if scope not in KNOWN_SCOPES:
            raise ConfigurationError(
                f"unknown scope {scope!r}; bbverify grants {', '.join(KNOWN_SCOPES)}", key=f"{key}[{i}]"
            )
    return out


def check_scopes(
    claims: PipelineClaims,
    required: Iterable[str],
    carrier: Mapping[str, object] | None = None,
    *,
    policy: str | object | None = _STORED,
) -> None:
    """Raise :class:`~bbverify.errors.PolicyDenied` (403, code ``insufficient_scope``)
    when ``claims`` lack one of the ``required`` scopes (RFC 6750 section 3.1).

    ``carrier`` is the request's ASGI scope or WSGI environ: the refusal is
    then audited once (:meth:`bbverify.Verifier.record_refusal`) through the
    verifier that produced the claims, with the request's method and path,
    the claims' workspace and issuer, and the route's named policy:
    ``policy`` (a name, or ``None`` for the verifier's default) when given,
    else the policy the claims passed (``carrier["bbverify.policy"]``). The
    verifier's own allow of the same token stays in the log before this
    denial: the token was valid, the route wanted more.
    """
    try:
        _check_scopes(claims, required)
    except PolicyDenied as exc:
        verifier = carrier.get(VERIFIER_KEY) if carrier is not None else None
        if carrier is not None and isinstance(verifier, Verifier):
            method = carrier.get("method", carrier.get("REQUEST_METHOD"))
            path = carrier.get("path") if "path" in carrier else wsgi_path(carrier.get("PATH_INFO"))
            root = carrier.get("root_path")
            routed = routing_path(
                path if isinstance(path, str) else None, root if isinstance(root, str) else None
            )
            method = method if isinstance(method, str) else None
            context = RequestContext(request_client_ip(carrier), 0.0, method, routed)
            named = carrier.get(POLICY_KEY) if policy is _STORED else policy
            verifier.record_refusal(
                exc, context, policy=named if isinstance(named, str) else None, claims=claims
            )
        raise


def _check_scopes(claims: PipelineClaims, required: Iterable[str]) -> None:
    granted = scopes_for(claims)
    for scope in required:
        if scope not in granted:
            raise PolicyDenied(
                f"this resource needs the {scope!r} scope (a token of a deployment step)"
                if scope == "deployment"
                else f"this resource needs the {scope!r} scope",
                code=ErrorCode.INSUFFICIENT_SCOPE,
                rule=f"scope:{scope}",
            )

