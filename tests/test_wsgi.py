"""The WSGI middleware under werkzeug's threaded server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import requests
from servers import bearer, serve_wsgi

from bbverify import PipelineClaims, PolicyDenied, Verifier
from bbverify.http import ErrorResponse
from bbverify.policies import RequestContext
from bbverify.testing import FakeIssuer
from bbverify.wsgi import PipelineAuthMiddleware

CLIENT = "203.0.113.7"


def ip_gate(claims: PipelineClaims, ctx: RequestContext) -> None:
    if (ctx.path or "").startswith("/ip/") and ctx.client_ip != CLIENT:
        raise PolicyDenied(f"client {ctx.client_ip} is not allowed", code="ip_not_allowed")


def deny_forbidden_branch(claims: PipelineClaims, ctx: RequestContext) -> None:
    if claims.branch_name == "forbidden":
        raise PolicyDenied("branch not allowed", code="branch_not_allowed")


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    claims = environ.get("bbverify.claims")
    body = json.dumps(
        {
            "path": environ["PATH_INFO"],
            "repository": getattr(claims, "repository_uuid", None),
            "client_ip": environ.get("bbverify.client_ip"),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def gated_verifier(issuer: FakeIssuer) -> Verifier:
    return issuer.verifier(policies=[ip_gate, deny_forbidden_branch])


@pytest.fixture(scope="module")
def direct(gated_verifier: Verifier) -> Iterator[str]:
    with serve_wsgi(PipelineAuthMiddleware(app, verifier=gated_verifier, exclude_paths=["/healthz"])) as url:
        yield url


@pytest.fixture(scope="module")
def proxied(gated_verifier: Verifier) -> Iterator[str]:
    with serve_wsgi(
        PipelineAuthMiddleware(app, verifier=gated_verifier, trusted_proxies="127.0.0.1/32")
    ) as url:
        yield url


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


def test_valid_token(issuer: FakeIssuer, direct: str, session: requests.Session) -> None:
    resp = session.get(direct + "/x", headers=bearer(issuer.mint()), timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"path": "/x", "repository": issuer.repository_uuid, "client_ip": "127.0.0.1"}


def test_refusals(issuer: FakeIssuer, direct: str, session: requests.Session) -> None:
    missing = session.get(direct + "/x", timeout=10)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="bbverify"'
    assert missing.json()["code"] == "missing_token"

    for token, code in [
        ("abc.def", "malformed"),
        (issuer.mint(issued_at=time.time() - 7200, lifetime=3600), "expired"),
        (issuer.mint(audience="ari:cloud:bitbucket::workspace/other"), "audience_mismatch"),
        (issuer.sign(issuer.claims(extra={"iss": "https://evil.example/oidc"})), "issuer_mismatch"),
    ]:
        resp = session.get(direct + "/x", headers=bearer(token), timeout=10)
        assert resp.status_code == 401, code
        assert resp.json()["code"] == code
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert token not in resp.text

    denied = session.get(direct + "/x", headers=bearer(issuer.mint(branch="forbidden")), timeout=10)
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    assert denied.json()["code"] == "branch_not_allowed"


def test_malformed_header_is_400(direct: str, session: requests.Session) -> None:
    # requests sends str headers as latin-1; the server hands them on as such.
    resp = session.get(direct + "/x", headers={"Authorization": "Bearer caf\u00e9"}, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"
    resp = session.get(direct + "/x", headers={"Authorization": "Bearer a b"}, timeout=10)
    assert resp.status_code == 400


def test_excluded_path(direct: str, session: requests.Session) -> None:
    assert session.get(direct + "/healthz", timeout=10).status_code == 200
    assert session.get(direct + "/healthz/x", timeout=10).status_code == 401


def test_forwarded_for(issuer: FakeIssuer, direct: str, proxied: str, session: requests.Session) -> None:
    token = issuer.mint()
    assert (
        session.get(
            direct + "/ip/x", headers={**bearer(token), "X-Forwarded-For": CLIENT}, timeout=10
        ).status_code
        == 403
    )
    ok = session.get(
        proxied + "/ip/x", headers={**bearer(token), "X-Forwarded-For": f"10.9.9.9, {CLIENT}"}, timeout=10
    )
    assert ok.status_code == 200
    assert ok.json()["client_ip"] == CLIENT
    spoof = {**bearer(token), "X-Forwarded-For": f"{CLIENT}, 198.51.100.1"}
    assert session.get(proxied + "/ip/x", headers=spoof, timeout=10).status_code == 403


def test_cold_start_down_is_503(issuer: FakeIssuer, session: requests.Session) -> None:
    cold = issuer.verifier(failure_backoff=2.0)
    with serve_wsgi(PipelineAuthMiddleware(app, verifier=cold)) as url:
        issuer.fail("down")
        try:
            resp = session.get(url + "/x", headers=bearer(issuer.mint()), timeout=10)
        finally:
            issuer.recover()
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.json()["code"] == "keys_unavailable"


def test_threaded_requests_share_one_fetch(issuer: FakeIssuer) -> None:
    cold = issuer.verifier()
    token = issuer.mint()
    statuses: list[int] = []
    with serve_wsgi(PipelineAuthMiddleware(app, verifier=cold)) as url:
        before = issuer.jwks_requests
        issuer.fail("slow", 0.5)
        try:

            def call() -> None:
                with requests.Session() as s:
                    s.trust_env = False
                    statuses.append(s.get(url + "/x", headers=bearer(token), timeout=10).status_code)

            threads = [threading.Thread(target=call) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=15)
        finally:
            issuer.recover()
    assert statuses == [200] * 6
    assert issuer.jwks_requests - before == 1


def test_on_error_hook(gated_verifier: Verifier, session: requests.Session) -> None:
    def teapot(error: Any) -> Any:
        if error.code == "missing_token":
            return ErrorResponse(418, (("Content-Type", "text/plain"),), b"teapot")

        def wsgi_answer(environ: Any, start_response: Any) -> list[bytes]:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"custom"]

        return wsgi_answer

    with serve_wsgi(PipelineAuthMiddleware(app, verifier=gated_verifier, on_error=teapot)) as url:
        resp = session.get(url + "/x", timeout=10)
        assert (resp.status_code, resp.text) == (418, "teapot")
        resp = session.get(url + "/x", headers=bearer("abc.def"), timeout=10)
        assert (resp.status_code, resp.text) == (401, "custom")


def test_repeated_authorization_lines_are_400(issuer: FakeIssuer, direct: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(direct)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", "/x")
        token = issuer.mint()
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 400
        assert json.loads(resp.read())["error"] == "invalid_request"
    finally:
        conn.close()
