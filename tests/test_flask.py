"""The Flask extension and decorator: test_client and a real threaded werkzeug server."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from flask import Blueprint, Flask, g
from servers import bearer, serve_wsgi

from bbverify import ConfigurationError, PipelineClaims, PolicyDenied, Verifier
from bbverify.flask import BBVerify, current_claims, require_pipeline
from bbverify.policies import RequestContext
from bbverify.testing import FakeIssuer
from bbverify.wsgi import PipelineAuthMiddleware

CLIENT = "203.0.113.7"


def only_deployments(claims: PipelineClaims, ctx: RequestContext) -> None:
    if not claims.is_deployment:
        raise PolicyDenied("only deployment steps may deploy", code="environment_required")


def only_client(claims: PipelineClaims, ctx: RequestContext) -> None:
    if ctx.client_ip != CLIENT:
        raise PolicyDenied(f"client {ctx.client_ip} is not allowed", code="ip_not_allowed")


def create_app(issuer: FakeIssuer, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(BBVERIFY_ISSUER=issuer.issuer, BBVERIFY_AUDIENCE=issuer.audience, **config)
    BBVerify(app)
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.get("/whoami")
    @require_pipeline(None)
    def whoami() -> dict[str, Any]:
        assert g.pipeline_claims is current_claims()
        return {"repository": current_claims().repository_uuid}

    @bp.post("/deploy")
    @require_pipeline(None, only_deployments)
    def deploy() -> dict[str, Any]:
        return {"environment": current_claims().deployment_environment_uuid}

    @bp.get("/ip")
    @require_pipeline(None, only_client)
    def ip() -> dict[str, Any]:
        return {"ok": True}

    app.register_blueprint(bp)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/unprotected-claims")
    def unprotected() -> dict[str, Any]:
        try:
            current_claims()
        except RuntimeError:
            return {"claims": None}
        return {"claims": "present"}

    return app


@pytest.fixture(scope="module")
def app(issuer: FakeIssuer) -> Flask:
    return create_app(issuer)


def test_extension_builds_verifier_from_config(app: Flask, issuer: FakeIssuer) -> None:
    verifier = BBVerify.verifier_for(app)
    assert isinstance(verifier, Verifier)
    assert verifier.issuer == issuer.issuer
    assert verifier.audiences == frozenset({issuer.audience})


def test_test_client_allows_and_refuses(app: Flask, issuer: FakeIssuer) -> None:
    client = app.test_client()
    ok = client.get("/api/whoami", headers=bearer(issuer.mint()))
    assert ok.status_code == 200
    assert ok.get_json() == {"repository": issuer.repository_uuid}

    missing = client.get("/api/whoami")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="bbverify"'
    assert missing.get_json()["code"] == "missing_token"
    assert missing.headers["Content-Type"] == "application/json"

    expired = issuer.mint(issued_at=time.time() - 7200, lifetime=3600)
    resp = client.get("/api/whoami", headers=bearer(expired))
    assert resp.status_code == 401
    assert resp.get_json()["code"] == "expired"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]

    assert client.get("/healthz").status_code == 200
    assert client.get("/unprotected-claims").get_json() == {"claims": None}


def test_route_rules(app: Flask, issuer: FakeIssuer) -> None:
    client = app.test_client()
    build = client.post("/api/deploy", headers=bearer(issuer.mint()))
    assert build.status_code == 403
    assert build.get_json()["code"] == "environment_required"
    assert 'error="insufficient_scope"' in build.headers["WWW-Authenticate"]
    token = issuer.mint(environment_uuid=issuer.environment_uuid)
    assert client.post("/api/deploy", headers=bearer(token)).get_json() == {
        "environment": issuer.environment_uuid
    }


def test_real_server_and_proxies(issuer: FakeIssuer) -> None:
    direct_app = create_app(issuer)
    proxied_app = create_app(issuer, BBVERIFY_TRUSTED_PROXIES="127.0.0.1/32")
    token = issuer.mint()
    with serve_wsgi(direct_app) as direct, serve_wsgi(proxied_app) as proxied, requests.Session() as http:
        http.trust_env = False
        resp = http.get(direct + "/api/whoami", headers=bearer(token), timeout=10)
        assert resp.json() == {"repository": issuer.repository_uuid}
        spoof = {**bearer(token), "X-Forwarded-For": CLIENT}
        assert http.get(direct + "/api/ip", headers=spoof, timeout=10).status_code == 403
        assert http.get(proxied + "/api/ip", headers=spoof, timeout=10).status_code == 200
        wrong = {**bearer(token), "X-Forwarded-For": f"{CLIENT}, 198.51.100.1"}
        assert http.get(proxied + "/api/ip", headers=wrong, timeout=10).status_code == 403
        bad = http.get(direct + "/api/whoami", headers={"Authorization": "Bearer caf\u00e9"}, timeout=10)
        assert bad.status_code == 400


def test_cold_start_down_is_503(issuer: FakeIssuer) -> None:
    app = create_app(issuer, BBVERIFY_FAILURE_BACKOFF=2)
    issuer.fail("down")
    try:
        resp = app.test_client().get("/api/whoami", headers=bearer(issuer.mint()))
    finally:
        issuer.recover()
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.get_json()["code"] == "keys_unavailable"


def test_explicit_verifier_and_on_error(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier()
    app = Flask(__name__)

    @app.get("/x")
    @require_pipeline(verifier, on_error=lambda error: ({"custom": error.code}, 499))
    def x() -> str:
        return current_claims().repository_uuid

    client = app.test_client()
    assert client.get("/x", headers=bearer(issuer.mint())).text == issuer.repository_uuid
    resp = client.get("/x")
    assert resp.status_code == 499
    assert resp.get_json() == {"custom": "missing_token"}


def test_reuses_wsgi_middleware_claims(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier()
    app = Flask(__name__)
    BBVerify(app, verifier=verifier)

    @app.get("/x")
    @require_pipeline(None)
    def x() -> dict[str, Any]:
        return {"repository": current_claims().repository_uuid}

    app.wsgi_app = PipelineAuthMiddleware(app.wsgi_app, verifier=verifier)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/x", headers=bearer(issuer.mint())).get_json() == {
        "repository": issuer.repository_uuid
    }
    assert client.get("/x").status_code == 401


def test_misuse_is_a_configuration_error(issuer: FakeIssuer) -> None:
    with pytest.raises(ConfigurationError):
        require_pipeline(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        require_pipeline(None, "not a rule")  # type: ignore[arg-type]
    app = Flask(__name__)
    app.config["BBVERIFY_TRUSTED_PROXIES"] = "not-a-cidr"
    app.config["BBVERIFY_ISSUER"] = issuer.issuer
    app.config["BBVERIFY_AUDIENCE"] = issuer.audience
    with pytest.raises(ConfigurationError):
        BBVerify(app)


def test_without_extension_is_an_error_not_an_open_door(issuer: FakeIssuer) -> None:
    app = Flask(__name__)

    @app.get("/x")
    @require_pipeline(None)
    def x() -> str:
        return "reached"

    resp = app.test_client().get("/x", headers=bearer(issuer.mint()))
    assert resp.status_code == 500
    assert resp.text != "reached"


def test_async_view_is_guarded_too(issuer: FakeIssuer) -> None:
    import asyncio
    import inspect

    verifier = issuer.verifier()
    app = Flask(__name__)

    @require_pipeline(verifier)
    async def view() -> str:
        return current_claims().repository_uuid

    assert inspect.iscoroutinefunction(view)
    # Flask needs asgiref to run async views; drive the coroutine in a request context instead.
    with app.test_request_context("/x", headers=bearer(issuer.mint())):
        assert asyncio.run(view()) == issuer.repository_uuid
    with app.test_request_context("/x"):
        refused = asyncio.run(view())
        assert refused.status_code == 401  # type: ignore[attr-defined]
