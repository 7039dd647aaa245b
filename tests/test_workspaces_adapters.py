"""Two workspaces, one app, through every adapter on real loopback servers (issue 14).

Two fake issuers stand for two Bitbucket workspaces. One verifier, built from
configuration, trusts both; routes pick named policies. A token from either
workspace is accepted under its own policy, and every kind of cross-workspace
confusion is refused.

No ``from __future__ import annotations``: FastAPI must see the routes'
``Annotated`` dependencies.
"""

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from servers import bearer, serve_asgi, serve_wsgi
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bbverify import ConfigurationError, PipelineClaims, Verifier
from bbverify.asgi import PipelineAuthMiddleware as ASGIAuth
from bbverify.config import verifier_from_mapping
from bbverify.fastapi import PipelineAuth, install_error_handler
from bbverify.flask import BBVerify, current_claims, require_pipeline
from bbverify.starlette import PipelineAuthBackend
from bbverify.testing import FakeIssuer
from bbverify.wsgi import PipelineAuthMiddleware as WSGIAuth

ROUTES = {"/any": None, "/alpha": "alpha-only", "/beta-deploy": "beta-deploy"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeIssuer, FakeIssuer, FakeIssuer]]:
    with FakeIssuer("alpha") as a, FakeIssuer("beta") as b, FakeIssuer("gamma") as c:
        yield a, b, c


@pytest.fixture(scope="module")
def two_workspace_verifier(fakes: tuple[FakeIssuer, FakeIssuer, FakeIssuer]) -> Verifier:
    a, b, _ = fakes
    return verifier_from_mapping(
        {
            "default_policy": "either",
            "timeout": 2.0,
            "workspaces": [
                {"name": "alpha", "issuer": a.issuer, "workspace_uuid": a.workspace_uuid},
                {
                    "name": "beta",
                    "issuer": b.issuer,
                    "workspace_uuid": b.workspace_uuid,
                    "audience": [b.audience, "https://deploy.example.com"],
                },
            ],
            "policies": {
                "either": {"allow": [{"workspace": ["alpha"]}, {"workspace": ["beta"]}]},
                "alpha-only": {"allow": [{"workspace": ["alpha"], "repositories": [a.repository_uuid]}]},
                "beta-deploy": {"allow": [{"workspace": ["beta"], "environments": [b.environment_uuid]}]},
            },
        }
    )


@pytest.fixture(scope="module")
def tokens(fakes: tuple[FakeIssuer, FakeIssuer, FakeIssuer]) -> dict[str, str]:
    a, b, c = fakes
    # Minted now and valid for an hour: the module's servers verify against the real clock.
    return {
        "alpha": a.mint(),
        "beta-build": b.mint(),
        "beta-deploy": b.mint(environment_uuid=b.environment_uuid),
        "beta-custom-aud": b.mint(
            environment_uuid=b.environment_uuid, audience=["https://deploy.example.com"]
        ),
        # B's key, A's issuer: the token names A, so only A's keys may vouch for it.
        "forged": b.sign(a.claims()),
        "forged-same-kid": b.sign(a.claims(), header={"kid": a.signing_key.kid}),
        # Each workspace's audience on the other's token.
        "alpha-with-beta-aud": a.mint(audience=b.audience),
        "beta-with-alpha-aud": b.mint(audience=a.audience, environment_uuid=b.environment_uuid),
        # A's issuer and audience, but B's workspace UUID: A's pin refuses it.
        "pin-mismatch": a.mint(extra={"workspaceUuid": b.workspace_uuid}),
        "gamma": c.mint(),
    }


#: (token, path) -> (status, code) expected from every adapter.
EXPECTED: dict[tuple[str, str], tuple[int, str]] = {
    ("alpha", "/any"): (200, "ok"),
    ("alpha", "/alpha"): (200, "ok"),
    ("alpha", "/beta-deploy"): (403, "workspace_not_allowed"),
    ("beta-build", "/any"): (200, "ok"),
    ("beta-build", "/alpha"): (403, "workspace_not_allowed"),
    ("beta-build", "/beta-deploy"): (403, "environment_required"),
    ("beta-deploy", "/beta-deploy"): (200, "ok"),
    ("beta-deploy", "/alpha"): (403, "workspace_not_allowed"),
    ("beta-custom-aud", "/beta-deploy"): (200, "ok"),
    ("forged", "/any"): (401, "unknown_key"),
    ("forged-same-kid", "/alpha"): (401, "bad_signature"),
    ("alpha-with-beta-aud", "/any"): (401, "audience_mismatch"),
    ("beta-with-alpha-aud", "/beta-deploy"): (401, "audience_mismatch"),
    ("pin-mismatch", "/alpha"): (401, "workspace_mismatch"),
    ("gamma", "/any"): (401, "issuer_mismatch"),
}


def check_all(base: str, tokens: dict[str, str], http: httpx.Client, anonymous: int = 401) -> None:
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for token_name, path in EXPECTED:
        response = http.get(base + path, headers=bearer(tokens[token_name]))
        body = response.json()
        code = "ok" if response.status_code == 200 else body.get("code") or body.get("detail", {}).get("code")
        seen[(token_name, path)] = (response.status_code, code)
        if response.status_code == 200:
            assert body["path"] == path
    assert seen == EXPECTED
    assert http.get(base + "/any").status_code == anonymous


def answer(path: str, claims: PipelineClaims) -> dict[str, Any]:
    return {"path": path, "workspace": claims.workspace_uuid}


# -- ASGI middleware ------------------------------------------------------------------------------------


def asgi_app(verifier: Verifier) -> Any:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        response = JSONResponse(answer(scope["path"], scope["bbverify.claims"]))
        await response(scope, receive, send)

    routes = {path: ASGIAuth(inner, verifier=verifier, policy=policy) for path, policy in ROUTES.items()}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await routes[scope["path"]](scope, receive, send)

    return app


def test_asgi_middleware(
    two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client
) -> None:
    with serve_asgi(asgi_app(two_workspace_verifier)) as base:
        check_all(base, tokens, http)


# -- Starlette AuthenticationMiddleware with the backend ----------------------------------------------------


@requires("pipeline")
async def starlette_view(request: Request) -> JSONResponse:
    return JSONResponse(
        answer(request.scope["root_path"] or request.url.path, request.scope["bbverify.claims"])
    )


def starlette_app(verifier: Verifier) -> Starlette:
    mounts = []
    for path, policy in ROUTES.items():
        backend = PipelineAuthBackend(verifier, policy=policy)
        sub = Starlette(
            routes=[Route("/", starlette_view)],
            middleware=[Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)],
        )
        mounts.append(Mount(path, app=sub))
    return Starlette(routes=mounts)


def test_starlette_backend(
    two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client
) -> None:
    with serve_asgi(starlette_app(two_workspace_verifier)) as base:
        client = httpx.Client(timeout=10, follow_redirects=True)
        with client:
            # Without a token the backend leaves the request anonymous; @requires answers 403.
            check_all(base, tokens, client, anonymous=403)


# -- FastAPI ------------------------------------------------------------------------------------------------


def fastapi_app(verifier: Verifier, *, outer_middleware: bool = False) -> Any:
    app = FastAPI()
    install_error_handler(app)

    def route(path: str, policy: str | None) -> None:
        auth = PipelineAuth(verifier, policy=policy)

        async def view(claims: Annotated[PipelineClaims, Depends(auth)]) -> dict[str, Any]:
            return answer(path, claims)

        app.get(path)(view)

    for path, policy in ROUTES.items():
        route(path, policy)
    if outer_middleware:
        return ASGIAuth(app, verifier=verifier)  # the default policy, on every request
    return app


def test_fastapi(two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client) -> None:
    with serve_asgi(fastapi_app(two_workspace_verifier)) as base:
        check_all(base, tokens, http)


def test_fastapi_behind_the_middleware_does_not_reuse_other_policy_claims(
    two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client
) -> None:
    # The middleware verified under the default policy; the route's own policy must still run.
    with serve_asgi(fastapi_app(two_workspace_verifier, outer_middleware=True)) as base:
        check_all(base, tokens, http)


# -- WSGI middleware -------------------------------------------------------------------------------------


def wsgi_app(verifier: Verifier) -> Callable[..., Any]:
    import json

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = json.dumps(answer(environ["PATH_INFO"], environ["bbverify.claims"])).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    routes = {path: WSGIAuth(inner, verifier=verifier, policy=policy) for path, policy in ROUTES.items()}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return routes[environ["PATH_INFO"]](environ, start_response)

    return app


def test_wsgi_middleware(
    two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client
) -> None:
    with serve_wsgi(wsgi_app(two_workspace_verifier)) as base:
        check_all(base, tokens, http)


# -- Flask ----------------------------------------------------------------------------------------------


def flask_app(verifier: Verifier, *, outer_middleware: bool = False) -> Flask:
    app = Flask(__name__)
    BBVerify(app, verifier=verifier)

    def route(path: str, policy: str | None) -> None:
        @require_pipeline(policy=policy)
        def view() -> dict[str, Any]:
            return answer(path, current_claims())

        app.add_url_rule(path, endpoint=path, view_func=view)

    for path, policy in ROUTES.items():
        route(path, policy)
    if outer_middleware:
        app.wsgi_app = WSGIAuth(app.wsgi_app, verifier=verifier)  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize("outer_middleware", [False, True])
def test_flask(
    two_workspace_verifier: Verifier, tokens: dict[str, str], http: httpx.Client, outer_middleware: bool
) -> None:
    with serve_wsgi(flask_app(two_workspace_verifier, outer_middleware=outer_middleware)) as base:
        check_all(base, tokens, http)


# -- policy names are checked when routes are built --------------------------------------------------------


def test_every_adapter_refuses_an_unknown_policy_at_construction(two_workspace_verifier: Verifier) -> None:
    async def asgi(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        pass

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover - never called
        return []

    builders: list[Callable[[], object]] = [
        lambda: ASGIAuth(asgi, verifier=two_workspace_verifier, policy="deplyo"),
        lambda: WSGIAuth(wsgi, verifier=two_workspace_verifier, policy="deplyo"),
        lambda: PipelineAuthBackend(two_workspace_verifier, policy="deplyo"),
        lambda: PipelineAuth(two_workspace_verifier, policy="deplyo"),
        lambda: require_pipeline(two_workspace_verifier, policy="deplyo"),
        lambda: BBVerify(Flask(__name__), verifier=two_workspace_verifier, policy="deplyo"),
    ]
    for build in builders:
        with pytest.raises(ConfigurationError, match="unknown policy 'deplyo'"):
            build()


def test_flask_extension_checks_decorated_views_in_init_app(two_workspace_verifier: Verifier) -> None:
    app = Flask(__name__)

    @app.get("/x")
    @require_pipeline(policy="deplyo")
    def view() -> str:  # pragma: no cover - never called
        return "x"

    with pytest.raises(ConfigurationError, match="deplyo"):
        BBVerify(app, verifier=two_workspace_verifier)


def test_flask_decorator_checks_inside_an_app_context(two_workspace_verifier: Verifier) -> None:
    app = Flask(__name__)
    BBVerify(app, verifier=two_workspace_verifier)
    with app.app_context(), pytest.raises(ConfigurationError, match="deplyo"):
        require_pipeline(policy="deplyo")
    with app.app_context():
        require_pipeline(policy="alpha-only")


def test_flask_extension_policy_is_the_default_for_its_views(
    fakes: tuple[FakeIssuer, FakeIssuer, FakeIssuer], two_workspace_verifier: Verifier
) -> None:
    a, b, _ = fakes
    app = Flask(__name__)
    BBVerify(app, verifier=two_workspace_verifier, policy="alpha-only")

    @app.get("/x")
    @require_pipeline()
    def view() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/x", headers=bearer(a.mint())).status_code == 200
    assert client.get("/x", headers=bearer(b.mint())).status_code == 403
