"""The ASGI middleware (and Starlette backend) under a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servers import bearer, serve_asgi
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from bbverify import PipelineClaims, PolicyDenied, Verifier
from bbverify.asgi import PipelineAuthMiddleware
from bbverify.http import ErrorResponse
from bbverify.policies import RequestContext
from bbverify.starlette import PipelineAuthBackend
from bbverify.testing import FakeIssuer

CLIENT = "203.0.113.7"
SPOOF = "198.51.100.66"


def deny_forbidden_branch(claims: PipelineClaims, ctx: RequestContext) -> None:
    if claims.branch_name == "forbidden":
        raise PolicyDenied("branch 'forbidden' may not call this API", code="branch_not_allowed")


def ip_gate(claims: PipelineClaims, ctx: RequestContext) -> None:
    # Only /ip/... is gated, so the rest of the suite can call from 127.0.0.1.
    if (ctx.path or "").startswith("/ip/") and ctx.client_ip != CLIENT:
        raise PolicyDenied(f"client {ctx.client_ip} is not allowed", code="ip_not_allowed")


async def whoami(request: Request) -> JSONResponse:
    claims: PipelineClaims = request.scope["bbverify.claims"]
    return JSONResponse(
        {
            "repository": claims.repository_uuid,
            "environment": claims.deployment_environment_uuid,
            "user": request.user.display_name,
            "authenticated": request.user.is_authenticated,
            "scopes": request.auth.scopes,
            "client_ip": request.scope.get("bbverify.client_ip"),
            "method": request.method,
        }
    )


@requires("deployment")
async def deploy_only(request: Request) -> PlainTextResponse:
    return PlainTextResponse("deployed")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "started": request.app.state.started})


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    claims: PipelineClaims = websocket.scope["bbverify.claims"]
    await websocket.send_text(claims.repository_uuid)
    await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> Any:
    app.state.started = True
    yield


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/whoami", whoami, methods=["GET", "POST"]),
            Route("/ip/whoami", whoami),
            Route("/deploy", deploy_only),
            Route("/healthz", healthz),
            Route("/healthz/", healthz),
            Route("/public/{rest:path}", healthz),
            WebSocketRoute("/ws", ws_echo),
        ],
        lifespan=lifespan,
    )
    app.state.started = False
    return app


@pytest.fixture(scope="module")
def gated_verifier(issuer: FakeIssuer) -> Verifier:
    return issuer.verifier(policies=[deny_forbidden_branch, ip_gate])


@pytest.fixture(scope="module")
def direct(gated_verifier: Verifier) -> Iterator[str]:
    app = PipelineAuthMiddleware(
        make_app(), verifier=gated_verifier, exclude_paths=["/healthz"], exclude_prefixes=["/public/"]
    )
    with serve_asgi(app) as url:
        yield url


@pytest.fixture(scope="module")
def behind_cidr(gated_verifier: Verifier) -> Iterator[str]:
    app = PipelineAuthMiddleware(make_app(), verifier=gated_verifier, trusted_proxies=["127.0.0.0/8"])
    with serve_asgi(app) as url:
        yield url


@pytest.fixture(scope="module")
def behind_one_hop(gated_verifier: Verifier) -> Iterator[str]:
    app = PipelineAuthMiddleware(make_app(), verifier=gated_verifier, trusted_proxies=1)
    with serve_asgi(app) as url:
        yield url


# -- allowed --------------------------------------------------------------------------------


def test_valid_token_reaches_app_with_claims(issuer: FakeIssuer, direct: str, http: httpx.Client) -> None:
    resp = http.get(direct + "/whoami", headers=bearer(issuer.mint()))
    assert resp.status_code == 200
    body = resp.json()
    assert body["repository"] == issuer.repository_uuid
    assert body["environment"] is None
    assert body["authenticated"] is True
    assert body["user"] == f"repository {issuer.repository_uuid}"
    assert body["scopes"] == ["pipeline"]
    assert body["client_ip"] == "127.0.0.1"


def test_deployment_token_gets_deployment_scope(issuer: FakeIssuer, direct: str, http: httpx.Client) -> None:
    build = http.get(direct + "/deploy", headers=bearer(issuer.mint()))
    assert build.status_code == 403  # Starlette's @requires, not bbverify
    token = issuer.mint(environment_uuid=issuer.environment_uuid)
    assert http.get(direct + "/deploy", headers=bearer(token)).text == "deployed"
    body = http.post(direct + "/whoami", headers=bearer(token)).json()
    assert body["scopes"] == ["pipeline", "deployment"]
    assert body["environment"] == issuer.environment_uuid
    assert body["method"] == "POST"


def test_lifespan_passes_through(direct: str, http: httpx.Client) -> None:
    assert http.get(direct + "/healthz").json() == {"ok": True, "started": True}


# -- refused ----------------------------------------------------------------------------------


def test_no_token_is_401_without_error_attribute(direct: str, http: httpx.Client) -> None:
    resp = http.get(direct + "/whoami")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="bbverify"'
    assert resp.json()["code"] == "missing_token"
    assert resp.headers["content-type"] == "application/json"


def _expect_invalid(resp: httpx.Response, code: str, token: str | None = None) -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="bbverify", error="invalid_token", error_description="')
    body = resp.json()
    assert body["error"] == "invalid_token"
    assert body["code"] == code
    if token is not None:
        assert token not in resp.text
        assert all(token not in v for v in resp.headers.values())


def test_bad_tokens_are_401(issuer: FakeIssuer, direct: str, http: httpx.Client) -> None:
    url = direct + "/whoami"
    _expect_invalid(http.get(url, headers=bearer("abc.def")), "malformed", "abc.def")
    expired = issuer.mint(issued_at=time.time() - 7200, lifetime=3600)
    _expect_invalid(http.get(url, headers=bearer(expired)), "expired", expired)
    wrong_aud = issuer.mint(audience="ari:cloud:bitbucket::workspace/someone-else")
    _expect_invalid(http.get(url, headers=bearer(wrong_aud)), "audience_mismatch", wrong_aud)
    wrong_iss = issuer.sign(issuer.claims(extra={"iss": "https://evil.example/oidc"}))
    _expect_invalid(http.get(url, headers=bearer(wrong_iss)), "issuer_mismatch", wrong_iss)
    head, _, sig = issuer.mint().rpartition(".")
    tampered = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    _expect_invalid(http.get(url, headers=bearer(tampered)), "bad_signature", tampered)


def test_policy_denial_is_403(issuer: FakeIssuer, direct: str, http: httpx.Client) -> None:
    resp = http.get(direct + "/whoami", headers=bearer(issuer.mint(branch="forbidden")))
    assert resp.status_code == 403
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert resp.json()["code"] == "branch_not_allowed"


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
        [("Authorization", b"Bearer \xe9\xe9")],
        [("Authorization", "Bearer two words")],
        [("Authorization", "")],
    ],
)
def test_malformed_authorization_is_400(direct: str, http: httpx.Client, headers: list[Any]) -> None:
    resp = http.get(direct + "/whoami", headers=headers)
    assert resp.status_code == 400
    assert 'error="invalid_request"' in resp.headers["www-authenticate"]
    assert resp.json()["error"] == "invalid_request"


def test_other_scheme_is_401_missing(direct: str, http: httpx.Client) -> None:
    resp = http.get(direct + "/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="bbverify"'
    assert resp.json()["code"] == "unsupported_scheme"


def test_excluded_paths(direct: str, http: httpx.Client) -> None:
    assert http.get(direct + "/healthz").status_code == 200
    assert http.get(direct + "/public/anything/here").status_code == 200
    # Exact match only: a near miss still needs a token.
    assert http.get(direct + "/healthz/").status_code == 401


# -- client address ---------------------------------------------------------------------------


def test_spoofed_forwarded_for_is_ignored(issuer: FakeIssuer, direct: str, http: httpx.Client) -> None:
    headers = {**bearer(issuer.mint()), "X-Forwarded-For": CLIENT}
    resp = http.get(direct + "/ip/whoami", headers=headers)
    assert resp.status_code == 403
    assert resp.json()["code"] == "ip_not_allowed"


def test_trusted_cidr_proxy_is_honoured(issuer: FakeIssuer, behind_cidr: str, http: httpx.Client) -> None:
    token = issuer.mint()
    ok = http.get(
        behind_cidr + "/ip/whoami", headers={**bearer(token), "X-Forwarded-For": f"{SPOOF}, {CLIENT}"}
    )
    assert ok.status_code == 200
    assert ok.json()["client_ip"] == CLIENT
    # The client put CLIENT in front; the proxy appended the real address.
    spoofed = http.get(
        behind_cidr + "/ip/whoami", headers={**bearer(token), "X-Forwarded-For": f"{CLIENT}, {SPOOF}"}
    )
    assert spoofed.status_code == 403
    junk = http.get(
        behind_cidr + "/ip/whoami", headers={**bearer(token), "X-Forwarded-For": f"{CLIENT}, junk"}
    )
    assert junk.status_code == 403


def test_trusted_hop_count_is_honoured(issuer: FakeIssuer, behind_one_hop: str, http: httpx.Client) -> None:
    token = issuer.mint()
    url = behind_one_hop + "/ip/whoami"
    assert (
        http.get(url, headers={**bearer(token), "X-Forwarded-For": f"{SPOOF}, {CLIENT}"}).status_code == 200
    )
    assert (
        http.get(url, headers={**bearer(token), "X-Forwarded-For": f"{CLIENT}, {SPOOF}"}).status_code == 403
    )
    # No header where a proxy must have added one: unknown client.
    resp = http.get(behind_one_hop + "/whoami", headers=bearer(token))
    assert resp.status_code == 200
    assert resp.json()["client_ip"] is None


# -- websockets --------------------------------------------------------------------------------


def test_websocket_with_token_is_accepted(issuer: FakeIssuer, direct: str) -> None:
    url = direct.replace("http://", "ws://") + "/ws"
    with connect(url, additional_headers=bearer(issuer.mint()), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == issuer.repository_uuid


def test_websocket_without_token_is_refused(issuer: FakeIssuer, direct: str) -> None:
    url = direct.replace("http://", "ws://") + "/ws"
    for headers in ({}, bearer("abc.def"), bearer(issuer.mint(branch="forbidden"))):
        with pytest.raises(InvalidStatus) as info, connect(url, additional_headers=headers, open_timeout=5):
            pass
        # Closing before accept: uvicorn answers the handshake with 403.
        assert info.value.response.status_code == 403


def test_websocket_http_denial(issuer: FakeIssuer, gated_verifier: Verifier) -> None:
    app = PipelineAuthMiddleware(make_app(), verifier=gated_verifier, websocket_denial="http")
    with serve_asgi(app) as url:
        ws_url = url.replace("http://", "ws://") + "/ws"
        with pytest.raises(InvalidStatus) as info, connect(ws_url, open_timeout=5):
            pass
        response = info.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="bbverify"'
        assert json.loads(response.body)["code"] == "missing_token"
        with connect(ws_url, additional_headers=bearer(issuer.mint()), open_timeout=5) as ws:
            assert ws.recv(timeout=5) == issuer.repository_uuid


def test_websocket_close_code_is_1008(gated_verifier: Verifier) -> None:
    # Drive the ASGI protocol directly (no server offers the HTTP-denial extension here).
    async def reached(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    middleware = PipelineAuthMiddleware(reached, verifier=gated_verifier)
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("127.0.0.1", 5000)}
    asyncio.run(middleware(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_token"}]


# -- issuer trouble and concurrency ----------------------------------------------------------------


def test_cold_start_with_jwks_down_is_503(issuer: FakeIssuer, http: httpx.Client) -> None:
    cold = issuer.verifier(failure_backoff=3.0)
    with serve_asgi(PipelineAuthMiddleware(make_app(), verifier=cold)) as url:
        issuer.fail("down")
        try:
            resp = http.get(url + "/whoami", headers=bearer(issuer.mint()))
        finally:
            issuer.recover()
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json() == {
            "error": "temporarily_unavailable",
            "code": "keys_unavailable",
            "message": resp.json()["message"],
        }
        assert "www-authenticate" not in resp.headers


def test_slow_jwks_blocks_nothing_and_is_fetched_once(issuer: FakeIssuer) -> None:
    cold = issuer.verifier()
    app = PipelineAuthMiddleware(make_app(), verifier=cold, exclude_paths=["/healthz"])
    token = issuer.mint()
    with serve_asgi(app) as url:

        async def scenario() -> tuple[list[int], int, bool]:
            before = issuer.jwks_requests
            issuer.fail("slow", 1.0)
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    protected = [
                        asyncio.create_task(client.get(url + "/whoami", headers=bearer(token)))
                        for _ in range(8)
                    ]
                    for _ in range(500):  # wait until the key fetch is in flight
                        if issuer.jwks_requests > before:
                            break
                        await asyncio.sleep(0.01)
                    health = await client.get(url + "/healthz")
                    pending_while_healthy = not any(t.done() for t in protected)
                    statuses = [r.status_code for r in await asyncio.gather(*protected)]
                    assert health.status_code == 200
            finally:
                issuer.recover()
            return statuses, issuer.jwks_requests - before, pending_while_healthy

        statuses, fetches, pending_while_healthy = asyncio.run(scenario())
    assert statuses == [200] * 8
    assert fetches == 1
    assert pending_while_healthy


# -- error override ------------------------------------------------------------------------------------


def test_on_error_hook_overrides_answer(
    issuer: FakeIssuer, gated_verifier: Verifier, http: httpx.Client
) -> None:
    def plain(error: Any) -> Any:
        if error.code == "missing_token":
            return PlainTextResponse("log in first", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return ErrorResponse(418, (("Content-Type", "text/plain"),), b"teapot")

    app = PipelineAuthMiddleware(make_app(), verifier=gated_verifier, on_error=plain)
    with serve_asgi(app) as url:
        missing = http.get(url + "/whoami")
        assert (missing.status_code, missing.text) == (401, "log in first")
        bad = http.get(url + "/whoami", headers=bearer("abc.def"))
        assert (bad.status_code, bad.text) == (418, "teapot")
        assert http.get(url + "/whoami", headers=bearer(issuer.mint())).status_code == 200


# -- Starlette's AuthenticationMiddleware with the backend --------------------------------------------------


async def maybe_user(request: Request) -> JSONResponse:
    return JSONResponse({"authenticated": request.user.is_authenticated, "scopes": request.auth.scopes})


@requires("pipeline")
async def pipeline_only(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.display_name, "has_claims": "bbverify.claims" in request.scope})


def test_starlette_backend(issuer: FakeIssuer, gated_verifier: Verifier, http: httpx.Client) -> None:
    backend = PipelineAuthBackend(gated_verifier)
    app = Starlette(
        routes=[Route("/maybe", maybe_user), Route("/pipeline", pipeline_only)],
        middleware=[Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)],
    )
    with serve_asgi(app) as url:
        anonymous = http.get(url + "/maybe")
        assert anonymous.json() == {"authenticated": False, "scopes": []}
        assert http.get(url + "/pipeline").status_code == 403
        good = http.get(url + "/pipeline", headers=bearer(issuer.mint()))
        assert good.json() == {"user": f"repository {issuer.repository_uuid}", "has_claims": True}
        bad = http.get(url + "/maybe", headers=bearer("abc.def"))
        assert bad.status_code == 401
        assert bad.json()["code"] == "malformed"
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        denied = http.get(url + "/maybe", headers=bearer(issuer.mint(branch="forbidden")))
        assert denied.status_code == 403
