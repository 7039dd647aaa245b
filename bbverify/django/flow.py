"""One Django request through bbverify: read it, verify it, answer a refusal.

Shared by the middleware, the view decorator and the DRF classes, so the three
cannot disagree; the decisions themselves are :class:`bbverify.http.Guard`'s,
as in every adapter. The request is read from ``request.META`` (the same keys
under Django's WSGI and ASGI handlers) with :func:`bbverify.wsgi.environ_request`;
the client address is ``REMOTE_ADDR`` resolved through bbverify's own
``trusted_proxies``. Django's ``SECURE_PROXY_SSL_HEADER`` and
``USE_X_FORWARDED_HOST`` are never read: they concern the scheme and host,
not the client address.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ..claims import PipelineClaims
from ..errors import MissingToken, VerificationError
from ..http import (
    CLAIMS_KEY,
    CLIENT_IP_KEY,
    POLICY_KEY,
    VERIFIER_KEY,
    ErrorResponse,
    Guard,
    bearer_token,
)
from ..wsgi import environ_request

__all__ = ["CLAIMS_ATTR", "CLIENT_IP_ATTR", "as_django", "averify_request", "refusal", "verify_request"]

#: ``request.pipeline_claims``: the verified claims (``None`` when an optional view got no token).
CLAIMS_ATTR = "pipeline_claims"
#: ``request.pipeline_client_ip``: the client address the rules saw (``None`` when unknown).
CLIENT_IP_ATTR = "pipeline_client_ip"

_Begun = tuple[list[str], str | None, str]


def _reused(guard: Guard, request: HttpRequest) -> PipelineClaims | None:
    # Claims an outer layer (this middleware, or bbverify.wsgi around Django) verified
    # under the same verifier and policy settle the request (Guard.reusable decides).
    meta = request.META
    claims = guard.reusable(meta.get(CLAIMS_KEY), meta.get(VERIFIER_KEY), meta.get(POLICY_KEY))
    if claims is not None:
        setattr(request, CLAIMS_ATTR, claims)
        setattr(request, CLIENT_IP_ATTR, meta.get(CLIENT_IP_KEY))
    return claims


def _begin(guard: Guard, request: HttpRequest, optional: bool) -> _Begun | None:
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
            return None
        except VerificationError:
            pass  # a malformed header: Guard.verify audits and raises it
    return authorization, client, request.path_info or "/"


def _store(guard: Guard, request: HttpRequest, claims: PipelineClaims) -> PipelineClaims:
    setattr(request, CLAIMS_ATTR, claims)
    meta = request.META
    meta[CLAIMS_KEY] = claims
    meta[VERIFIER_KEY] = guard.verifier
    meta[POLICY_KEY] = guard.applied_policy
    return claims


def verify_request(guard: Guard, request: HttpRequest, *, optional: bool = False) -> PipelineClaims | None:
    """Verify the request's bearer token under ``guard`` (blocking; WSGI and sync views).

    Sets ``request.pipeline_claims`` and ``request.pipeline_client_ip``.
    With ``optional``, a request without a bearer token gives ``None``
    (``request.pipeline_claims = None``); otherwise that is
    :class:`~bbverify.http.MissingToken`. Raises only
    :class:`~bbverify.errors.VerificationError`.
    """
    reused = _reused(guard, request)
    if reused is not None:
        return reused
    begun = _begin(guard, request, optional)
    if begun is None:
        return None
    authorization, client, path = begun
    claims = guard.verify(authorization, client=client, method=request.method, path=path)
    return _store(guard, request, claims)


async def averify_request(
    guard: Guard, request: HttpRequest, *, optional: bool = False
) -> PipelineClaims | None:
    """As :func:`verify_request`, awaiting any key fetch (ASGI, async views)."""
    reused = _reused(guard, request)
    if reused is not None:
        return reused
    begun = _begin(guard, request, optional)
    if begun is None:
        return None
    authorization, client, path = begun
    claims = await guard.averify(authorization, client=client, method=request.method, path=path)
    return _store(guard, request, claims)


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
