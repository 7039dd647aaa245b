"""Protocol-level tests of ``bbverify serve``: requests shaped like nginx, Traefik, Caddy and Envoy
send them, against the gateway running under uvicorn on 127.0.0.1."""

from __future__ import annotations

import http.client as http_client
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_harness import make_gateway
from prometheus_client import generate_latest
from servers import bearer, serve_asgi

from bbverify.errors import ConfigurationError
from bbverify.gateway import Gateway, gateway_from_mapping, serve_settings
from bbverify.policies import IPRanges, Repositories, Workspaces
from bbverify.testing import FakeIssuer

OTHER_REPO = "{11111111-2222-3333-4444-555555555555}"

ROUTES = [
    {"path_prefix": "/public/", "public": True},
    {"path_prefix": "/deploy", "methods": ["POST"], "policy": "deploy"},
    {"path": "/admin", "policy": "admin"},
    {"path_prefix": "/artifacts/"},  # the default policy
    {"path_prefix": "/ip/", "policy": "office"},
    {"host": "ops.example.com", "path_prefix": "/", "policy": "admin"},
]


def named(fake: FakeIssuer) -> dict[str, Any]:
    return {
        "deploy": [Repositories(fake.repository_uuid)],
        "admin": [Repositories(OTHER_REPO)],
        "office": [IPRanges(["203.0.113.0/24"])],
        # An explicit "any pipeline of this workspace" policy: a route that admits
        # every genuine token must say so (F03).
        "build": [Workspaces(fake.workspace_uuid)],
    }


@pytest.fixture(scope="module")
def nginx_gw(issuer: FakeIssuer) -> Iterator[tuple[str, Gateway]]:
    gw = make_gateway(
        issuer,
        {"protocol": "nginx", "routes": ROUTES, "trusted_proxies": ["127.0.0.1/32"]},
        named=named(issuer),
        default_policy="build",
    )
    with serve_asgi(gw) as url:
        yield url, gw


@pytest.fixture(scope="module")
def forwarded_gw(issuer: FakeIssuer) -> Iterator[str]:
    gw = make_gateway(
        issuer,
        {"protocol": "forwarded", "routes": ROUTES, "trusted_proxies": ["127.0.0.1/32"]},
        named=named(issuer),
        default_policy="build",
    )
    with serve_asgi(gw) as url:
        yield url


@pytest.fixture(scope="module")
def envoy_gw(issuer: FakeIssuer) -> Iterator[str]:
    gw = make_gateway(
        issuer,
        {"protocol": "envoy", "envoy_path_prefix": "/check", "routes": ROUTES},
        named=named(issuer),
        default_policy="build",
    )
    with serve_asgi(gw) as url:
        yield url


def nginx(method: str, uri: str, host: str = "app.example.com", **extra: str) -> dict[str, str]:
    return {"X-Original-Method": method, "X-Original-URI": uri, "X-Original-Host": host, **extra}


def traefik(method: str, uri: str, host: str = "app.example.com", **extra: str) -> dict[str, str]:
    return {
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": host,
        "X-Forwarded-Uri": uri,
        **extra,
    }


def assert_refusal(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code
    assert "x-bbverify-repository" not in response.headers
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Bearer realm="bbverify"')


# -- nginx auth_request ---------------------------------------------------------------


def test_nginx_admits_with_identity_headers(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    env = "{aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}"
    token = issuer.mint(environment_uuid=env, branch="release/1.0")
    r = http.get(url + "/auth", headers={**nginx("POST", "/deploy/app?x=1"), **bearer(token)})
    assert r.status_code == 200
    claims = issuer.claims()
    assert r.headers["x-bbverify-workspace"] == claims["workspaceUuid"]
    assert r.headers["x-bbverify-repository"] == issuer.repository_uuid
    assert r.headers["x-bbverify-environment"] == env
    assert r.headers["x-bbverify-branch"] == "release/1.0"
    assert r.headers["x-bbverify-pipeline"].startswith("{")
    assert r.headers["x-bbverify-step"].startswith("{")


def test_nginx_absent_claims_are_sent_empty(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    r = http.get(url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(issuer.mint(branch=None))})
    assert r.status_code == 200
    # Sent, but empty: a proxy copying it overwrites a forged client copy.
    assert r.headers["x-bbverify-environment"] == ""
    assert r.headers["x-bbverify-branch"] == ""


def test_branch_header_cannot_be_split(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    token = issuer.mint(branch="feat/caf\u00e9\r\nX-Bbverify-Repository: forged")
    r = http.get(url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(token)})
    assert r.status_code == 200
    assert r.headers["x-bbverify-branch"] == "feat/caf%C3%A9%0D%0AX-Bbverify-Repository: forged"
    assert r.headers.get_list("x-bbverify-repository") == [issuer.repository_uuid]


def test_nginx_refusals(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    good = bearer(issuer.mint())
    assert_refusal(http.get(url + "/auth", headers=nginx("POST", "/deploy")), 401, "missing_token")
    assert_refusal(
        http.get(url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(issuer.mint(audience="x"))}),
        401,
        "audience_mismatch",
    )
    # Adapters answer 400 here; nginx would turn that into a 500, so the gateway says 401.
    bad = http.get(url + "/auth", headers={**nginx("POST", "/deploy"), "Authorization": "Bearer a b"})
    assert_refusal(bad, 401, "malformed_authorization")
    denied = http.get(url + "/auth", headers={**nginx("GET", "/admin"), **good})
    assert_refusal(denied, 403, "repository_not_allowed")
    assert denied.json()["error"] == "insufficient_scope"
    assert_refusal(
        http.get(url + "/auth", headers={**nginx("GET", "/nowhere"), **good}), 403, "unmatched_route"
    )
    # POST-only route: another method is unmatched.
    assert_refusal(
        http.get(url + "/auth", headers={**nginx("DELETE", "/deploy"), **good}), 403, "unmatched_route"
    )


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        # Dot segments are refused, not resolved: the proxy forwards the raw path (F08).
        ("/public/../admin", "unnormalizable_request"),
        ("/public/%2e%2e/admin", "unnormalizable_request"),
        ("/admin/../public/x", "unnormalizable_request"),
        ("/public/..;/admin", "unnormalizable_request"),  # F02
        ("/admin;jsessionid=1", "unnormalizable_request"),
        ("/public/..%2Fadmin", "unnormalizable_request"),
        ("/public/..%2fadmin", "unnormalizable_request"),
        ("/public//../admin", "unnormalizable_request"),
        ("/public/%2e%2e%2fadmin", "unnormalizable_request"),
        ("/ADMIN", "unmatched_route"),
        ("/../admin", "unnormalizable_request"),
        ("http://app.example.com/public/x", "unnormalizable_request"),
    ],
)
def test_path_tricks_never_select_the_public_route(
    nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client, uri: str, code: str
) -> None:
    url, _ = nginx_gw
    r = http.get(url + "/auth", headers={**nginx("GET", uri), **bearer(issuer.mint())})
    assert_refusal(r, 403, code)


def test_public_route_needs_no_token(nginx_gw: Any, http: httpx.Client) -> None:
    url, _ = nginx_gw
    r = http.get(url + "/auth", headers=nginx("GET", "/public/logo.png"))
    assert r.status_code == 200
    assert r.headers["x-bbverify-repository"] == ""


def test_default_policy_route(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    r = http.get(url + "/auth", headers={**nginx("PUT", "/artifacts/a.tgz"), **bearer(issuer.mint())})
    assert r.status_code == 200


def test_nginx_mode_needs_its_headers(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    good = bearer(issuer.mint())
    assert_refusal(http.get(url + "/auth", headers=good), 403, "missing_original_request")
    # Forwarded headers mean nothing in nginx mode: the route comes from X-Original-*.
    r = http.get(url + "/auth", headers={**nginx("GET", "/admin"), **traefik("GET", "/public/x"), **good})
    assert_refusal(r, 403, "repository_not_allowed")
    dup = httpx.Headers([("X-Original-URI", "/public/x"), ("X-Original-URI", "/admin")])
    dup.update({"X-Original-Method": "GET", **good})
    assert_refusal(http.get(url + "/auth", headers=dup), 403, "missing_original_request")
    # Checks are asked on /auth only.
    assert_refusal(
        http.get(url + "/other", headers={**nginx("GET", "/public/x")}), 403, "missing_original_request"
    )


def test_host_routes(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    good = bearer(issuer.mint())
    # ops.example.com routes everything to the admin policy, whatever the case or a trailing dot.
    for host in ("ops.example.com", "OPS.Example.COM.", "ops.example.com:443"):
        r = http.get(url + "/auth", headers={**nginx("GET", "/public/x", host=host), **good})
        assert_refusal(r, 403, "repository_not_allowed")


def test_trusted_proxy_client_ip(nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client) -> None:
    url, _ = nginx_gw
    good = bearer(issuer.mint())
    ok = http.get(url + "/auth", headers={**nginx("GET", "/ip/x"), **good, "X-Forwarded-For": "203.0.113.7"})
    assert ok.status_code == 200
    far = http.get(
        url + "/auth", headers={**nginx("GET", "/ip/x"), **good, "X-Forwarded-For": "198.51.100.1"}
    )
    assert_refusal(far, 403, "ip_not_allowed")


# -- Traefik ForwardAuth / Caddy forward_auth ---------------------------------------------


def test_forwarded_protocol(forwarded_gw: str, issuer: FakeIssuer, http: httpx.Client) -> None:
    good = bearer(issuer.mint())
    ok = http.get(forwarded_gw + "/auth", headers={**traefik("POST", "/deploy/x?y=1"), **good})
    assert ok.status_code == 200
    assert ok.headers["x-bbverify-repository"] == issuer.repository_uuid
    assert_refusal(http.get(forwarded_gw + "/auth", headers=traefik("POST", "/deploy")), 401, "missing_token")
    assert_refusal(
        http.get(forwarded_gw + "/auth", headers={**traefik("GET", "/public/../admin"), **good}),
        403,
        "unnormalizable_request",
    )
    host = http.get(
        forwarded_gw + "/auth", headers={**traefik("GET", "/public/x", host="ops.example.com"), **good}
    )
    assert_refusal(host, 403, "repository_not_allowed")
    # X-Original-* mean nothing in forwarded mode.
    r = http.get(forwarded_gw + "/auth", headers={**nginx("GET", "/public/x"), **good})
    assert_refusal(r, 403, "missing_original_request")
    ip = http.get(
        forwarded_gw + "/auth", headers={**traefik("GET", "/ip/x"), **good, "X-Forwarded-For": "203.0.113.9"}
    )
    assert ip.status_code == 200


def test_forwarded_for_ignored_without_trusted_proxies(issuer: FakeIssuer, http: httpx.Client) -> None:
    gw = make_gateway(
        issuer, {"protocol": "forwarded", "routes": ROUTES}, named=named(issuer), default_policy="build"
    )
    with serve_asgi(gw) as url:
        r = http.get(
            url + "/auth",
            headers={**traefik("GET", "/ip/x"), **bearer(issuer.mint()), "X-Forwarded-For": "203.0.113.9"},
        )
    assert_refusal(r, 403, "ip_not_allowed")


# -- Envoy ext_authz (HTTP service) ---------------------------------------------------------


def test_envoy_protocol(envoy_gw: str, issuer: FakeIssuer, http: httpx.Client) -> None:
    good = bearer(issuer.mint())
    host = {"Host": "app.example.com"}
    ok = http.post(envoy_gw + "/check/deploy/x?y=1", headers={**host, **good})
    assert ok.status_code == 200
    assert ok.headers["x-bbverify-repository"] == issuer.repository_uuid
    assert http.get(envoy_gw + "/check/public/logo.png", headers=host).status_code == 200
    assert_refusal(http.post(envoy_gw + "/check/deploy", headers=host), 401, "missing_token")
    assert_refusal(
        http.get(envoy_gw + "/check/admin", headers={**host, **good}), 403, "repository_not_allowed"
    )
    assert_refusal(
        http.get(envoy_gw + "/check/public/x", headers={"Host": "ops.example.com", **good}),
        403,
        "repository_not_allowed",
    )
    # The raw path is routed, not uvicorn's decoded one: %2F stays an encoded slash and is refused.
    assert_refusal(
        http.get(envoy_gw + "/check/public/..%2Fadmin", headers={**host, **good}),
        403,
        "unnormalizable_request",
    )
    assert_refusal(http.get(envoy_gw + "/elsewhere/public/x", headers=host), 403, "missing_original_request")
    assert_refusal(http.get(envoy_gw + "/checkpublic/x", headers=host), 403, "missing_original_request")


# -- keys unavailable ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["nginx", "forwarded", "envoy"])
def test_keys_unavailable_never_admits(protocol: str, http: httpx.Client) -> None:
    with FakeIssuer() as fake:
        serve: dict[str, Any] = {"protocol": protocol, "routes": ROUTES}
        if protocol == "envoy":
            serve["envoy_path_prefix"] = "/check"
        gw = make_gateway(
            fake, serve, named=named(fake), default_policy="build", timeout=1.0, failure_backoff=0.0
        )
        token = fake.mint()
        fake.fail("500")
        with serve_asgi(gw) as url:
            if protocol == "envoy":
                r = http.post(url + "/check/deploy", headers={"Host": "a.example.com", **bearer(token)})
            else:
                headers = nginx("POST", "/deploy") if protocol == "nginx" else traefik("POST", "/deploy")
                r = http.get(url + "/auth", headers={**headers, **bearer(token)})
            assert r.status_code == 503
            assert r.json()["code"] == "keys_unavailable"
            assert "retry-after" in r.headers
            assert "x-bbverify-repository" not in r.headers
            ready = http.get(url + "/readyz")
            assert ready.status_code == 503
            assert ready.json()["ready"] is False
            text = http.get(url + "/metrics").text
        failures = re.search(r'bbverify_key_fetch_failures_total\{issuer="[^"]+"\} (\d+)', text)
        assert failures is not None and int(failures.group(1)) >= 1, text
        assert re.search(r'bbverify_key_set_loaded\{issuer="[^"]+"\} 0\.0', text), text
        assert 'bbverify_decisions_total{code="keys_unavailable"' in text


# -- operations --------------------------------------------------------------------------------


def test_health_ready_and_metrics(issuer: FakeIssuer, http: httpx.Client) -> None:
    gw = make_gateway(
        issuer, {"protocol": "nginx", "routes": ROUTES}, named=named(issuer), default_policy="build"
    )
    with serve_asgi(gw) as url:
        assert http.get(url + "/healthz").status_code == 200
        # The lifespan start-up warms the key set in the background; /readyz turns 200 once loaded.
        for _ in range(200):
            ready = http.get(url + "/readyz")
            if ready.status_code == 200:
                break
            threading_wait(0.02)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "key_sets": {issuer.issuer: True}}
        http.get(url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(issuer.mint())})
        http.get(url + "/auth", headers={**nginx("GET", "/admin"), **bearer(issuer.mint())})
        http.get(url + "/auth", headers=nginx("GET", "/nowhere"))
        text = http.get(url + "/metrics").text
    workspace = issuer.workspace_uuid
    assert f'bbverify_decisions_total{{code="ok",rule="",workspace="{workspace}"}} 1.0' in text
    denied = f'code="repository_not_allowed",rule="repositories",workspace="{workspace}"'
    assert f"bbverify_decisions_total{{{denied}}} 1.0" in text
    assert 'bbverify_decisions_total{code="unmatched_route",rule="",workspace=""} 1.0' in text
    assert "bbverify_verification_seconds_count 2.0" in text
    assert f'bbverify_key_fetches_total{{issuer="{issuer.issuer}"}}' in text
    assert f'bbverify_key_set_loaded{{issuer="{issuer.issuer}"}} 1.0' in text
    assert f'bbverify_key_set_stale{{issuer="{issuer.issuer}"}} 0.0' in text
    assert 'bbverify_token_cache_entries{verifier="0"} 2.0' in text
    assert gw.metrics.latency is not None


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def test_access_log_is_one_json_line(
    nginx_gw: Any, issuer: FakeIssuer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = nginx_gw
    with caplog.at_level(logging.INFO, logger="bbverify.gateway.access"):
        http.get(url + "/auth", headers={**nginx("POST", "/deploy/x?secret=1"), **bearer(issuer.mint())})
    records = [r for r in caplog.records if r.name == "bbverify.gateway.access"]
    assert records
    line = json.loads(records[-1].getMessage())
    assert line["status"] == 200 and line["code"] == "ok"
    assert line["route"] == "routes[1]" and line["policy"] == "deploy"
    assert line["path"] == "/deploy/x"  # the query is never logged
    assert line["repository"] == issuer.repository_uuid


def test_metrics_collector_for_library_users(issuer: FakeIssuer) -> None:
    from prometheus_client import CollectorRegistry

    from bbverify.metrics import VerifierMetrics

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    seen: list[Any] = []
    verifier = metrics.watch(issuer.verifier(on_decision=seen.append))
    with metrics.timer():
        verifier.verify(issuer.mint())
    text = generate_latest(registry).decode()
    assert len(seen) == 1  # the hook it had keeps working
    assert 'bbverify_decisions_total{code="ok"' in text
    assert "bbverify_verification_seconds_count 1.0" in text
    with pytest.raises(ConfigurationError):
        VerifierMetrics(registry)  # the names are taken in that registry


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serve", "key"),
    [
        ({"routes": ROUTES}, "serve.protocol"),
        ({"protocol": "haproxy", "routes": ROUTES}, "serve.protocol"),
        ({"protocol": "envoy", "routes": ROUTES}, "serve.envoy_path_prefix"),
        ({"protocol": "envoy", "envoy_path_prefix": "/metrics", "routes": ROUTES}, "serve.envoy_path_prefix"),
        ({"protocol": "nginx", "envoy_path_prefix": "/check", "routes": ROUTES}, "serve.envoy_path_prefix"),
        ({"protocol": "nginx", "rotues": ROUTES}, "serve.rotues"),
        ({"protocol": "nginx"}, "serve.routes"),
        (
            {"protocol": "nginx", "routes": ROUTES, "identity_headers": {"repo": "X-R"}},
            "serve.identity_headers.repo",
        ),
        (
            {"protocol": "nginx", "routes": ROUTES, "identity_headers": {"branch": "X Bad"}},
            "serve.identity_headers.branch",
        ),
        (
            {"protocol": "nginx", "routes": ROUTES, "identity_headers": {"branch": "X-Bbverify-Step"}},
            "serve.identity_headers",
        ),
        ({"protocol": "nginx", "routes": ROUTES, "port": "80"}, "serve.port"),
        ({"protocol": "nginx", "routes": ROUTES, "workers": True}, "serve.workers"),
        (
            {"protocol": "nginx", "routes": ROUTES, "case_insensitive_paths": 1},
            "serve.case_insensitive_paths",
        ),
    ],
)
def test_serve_configuration_errors(serve: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        serve_settings(serve)
    assert info.value.key == key


def test_unknown_policy_is_a_start_up_error(issuer: FakeIssuer) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_gateway(issuer, {"protocol": "nginx", "routes": [{"path": "/x", "policy": "nope"}]})
    assert info.value.key == "serve.routes[0].policy"


@pytest.mark.parametrize(
    ("serve", "key"),
    [
        ({"protocol": "nginx", "unmatched": "default_policy"}, "serve.unmatched"),
        ({"protocol": "nginx", "routes": [{"path_prefix": "/a"}]}, "serve.routes[0].policy"),
        (
            {"protocol": "forwarded", "routes": [{"path": "/p", "public": True}, {"path_prefix": "/"}]},
            "serve.routes[1].policy",
        ),
    ],
)
def test_no_default_policy_is_a_start_up_error(issuer: FakeIssuer, serve: dict[str, Any], key: str) -> None:
    # F03: without a default policy the base rules alone would admit every genuine
    # token of the workspace; a route or unmatched = "default_policy" must not
    # start silently.
    with pytest.raises(ConfigurationError) as info:
        make_gateway(issuer, serve, named=named(issuer))
    assert info.value.key == key
    # Spelled out on purpose (a policy admitting the workspace), it starts.
    make_gateway(
        issuer,
        {"protocol": "nginx", "routes": [{"path_prefix": "/a", "policy": "build"}]},
        named=named(issuer),
    )


def test_gateway_from_mapping_uses_the_library_schema(issuer: FakeIssuer) -> None:
    from prometheus_client import CollectorRegistry

    from bbverify.metrics import VerifierMetrics

    table = {
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "rules": {"repositories": [issuer.repository_uuid]},
        "default_policy": "build",
        "policies": {"build": {"allow": [{"repositories": [issuer.repository_uuid]}]}},
        "serve": {"protocol": "nginx", "unmatched": "default_policy"},
    }
    gw = gateway_from_mapping(table, metrics=VerifierMetrics(CollectorRegistry()))
    assert gw.settings.routes.unmatched == "default_policy"
    with pytest.raises(ConfigurationError) as info:
        gateway_from_mapping({**table, "rules": {"repositoires": []}})
    assert info.value.key == "rules.repositoires"
    with pytest.raises(ConfigurationError) as info:
        gateway_from_mapping({"issuer": issuer.issuer, "audience": issuer.audience})
    assert info.value.key == "serve"


def test_an_internal_error_refuses_and_is_not_a_500(
    issuer: FakeIssuer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = make_gateway(
        issuer, {"protocol": "nginx", "routes": ROUTES}, named=named(issuer), default_policy="build"
    )

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(gw.settings.routes, "match", broken)
    with serve_asgi(gw) as url:
        r = http.get(url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(issuer.mint())})
    assert_refusal(r, 401, "verification_failed")


def test_several_workspaces_from_one_table(http: httpx.Client) -> None:
    """[[bbverify.workspaces]] + [bbverify.policies.*] + routes: one gateway, one key set per workspace."""
    from prometheus_client import CollectorRegistry

    from bbverify.metrics import VerifierMetrics

    with FakeIssuer("acme") as acme, FakeIssuer("subsidiary") as sub:
        table = {
            "default_policy": "any-build",
            "workspaces": [
                {"name": "acme", "issuer": acme.issuer, "audience": acme.audience},
                {"name": "subsidiary", "issuer": sub.issuer, "audience": sub.audience},
            ],
            "policies": {
                "any-build": {"allow": [{"workspace": ["acme", "subsidiary"]}]},
                "deploy": {"allow": [{"workspace": ["acme"]}]},
            },
            "serve": {
                "protocol": "forwarded",
                "routes": [{"path_prefix": "/deploy", "policy": "deploy"}, {"path_prefix": "/"}],
            },
        }
        gw = gateway_from_mapping(table, metrics=VerifierMetrics(CollectorRegistry()))
        with serve_asgi(gw) as url:
            for _ in range(200):
                ready = http.get(url + "/readyz")
                if ready.status_code == 200:
                    break
                threading_wait(0.02)
            assert ready.json() == {"ready": True, "key_sets": {acme.issuer: True, sub.issuer: True}}
            deploy_acme = http.get(
                url + "/auth", headers={**traefik("POST", "/deploy/x"), **bearer(acme.mint())}
            )
            assert deploy_acme.status_code == 200
            assert deploy_acme.headers["x-bbverify-workspace"] == acme.workspace_uuid
            deploy_sub = http.get(
                url + "/auth", headers={**traefik("POST", "/deploy/x"), **bearer(sub.mint())}
            )
            assert deploy_sub.status_code == 403
            build_sub = http.get(url + "/auth", headers={**traefik("GET", "/builds/1"), **bearer(sub.mint())})
            assert build_sub.status_code == 200
            assert build_sub.headers["x-bbverify-workspace"] == sub.workspace_uuid
            text = http.get(url + "/metrics").text
        assert f'bbverify_key_set_loaded{{issuer="{acme.issuer}"}} 1.0' in text
        assert f'bbverify_key_set_loaded{{issuer="{sub.issuer}"}} 1.0' in text


def test_identity_header_names_are_configurable(issuer: FakeIssuer, http: httpx.Client) -> None:
    serve = {
        "protocol": "nginx",
        "routes": ROUTES,
        "identity_headers": {"repository": "X-Pipeline-Repo", "branch": "X-Pipeline-Branch"},
    }
    gw = make_gateway(issuer, serve, named=named(issuer), default_policy="build")
    with serve_asgi(gw) as url:
        r = http.get(
            url + "/auth", headers={**nginx("POST", "/deploy"), **bearer(issuer.mint(branch="main"))}
        )
    assert r.status_code == 200
    assert r.headers["x-pipeline-repo"] == issuer.repository_uuid
    assert r.headers["x-pipeline-branch"] == "main"
    assert "x-bbverify-repository" not in r.headers
    assert r.headers["x-bbverify-workspace"] == issuer.workspace_uuid  # the others keep their defaults


def test_listens_on_loopback_by_default() -> None:
    settings = serve_settings({"protocol": "nginx", "routes": ROUTES})
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 9180, 1)


def test_access_log_can_be_turned_off(
    issuer: FakeIssuer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    gw = make_gateway(
        issuer,
        {"protocol": "nginx", "routes": ROUTES, "access_log": False},
        named=named(issuer),
        default_policy="build",
    )
    with serve_asgi(gw) as url, caplog.at_level(logging.INFO, logger="bbverify.gateway.access"):
        assert http.get(url + "/auth", headers=nginx("GET", "/public/x")).status_code == 200
    assert not [r for r in caplog.records if r.name == "bbverify.gateway.access"]
    with pytest.raises(ConfigurationError) as info:
        serve_settings({"protocol": "nginx", "routes": ROUTES, "access_log": "no"})
    assert info.value.key == "serve.access_log"


def test_refused_path_cannot_fake_audit_fields(
    nginx_gw: Any, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = nginx_gw
    with caplog.at_level(logging.WARNING, logger="bbverify.audit"):
        r = http.get(url + "/auth", headers=nginx("GET", "/x code=ok\tallow"))
        m = http.get(url + "/auth", headers=nginx("GET code=ok", "/public/x"))
    assert_refusal(r, 403, "unnormalizable_request")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "bbverify.audit"]
    # Percent-quoted by the gateway, then written as a logfmt value by the audit logger
    # (a JSON string with '=' escaped): one path field, no second "code=".
    assert 'path="/x%20code\\u003dok%09allow" ' in lines[-2], lines
    assert lines[-2].count("code=") == 1, lines
    assert_refusal(m, 403, "unnormalizable_request")
    assert 'method="GET%20code\\u003dok" ' in lines[-1], lines
    assert lines[-1].count("code=") == 1, lines


@pytest.mark.parametrize(
    "path",
    [
        "/admin/../public/x",
        "/admin/%2e%2e/public/x",
        "/admin/%2E./public/x",
        "/admin/..;/public/x",
        "/public/..;/admin",
        "/admin;jsessionid=1",
        "/admin/./x",
        "//admin",
        "/%61dmin",
    ],
)
def test_envoy_and_forwarded_refuse_paths_upstreams_read_differently(
    envoy_gw: str, forwarded_gw: str, http: httpx.Client, path: str
) -> None:
    # F08/F02: Envoy's normalize_path is off by default, so the check carries the raw path.
    # http.client sends the path as written (httpx would resolve the dots first).
    host, port = envoy_gw.removeprefix("http://").rsplit(":", 1)
    conn = http_client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/check" + path, headers={"Host": "app.example.com"})
        answer = conn.getresponse()
        assert answer.status == 403
        assert json.loads(answer.read())["code"] == "unnormalizable_request"
    finally:
        conn.close()
    r = http.get(forwarded_gw + "/auth", headers=traefik("GET", path))
    assert_refusal(r, 403, "unnormalizable_request")


def test_readyz_does_not_bypass_the_backoff(http: httpx.Client) -> None:
    # F09: while the issuer fails, /readyz reports and starts at most the fetch a
    # check would start; 30 probes inside the backoff make no more fetches than 30 checks.
    with FakeIssuer() as fake:
        fake.fail("500")
        gw = make_gateway(
            fake,
            {"protocol": "nginx", "routes": ROUTES},
            named=named(fake),
            default_policy="build",
            timeout=1.0,
            failure_backoff=300.0,
        )
        with serve_asgi(gw) as url:
            # The start-up warm-up makes the first (failing) fetch.
            for _ in range(200):
                if fake.jwks_requests >= 1 and (gw._warming is None or gw._warming.done()):
                    break
                threading_wait(0.02)
            after_start = fake.jwks_requests
            for _ in range(30):
                r = http.get(url + "/readyz")
                assert r.status_code == 503
                assert r.json()["ready"] is False
            threading_wait(0.2)
            assert fake.jwks_requests == after_start


@pytest.mark.parametrize("protocol", ["nginx", "forwarded"])
@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL", "X-Rewrite-URL"],
)
def test_override_headers_are_refused_unless_allowed(
    issuer: FakeIssuer, http: httpx.Client, protocol: str, name: str
) -> None:
    # F05: the upstream may act on these instead of the routed method or path.
    for allowed in (False, True):
        gw = make_gateway(
            issuer,
            {"protocol": protocol, "routes": ROUTES, "allow_override_headers": allowed},
            named=named(issuer),
            default_policy="build",
        )
        with serve_asgi(gw) as url:
            shape = nginx if protocol == "nginx" else traefik
            r = http.get(url + "/auth", headers={**shape("GET", "/public/x"), name: "DELETE"})
        if allowed:
            assert r.status_code == 200
        else:
            assert_refusal(r, 403, "unnormalizable_request")


def test_error_header_is_valid_json_and_bounded(issuer: FakeIssuer) -> None:
    # F07: a long message is shortened before serialising, never the JSON cut mid-escape.
    from bbverify.errors import InvalidToken

    gw = make_gateway(
        issuer, {"protocol": "nginx", "routes": ROUTES}, named=named(issuer), default_policy="build"
    )
    for message in ("\u00e9" * 400, "x" * 5000, "\U0001f600" * 300, "short"):
        response = gw._refusal(InvalidToken(message, code="verification_failed"))
        value = dict(response.headers)["X-Bbverify-Error"]
        assert len(value) <= 1024 and value.isascii()
        document = json.loads(value)
        assert document["code"] == "verification_failed"
        assert message.startswith(document["message"].removesuffix("..."))
