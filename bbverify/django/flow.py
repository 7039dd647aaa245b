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

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import django
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.debug import sensitive_variables

from ..bearer import ErrorResponse, bearer_token
from ..claims import PipelineClaims
from ..context import RequestContext
from ..errors import MissingToken, VerificationError
from ..guard import Guard, Refusal
from ..identity import CLIENT_IP_KEY
from ..wsgi import environ_request

__all__ = [
    "CLAIMS_ATTR",
    "CLIENT_IP_ATTR",
    "as_django",
    "averify_request",
    "native_response",
    "refusal",
    "send_error",
    "verify_request",
]

#: ``request.pipeline_claims``: the verified claims (``None`` when an optional view got no token).
CLAIMS_ATTR = "pipeline_claims"
#: ``request.pipeline_client_ip``: the client address the rules saw (``None`` when unknown).
CLIENT_IP_ATTR = "pipeline_client_ip"

_Begun = tuple[list[str], RequestContext]
#: Verify one request: ``Guard.verify`` made awaitable, or ``Guard.averify``.
_Verify = Callable[..., Awaitable[PipelineClaims]]
_log = logging.getLogger("bbverify")
_F = TypeVar("_F", bound=Callable[..., Any])
# The request's credentials: Django's error reports (DEBUG page, HTML error
# mails) must not show them in these frames' locals.
_SENSITIVE = ("authorization", "begun")


def _sensitive_async(func: _F) -> _F:
    # Django marks coroutine functions only since 5.0; older versions would
    # wrap them in a plain function (harmless, but pointless).
    if django.VERSION >= (5, 0):
        return sensitive_variables(*_SENSITIVE)(func)  # type: ignore[no-any-return]
    return func


class _Credentials(list[str]):
    """The request's ``Authorization`` lines, shown as ``[hidden]`` by ``repr``.

    Django cleanses :func:`sensitive_variables` locals only when ``DEBUG`` is
    off; the DEBUG page renders every local with ``repr``, so the frames that
    hold the header hold it in this list instead.
    """

    def __repr__(self) -> str:
        return f"<{len(self)} Authorization header(s), hidden>"

    __str__ = __repr__


def _scrubbed(exc: BaseException) -> BaseException:
    """``exc`` without the frames below the caller and without its chain.

    Those frames (the guard's, the verifier's) hold the token in their locals,
    and an error report renders every frame of the exception and of its
    ``__cause__``/``__context__``; only the caller's frame, marked with
    :func:`~django.views.decorators.debug.sensitive_variables`, stays.
    """
    if not isinstance(exc, VerificationError):
        # A bug, not a refusal: keep its traceback in the log (no frame locals there).
        _log.error("bbverify: unexpected error while verifying a request", exc_info=exc)
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc.with_traceback(None)


def _reused(guard: Guard, request: HttpRequest) -> PipelineClaims | None:
    # Claims an outer layer (this middleware, or bbverify.wsgi around Django) verified
    # under the same verifier and policy settle the request (Guard.reusable decides).
    claims = guard.reused(request.META)
    if claims is not None:
        setattr(request, CLAIMS_ATTR, claims)
        setattr(request, CLIENT_IP_ATTR, request.META.get(CLIENT_IP_KEY))
    return claims


@sensitive_variables(*_SENSITIVE)
def _begin(guard: Guard, request: HttpRequest, optional: bool) -> _Begun | None:
    lines, peer, forwarded = environ_request(request.META)
    authorization = _Credentials(lines)
    context = guard.context(peer, forwarded, request.method, request.path_info or "/")
    setattr(request, CLIENT_IP_ATTR, context.client_ip)
    request.META[CLIENT_IP_KEY] = context.client_ip
    if optional:
        try:
            bearer_token(authorization)
        except MissingToken:
            # No bearer credential where none is required: not a refusal, so not audited as one.
            setattr(request, CLAIMS_ATTR, None)
            return None
        except VerificationError:
            pass  # a malformed header: Guard.verify audits and raises it
    return authorization, context


@_sensitive_async
async def _flow(guard: Guard, request: HttpRequest, optional: bool, verify: _Verify) -> PipelineClaims | None:
    """The one request flow, written once: ``verify`` is the only step that differs.

    :func:`verify_request` drives it synchronously (its ``verify`` never
    suspends), :func:`averify_request` awaits it.
    """
    reused = _reused(guard, request)
    if reused is not None:
        return reused
    try:
        begun = _begin(guard, request, optional)
        if begun is None:
            return None
        authorization, context = begun
        claims = await verify(authorization, context=context)
    except Exception as exc:
        raise _scrubbed(exc) from None
    setattr(request, CLAIMS_ATTR, claims)
    guard.store(request.META, claims, context.client_ip)
    return claims


def _run_sync(flow: Coroutine[Any, Any, PipelineClaims | None]) -> PipelineClaims | None:
    # The flow awaits only a verify that never suspends: one send() runs it to the end.
    try:
        flow.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    flow.close()
    raise RuntimeError("bbverify: the blocking request flow tried to suspend")


@sensitive_variables(*_SENSITIVE)
def verify_request(guard: Guard, request: HttpRequest, *, optional: bool = False) -> PipelineClaims | None:
    """Verify the request's bearer token under ``guard`` (blocking; WSGI and sync views).

    Sets ``request.pipeline_claims`` and ``request.pipeline_client_ip``.
    With ``optional``, a request without a bearer token gives ``None``
    (``request.pipeline_claims = None``); otherwise that is
    :class:`~bbverify.http.MissingToken`. Raises only
    :class:`~bbverify.errors.VerificationError` (by contract); any exception
    leaves without the frames and chained exceptions below this function, so
    an error report never shows the token.
    """

    async def verify(authorization: Sequence[str], *, context: RequestContext) -> PipelineClaims:
        return guard.verify(authorization, context=context)

    return _run_sync(_flow(guard, request, optional, verify))


@_sensitive_async
async def averify_request(
    guard: Guard, request: HttpRequest, *, optional: bool = False
) -> PipelineClaims | None:
    """As :func:`verify_request`, awaiting any key fetch (ASGI, async views)."""
    return await _flow(guard, request, optional, guard.averify)


def as_django(response: ErrorResponse) -> HttpResponse:
    """An :class:`~bbverify.http.ErrorResponse` as a Django response (same bytes and headers)."""
    out = HttpResponse(response.body, status=response.status)
    for name, value in response.headers:
        out[name] = value
    return out


def native_response(native: object) -> HttpResponseBase | None:
    """``on_error``'s answer as a response Django can send, or ``None`` to send the default.

    A Django response is sent as is; a DRF ``Response`` (or any unrendered
    ``SimpleTemplateResponse``) is rendered first, as JSON when no DRF
    content negotiation chose a renderer (outside a DRF view). An awaitable
    (an ``async`` hook slipped past the start-up check) or a render that fails
    is logged and replaced by the default answer: a refusal never becomes a 500.
    """
    if native is None:
        return None
    if inspect.isawaitable(native):
        close = getattr(native, "close", None)
        if callable(close):
            close()
        _log.error("bbverify: on_error returned an awaitable; sending the default answer")
        return None
    if not isinstance(native, HttpResponseBase):
        _log.error("bbverify: on_error returned %s, not a Django response; sending the default answer",
                   type(native).__name__)
        return None
    render = getattr(native, "render", None)
    if callable(render) and not getattr(native, "is_rendered", True):
        try:
            if getattr(native, "accepted_renderer", None) is None and hasattr(native, "data"):
                from rest_framework.renderers import JSONRenderer

                native.accepted_renderer = JSONRenderer()
                native.accepted_media_type = "application/json"
                native.renderer_context = {}
            render()
        except Exception:
            _log.exception("bbverify: on_error's response could not be rendered; sending the default answer")
            return None
    return native


def send_error(refusal: Refusal) -> HttpResponseBase:
    """The Django answer for ``refusal``: ``on_error``'s Django response if any, else RFC 6750 JSON."""
    chosen = native_response(refusal.native)
    return chosen if chosen is not None else as_django(refusal)


def refusal(guard: Guard, error: VerificationError) -> HttpResponseBase:
    """The Django answer for ``error`` under ``guard`` (:func:`send_error` of its :class:`Refusal`)."""
    return send_error(guard.refusal(error))
