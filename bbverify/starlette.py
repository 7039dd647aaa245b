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

from .asgi import WS_POLICY_VIOLATION, scope_request, set_scope_claims
from .bearer import DEFAULT_REALM, ErrorResponse, error_response, quote_header_value
from .errors import ConfigurationError, ErrorCode, MissingToken, VerificationError
from .guard import Guard, route_policies
from .identity import PipelineUser as _PipelineUser
from .identity import request_claims
from .policies import Rule
from .proxies import TrustedProxiesSpec
from .scopes import check_scope_names, check_scopes, scopes_for
from .verifier import Verifier

__all__ = ["PipelineAuthBackend", "PipelineAuthenticationError", "PipelineUser", "requires", "to_response"]

F = TypeVar("F", bound=Callable[..., Any])


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
    """

    def __init__(
        self,
        verifier: Verifier,
        *route_rules: Rule,
        policy: str | None = None,
        policies: Rule | Sequence[Rule] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
    ) -> None:
        rules = route_policies(policies, route_rules)
        self.guard = Guard(verifier, rules, trusted_proxies=trusted_proxies, realm=realm, policy=policy)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, PipelineUser] | None:
        scope = conn.scope
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
            return to_response(self.guard.error_response(exc.error))
        return Response(str(exc), status_code=400)


def requires(scopes: str | Iterable[str] = "pipeline", *, realm: str = DEFAULT_REALM) -> Callable[[F], F]:
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
    """
    needed = check_scope_names(scopes)
    if not isinstance(realm, str) or not realm or quote_header_value(realm, 100) != realm:
        raise ConfigurationError("must be printable ASCII without quotes or backslashes", key="realm")

    def refusal(conn: object) -> VerificationError | None:
        claims = request_claims(conn)
        if claims is None:
            return MissingToken("this resource needs a pipeline token", code=ErrorCode.MISSING_TOKEN)
        scope = getattr(conn, "scope", None)
        try:
            check_scopes(claims, needed, scope if isinstance(scope, dict) else None)
        except VerificationError as exc:
            return exc
        return None

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
                return to_response(error_response(error, realm))

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            error = refusal(connection(args, kwargs))
            if error is None:
                return func(*args, **kwargs)
            return to_response(error_response(error, realm))

        return cast(F, wrapper)

    return decorate
