"""Starlette helpers: an ``AuthenticationBackend`` and response conversion.

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
request with a bad token is refused with the RFC 6750 answer.
"""

from __future__ import annotations

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import Response

from .asgi import PipelineUser as _PipelineUser
from .asgi import auth_headers, peer_address, scopes_for
from .errors import VerificationError
from .http import (
    CLAIMS_KEY,
    DEFAULT_REALM,
    POLICY_KEY,
    VERIFIER_KEY,
    ErrorResponse,
    Guard,
    TrustedProxiesSpec,
)
from .policies import Rule
from .verifier import Verifier

__all__ = ["PipelineAuthBackend", "PipelineAuthenticationError", "PipelineUser", "to_response"]


class PipelineUser(_PipelineUser, BaseUser):
    """:class:`bbverify.asgi.PipelineUser` that is also a Starlette ``BaseUser``."""


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
    """

    def __init__(
        self,
        verifier: Verifier,
        *route_rules: Rule,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
        policy: str | None = None,
    ) -> None:
        self.guard = Guard(
            verifier, route_rules, trusted_proxies=trusted_proxies, realm=realm, policy=policy
        )

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, PipelineUser] | None:
        scope = conn.scope
        authorization, forwarded_for = auth_headers(scope)
        if not authorization:
            return None
        client = self.guard.client_ip(peer_address(scope), forwarded_for)
        method = scope.get("method", "GET")
        try:
            claims = await self.guard.averify(
                authorization, client=client, method=method, path=scope.get("path") or "/"
            )
        except VerificationError as exc:
            raise PipelineAuthenticationError(exc) from None
        scope[CLAIMS_KEY] = claims
        scope[VERIFIER_KEY] = self.guard.verifier
        scope[POLICY_KEY] = self.guard.applied_policy
        return AuthCredentials(scopes_for(claims)), PipelineUser(claims)

    def on_error(self, conn: HTTPConnection, exc: AuthenticationError) -> Response:
        """Render a refusal the RFC 6750 way (for ``AuthenticationMiddleware(on_error=...)``)."""
        if isinstance(exc, PipelineAuthenticationError):
            return to_response(self.guard.error_response(exc.error))
        return Response(str(exc), status_code=400)
