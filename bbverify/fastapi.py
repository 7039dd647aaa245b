"""FastAPI: a security dependency that returns the verified claims.

::

    from fastapi import Depends, FastAPI
    from bbverify import PipelineClaims
    from bbverify.fastapi import PipelineAuth, install_error_handler

    app = FastAPI()
    install_error_handler(app)  # answer with bbverify's JSON body
    pipeline = PipelineAuth(verifier)

    @app.post("/deploy")
    async def deploy(claims: PipelineClaims = Depends(pipeline)):
        ...

``PipelineAuth`` is an ``HTTPBearer`` security scheme, so the route shows as
bearer-protected in the OpenAPI document. It raises :class:`PipelineAuthError`
(an ``HTTPException`` with the RFC 6750 status and headers). With
:func:`install_error_handler` the body is bbverify's
``{"error", "code", "message"}``; without it FastAPI's default handler wraps
the same object in ``{"detail": ...}``.

Scopes are honoured: ``Security(pipeline, scopes=["deployment"])`` admits
only tokens of deployment steps (403, code ``insufficient_scope``,
otherwise); ``"pipeline"`` is every verified token. The names are those of
the Starlette adapter (:data:`bbverify.http.KNOWN_SCOPES`); an unknown name
is a configuration mistake: :func:`check_routes` raises
:class:`~bbverify.errors.ConfigurationError` for it at start-up (FastAPI
gives a dependency no hook when ``Security(...)`` is built or a route is
added, so the check runs when the app starts: :func:`install_error_handler`
installs it in the app's lifespan). An app served without lifespan still
gets the error on the route's first request.

``PipelineAuth(verifier, auto_error=False)`` makes authentication optional:
a request without an ``Authorization`` header gets ``None`` instead of a
401 (a request *with* a bad token is still refused). The client address the
rules saw is ``bbverify.http.request_client_ip(request)``.
"""

# No "from __future__ import annotations" here: FastAPI reads the dependency's
# signature at run time, and older releases (0.110, our floor) cannot resolve
# string annotations on a callable instance: ``request`` became a required
# query parameter and every request got 422.
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.security import HTTPBearer, SecurityScopes
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .asgi import scope_request, set_scope_claims
from .bearer import DEFAULT_REALM, ErrorResponse
from .claims import PipelineClaims
from .errors import ConfigurationError, VerificationError
from .guard import ErrorHandler, Guard, route_policies
from .identity import CLAIMS_KEY
from .policies import Rule
from .proxies import TrustedProxiesSpec
from .scopes import check_scope_names, check_scopes
from .starlette import to_response
from .verifier import Verifier

__all__ = ["PipelineAuth", "PipelineAuthError", "check_routes", "install_error_handler"]


class PipelineAuthError(HTTPException):
    """A refused request: an ``HTTPException`` carrying the bbverify error.

    ``error`` is the :class:`~bbverify.errors.VerificationError`; ``response``
    is what :func:`install_error_handler` sends (the default RFC 6750 answer,
    or what your ``on_error`` returned).
    """

    def __init__(self, error: VerificationError, response: ErrorResponse | Response) -> None:
        if isinstance(response, ErrorResponse):
            headers = {k: v for k, v in response.headers if k.lower() != "content-type"}
            status, detail = response.status, json.loads(response.body)
        else:
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            status, detail = response.status_code, error.message
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.error = error
        self.response = response


class PipelineAuth(HTTPBearer):
    """Dependency verifying the request's pipeline token; returns :class:`PipelineClaims`.

    Args:
        verifier: the :class:`~bbverify.Verifier`.
        route_rules: rules for this route, added to the verifier's own (the
            older spelling of ``policies``; give one or the other).
        policies: rules for this route, added to the verifier's own (the
            name every adapter uses).
        trusted_proxies: as for :class:`bbverify.asgi.PipelineAuthMiddleware`.
        realm: the ``realm`` of ``WWW-Authenticate``.
        policy: the verifier's named policy for this route
            (``PipelineAuth(verifier, policy="deploy")``); ``None`` applies the
            verifier's default policy, if any. Checked now.
        on_error: ``on_error(error)`` returning an
            :class:`~bbverify.http.ErrorResponse` or a Starlette ``Response``
            for :func:`install_error_handler` to send.
        auto_error: ``True`` (default) refuses a request without a token;
            ``False`` returns ``None`` for it (optional authentication, as
            FastAPI's own ``HTTPBearer(auto_error=False)``).
        optional: ``True`` is ``auto_error=False`` under the name the Flask
            and Django adapters use; ``None`` (default) leaves it to
            ``auto_error``. Contradicting ``auto_error`` is a
            :class:`~bbverify.errors.ConfigurationError`.
        scheme_name: the security scheme's name in the OpenAPI document.
        description: the security scheme's description in the OpenAPI document.

    Returns the :class:`PipelineClaims` (``None`` only with
    ``auto_error=False`` and no ``Authorization`` header). Raises
    :class:`PipelineAuthError` for a refusal, and
    :class:`~bbverify.errors.ConfigurationError` for an unknown scope in
    ``Security(..., scopes=[...])``.

    When :class:`~bbverify.asgi.PipelineAuthMiddleware` with the same verifier
    already verified the request and the route adds no rules, its claims are
    reused as they are.
    """

    def __init__(
        self,
        verifier: Verifier,
        *route_rules: Rule,
        policies: Rule | Sequence[Rule] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
        on_error: ErrorHandler | None = None,
        auto_error: bool = True,
        scheme_name: str | None = "BitbucketPipelinesOIDC",
        description: str | None = "A Bitbucket Pipelines OIDC token ($BITBUCKET_STEP_OIDC_TOKEN).",
        policy: str | None = None,
        optional: bool | None = None,
    ) -> None:
        super().__init__(
            bearerFormat="JWT", scheme_name=scheme_name, description=description, auto_error=False
        )
        self.guard = Guard(
            verifier,
            route_policies(policies, route_rules),
            trusted_proxies=trusted_proxies,
            realm=realm,
            on_error=on_error,
            policy=policy,
        )
        if not isinstance(auto_error, bool):
            raise ConfigurationError("must be True or False", key="auto_error")
        if optional is not None:
            if not isinstance(optional, bool):
                raise ConfigurationError("must be True or False", key="optional")
            if not auto_error and not optional:
                raise ConfigurationError("contradicts auto_error=False; give one of the two", key="optional")
            auto_error = not optional
        # HTTPBearer's own flag stays False: this class answers every refusal itself.
        self.optional = not auto_error

    async def __call__(  # type: ignore[override]
        self, request: HTTPConnection, security_scopes: SecurityScopes
    ) -> PipelineClaims | None:
        scope = request.scope
        guard = self.guard
        required = check_scope_names(security_scopes.scopes, "Security.scopes")
        claims = guard.reused(scope)
        try:
            if claims is None:
                authorization, context = scope_request(guard, scope)
                if self.optional and not authorization:
                    return None
                claims = await guard.averify(authorization, context=context)
                if CLAIMS_KEY not in scope:
                    set_scope_claims(scope, claims, guard, context.client_ip)
            check_scopes(claims, required, scope, policy=guard.policy)
        except VerificationError as exc:
            refusal = guard.refusal(exc)
            native = refusal.native if isinstance(refusal.native, Response) else None
            raise PipelineAuthError(exc, native or refusal.response) from None
        return claims


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PipelineAuthError)
    if isinstance(exc.response, Response):
        return exc.response
    return to_response(exc.response)


def _oauth_scopes(dependant: Any) -> list[str]:
    # FastAPI < 0.120 keeps the accumulated list in security_scopes; newer
    # versions split it into parent_oauth_scopes and own_oauth_scopes.
    scopes = getattr(dependant, "security_scopes", None)
    if scopes is not None:
        return list(scopes)
    return [*(getattr(dependant, "parent_oauth_scopes", None) or []),
            *(getattr(dependant, "own_oauth_scopes", None) or [])]


def _walk(dependant: Any, where: str, depth: int = 0) -> None:
    if depth > 64:  # bounded: FastAPI forbids cycles, but stay bounded whatever is given
        return
    if isinstance(getattr(dependant, "call", None), PipelineAuth):
        check_scope_names(_oauth_scopes(dependant), f"{where}: Security.scopes")
    for sub in getattr(dependant, "dependencies", None) or ():
        _walk(sub, where, depth + 1)


def _routes(routes: Iterable[Any], depth: int = 0) -> Iterable[Any]:
    for route in routes:
        yield route
        inner = getattr(getattr(route, "app", None), "routes", None) if depth < 16 else None
        if inner is not None and getattr(route, "dependant", None) is None:  # a Mount
            yield from _routes(inner, depth + 1)


def check_routes(app: FastAPI) -> None:
    """Check every route's ``Security(PipelineAuth(...), scopes=[...])`` names now.

    Walks the app's routes (mounted apps included) and their dependencies;
    raises :class:`~bbverify.errors.ConfigurationError` (``key`` like
    ``route '/release': Security.scopes[0]``) for a scope name bbverify does
    not grant (:data:`bbverify.http.KNOWN_SCOPES`). :func:`install_error_handler`
    runs it when the app starts; call it yourself after adding routes to fail
    even earlier (tests, app factories).
    """
    for route in _routes(app.router.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            _walk(dependant, f"route {getattr(route, 'path', '?')!r}")


def install_error_handler(app: FastAPI) -> None:
    """Answer :class:`PipelineAuthError` with bbverify's own body (not ``{"detail": ...}``).

    Also runs :func:`check_routes` when the app starts (its lifespan), so a
    misspelt scope stops the server from starting instead of answering 500.
    """
    app.add_exception_handler(PipelineAuthError, _handle)
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(target: Any) -> AsyncIterator[Any]:
        check_routes(app)  # routes are complete once the server starts the app
        async with inner(target) as state:
            yield state

    app.router.lifespan_context = lifespan
