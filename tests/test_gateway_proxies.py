"""End to end through REAL proxies: nginx (auth_request) and Caddy (forward_auth) on 127.0.0.1,
configured with the exact recipes of docs/gateway.md, in front of the gateway and an echo upstream.

Requests are sent with http.client so that paths reach the proxy exactly as written (no client-side
dot-segment removal).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import EchoUpstream, doc_block, make_gateway, nginx_recipe, require
from servers import serve_asgi, serve_caddy, serve_nginx

from bbverify.policies import Branches, Repositories
from bbverify.testing import FakeIssuer

IDENTITY = ("workspace", "repository", "environment", "branch", "pipeline", "step")
FORGED = {f"X-Bbverify-{name.title()}": "forged" for name in IDENTITY}
OTHER_REPO = "{11111111-2222-3333-4444-555555555555}"

ROUTES = [
    {"path_prefix": "/public/", "public": True},
    {"path_prefix": "/area/", "policy": "admin"},
    {"path_prefix": "/main-only/", "policy": "main"},
    {"path_prefix": "/deploy", "policy": "deploy"},
    {"path": "/admin", "policy": "admin"},
    {"host": "ops.example.com", "path_prefix": "/", "policy": "admin"},
]


class Stack:
    def __init__(self, proxy: str, address: str, upstream: EchoUpstream, fake: FakeIssuer) -> None:
        self.proxy, self.address, self.upstream, self.fake = proxy, address, upstream, fake

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(method, path, headers={"Host": "app.example.com", **(headers or {})})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def _stack(proxy: str, fake: FakeIssuer, tmp: Path, **options: Any) -> Iterator[Stack]:
    protocol = "nginx" if proxy == "nginx" else "forwarded"
    gw = make_gateway(
        fake,
        {"protocol": protocol, "routes": ROUTES, "trusted_proxies": ["127.0.0.1/32"]},
        named={
            "deploy": [Repositories(fake.repository_uuid)],
            "admin": [Repositories(OTHER_REPO)],
            "main": [Branches("main")],
        },
        **options,
    )
    upstream = EchoUpstream()
    with serve_asgi(gw) as gw_url, serve_asgi(upstream) as up_url:
        gw_addr, up_addr = gw_url.removeprefix("http://"), up_url.removeprefix("http://")
        if proxy == "nginx":
            require("nginx")
            http_extra, locations = nginx_recipe(gw_addr, up_addr)
            # The upstream argument is unused: the recipe's locations replace the default one.
            runner = serve_nginx(tmp, up_addr, locations, http_extra=http_extra)
        else:
            require("caddy")
            site = (
                doc_block("gateway-caddy")
                .replace("127.0.0.1:9180", gw_addr)
                .replace("127.0.0.1:8000", up_addr)
            )
            runner = serve_caddy(tmp, site)
        with runner as base:
            address = base.removeprefix("http://")
            yield Stack(proxy, address, upstream, fake)


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def stack(
    request: pytest.FixtureRequest, issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from _stack(request.param, issuer, tmp_path_factory.mktemp(request.param))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_valid_token_passes_with_identity_and_no_forgery(stack: Stack) -> None:
    fake = stack.fake
    token = fake.mint(branch="main")
    status, _, body = stack.request("POST", "/deploy/app?x=1", {**bearer(token), **FORGED})
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-bbverify-repository"] == [fake.repository_uuid]
    assert seen["x-bbverify-workspace"] == [fake.workspace_uuid]
    assert seen["x-bbverify-branch"] == ["main"]
    # Not a deployment step: the environment header is absent (or empty), never the forged value.
    assert seen.get("x-bbverify-environment", [""]) in ([""], [])
    for name in IDENTITY:
        assert "forged" not in seen.get(f"x-bbverify-{name}", []), name


def test_forged_identity_never_reaches_the_upstream_on_a_public_route(stack: Stack) -> None:
    status, _, body = stack.request("GET", "/public/logo.png", FORGED)
    assert status == 200, body
    seen = json.loads(body)["headers"]
    for name in IDENTITY:
        assert seen.get(f"x-bbverify-{name}", [""]) in ([""], []), (name, seen)


def test_underscore_variants_do_not_reach_the_upstream(stack: Stack) -> None:
    # WSGI servers read X_Bbverify_Repository as X-Bbverify-Repository.
    status, _, body = stack.request("GET", "/public/x", {"X_Bbverify_Repository": "forged"})
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert "forged" not in json.dumps(seen), seen


def test_refusals_are_401_and_403_with_json(stack: Stack) -> None:
    before = len(stack.upstream.seen)
    status, headers, body = stack.request("POST", "/deploy", FORGED)
    assert status == 401, body
    assert headers["www-authenticate"].startswith('Bearer realm="bbverify"')
    assert json.loads(body)["code"] == "missing_token"
    status, headers, body = stack.request("POST", "/deploy", bearer(stack.fake.mint(audience="elsewhere")))
    assert status == 401, body
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert json.loads(body)["code"] == "audience_mismatch"
    status, _, body = stack.request("GET", "/admin", bearer(stack.fake.mint()))
    assert status == 403, body
    assert json.loads(body) == {
        "error": "insufficient_scope",
        "code": "repository_not_allowed",
        "message": json.loads(body)["message"],
    }
    status, _, body = stack.request("GET", "/elsewhere", bearer(stack.fake.mint()))
    assert status == 403 and json.loads(body)["code"] == "unmatched_route"
    assert len(stack.upstream.seen) == before  # nothing refused reached the upstream


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/public/../admin", "unnormalizable_request"),
        ("/public/%2e%2e/admin", "unnormalizable_request"),
        ("/public/..%2Fadmin", "unnormalizable_request"),
        ("/public/%2E%2E%2Fadmin", "unnormalizable_request"),
    ],
)
def test_path_tricks_through_the_proxy(stack: Stack, path: str, code: str) -> None:
    before = len(stack.upstream.seen)
    status, _, body = stack.request("GET", path, bearer(stack.fake.mint()))
    if status == 400:
        # The proxy itself refused the path before asking (nginx does for some '..' forms): also safe.
        assert stack.proxy == "nginx"
    else:
        assert status == 403, body
        assert json.loads(body)["code"] == code
    assert len(stack.upstream.seen) == before


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_keys_unavailable_never_admits(proxy: str, tmp_path: Path) -> None:
    with FakeIssuer() as fake:
        token = fake.mint()
        fake.fail("500")
        for stack in _stack(proxy, fake, tmp_path, timeout=1.0, failure_backoff=0.0):
            status, headers, body = stack.request("POST", "/deploy", bearer(token))
            # nginx turns the gateway's 503 into a 500; Caddy passes the 503 and its JSON on.
            if proxy == "nginx":
                assert status == 500, body
            else:
                assert status == 503, body
                assert json.loads(body)["code"] == "keys_unavailable"
                assert "retry-after" in headers
            assert stack.upstream.seen == []


def test_client_cannot_choose_the_original_request(stack: Stack) -> None:
    # The proxy overwrites whatever the client claims the original request was.
    forged = {
        "X-Original-URI": "/public/x",
        "X-Original-Method": "GET",
        "X-Forwarded-Uri": "/public/x",
        "X-Forwarded-Method": "GET",
        **bearer(stack.fake.mint()),
    }
    before = len(stack.upstream.seen)
    status, _, body = stack.request("GET", "/admin", forged)
    assert status == 403, body
    assert json.loads(body)["code"] == "repository_not_allowed"
    assert len(stack.upstream.seen) == before


def test_client_cannot_choose_the_original_host(stack: Stack) -> None:
    forged = {"X-Original-Host": "ops.example.com", "X-Forwarded-Host": "ops.example.com"}
    status, _, body = stack.request("GET", "/public/x", forged)  # Host: app.example.com
    assert status == 200, body
    # The real host does select the host route.
    host, port = stack.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/public/x", headers={"Host": "ops.example.com", **bearer(stack.fake.mint())})
        response = conn.getresponse()
        assert response.status == 403
        assert json.loads(response.read())["code"] == "repository_not_allowed"
    finally:
        conn.close()


# F08 / F02: nginx and Caddy forward the RAW path, and many upstreams (Starlette
# mounts, Express, werkzeug <path:>) do not resolve dot segments, while servlet
# containers drop ";params". Each of these, with NO token, must never reach the
# upstream: the gateway refuses it (403) or the proxy itself does (400).
PROTECTED_TRICKS = [
    "/area/../public/x",
    "/area/%2e%2e/public/x",
    "/area/%2E%2E/public/x",
    "/area/.%2e/public/x",
    "/area/%2e./public/x",
    "/area/..;/public/x",
    "/area/./x",
    "/area/%2e/x",
    "/public/..;/area/x",
    "/public/..;/admin",
    "/admin;jsessionid=1",
    "/area;x=1/y",
    "/area/x;y",
    "/public/%3b/x",
    "//area/x",
    "/public//x",
    "/%61rea/x",
    "/admin/",  # trailing slash: still the admin route
]


@pytest.mark.parametrize("path", PROTECTED_TRICKS)
def test_no_trick_reaches_the_upstream_without_a_token(stack: Stack, path: str) -> None:
    before = len(stack.upstream.seen)
    status, _, body = stack.request("GET", path)
    if status == 400:
        assert stack.proxy == "nginx", body  # nginx refused it itself: also safe
    elif path == "/admin/":
        assert status == 401, body
        assert json.loads(body)["code"] == "missing_token"
    else:
        assert status == 403, body
        assert json.loads(body)["code"] == "unnormalizable_request"
    assert len(stack.upstream.seen) == before, stack.upstream.seen[before:]


def test_override_headers_never_reach_the_upstream(stack: Stack) -> None:
    # F05: a method or path override acted on by the upstream would bypass the route.
    overrides = {
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
    }
    for name, value in overrides.items():
        before = len(stack.upstream.seen)
        status, _, body = stack.request("GET", "/public/x", {name: value})
        if status == 403:
            # nginx's auth subrequest carries the client's headers: the gateway refuses.
            assert json.loads(body)["code"] == "unnormalizable_request", body
            assert len(stack.upstream.seen) == before
        else:
            # Caddy's recipe deletes them before the check and the proxying.
            assert status == 200, body
            seen = json.loads(body)["headers"]
            assert name.lower() not in seen, (name, seen)
    # The client's X-Forwarded-Host never replaces the host the gateway routed on.
    status, _, body = stack.request("GET", "/public/x", {"X-Forwarded-Host": "admin.internal"})
    assert status == 200, body
    assert "admin.internal" not in json.dumps(json.loads(body)["headers"])


def test_missing_host_is_refused(stack: Stack) -> None:
    # F10: with host routes configured, a request without a usable Host is refused.
    before = len(stack.upstream.seen)
    host, port = stack.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        if stack.proxy == "nginx":
            conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"  # nginx accepts HTTP/1.0 without Host
            conn.putrequest("GET", "/public/x", skip_host=True)
        else:
            conn.putrequest("GET", "/public/x", skip_host=True)
            conn.putheader("Host", "")
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status in (400, 403), body
    if response.status == 403:
        assert json.loads(body)["code"] == "unnormalizable_request"
    assert len(stack.upstream.seen) == before


def test_long_refusal_is_valid_json_through_the_proxy(stack: Stack) -> None:
    # F07: a refusal longer than the header cap is shortened before serialising.
    token = stack.fake.mint(branch="\u00e9" * 400)
    status, _, body = stack.request("GET", "/main-only/x", bearer(token))
    assert status == 403, body
    assert json.loads(body)["code"] == "branch_not_allowed"
