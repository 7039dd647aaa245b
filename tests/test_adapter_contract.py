"""The one adapter contract: one Refusal type, one send_error per server interface, one
PipelineUser, the same parameter names everywhere, and one RequestContext per request."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.authentication import BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import bbverify.context
from bbverify import ConfigurationError, PipelineClaims, PolicyDenied, asgi, identity, starlette, wsgi
from bbverify.context import RequestContext
from bbverify.errors import MissingToken
from bbverify.guard import Guard, Refusal
from bbverify.http import ErrorResponse
from bbverify.policies import Repositories
from bbverify.testing import FakeIssuer

OTHER_REPOSITORY = "{00000000-0000-4000-8000-000000000001}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _get(app: Any, headers: dict[str, str]) -> httpx.Response:
    """One GET through an ASGI app in process (the adapters' own tests run real servers)."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/", headers=headers)

    return asyncio.run(call())


# -- one refusal type -------------------------------------------------------------------


def test_refusal_is_the_default_answer_with_its_error(issuer: FakeIssuer) -> None:
    error = MissingToken("no token")
    refusal = Guard(issuer.verifier(), realm="api").refusal(error)
    assert isinstance(refusal, Refusal) and isinstance(refusal, ErrorResponse)
    assert refusal.error is error and refusal.native is None
    assert refusal.status == 401
    assert refusal.header("WWW-Authenticate") == 'Bearer realm="api"'
    assert json.loads(refusal.body)["code"] == "missing_token"
    assert refusal.response == ErrorResponse(refusal.status, refusal.headers, refusal.body)


def test_refusal_takes_on_errors_answer(issuer: FakeIssuer) -> None:
    mine = ErrorResponse(418, (("X-Mine", "1"),), b"teapot")
    refusal = Guard(issuer.verifier(), on_error=lambda error: mine).refusal(PolicyDenied("no"))
    assert (refusal.status, refusal.headers, refusal.body) == (418, mine.headers, b"teapot")
    assert refusal.native is None
    native = object()
    refusal = Guard(issuer.verifier(), on_error=lambda error: native).refusal(PolicyDenied("no"))
    assert refusal.native is native and refusal.status == 403  # the default stays for adapters that need it


# -- one send_error per server interface ----------------------------------------------------


def test_asgi_send_error_sends_the_refusal_or_its_native_app(issuer: FakeIssuer) -> None:
    refusal = Guard(issuer.verifier()).refusal(MissingToken("no token"))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    asyncio.run(asgi.send_error(refusal, {"type": "http"}, receive, send))
    assert sent[0]["status"] == 401
    assert (b"content-length", str(len(refusal.body)).encode()) in sent[0]["headers"]
    assert sent[1]["body"] == refusal.body
    sent.clear()
    native = Refusal(401, (), b"", refusal.error, PlainTextResponse("mine", status_code=401))
    asyncio.run(asgi.send_error(native, {"type": "http"}, receive, send))
    assert sent[1]["body"] == b"mine"


def test_wsgi_send_error_starts_the_refusal_or_runs_its_native_app(issuer: FakeIssuer) -> None:
    refusal = Guard(issuer.verifier()).refusal(PolicyDenied("denied"))
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.append((status, headers))

    assert wsgi.send_error(refusal, {}, start_response) == [refusal.body]
    assert started[0][0] == "403 Forbidden" and ("Content-Length", str(len(refusal.body))) in started[0][1]

    def app(environ: dict[str, Any], start: Any) -> list[bytes]:
        start("401 Unauthorized", [])
        return [b"native"]

    native = Refusal(refusal.status, refusal.headers, refusal.body, refusal.error, app)
    assert wsgi.send_error(native, {}, start_response) == [b"native"]


# -- one PipelineUser ---------------------------------------------------------------------


def test_one_pipeline_user(issuer: FakeIssuer) -> None:
    claims = issuer.verifier().verify(issuer.mint(environment_uuid=issuer.environment_uuid))
    assert asgi.PipelineUser is identity.PipelineUser
    assert issubclass(starlette.PipelineUser, identity.PipelineUser)
    assert issubclass(starlette.PipelineUser, BaseUser)
    user = starlette.PipelineUser(claims)
    assert user.is_authenticated and not user.is_anonymous
    assert user.identity == user.username == claims.subject == str(user)
    assert user.pk == user.id == claims.repository_uuid
    assert claims.repository_uuid in user.display_name
    assert str(claims.deployment_environment_uuid) in user.display_name
    assert not user.has_perm("anything") and repr(user) == f"PipelineUser({claims.subject!r})"


# -- the same parameter names -----------------------------------------------------------------


def _starlette_app(backend: starlette.PipelineAuthBackend) -> Starlette:
    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.user.is_authenticated})

    middleware = [Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)]
    return Starlette(routes=[Route("/", who)], middleware=middleware)


@pytest.mark.parametrize("spelling", ["policies", "positional"])
def test_starlette_takes_policies(issuer: FakeIssuer, spelling: str) -> None:
    verifier = issuer.verifier()
    rule = Repositories(OTHER_REPOSITORY)
    backend = (
        starlette.PipelineAuthBackend(verifier, policies=[rule])
        if spelling == "policies"
        else starlette.PipelineAuthBackend(verifier, rule)
    )
    response = _get(_starlette_app(backend), _bearer(issuer.mint()))
    assert response.status_code == 403 and response.json()["code"] == "repository_not_allowed"


def test_fastapi_takes_policies(issuer: FakeIssuer) -> None:
    from fastapi import Depends, FastAPI

    from bbverify.fastapi import PipelineAuth, install_error_handler

    app = FastAPI()
    install_error_handler(app)
    guarded = PipelineAuth(issuer.verifier(), policies=[Repositories(OTHER_REPOSITORY)])

    @app.get("/")
    async def home(claims: PipelineClaims = Depends(guarded)) -> dict[str, str]:
        return {"repository": claims.repository_uuid}

    response = _get(app, _bearer(issuer.mint()))
    assert response.status_code == 403 and response.json()["code"] == "repository_not_allowed"


def test_flask_takes_policies(issuer: FakeIssuer) -> None:
    from bbverify.flask import require_pipeline

    app = Flask(__name__)

    @app.get("/")
    @require_pipeline(issuer.verifier(), policies=[Repositories(OTHER_REPOSITORY)])
    def home() -> str:
        return "ok"

    response = app.test_client().get("/", headers=_bearer(issuer.mint()))
    assert response.status_code == 403 and response.get_json()["code"] == "repository_not_allowed"


def test_both_spellings_at_once_are_refused(issuer: FakeIssuer) -> None:
    from bbverify.fastapi import PipelineAuth
    from bbverify.flask import require_pipeline

    verifier, rule = issuer.verifier(), Repositories(OTHER_REPOSITORY)
    for build in (
        lambda: starlette.PipelineAuthBackend(verifier, rule, policies=[rule]),
        lambda: PipelineAuth(verifier, rule, policies=[rule]),
        lambda: require_pipeline(verifier, rule, policies=[rule]),
        lambda: require_pipeline(None, rule, policies=[rule]),
    ):
        with pytest.raises(ConfigurationError) as caught:
            build()
        assert caught.value.key == "policies"


# -- one RequestContext per request ------------------------------------------------------------


def test_guard_context_holds_the_proxy_walks_address_object(issuer: FakeIssuer) -> None:
    guard = Guard(issuer.verifier(), trusted_proxies=["10.0.0.0/8"])
    context = guard.context("10.1.2.3", [b"203.0.113.9, 10.9.9.9"], "POST", "/deploy")
    assert context.client_address == ipaddress.IPv4Address("203.0.113.9")
    assert (context.client_ip, context.method, context.path) == ("203.0.113.9", "POST", "/deploy")
    mapped = guard.context("::ffff:192.0.2.1", [], "GET", "/")
    assert mapped.client_address == ipaddress.IPv4Address("192.0.2.1")
    assert guard.context("unknown", [], "GET", "/").client_address is None


def test_rules_see_the_adapters_context_without_a_reparse(
    issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[RequestContext] = []

    def record(claims: PipelineClaims, context: RequestContext) -> None:
        seen.append(context)

    def no_reparse(text: str) -> object:
        raise AssertionError(f"the client address {text!r} was parsed again from text")

    def ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    monkeypatch.setattr(bbverify.context, "parse_client_ip", no_reparse)
    app = wsgi.PipelineAuthMiddleware(
        ok,
        verifier=issuer.verifier(),
        policies=[record],
        trusted_proxies=1,
    )
    environ = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": "/v1/x",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_FORWARDED_FOR": "198.51.100.7",
        "HTTP_AUTHORIZATION": f"Bearer {issuer.mint()}",
    }
    statuses: list[str] = []
    app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"]
    (context,) = seen
    assert context.client_address == ipaddress.IPv4Address("198.51.100.7")
    assert (context.method, context.path) == ("PUT", "/v1/x") and context.now > 0  # the verifier's clock
    assert environ["bbverify.client_ip"] == "198.51.100.7"


def test_fastapi_takes_optional(issuer: FakeIssuer) -> None:
    from fastapi import Depends, FastAPI

    from bbverify.fastapi import PipelineAuth

    app = FastAPI()
    maybe = PipelineAuth(issuer.verifier(), optional=True)

    @app.get("/")
    async def home(claims: PipelineClaims | None = Depends(maybe)) -> dict[str, bool]:
        return {"claims": claims is not None}

    assert _get(app, {}).json() == {"claims": False}
    assert _get(app, _bearer(issuer.mint())).json() == {"claims": True}
    assert _get(app, _bearer("not-a-token")).status_code == 401  # a bad token is still refused
    assert not PipelineAuth(issuer.verifier(), optional=False).optional
    with pytest.raises(ConfigurationError) as caught:
        PipelineAuth(issuer.verifier(), optional=False, auto_error=False)
    assert caught.value.key == "optional"


def test_guard_context_memo_keys_on_every_input_and_stays_bounded(issuer: FakeIssuer) -> None:
    guard = Guard(issuer.verifier(), trusted_proxies=1)
    first = guard.context("10.0.0.1", ["203.0.113.1"], "GET", "/a")
    assert guard.context("10.0.0.1", ["203.0.113.1"], "GET", "/a") is first  # frozen, so shared
    others = [
        guard.context("10.0.0.1", ["203.0.113.2"], "GET", "/a"),
        guard.context("10.0.0.1", ["203.0.113.1"], "POST", "/a"),
        guard.context("10.0.0.1", ["203.0.113.1"], "GET", "/b"),
        guard.context("10.0.0.1", ["203.0.113.1", "198.51.100.1"], "GET", "/a"),
    ]
    assert [(c.client_ip, c.method, c.path) for c in others] == [
        ("203.0.113.2", "GET", "/a"),
        ("203.0.113.1", "POST", "/a"),
        ("203.0.113.1", "GET", "/b"),
        ("198.51.100.1", "GET", "/a"),
    ]
    long_path = "/" + "x" * 600
    built = guard.context("10.0.0.1", [], "GET", long_path)
    assert guard.context("10.0.0.1", [], "GET", long_path) is not built  # too long to keep
    for i in range(3000):
        guard.context("10.0.0.1", [f"203.0.113.{i % 250}"], "GET", f"/{i}")
    assert len(guard._contexts) <= 1024
