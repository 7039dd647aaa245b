"""Every adapter answers alike; each case runs through a real server on loopback or a Unix socket.

Items of issue 11: 1 (exclusions on the routed path under mounts, dispatchers and root
paths), 2 (Unix-socket peers), 3 (Starlette ``requires``), 4 (FastAPI
scopes, optional auth), 5 (one way to the claims and client IP; method and
path on decisions), 6 (zone ids), 7 (trusted_proxies shapes), 8 (feed items
covering everything).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Security
from flask import Flask, g
from servers import bearer, serve_asgi, serve_asgi_uds, serve_wsgi, uds_client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bbverify import ConfigurationError, PipelineClaims
from bbverify.asgi import PipelineAuthMiddleware
from bbverify.audit import Decision
from bbverify.fastapi import PipelineAuth, install_error_handler
from bbverify.flask import current_client_ip, require_pipeline
from bbverify.http import TrustedProxies, client_ip, request_claims, request_client_ip, routing_path
from bbverify.ipranges import parse_client_ip, parse_feed
from bbverify.policies import IPRanges
from bbverify.starlette import PipelineAuthBackend, requires
from bbverify.testing import FakeIssuer
from bbverify.wsgi import PipelineAuthMiddleware as WSGIPipelineAuthMiddleware

ENV = "{7c1c4a43-8e8c-4a3b-9d57-2b2f1f0e6a11}"
BITBUCKET_IP = "34.199.54.113"


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def whoami(request: Request) -> JSONResponse:
    claims = request_claims(request)
    return JSONResponse(
        {"repository": claims.repository_uuid if claims else None, "client_ip": request_client_ip(request)}
    )


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    import json

    path = environ.get("PATH_INFO")
    if path == "/healthz":
        body = {"ok": True}
    else:
        claims = request_claims(environ)
        body = {
            "repository": claims.repository_uuid if claims else None,
            "client_ip": request_client_ip(environ),
        }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


@pytest.fixture(scope="module")
def decisions() -> list[Decision]:
    return []


@pytest.fixture(scope="module")
def recording_verifier(issuer: FakeIssuer, decisions: list[Decision]) -> Any:
    return issuer.verifier(on_decision=decisions.append)


# -- item 1: exclusions match the path the app routes on --------------------------


def guarded_asgi(verifier: Any) -> PipelineAuthMiddleware:
    inner = Starlette(routes=[Route("/healthz", healthz), Route("/whoami", whoami)])
    return PipelineAuthMiddleware(inner, verifier=verifier, exclude_paths=["/healthz"])


@pytest.fixture(scope="module")
def mounted(recording_verifier: Any) -> Iterator[str]:
    app = Starlette(routes=[Mount("/v1", app=guarded_asgi(recording_verifier))])
    with serve_asgi(app) as url:
        yield url


@pytest.fixture(scope="module")
def dispatched(recording_verifier: Any) -> Iterator[str]:
    guarded = WSGIPipelineAuthMiddleware(wsgi_app, verifier=recording_verifier, exclude_paths=["/healthz"])
    app = DispatcherMiddleware(wsgi_app, {"/v1": guarded})
    with serve_wsgi(app) as url:
        yield url


def test_mounted_asgi_and_dispatched_wsgi_agree_on_exclusions(
    mounted: str, dispatched: str, http: httpx.Client, issuer: FakeIssuer, decisions: list[Decision]
) -> None:
    token = issuer.mint()
    for base in (mounted, dispatched):
        assert http.get(f"{base}/v1/healthz").status_code == 200, base
        # The exclusion is exact: neighbours and the mount prefix itself stay guarded.
        assert http.get(f"{base}/v1/whoami").status_code == 401, base
        assert http.get(f"{base}/v1/healthz/x").status_code in (401, 404), base
        decisions.clear()
        answer = http.get(f"{base}/v1/whoami", headers=bearer(token))
        assert answer.status_code == 200, base
        assert answer.json()["repository"] == issuer.repository_uuid
        # Item 5: the decision carries the method and the routed path, the same under both.
        assert [(d.method, d.path) for d in decisions] == [("GET", "/whoami")], base


def test_uvicorn_root_path_is_stripped_like_a_mount(recording_verifier: Any, http: httpx.Client) -> None:
    # uvicorn --root-path /api (a proxy stripped /api): scope path "/api/healthz", root_path "/api".
    with serve_asgi(guarded_asgi(recording_verifier), root_path="/api") as url:
        assert http.get(f"{url}/healthz").status_code == 200
        assert http.get(f"{url}/whoami").status_code == 401
    # The unguarded app routes "/api/healthz" as "/api/healthz" too (404): the guard sees what it sees.
    inner = Starlette(routes=[Route("/healthz", healthz)])
    with serve_asgi(inner, root_path="/api") as url:
        assert http.get(f"{url}/api/healthz").status_code == 404


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/v1/healthz", "/v1", "/healthz"),
        ("/v1", "/v1", "/"),
        ("/v1/", "/v1/", "/"),
        ("/v1/x", "/v1/", "/v1/x"),  # as Starlette: a cut only at a segment boundary
        ("/v10/healthz", "/v1", "/v10/healthz"),  # not under the mount: left whole
        ("/healthz", "", "/healthz"),
        ("", None, "/"),
    ],
)
def test_routing_path(path: str, root: str | None, expected: str) -> None:
    assert routing_path(path, root) == expected


# -- item 2: Unix-socket peers --------------------------------------------------------


@pytest.mark.parametrize("trusted", [1, ["unix"], "unix, 10.0.0.0/8"])
def test_unix_socket_peer_with_trusted_proxies(issuer: FakeIssuer, tmp_path: Any, trusted: Any) -> None:
    verifier = issuer.verifier(policies=[IPRanges([f"{BITBUCKET_IP}/32"])])
    app = PipelineAuthMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]), verifier=verifier, trusted_proxies=trusted
    )
    token = issuer.mint()
    with serve_asgi_uds(app, tmp_path) as path, uds_client(path, timeout=10) as client:
        # What nginx in front sends: the address it saw, appended to X-Forwarded-For.
        ok = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": BITBUCKET_IP})
        assert ok.status_code == 200, ok.text
        assert ok.json()["client_ip"] == BITBUCKET_IP
        other = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": "203.0.113.9"})
        assert other.status_code == 403
        assert other.json()["code"] == "ip_not_allowed"


def test_unix_socket_peer_untrusted_is_unknown(issuer: FakeIssuer, tmp_path: Any) -> None:
    # CIDRs without "unix": the socket peer is not a declared proxy, so the header is not believed.
    verifier = issuer.verifier(policies=[IPRanges([f"{BITBUCKET_IP}/32"])])
    app = PipelineAuthMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]), verifier=verifier, trusted_proxies=["10.0.0.0/8"]
    )
    with serve_asgi_uds(app, tmp_path) as path, uds_client(path, timeout=10) as client:
        answer = client.get("/whoami", headers={**bearer(issuer.mint()), "X-Forwarded-For": BITBUCKET_IP})
        assert answer.status_code == 403
        assert answer.json()["code"] == "client_ip_unknown"


def test_wsgi_unix_peer_is_empty_remote_addr() -> None:
    trusted = TrustedProxies.parse(["unix"])
    from bbverify.wsgi import environ_request

    _, peer, xff = environ_request({"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": BITBUCKET_IP})
    assert client_ip(peer, xff, trusted) == BITBUCKET_IP
    assert client_ip(peer, xff, None) is None
    assert client_ip(peer, xff, TrustedProxies.parse(["10.0.0.0/8"])) is None


# -- item 3: Starlette's documented pattern ----------------------------------------------


@pytest.fixture(scope="module")
def starlette_backend(recording_verifier: Any) -> Iterator[str]:
    @requires("pipeline")
    async def build(request: Request) -> JSONResponse:
        return JSONResponse({"client_ip": request_client_ip(request)})

    @requires("deployment")
    async def deploy(request: Request) -> JSONResponse:
        return JSONResponse({"deployed": True})

    @requires(["pipeline"])
    def sync_view(request: Request) -> JSONResponse:
        return JSONResponse({"sync": True})

    backend = PipelineAuthBackend(recording_verifier)
    app = Starlette(
        routes=[Route("/build", build), Route("/deploy", deploy), Route("/sync", sync_view)],
        middleware=[Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)],
    )
    with serve_asgi(app) as url:
        yield url


def test_starlette_requires_answers_like_every_adapter(
    starlette_backend: str, http: httpx.Client, issuer: FakeIssuer
) -> None:
    for path in ("/build", "/deploy", "/sync"):
        missing = http.get(starlette_backend + path)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="bbverify"'
        assert missing.json()["code"] == "missing_token"
        bad = http.get(starlette_backend + path, headers=bearer(issuer.mint() + "x"))
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    build_token = issuer.mint()
    assert http.get(starlette_backend + "/build", headers=bearer(build_token)).json() == {
        "client_ip": "127.0.0.1"
    }
    assert http.get(starlette_backend + "/sync", headers=bearer(build_token)).status_code == 200
    refused = http.get(starlette_backend + "/deploy", headers=bearer(build_token))
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert refused.json()["code"] == "insufficient_scope"
    deploy_token = issuer.mint(environment_uuid=ENV)
    assert http.get(starlette_backend + "/deploy", headers=bearer(deploy_token)).json() == {"deployed": True}


def test_requires_refuses_unknown_scopes_and_signatures() -> None:
    with pytest.raises(ConfigurationError, match="deploymnet"):
        requires("deploymnet")
    with pytest.raises(ConfigurationError, match="request"):
        requires("pipeline")(lambda: None)


# -- item 4: FastAPI scopes and optional authentication --------------------------------


@pytest.fixture(scope="module")
def fastapi_app(recording_verifier: Any) -> Iterator[str]:
    app = FastAPI()
    install_error_handler(app)
    pipeline = PipelineAuth(recording_verifier)
    maybe = PipelineAuth(recording_verifier, auto_error=False)

    @app.get("/deploy")
    async def deploy(claims: PipelineClaims = Security(pipeline, scopes=["deployment"])) -> dict[str, Any]:
        return {"environment": claims.deployment_environment_uuid}

    @app.get("/build")
    async def build(
        request: Request, claims: PipelineClaims = Security(pipeline, scopes=["pipeline"])
    ) -> Any:
        return {"client_ip": request_client_ip(request)}

    @app.get("/typo")
    async def typo(claims: PipelineClaims = Security(pipeline, scopes=["deploy"])) -> Any:
        return {}

    @app.get("/maybe")
    async def optional(claims: PipelineClaims | None = Security(maybe)) -> dict[str, Any]:
        return {"repository": claims.repository_uuid if claims else None}

    # Lifespan off: with it, install_error_handler's start-up check refuses the /typo route
    # and the server does not start (tests/security/test_adapters.py, f08); without
    # it the per-request fallback below is what remains.
    with serve_asgi(app, lifespan="off") as url:
        yield url


def test_fastapi_scopes_are_honoured(fastapi_app: str, http: httpx.Client, issuer: FakeIssuer) -> None:
    build_token = issuer.mint()
    refused = http.get(fastapi_app + "/deploy", headers=bearer(build_token))
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"
    ok = http.get(fastapi_app + "/deploy", headers=bearer(issuer.mint(environment_uuid=ENV)))
    assert ok.json() == {"environment": ENV}
    assert http.get(fastapi_app + "/build", headers=bearer(build_token)).json() == {"client_ip": "127.0.0.1"}
    assert http.get(fastapi_app + "/deploy").status_code == 401


def test_fastapi_unknown_scope_fails_closed(fastapi_app: str, issuer: FakeIssuer) -> None:
    # Not an answer to bad input but a configuration mistake: raised, never admitted.
    with httpx.Client(base_url=fastapi_app, timeout=10) as client:
        answer = client.get("/typo", headers=bearer(issuer.mint(environment_uuid=ENV)))
    assert answer.status_code == 500


def test_fastapi_optional_auth(fastapi_app: str, http: httpx.Client, issuer: FakeIssuer) -> None:
    assert http.get(fastapi_app + "/maybe").json() == {"repository": None}
    assert http.get(fastapi_app + "/maybe", headers=bearer(issuer.mint())).json() == {
        "repository": issuer.repository_uuid
    }
    bad = http.get(fastapi_app + "/maybe", headers=bearer(issuer.mint() + "x"))
    assert bad.status_code == 401


# -- item 4/5: Flask optional and the client IP -------------------------------------------


@pytest.fixture(scope="module")
def flask_app(recording_verifier: Any) -> Iterator[str]:
    app = Flask(__name__)

    @app.get("/whoami")
    @require_pipeline(recording_verifier)
    def flask_whoami() -> Any:
        from flask import request

        return {"client_ip": current_client_ip(), "same": request_client_ip(request) == current_client_ip()}

    @app.get("/maybe")
    @require_pipeline(recording_verifier, optional=True)
    def flask_maybe() -> Any:
        claims = g.pipeline_claims
        return {"repository": claims.repository_uuid if claims else None}

    with serve_wsgi(app) as url:
        yield url


def test_flask_client_ip_and_optional(flask_app: str, http: httpx.Client, issuer: FakeIssuer) -> None:
    token = issuer.mint()
    assert http.get(flask_app + "/whoami", headers=bearer(token)).json() == {
        "client_ip": "127.0.0.1",
        "same": True,
    }
    assert http.get(flask_app + "/maybe").json() == {"repository": None}
    assert http.get(flask_app + "/maybe", headers=bearer(token)).json() == {
        "repository": issuer.repository_uuid
    }
    assert http.get(flask_app + "/maybe", headers=bearer(token + "x")).status_code == 401
    assert http.get(flask_app + "/whoami").status_code == 401


def test_missing_token_decision_has_method_and_path(
    mounted: str, http: httpx.Client, decisions: list[Decision]
) -> None:
    decisions.clear()
    http.post(f"{mounted}/v1/whoami")
    assert [(d.code, d.method, d.path) for d in decisions] == [("missing_token", "POST", "/whoami")]


# -- item 6: zone ids ----------------------------------------------------------------------


def test_zone_ids_are_refused_the_same_way_everywhere() -> None:
    rule_refuses = pytest.raises(ValueError, match="zone")
    with rule_refuses:
        parse_client_ip("fe80::1%eth0")
    # The adapter's view of the same peer: unknown, so the IP rule denies (client_ip_unknown).
    assert client_ip("fe80::1%eth0") is None
    assert client_ip("[fe80::1%25eth0]:443") is None
    assert client_ip("10.0.0.1", ["fe80::1%eth0"], TrustedProxies.parse(["10.0.0.0/8"])) is None


# -- item 7: trusted_proxies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.7/8", "host bits"),
        (["10.0.0.7/8"], "host bits"),
        ("0.0.0.0/1,128.0.0.0/1", "every IPv4"),
        (["0.0.0.0/0"], "every IPv4"),
        (["::/1", "8000::/1"], "every IPv6"),
        (["::/0"], "every IPv6"),
        (["::ffff:0:0/96"], "every IPv4"),  # every IPv4 address, mapped
        ([f"{i}.0.0.0/8" for i in range(256)], "every IPv4"),
        (["fe80::1%eth0"], "zone"),
        (["10.0.0.0/8", "junk"], "not an IPv4 or IPv6"),
    ],
)
def test_trusted_proxies_refuses(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        TrustedProxies.parse(value)
    assert (info.value.key or "").startswith("trusted_proxies")


def test_trusted_proxies_accepts_proxy_ranges() -> None:
    parsed = TrustedProxies.parse("10.0.0.0/8, 192.168.0.0/16, unix")
    assert parsed is not None and parsed.unix and len(parsed.networks) == 2
    assert TrustedProxies.parse("0.0.0.0/1") is not None  # half the space is a (poor) choice, not everything


# -- item 8: feed items covering everything ----------------------------------------------


@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0", "::ffff:0:0/96"])
def test_feed_item_covering_everything_is_refused(everything: str, caplog: pytest.LogCaptureFixture) -> None:
    feed = {
        "items": [
            {"cidr": everything, "product": ["bitbucket"], "direction": ["egress"]},
            {"cidr": "34.199.54.0/24", "product": ["bitbucket"], "direction": ["egress"]},
        ]
    }
    with caplog.at_level(logging.WARNING, logger="bbverify"):
        snapshot = parse_feed(feed)
    assert parse_client_ip(BITBUCKET_IP) in snapshot.ranges
    assert parse_client_ip("203.0.113.9") not in snapshot.ranges
    assert parse_client_ip("2001:db8::1") not in snapshot.ranges
    assert snapshot.skipped == 1
    assert any(everything in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_scope_refusals_are_audited(
    starlette_backend: str,
    fastapi_app: str,
    http: httpx.Client,
    issuer: FakeIssuer,
    decisions: list[Decision],
) -> None:
    token = issuer.mint()
    for base in (starlette_backend, fastapi_app):
        decisions.clear()
        assert http.get(base + "/deploy", headers=bearer(token)).status_code == 403
        assert [(d.code, d.method, d.path) for d in decisions][-1] == ("insufficient_scope", "GET", "/deploy")


def test_routing_path_agrees_with_starlettes_router() -> None:
    from starlette._utils import get_route_path

    paths = ["/", "/v1", "/v1/", "/v1/x", "/v10/x", "/api/v1/healthz", "/x/v1"]
    roots = ["", "/v1", "/v1/", "/api", "/api/v1", "/x"]
    for path in paths:
        for root in roots:
            expected = get_route_path({"path": path, "root_path": root}) or "/"
            if not expected.startswith("/"):
                # Starlette 0.37 (our floor) strips a root_path with a trailing
                # slash, leaving "x" for "/v1/x": no route can match that, so
                # the request is a 404 whatever bbverify decides.
                continue
            assert routing_path(path, root) == expected, (path, root)


# -- every refusal audited once, under the route's policy (findings f03, f04, f08) ------------


def _allow(claims: Any, context: Any) -> None:
    return None


@pytest.fixture(scope="module")
def policed(issuer: FakeIssuer) -> Iterator[tuple[list[Decision], dict[str, str]]]:
    """One route per adapter, each under the named policy "deploy" (the default is "build")."""
    from bbverify.gateway import Gateway, serve_settings

    seen: list[Decision] = []
    verifier = issuer.verifier(
        named_policies={"deploy": [_allow], "build": [_allow]},
        default_policy="build",
        on_decision=seen.append,
    )
    fast = FastAPI()
    install_error_handler(fast)
    auth = PipelineAuth(verifier, policy="deploy")

    @fast.post("/deploy")
    async def fast_deploy(claims: PipelineClaims = Security(auth, scopes=["deployment"])) -> Any:
        return {}

    @requires("deployment")
    async def star_deploy(request: Request) -> JSONResponse:
        return JSONResponse({})

    backend = PipelineAuthBackend(verifier, policy="deploy")
    star = Starlette(
        routes=[Route("/deploy", star_deploy, methods=["POST"])],
        middleware=[Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)],
    )
    flask = Flask(__name__)

    @flask.post("/deploy")
    @require_pipeline(verifier, policy="deploy")
    def flask_deploy() -> Any:
        return {}

    gateway = Gateway(
        verifier,
        serve_settings({"protocol": "forwarded", "routes": [{"path_prefix": "/deploy", "policy": "deploy"}]}),
    )
    with serve_asgi(fast) as f, serve_asgi(star) as s, serve_wsgi(flask) as w, serve_asgi(gateway) as g:
        yield seen, {"fastapi": f, "starlette": s, "flask": w, "gateway": g}


def _ask(http: httpx.Client, urls: dict[str, str], adapter: str, token: str | None) -> httpx.Response:
    headers = bearer(token) if token is not None else {}
    if adapter == "gateway":
        from bbverify.gateway import AUTH_PATH

        headers.update(
            {"X-Forwarded-Method": "POST", "X-Forwarded-Host": "svc", "X-Forwarded-Uri": "/deploy"}
        )
        return http.get(urls[adapter] + AUTH_PATH, headers=headers)
    return http.post(urls[adapter] + "/deploy", headers=headers)


@pytest.mark.parametrize("adapter", ["fastapi", "starlette", "flask", "gateway"])
def test_every_refusal_is_audited_once_under_the_route_policy(
    policed: tuple[list[Decision], dict[str, str]], http: httpx.Client, issuer: FakeIssuer, adapter: str
) -> None:
    seen, urls = policed
    for token, code in ((None, "missing_token"), ("not.a.token", "malformed")):
        seen.clear()
        assert _ask(http, urls, adapter, token).status_code == 401
        assert [(d.allowed, d.code, d.policy, d.path) for d in seen] == [(False, code, "deploy", "/deploy")]


@pytest.mark.parametrize("adapter", ["fastapi", "starlette"])
def test_scope_refusal_names_the_route_policy_workspace_and_issuer(
    policed: tuple[list[Decision], dict[str, str]], http: httpx.Client, issuer: FakeIssuer, adapter: str
) -> None:
    seen, urls = policed
    seen.clear()
    assert _ask(http, urls, adapter, issuer.mint()).status_code == 403
    # The verifier's allow of the valid token stays; the scope denial follows it, once.
    assert [(d.allowed, d.code, d.policy) for d in seen] == [
        (True, "ok", "deploy"),
        (False, "insufficient_scope", "deploy"),
    ]
    assert seen[1].issuer == seen[0].issuer == issuer.issuer
    assert seen[1].workspace_name == seen[0].workspace_name
    assert seen[1].repository == seen[0].repository is not None


# -- PipelineAuthBackend takes on_error like every adapter (f09) -------------------------------


def test_starlette_backend_on_error_answers_for_itself_and_requires(
    issuer: FakeIssuer, http: httpx.Client
) -> None:
    from bbverify.http import ErrorResponse

    def teapot(error: Any) -> Any:
        if error.code == "missing_token":
            return JSONResponse({"teapot": error.code}, status_code=418)
        return ErrorResponse(418, (("X-Code", str(error.code)),), b"teapot")

    @requires("pipeline")
    async def build(request: Request) -> JSONResponse:
        return JSONResponse({})

    @requires("pipeline", realm="own")
    async def own(request: Request) -> JSONResponse:
        return JSONResponse({})

    quiet = PipelineAuthBackend(issuer.verifier(), realm="backend")
    loud = PipelineAuthBackend(issuer.verifier(), on_error=teapot)
    routes = [Route("/build", build), Route("/own", own)]
    plain = Starlette(
        routes=routes,
        middleware=[Middleware(AuthenticationMiddleware, backend=quiet, on_error=quiet.on_error)],
    )
    hooked = Starlette(
        routes=routes,
        middleware=[Middleware(AuthenticationMiddleware, backend=loud, on_error=loud.on_error)],
    )
    with serve_asgi(plain) as p, serve_asgi(hooked) as h:
        # The backend's realm is requires()'s default; requires(realm=) still overrides it.
        assert http.get(p + "/build").headers["www-authenticate"] == 'Bearer realm="backend"'
        assert http.get(p + "/own").headers["www-authenticate"] == 'Bearer realm="own"'
        bad = http.get(h + "/build", headers=bearer("not.a.token"))
        assert (bad.status_code, bad.headers["x-code"], bad.content) == (418, "malformed", b"teapot")
        missing = http.get(h + "/build")
        assert (missing.status_code, missing.json()) == (418, {"teapot": "missing_token"})
        assert http.get(h + "/build", headers=bearer(issuer.mint())).status_code == 200


# -- one realm check for every adapter (f02) ---------------------------------------------------


@pytest.mark.parametrize("realm", ["", 0, 'a"b'])
def test_every_adapter_checks_realm_the_same_way(issuer: FakeIssuer, realm: Any) -> None:
    from bbverify.flask import BBVerify

    verifier = issuer.verifier()
    builds = [
        lambda: PipelineAuth(verifier, realm=realm),
        lambda: PipelineAuthBackend(verifier, realm=realm),
        lambda: PipelineAuthMiddleware(Starlette(), verifier=verifier, realm=realm),
        lambda: WSGIPipelineAuthMiddleware(wsgi_app, verifier=verifier, realm=realm),
        lambda: require_pipeline(verifier, realm=realm),
        lambda: require_pipeline(realm=realm),
        lambda: BBVerify(Flask(__name__), verifier=verifier, realm=realm),
        lambda: requires("pipeline", realm=realm),
    ]
    for build in builds:
        with pytest.raises(ConfigurationError) as caught:
            build()
        assert caught.value.key == "realm"


def test_flask_realm_setting_is_checked(issuer: FakeIssuer) -> None:
    from bbverify.flask import BBVerify

    app = Flask(__name__)
    app.config["BBVERIFY_REALM"] = ""
    with pytest.raises(ConfigurationError) as caught:
        BBVerify(app, verifier=issuer.verifier())
    assert caught.value.key == "BBVERIFY_REALM"
