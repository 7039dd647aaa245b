"""One Django request through bbverify: read it, verify it, answer a refusal.

Shared by the middleware, the view decorator and the DRF classes, so the three
cannot disagree. The request is read from ``request.META`` (the same keys
under Django's WSGI and ASGI handlers) with :func:`bbverify.wsgi.environ_request`;
the client address is ``REMOTE_ADDR`` resolved through bbverify's own
``trusted_proxies``. Django's ``SECURE_PROXY_SSL_HEADER`` and
``USE_X_FORWARDED_HOST`` are never read: they concern the scheme and host,
not the client address.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ..claims import PipelineClaims
from ..errors import VerificationError
from ..http import CLAIMS_KEY, CLIENT_IP_KEY, VERIFIER_KEY, ErrorResponse, Guard, MissingToken, bearer_token
from ..wsgi import environ_request

__all__ = ["CLAIMS_ATTR", "CLIENT_IP_ATTR", "averify_request", "refusal", "reusable", "verify_request"]

#: ``request.pipeline_claims``: the verified claims (``None`` when an optional view got no token).
CLAIMS_ATTR = "pipeline_claims"
#: ``request.pipeline_client_ip``: the client address the rules saw (``None`` when unknown).
CLIENT_IP_ATTR = "pipeline_client_ip"
# (verifier, policy) that produced request.pipeline_claims, so a second layer can reuse them.
_SOURCE_ATTR = "_bbverify_source"


def _policy_kwargs(policy: str | None) -> dict[str, Any]:
    # Only a named policy is passed on, so the default policy needs no
    # support for names in the verifier (contract: policy=None is the default).
    return {} if policy is None else {"policy": policy}


def _prepare(guard: Guard, request: HttpRequest, optional: bool) -> tuple[str | None, str | None, str]:
    authorization, peer, forwarded = environ_request(request.META)
    client = guard.client_ip(peer, forwarded)
    setattr(request, CLIENT_IP_ATTR, client)
    request.META[CLIENT_IP_KEY] = client
    if optional:
        try:
            bearer_token(authorization)
        except MissingToken:
            # No bearer credential where none is required: not a refusal, so not audited as one.
            setattr(request, CLAIMS_ATTR, None)
            return None, client, request.path_info or "/"
        except VerificationError:
            pass  # guard.token below audits and raises it
    return guard.token(authorization, client), client, request.path_info or "/"


def _store(request: HttpRequest, guard: Guard, policy: str | None, claims: PipelineClaims) -> PipelineClaims:
    setattr(request, CLAIMS_ATTR, claims)
    setattr(request, _SOURCE_ATTR, (guard.verifier, policy))
    request.META[CLAIMS_KEY] = claims
    request.META[VERIFIER_KEY] = guard.verifier
    return claims


def reusable(request: HttpRequest, guard: Guard, policy: str | None) -> PipelineClaims | None:
    """Claims already verified for this request by the same verifier under the same policy."""
    claims = getattr(request, CLAIMS_ATTR, None)
    source = getattr(request, _SOURCE_ATTR, None)
    if (
        isinstance(claims, PipelineClaims)
        and isinstance(source, tuple)
        and source[0] is guard.verifier
        and source[1] == policy
        and not guard.policies
    ):
        return claims
    return None


def verify_request(
    guard: Guard, request: HttpRequest, policy: str | None = None, *, optional: bool = False
) -> PipelineClaims | None:
    """Verify the request's bearer token under ``policy`` (blocking; WSGI and sync views).

    Sets ``request.pipeline_claims`` and ``request.pipeline_client_ip``.
    With ``optional``, a request without a bearer token gives ``None``
    (``request.pipeline_claims = None``); otherwise that is
    :class:`~bbverify.http.MissingToken`. Raises only
    :class:`~bbverify.errors.VerificationError`.
    """
    reused = reusable(request, guard, policy)
    if reused is not None:
        return reused
    token, client, path = _prepare(guard, request, optional)
    if token is None:
        return None
    claims = guard.verifier.verify(
        token,
        client_ip=client,
        policies=guard.policies or None,
        method=request.method,
        path=path,
        **_policy_kwargs(policy),
    )
    return _store(request, guard, policy, claims)


async def averify_request(
    guard: Guard, request: HttpRequest, policy: str | None = None, *, optional: bool = False
) -> PipelineClaims | None:
    """As :func:`verify_request`, awaiting any key fetch (ASGI, async views)."""
    reused = reusable(request, guard, policy)
    if reused is not None:
        return reused
    token, client, path = _prepare(guard, request, optional)
    if token is None:
        return None
    claims = await guard.verifier.averify(
        token,
        client_ip=client,
        policies=guard.policies or None,
        method=request.method,
        path=path,
        **_policy_kwargs(policy),
    )
    return _store(request, guard, policy, claims)


def as_django(response: ErrorResponse) -> HttpResponse:
    """An :class:`~bbverify.http.ErrorResponse` as a Django response (same bytes and headers)."""
    out = HttpResponse(response.body, status=response.status)
    for name, value in response.headers:
        out[name] = value
    return out


def refusal(guard: Guard, error: VerificationError) -> HttpResponseBase:
    """The answer for ``error``: ``on_error``'s Django response if it gave one, else RFC 6750 JSON."""
    response, native = guard.refusal(error)
    if isinstance(native, HttpResponseBase):
        return native
    return as_django(response)
