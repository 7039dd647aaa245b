"""The FastAPI dependency under a real uvicorn server on 127.0.0.1.

No ``from __future__ import annotations`` here: FastAPI must see the
routes' ``Annotated`` dependencies, which refer to local variables.
"""

import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Security
from servers import bearer, serve_asgi
from starlette.responses import PlainTextResponse

from bbverify import PipelineClaims, PolicyDenied, Verifier
from bbverify.asgi import PipelineAuthMiddleware
from bbverify.fastapi import PipelineAuth, install_error_handler
from bbverify.policies import RequestContext
from bbverify.testing import FakeIssuer

CLIENT = "203.0.113.7"
CALLS: list[str] = []


def only_deployments(claims: PipelineClaims, ctx: RequestContext) -> None:
    CALLS.append(ctx.path or "")
    if not claims.is_deployment:
        raise PolicyDenied("only deployment steps may deploy", code="environment_required")


def only_client(claims: PipelineClaims, ctx: RequestContext) -> None:
    if ctx.client_ip != CLIENT:
        raise PolicyDenied(f"client {ctx.client_ip} is not allowed", code="ip_not_allowed")


def build_app(verifier: Verifier, *, handler: bool = True, middleware: bool = False) -> Any:
    app = FastAPI()
    if handler:
        install_error_handler(app)
    pipeline = PipelineAuth(verifier)
    deployer = PipelineAuth(verifier, only_deployments)
    behind_proxy = PipelineAuth(verifier, only_client, trusted_proxies=["127.0.0.0/8"])
    direct_ip = PipelineAuth(verifier, only_client)

    @app.get("/whoami")
    async def whoami(
        claims: Annotated[PipelineClaims, Depends(pipeline)], request: Request
    ) -> dict[str, Any]:
        return {
            "repository": claims.repository_uuid,
            "same_as_scope": request.scope.get("bbverify.claims") is claims,
        }

    @app.post("/deploy")
    def deploy(claims: Annotated[PipelineClaims, Security(deployer)]) -> dict[str, Any]:
        return {"environment": claims.deployment_environment_uuid}

    @app.get("/proxied")
    async def proxied(claims: Annotated[PipelineClaims, Depends(behind_proxy)]) -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/direct-ip")
    async def direct(claims: Annotated[PipelineClaims, Depends(direct_ip)]) -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "open"}

    if middleware:
        return PipelineAuthMiddleware(app, verifier=verifier, exclude_paths=["/open", "/openapi.json"])
    return app


@pytest.fixture(scope="module")
def app_verifier(issuer: FakeIssuer) -> Verifier:
    return issuer.verifier()


@pytest.fixture(scope="module")
def url(app_verifier: Verifier) -> Iterator[str]:
    with serve_asgi(build_app(app_verifier)) as base:
        yield base


def test_valid_token_returns_claims(issuer: FakeIssuer, url: str, http: httpx.Client) -> None:
    resp = http.get(url + "/whoami", headers=bearer(issuer.mint()))
    assert resp.status_code == 200
    assert resp.json() == {"repository": issuer.repository_uuid, "same_as_scope": True}


def test_refusals_use_rfc6750(issuer: FakeIssuer, url: str, http: httpx.Client) -> None:
    missing = http.get(url + "/whoami")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="bbverify"'
    assert missing.json() == {
        "error": "unauthorized",
        "code": "missing_token",
        "message": "the request has no Authorization header",
    }
    expired = issuer.mint(issued_at=time.time() - 7200, lifetime=3600)
    resp = http.get(url + "/whoami", headers=bearer(expired))
    assert resp.status_code == 401
    assert resp.json()["code"] == "expired"
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert expired not in resp.text
    wrong_aud = issuer.mint(audience="ari:cloud:bitbucket::workspace/other")
    assert http.get(url + "/whoami", headers=bearer(wrong_aud)).json()["code"] == "audience_mismatch"
    two = http.get(url + "/whoami", headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert two.status_code == 400
    assert two.json()["code"] == "multiple_authorization"


def test_route_rules_add_to_global(issuer: FakeIssuer, url: str, http: httpx.Client) -> None:
    build = http.post(url + "/deploy", headers=bearer(issuer.mint()))
    assert build.status_code == 403
    assert 'error="insufficient_scope"' in build.headers["www-authenticate"]
    assert build.json()["code"] == "environment_required"
    token = issuer.mint(environment_uuid=issuer.environment_uuid)
    ok = http.post(url + "/deploy", headers=bearer(token))
    assert ok.json() == {"environment": issuer.environment_uuid}
    assert CALLS[-1] == "/deploy"  # the rule saw the request path


def test_client_ip_and_trusted_proxies(issuer: FakeIssuer, url: str, http: httpx.Client) -> None:
    token = issuer.mint()
    spoof = {**bearer(token), "X-Forwarded-For": CLIENT}
    assert http.get(url + "/direct-ip", headers=spoof).status_code == 403
    assert http.get(url + "/proxied", headers=spoof).status_code == 200
    assert (
        http.get(
            url + "/proxied", headers={**bearer(token), "X-Forwarded-For": f"{CLIENT}, 8.8.8.8"}
        ).status_code
        == 403
    )


def test_openapi_declares_bearer_scheme(url: str, http: httpx.Client) -> None:
    doc = http.get(url + "/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["BitbucketPipelinesOIDC"]["type"] == "http"
    assert schemes["BitbucketPipelinesOIDC"]["scheme"] == "bearer"
    assert schemes["BitbucketPipelinesOIDC"]["bearerFormat"] == "JWT"
    assert doc["paths"]["/whoami"]["get"]["security"] == [{"BitbucketPipelinesOIDC": []}]
    assert "security" not in doc["paths"]["/open"]["get"]


def test_keys_down_is_503(issuer: FakeIssuer, http: httpx.Client) -> None:
    cold = issuer.verifier(failure_backoff=2.0)
    with serve_asgi(build_app(cold)) as base:
        issuer.fail("down")
        try:
            resp = http.get(base + "/whoami", headers=bearer(issuer.mint()))
        finally:
            issuer.recover()
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["code"] == "keys_unavailable"


def test_without_handler_detail_wraps_same_body(app_verifier: Verifier, http: httpx.Client) -> None:
    with serve_asgi(build_app(app_verifier, handler=False)) as base:
        resp = http.get(base + "/whoami")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="bbverify"'
    assert resp.json() == {
        "detail": {
            "error": "unauthorized",
            "code": "missing_token",
            "message": "the request has no Authorization header",
        }
    }


def test_middleware_claims_are_reused(issuer: FakeIssuer, app_verifier: Verifier, http: httpx.Client) -> None:
    with serve_asgi(build_app(app_verifier, middleware=True)) as base:
        resp = http.get(base + "/whoami", headers=bearer(issuer.mint()))
        assert resp.json() == {"repository": issuer.repository_uuid, "same_as_scope": True}
        # The route's own rule still applies on top of the middleware's check.
        assert http.post(base + "/deploy", headers=bearer(issuer.mint())).status_code == 403
        assert http.get(base + "/whoami").status_code == 401  # the middleware refuses first
        assert http.get(base + "/open").json() == {"ok": "open"}


def test_on_error_hook(issuer: FakeIssuer, app_verifier: Verifier, http: httpx.Client) -> None:
    app = FastAPI()
    install_error_handler(app)
    seen: list[str] = []

    def on_error(error: Any) -> PlainTextResponse:
        seen.append(error.code)
        return PlainTextResponse("nope", status_code=error.status_code)

    guard = PipelineAuth(app_verifier, on_error=on_error)

    @app.get("/x")
    async def x(claims: Annotated[PipelineClaims, Depends(guard)]) -> str:
        return "ok"

    with serve_asgi(app) as base:
        resp = http.get(base + "/x", headers=bearer("abc.def"))
    assert (resp.status_code, resp.text) == (401, "nope")
    assert seen == ["malformed"]
