"""The core-attack findings (core and HTTP seams), one test or more per finding.

Each test failed before its fix; the ids are those of the hostile review's
FINDINGS.md (f01 ... f16).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servers import bearer, serve_asgi, serve_wsgi
from werkzeug.serving import make_server

from bbverify import PipelineClaims, Verifier, WorkspaceSpec
from bbverify.asgi import PipelineAuthMiddleware as ASGIMiddleware
from bbverify.audit import AUDIT_LOGGER, Decision, emit
from bbverify.config import verifier_from_env, verifier_from_mapping
from bbverify.errors import ConfigurationError, VerificationError
from bbverify.http import UNIX_SOCKET_PEER, TrustedProxies, wsgi_path, wsgi_peer
from bbverify.ipranges import FeedError, catch_all_versions, parse_feed
from bbverify.keys import StaticKeySet
from bbverify.policies import Branches, IPRanges
from bbverify.testing import FakeIssuer, SigningKey
from bbverify.token import loads_strict
from bbverify.wsgi import PipelineAuthMiddleware as WSGIMiddleware

U1 = "{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}"
U2 = "{7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d}"


# -- f01: everything checkable unsigned is checked before a key fetch ---------------------


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"workspaceUuid": "{00000000-0000-4000-8000-000000000000}"}, "workspace_mismatch"),
        ({"sub": "{x}:{y}"}, "subject_mismatch"),
        ({"branchName": ["main"]}, "malformed"),
        ({"deploymentEnvironmentUuid": 7}, "malformed"),
        ({"nbf": 4_000_000_000}, "not_yet_valid"),
        ({"nbf": "soon"}, "malformed"),
    ],
)
def test_f01_implausible_bitbucket_claims_cost_no_fetch(
    issuer: FakeIssuer, extra: dict[str, Any], code: str
) -> None:
    forger = SigningKey(kid="attacker-kid", private_key=issuer.signing_key.private_key)
    verifier = issuer.verifier(workspace_uuid=issuer.workspace_uuid)  # cold: nothing fetched yet
    before = issuer.jwks_requests + issuer.discovery_requests
    with pytest.raises(VerificationError) as caught:
        verifier.verify(issuer.sign(issuer.claims(extra=extra), key=forger))
    assert caught.value.code == code
    assert issuer.jwks_requests + issuer.discovery_requests == before


def test_f01_genuine_token_still_verifies_with_the_pin(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(workspace_uuid=issuer.workspace_uuid)
    assert verifier.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid


# -- f03: the audit line is logfmt, every value quoted when it needs to be -------------------


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _parse_line(line: str) -> tuple[str, list[tuple[str, str]]]:
    verdict, _, rest = line.partition(" ")
    fields = [(k, json.loads(v) if v.startswith('"') else v) for k, v in _FIELD.findall(rest)]
    # Nothing but fields: the whole line is consumed by the parser.
    assert _FIELD.sub("", rest).strip() == ""
    return verdict, fields


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def audit_lines() -> Iterator[list[str]]:
    handler = _Lines()
    AUDIT_LOGGER.addHandler(handler)
    level = AUDIT_LOGGER.level
    AUDIT_LOGGER.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        AUDIT_LOGGER.removeHandler(handler)
        AUDIT_LOGGER.setLevel(level)


@pytest.mark.parametrize(
    "path",
    [
        "/x allow code=ok client_ip=203.0.113.9",
        '/x" client_ip="203.0.113.9',
        "/x\\\" client_ip=1",
        "/x\r\nallow code=ok",
        "/x\u2028allow code=ok\u0085",
        "/caf\u00e9 =",
        "None",
        "",
    ],
)
def test_f03_client_chosen_path_cannot_add_fields(audit_lines: list[str], path: str) -> None:
    error = VerificationError("no token", code="missing_token")
    emit(Decision.build(None, "198.51.100.7", error, method="GET", path=path), None)
    (line,) = audit_lines
    assert "\n" not in line and "\r" not in line and line.isascii()
    assert line.count("client_ip=") == 1 and " allow " not in line and "code=ok" not in line
    verdict, fields = _parse_line(line)
    assert verdict == "deny"
    assert [k for k, _ in fields] == [
        "code", "rule", "repository", "environment", "pipeline", "step", "client_ip", "method", "path",
        "workspace", "policy",
    ]  # fmt: skip
    assert dict(fields)["path"] == path and dict(fields)["client_ip"] == "198.51.100.7"


def test_f03_asgi_request_path_is_one_field(audit_lines: list[str], issuer: FakeIssuer) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("refused requests never reach the app")

    middleware = ASGIMiddleware(app, verifier=issuer.verifier())
    scope = {"type": "http", "method": "GET", "path": "/x allow code=ok client_ip=203.0.113.9",
             "root_path": "", "headers": [], "client": ("198.51.100.7", 5555),
             "server": ("127.0.0.1", 80)}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 401
    verdict, fields = _parse_line(audit_lines[-1])
    assert verdict == "deny" and dict(fields)["path"] == scope["path"]
    assert [k for k, _ in fields].count("client_ip") == 1


def test_f03_plain_values_stay_bare(audit_lines: list[str], issuer: FakeIssuer) -> None:
    issuer.verifier().verify(issuer.mint(), client_ip="192.0.2.1", method="POST", path="/deploy/v1")
    line = audit_lines[-1]
    assert line.startswith("allow code=ok rule=None repository={")
    assert "client_ip=192.0.2.1 method=POST path=/deploy/v1 workspace=" in line


# -- f04: feed items that together cover everything ----------------------------------------


def _feed(*cidrs: str) -> dict[str, Any]:
    return {"items": [{"cidr": c, "product": ["bitbucket"], "direction": ["egress"]} for c in cidrs]}


@pytest.mark.parametrize(
    "cidrs",
    [
        ("0.0.0.0/1", "128.0.0.0/1"),
        ("::/1", "8000::/1", "203.0.113.0/24"),
        ("0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/3"),
        ("::ffff:0.0.0.0/97", "::ffff:128.0.0.0/97"),  # IPv4-mapped halves are IPv4 halves
    ],
)
def test_f04_split_catch_all_feed_is_refused(cidrs: tuple[str, ...]) -> None:
    with pytest.raises(FeedError, match="together cover every"):
        parse_feed(_feed(*cidrs))


def test_f04_near_catch_all_feed_is_used() -> None:
    # One address short of everything is not everything: the check is exact.
    ranges = parse_feed(_feed("0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5",
                              "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8", "255.0.0.0/9")).ranges
    assert ipaddress.ip_address("8.8.8.8") in ranges
    assert catch_all_versions(ranges.networks) == ()


def test_f04_one_check_for_feed_and_trusted_proxies() -> None:
    halves = [ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")]
    assert catch_all_versions(halves) == (6,)
    with pytest.raises(ConfigurationError, match="every IPv6 address"):
        TrustedProxies.parse(["::/1", "8000::/1"])


# -- f05: Flask checks a view's policy name when the view is registered ---------------------


def _flask_app(issuer: FakeIssuer) -> Any:
    from flask import Flask

    app = Flask(__name__)
    app.config.update(
        BBVERIFY_ISSUER=issuer.issuer,
        BBVERIFY_AUDIENCE=issuer.audience,
        BBVERIFY_POLICIES={"deploy": {"allow": [{"branches": ["main"]}]}},
    )
    return app


def test_f05_flask_typo_after_extension_fails_at_registration(issuer: FakeIssuer) -> None:
    from bbverify.flask import BBVerify, require_pipeline

    app = _flask_app(issuer)
    BBVerify(app)  # the README's order: extension first, routes below
    with pytest.raises(ConfigurationError, match="unknown policy 'deplyo'") as caught:

        @app.post("/deploy")
        @require_pipeline(policy="deplyo")
        def deploy() -> dict[str, bool]:
            return {"ok": True}

    assert caught.value.key == "view 'deploy': policy"


def test_f05_flask_typo_in_blueprint_registered_later(issuer: FakeIssuer) -> None:
    from flask import Blueprint

    from bbverify.flask import BBVerify, require_pipeline

    blueprint = Blueprint("ops", __name__)

    @blueprint.post("/deploy")
    @require_pipeline(policy="deplyo")
    def deploy() -> dict[str, bool]:
        return {"ok": True}

    app = _flask_app(issuer)
    extension = BBVerify()
    extension.init_app(app)  # app factory
    with pytest.raises(ConfigurationError, match="deplyo"):
        app.register_blueprint(blueprint)


def test_f05_flask_correct_name_after_extension_serves(issuer: FakeIssuer) -> None:
    from bbverify.flask import BBVerify, require_pipeline

    app = _flask_app(issuer)
    BBVerify(app)

    @app.post("/deploy")
    @require_pipeline(policy="deploy")
    def deploy() -> dict[str, bool]:
        return {"ok": True}

    client = app.test_client()
    assert client.post("/deploy").status_code == 401
    assert client.post("/deploy", headers=bearer(issuer.mint(branch="main"))).status_code == 200
    assert client.post("/deploy", headers=bearer(issuer.mint(branch="dev"))).status_code == 403


# -- f06: hop counts are ASCII digits ---------------------------------------------------


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "\uff13", "1\u00b2"])
def test_f06_non_ascii_digits_are_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustedProxies.parse(text)
    assert caught.value.key == "trusted_proxies"
    with pytest.raises(ConfigurationError):
        verifier_from_env({"BBVERIFY_ISSUER": "https://issuer.example", "BBVERIFY_AUDIENCE": "a",
                           "BBVERIFY_TRUSTED_PROXIES": text})  # fmt: skip


def test_f06_ascii_hop_count_still_works() -> None:
    parsed = TrustedProxies.parse(" 3 ")
    assert parsed is not None and parsed.hops == 3


# -- f07: keys= and jwks_url= contradict each other -------------------------------------


def test_f07_keys_and_jwks_url_together_refused(issuer: FakeIssuer) -> None:
    keys = StaticKeySet(issuer.jwks())
    with pytest.raises(ConfigurationError) as caught:
        issuer.verifier(keys=keys, jwks_url=issuer.issuer + "/keys.json")
    assert caught.value.key == "jwks_url"
    with pytest.raises(ConfigurationError) as caught:
        Verifier(workspaces=[{"issuer": issuer.issuer, "audience": "a", "keys": keys,
                              "jwks_url": issuer.issuer + "/keys.json"}])  # fmt: skip
    assert caught.value.key == "workspaces[0].jwks_url"


@pytest.mark.parametrize("url", ["not a url at all", "http://keys.example/keys.json", "ftp://x/y", ""])
def test_f07_jwks_url_always_validated(issuer: FakeIssuer, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WorkspaceSpec(issuer=issuer.issuer, audience="a", jwks_url=url)
    assert caught.value.key == "jwks_url"


def test_f07_loopback_jwks_url_alone_works(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(jwks_url=issuer.issuer + "/keys.json")
    assert verifier.verify(issuer.mint()).repository_uuid == issuer.repository_uuid


# -- f08: FastAPI scope names at start-up -------------------------------------------------


def _fastapi_app(issuer: FakeIssuer, scopes: list[str]) -> Any:
    from fastapi import FastAPI, Security

    from bbverify.fastapi import PipelineAuth, install_error_handler

    app = FastAPI()
    install_error_handler(app)
    auth = PipelineAuth(issuer.verifier())

    @app.post("/release")
    # A default, not Annotated: this module's annotations are strings FastAPI cannot resolve here.
    def release(claims: PipelineClaims = Security(auth, scopes=scopes)) -> dict[str, bool]:
        return {"ok": True}

    return app


def test_f08_check_routes_names_the_route() -> None:
    from bbverify.fastapi import check_routes

    with FakeIssuer() as fake:
        app = _fastapi_app(fake, ["deploy"])
        with pytest.raises(ConfigurationError) as caught:
            check_routes(app)
        assert caught.value.key == "route '/release': Security.scopes[0]"
        check_routes(_fastapi_app(fake, ["deployment"]))  # a granted name passes


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's sys.exit(3)
def test_f08_real_uvicorn_refuses_to_start_with_a_misspelt_scope(issuer: FakeIssuer) -> None:
    # Default lifespan "auto": Starlette reports lifespan.startup.failed, so uvicorn stops.
    with pytest.raises(RuntimeError, match="did not start"), serve_asgi(_fastapi_app(issuer, ["deploy"])):
        pass


def test_f08_real_uvicorn_serves_with_correct_scopes(issuer: FakeIssuer, http: httpx.Client) -> None:
    with serve_asgi(_fastapi_app(issuer, ["pipeline"])) as url:
        assert http.post(url + "/release").status_code == 401
        assert http.post(url + "/release", headers=bearer(issuer.mint())).status_code == 200


# -- f10: a workspace name may not stand for another workspace -------------------------------


def test_f10_name_equal_to_another_slug_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        verifier_from_mapping({
            "workspaces": [{"workspace": "acme-sandbox", "name": "acme", "workspace_uuid": U1},
                           {"workspace": "acme", "name": "prod", "workspace_uuid": U2}],
            "policies": {"deploy": {"allow": [{"workspace": ["acme"]}]}},
        })  # fmt: skip
    assert caught.value.key == "workspaces[0].name"


def test_f10_name_equal_to_another_issuer_is_refused() -> None:
    other = "https://issuer.example/oidc"
    with pytest.raises(ConfigurationError, match="slug or issuer of workspaces"):
        Verifier(workspaces=[WorkspaceSpec(issuer=other, audience="a", name="a"),
                             WorkspaceSpec(workspace="acme", audience="a", name=other)])  # fmt: skip


def test_f10_own_slug_and_distinct_names_are_fine() -> None:
    verifier = Verifier(
        workspaces=[
            WorkspaceSpec(workspace="acme", audience="a", name="acme"),
            WorkspaceSpec(workspace="acme-sandbox", audience="a", name="sandbox"),
        ]
    )
    assert [w.name for w in verifier.workspaces] == ["acme", "sandbox"]
    assert [w.slug for w in verifier.workspaces] == ["acme", "acme-sandbox"]


# -- f12: settings built into the workspaces are read-only --------------------------------


def test_f12_verifier_rule_settings_are_read_only(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(policies=[Branches("main")], named_policies={"deploy": Branches("main")},
                               default_policy="deploy")  # fmt: skip
    for name, value in [("policies", ()), ("default_policy", None), ("named_policies", {}),
                        ("workspaces", ()), ("algorithms", frozenset({"RS256"}))]:  # fmt: skip
        with pytest.raises(AttributeError):
            setattr(verifier, name, value)
    with pytest.raises(TypeError):
        verifier.named_policies["open"] = ()  # type: ignore[index]
    assert verifier.policies == (verifier.policies[0],) and verifier.default_policy == "deploy"
    with pytest.raises(VerificationError) as caught:
        verifier.verify(issuer.mint(branch="dev"))
    assert caught.value.code == "branch_not_allowed"


# -- f13: strict JSON in environment settings -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BBVERIFY_POLICIES",
         '{"deploy": {"allow": [{"branches": ["main"]}]}, "deploy": {"allow": [{"branches": ["*"]}]}}'),
        ("BBVERIFY_POLICIES", '{"deploy": {"allow": [{"branches": ["main"], "branches": ["*"]}]}}'),
        ("BBVERIFY_WORKSPACE_LIST",
         f'[{{"workspace": "acme", "workspace_uuid": "{U1}", "workspace_uuid": "{U2}"}}]'),
        ("BBVERIFY_POLICIES", '{"deploy": {"allow": [{"max_step_minutes": NaN}]}}'),
    ],
)  # fmt: skip
def test_f13_duplicate_members_in_env_json_refused(name: str, value: str) -> None:
    env = {"BBVERIFY_WORKSPACE": "acme", "BBVERIFY_WORKSPACE_UUID": U1, name: value}
    if name == "BBVERIFY_WORKSPACE_LIST":
        env = {name: value}
    with pytest.raises(ConfigurationError) as caught:
        verifier_from_env(env)
    assert caught.value.key == name


def test_f13_strict_loader_keeps_valid_json() -> None:
    assert loads_strict('{"a": [1, 2.5, "x"], "b": {"c": null}}') == {"a": [1, 2.5, "x"], "b": {"c": None}}
    with pytest.raises(ValueError, match="duplicate"):
        loads_strict('{"a": 1, "a": 2}')


# -- f14: WSGI decodes PATH_INFO as PEP 3333 says -------------------------------------------


def test_f14_wsgi_path_decoding() -> None:
    assert wsgi_path("/caf\u00c3\u00a9") == "/caf\u00e9"  # UTF-8 bytes as latin-1
    assert wsgi_path("/plain") == "/plain" and wsgi_path("") == "/" and wsgi_path(None) == "/"
    assert wsgi_path("/\u00ff") == "/\ufffd"  # not UTF-8: replaced, as uvicorn and Werkzeug do
    assert wsgi_path("/\u20ac") == "/\u20ac"  # already text (not latin-1): used as it is


def test_f14_asgi_and_wsgi_exclusions_agree_on_real_servers(issuer: FakeIssuer, http: httpx.Client) -> None:
    verifier = issuer.verifier()

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    options: dict[str, Any] = {"exclude_paths": ["/caf\u00e9"], "exclude_prefixes": ["/\u00fcber/"]}
    wsgi = WSGIMiddleware(wsgi_app, verifier=verifier, **options)
    asgi = ASGIMiddleware(asgi_app, verifier=verifier, **options)
    with serve_wsgi(wsgi) as wsgi_url, serve_asgi(asgi) as asgi_url:
        for path, status in [("/caf%C3%A9", 200), ("/%C3%BCber/x", 200), ("/cafe", 401), ("/caf%E9", 401)]:
            assert http.get(wsgi_url + path).status_code == status, path
            assert http.get(asgi_url + path).status_code == status, path


# -- f15: Unix-socket peers as WSGI servers spell them ---------------------------------------


@pytest.mark.parametrize("remote_addr", ["", "<local>", "/run/nginx.sock", "@abstract", "\x00abstract"])
def test_f15_unix_spellings(remote_addr: str) -> None:
    assert wsgi_peer(remote_addr) == UNIX_SOCKET_PEER


def test_f15_ip_peers_unchanged() -> None:
    assert wsgi_peer("127.0.0.1") == "127.0.0.1" and wsgi_peer(None) is None


def _unix_request(path: str, token: str, forwarded_for: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall((f"GET /deploy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      f"X-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n").encode())  # fmt: skip
        data = b""
        for _ in range(1000):  # bounded: the server closes after one response
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(("trusted", "forwarded_for", "status"),
                         [(["unix"], "203.0.113.5", b"200"), (["unix"], "198.51.100.5", b"403"),
                          (None, "203.0.113.5", b"403")])  # fmt: skip
def test_f15_real_werkzeug_on_a_unix_socket(
    issuer: FakeIssuer, short_tmp: str, trusted: list[str] | None, forwarded_for: str, status: bytes
) -> None:
    verifier = issuer.verifier(policies=[IPRanges(["203.0.113.0/24"])])

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    path = os.path.join(short_tmp, "app.sock")
    server = make_server("unix://" + path, 0, WSGIMiddleware(app, verifier=verifier, trusted_proxies=trusted),
                         threaded=True)  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert status in _unix_request(path, issuer.mint(), forwarded_for)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- f16: unknown ASGI scope types never reach the app --------------------------------------


@pytest.mark.parametrize("kind", ["webtransport", "Http", None, "http2"])
def test_f16_unknown_scope_types_are_refused(issuer: FakeIssuer, kind: str | None) -> None:
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    middleware = ASGIMiddleware(app, verifier=issuer.verifier())

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": kind, "path": "/deploy", "headers": [], "client": ("198.51.100.7", 1),
             "server": ("127.0.0.1", 443)}  # fmt: skip
    with pytest.raises(RuntimeError, match="refuses ASGI scope type"):
        asyncio.run(middleware(scope, receive, send))
    assert reached == []
    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert reached == ["lifespan"]


# -- f11: the host judged is the host connected to ------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@127.0.0.1/keys.json",
        "http://evil.example@127.0.0.1/keys.json",
        "http://user:pw@127.0.0.1/keys.json",
        "http://127.0.0.1\\.evil.example/keys.json",
        "http://127.0.0.1 /keys.json",
        "https://ex\u00e4mple.org/keys.json",
    ],
)
def test_f11_ambiguous_fetch_urls_refused(url: str) -> None:
    from bbverify.fetch import check_fetch_url

    with pytest.raises(ConfigurationError) as caught:
        check_fetch_url(url, "jwks_url")
    assert caught.value.key == "jwks_url"
    assert check_fetch_url("http://127.0.0.1:8080/keys.json") and check_fetch_url("https://[::1]/k")
