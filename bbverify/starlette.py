"""Starlette integration: an ``AuthenticationBackend`` for pipeline tokens, with its error responses.

Most applications should use :class:`bbverify.asgi.PipelineAuthMiddleware`,
which refuses requests without a valid token. If you prefer Starlette's own
``AuthenticationMiddleware`` (anonymous requests allowed, routes guarded
with ``@requires("pipeline")``), use :class:`PipelineAuthBackend`::

    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from bbverify.starlette import PipelineAuthBackend

    backend = PipelineAuthBackend(verifier)
    middleware = [Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)]

With this backend a request without ``Authorization`` is anonymous, and a
request with a bad token is refused with the RFC 6750 answer. Guard routes
with :func:`requires` from this module, not Starlette's own: Starlette's
answers a missing token with a plain-text 403 and no challenge, while
bbverify's answers 401 with ``WWW-Authenticate: Bearer`` for a missing token
and 403 with bbverify's JSON body (code ``insufficient_scope``) for a token
without the scope::

    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from bbverify.starlette import requires

    @requires("deployment")
    async def deploy(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from .asgi import WS_POLICY_VIOLATION, scope_path, scope_request, set_scope_claims
from .audit import record
from .bearer import DEFAULT_REALM, ErrorResponse, check_realm, error_response
from .context import RequestContext
from .errors import ConfigurationError, ErrorCode, MissingToken, VerificationError
from .guard import ErrorHandler, Guard, Refusal, route_policies
from .identity import PipelineUser as _PipelineUser
from .identity import request_claims
from .policies import Rule
from .proxies import TrustedProxiesSpec
from .scopes import check_scope_names, check_scopes, scopes_for
from .verifier import Verifier

__all__ = ["PipelineAuthBackend", "PipelineAuthenticationError", "PipelineUser", "requires", "to_response"]

F = TypeVar("F", bound=Callable[..., Any])

#: Where :class:`PipelineAuthBackend` notes its :class:`~bbverify.guard.Guard` for :func:`requires`.
GUARD_KEY = "bbverify.guard"


class PipelineUser(_PipelineUser, BaseUser):
    """:class:`bbverify.identity.PipelineUser` that is also a Starlette ``BaseUser``."""


def to_response(error_response: ErrorResponse) -> Response:
    """A Starlette ``Response`` carrying an :class:`~bbverify.http.ErrorResponse`."""
    headers = {k: v for k, v in error_response.headers if k.lower() != "content-type"}
    return Response(
        error_response.body,
        status_code=error_response.status,
        headers=headers,
        media_type="application/json",
    )


class PipelineAuthenticationError(AuthenticationError):
    """Raised by :class:`PipelineAuthBackend`; ``error`` is the bbverify error."""

    def __init__(self, error: VerificationError) -> None:
        super().__init__(error.message)
        self.error = error


class PipelineAuthBackend(AuthenticationBackend):
    """Starlette authentication backend for pipeline tokens.

    Returns ``None`` (anonymous) when there is no ``Authorization`` header;
    otherwise verifies the token and returns ``AuthCredentials(["pipeline",
    ...])`` and a :class:`~bbverify.asgi.PipelineUser`, and stores the claims in
    ``scope["bbverify.claims"]``. A bad token raises
    :class:`PipelineAuthenticationError`; pass :meth:`on_error` to the
    middleware so that it is answered with the RFC 6750 response.
    ``policy`` names the verifier's named policy to apply (``None``: its
    default policy, if any); it is checked when the backend is built.
    ``policies`` are rules added to the verifier's own (the name every
    adapter uses); extra positional rules, the older spelling, still work
    (giving both is a :class:`~bbverify.errors.ConfigurationError`).
    ``realm`` and ``on_error`` are those of every adapter
    (:class:`~bbverify.guard.Guard`): ``on_error(error)`` may return an
    :class:`~bbverify.http.ErrorResponse` or a Starlette ``Response`` to send
    instead of the RFC 6750 answer, both for this backend's refusals and for
    those of :func:`requires` on the routes behind it (which also audit a
    missing token under this backend's verifier and policy). The backend's
    guard is noted in ``scope["bbverify.guard"]`` for :func:`requires`.
    """

    def __init__(
        self,
        verifier: Verifier,
        *route_rules: Rule,
        policy: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
        on_error: ErrorHandler | None = None,
    ) -> None:
        rules = route_policies(policies, route_rules)
        self.guard = Guard(
            verifier, rules, trusted_proxies=trusted_proxies, realm=realm, on_error=on_error, policy=policy
        )

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, PipelineUser] | None:
        scope = conn.scope
        # Anonymous requests too: requires() refuses them and audits the refusal here.
        scope[GUARD_KEY] = self.guard
        authorization, context = scope_request(self.guard, scope)
        if not authorization:
            return None
        try:
            claims = await self.guard.averify(authorization, context=context)
        except VerificationError as exc:
            raise PipelineAuthenticationError(exc) from None
        set_scope_claims(scope, claims, self.guard, context.client_ip)
        return AuthCredentials(scopes_for(claims)), PipelineUser(claims)

    def on_error(self, conn: HTTPConnection, exc: AuthenticationError) -> Response:
        """Render a refusal the RFC 6750 way (for ``AuthenticationMiddleware(on_error=...)``)."""
        if isinstance(exc, PipelineAuthenticationError):
            return _answer(self.guard.refusal(exc.error))
        return Response(str(exc), status_code=400)


def _answer(refusal: Refusal) -> Response:
    """A refusal as a Starlette ``Response``: ``on_error``'s own, else status, headers, body."""
    if isinstance(refusal.native, Response):
        return refusal.native
    return to_response(refusal.response)


def requires(scopes: str | Iterable[str] = "pipeline", *, realm: str | None = None) -> Callable[[F], F]:
    """Guard a Starlette endpoint (function taking ``request`` or ``websocket``) by scope.

    Use it instead of ``starlette.authentication.requires`` behind
    :class:`PipelineAuthBackend` or :class:`bbverify.asgi.PipelineAuthMiddleware`.
    ``scopes`` are names from :data:`bbverify.http.KNOWN_SCOPES`
    (``"pipeline"``, ``"deployment"``); an unknown name raises
    :class:`~bbverify.errors.ConfigurationError` when the endpoint is
    decorated. A request without verified claims gets 401 with
    ``WWW-Authenticate: Bearer realm=...`` (code ``missing_token``); one whose
    token lacks a scope gets 403 with ``error="insufficient_scope"`` and
    bbverify's JSON body. A refused WebSocket is closed with code 1008.

    Behind :class:`PipelineAuthBackend` the refusal is that backend's: its
    ``on_error`` answers, its realm is the default ``realm``, and a missing
    token is audited once (:meth:`bbverify.Verifier.record_refusal`) under
    its verifier and policy. Without one, a missing token is still logged on
    ``bbverify.audit``. ``realm`` (``None``: the backend's, else
    ``"bbverify"``) is checked like every adapter's
    (:func:`bbverify.bearer.check_realm`).
    """
    needed = check_scope_names(scopes)
    if realm is not None:
        check_realm(realm)

    def refusal(conn: object) -> VerificationError | None:
        claims = request_claims(conn)
        scope = getattr(conn, "scope", None)
        carrier = scope if isinstance(scope, dict) else None
        if claims is None:
            error = MissingToken("this resource needs a pipeline token", code=ErrorCode.MISSING_TOKEN)
            guard = _guard_of(carrier)
            if guard is not None and carrier is not None:
                guard.record_refusal(error, scope_request(guard, carrier)[1])
            elif carrier is not None:
                # No backend to name a verifier: the audit log still sees the refusal.
                record(error, RequestContext(None, 0.0, carrier.get("method"), scope_path(carrier)), None)
            return error
        try:
            check_scopes(claims, needed, carrier)
        except VerificationError as exc:
            return exc
        return None

    def answer(conn: object, error: VerificationError) -> Response:
        scope = getattr(conn, "scope", None)
        guard = _guard_of(scope if isinstance(scope, dict) else None)
        if guard is None:
            return to_response(error_response(error, realm or DEFAULT_REALM))
        if realm is None or realm == guard.realm:
            return _answer(guard.refusal(error))
        custom = guard.custom_error(error)
        if isinstance(custom, Response):
            return custom
        return to_response(custom if isinstance(custom, ErrorResponse) else error_response(error, realm))

    def decorate(func: F) -> F:
        names = list(inspect.signature(func).parameters)
        name = next((n for n in ("request", "websocket") if n in names), None)
        if name is None:
            raise ConfigurationError(
                f"{getattr(func, '__name__', func)!r} has no 'request' or 'websocket' parameter",
                key="requires",
            )
        index = names.index(name)

        def connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return kwargs[name] if name in kwargs else args[index]

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                conn = connection(args, kwargs)
                error = refusal(conn)
                if error is None:
                    return await func(*args, **kwargs)
                if isinstance(conn, WebSocket):
                    await conn.close(code=WS_POLICY_VIOLATION)
                    return None
                return answer(conn, error)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            conn = connection(args, kwargs)
            error = refusal(conn)
            if error is None:
                return func(*args, **kwargs)
            return answer(conn, error)

        return cast(F, wrapper)

    return decorate


def _guard_of(scope: dict[str, Any] | None) -> Guard | None:
    guard = scope.get(GUARD_KEY) if scope is not None else None
    return guard if isinstance(guard, Guard) else None
