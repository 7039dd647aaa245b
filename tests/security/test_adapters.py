"""Adapters under attack, through real loopback servers (uvicorn for ASGI/FastAPI, werkzeug for WSGI/Flask).

* fuzzed requests get only 200/400/401/403/503, never a 5xx crash,
* a client cannot choose its own IP with X-Forwarded-For (or friends),
* a bounded concurrent load gets exactly the expected answers, zero 5xx,
* from the core review (ids in the section titles): misspelt policy and scope names fail at
  registration or start-up, WSGI paths decode as PEP 3333 says, Unix-socket peers are
  recognised however the server spells them, unknown ASGI scope types never reach the app.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import bearer, serve_asgi, serve_wsgi
from werkzeug.serving import make_server

from bbverify import PipelineClaims, Verifier
from bbverify.asgi import PipelineAuthMiddleware as ASGIMiddleware
from bbverify.asgi import PipelineAuthMiddleware as AsgiMiddleware
from bbverify.errors import ConfigurationError
from bbverify.fastapi import PipelineAuth, install_error_handler
from bbverify.flask import require_pipeline
from bbverify.http import UNIX_SOCKET_PEER, wsgi_path, wsgi_peer
from bbverify.policies import IPRanges, Repositories
from bbverify.testing import FakeIssuer
from bbverify.wsgi import PipelineAuthMiddleware as WSGIMiddleware
from bbverify.wsgi import PipelineAuthMiddleware as WsgiMiddleware

ALLOWED = {200, 400, 401, 403, 503}
PATH = "/protected"
ALLOWED_NET = "203.0.113.0/24"


# -- the four apps -------------------------------------------------------------------


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": body})


def _wsgi_ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _asgi(verifier: Verifier, **options: Any) -> Any:
    return AsgiMiddleware(_asgi_ok, verifier=verifier, **options)


def _wsgi(verifier: Verifier, **options: Any) -> Any:
    return WsgiMiddleware(_wsgi_ok, verifier=verifier, **options)


def _fastapi(verifier: Verifier, **options: Any) -> Any:
    app = FastAPI()
    install_error_handler(app)
    auth = PipelineAuth(verifier, *options.pop("policies", ()), **options)

    @app.api_route(PATH, methods=["GET", "POST"])
    async def protected(claims: PipelineClaims = Depends(auth)) -> dict[str, str]:
        return {"sub": claims.subject}

    return app


def _flask(verifier: Verifier, **options: Any) -> Any:
    app = Flask(__name__)

    @app.route(PATH, methods=["GET", "POST"])
    @require_pipeline(verifier, *options.pop("policies", ()), **options)
    def protected() -> dict[str, str]:
        return {"ok": "yes"}

    return app


SERVERS: dict[str, tuple[Callable[..., Any], Callable[[Any], AbstractContextManager[str]]]] = {
    "asgi": (_asgi, serve_asgi),
    "fastapi": (_fastapi, serve_asgi),
    "wsgi": (_wsgi, serve_wsgi),
    "flask": (_flask, serve_wsgi),
}


def _raw(base: str, request: bytes) -> int:
    """Send raw request bytes; return the status code (0 when the server just closed)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1."):
        return 0
    return int(data.split(b" ", 2)[1])


def _request(method: str, headers: list[tuple[bytes, bytes]], path: str = PATH) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    body = b"" if method in ("GET", "HEAD") else b"Content-Length: 0\r\n"
    return b"\r\n".join(lines) + b"\r\n" + body + b"\r\n"


# -- fuzzing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(issuer: FakeIssuer) -> Verifier:
    """A warmed-up verifier that also denies one repository (so 403 is reachable)."""
    v = issuer.verifier(policies=[Repositories(issuer.repository_uuid)])
    v.warm_up()
    return v


def _header_values(valid: str) -> st.SearchStrategy[bytes]:
    # Header-legal bytes only (no CR/LF/NUL), so requests reach the adapter instead of the HTTP parser.
    legal = st.binary(max_size=300).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))
    mutated = st.tuples(st.integers(0, len(valid) - 1), st.sampled_from(list(b"AZaz09-_.=+/ ~"))).map(
        lambda t: b"Bearer " + valid[: t[0]].encode() + bytes([t[1]]) + valid[t[0] + 1 :].encode()
    )
    schemes = st.sampled_from([b"Bearer ", b"bearer ", b"BEARER", b"Basic ", b"Bearer  ", b"", b"Token "])
    return st.one_of(
        legal,
        st.tuples(schemes, legal).map(lambda t: t[0] + t[1]),
        mutated,
        st.just(b"Bearer " + valid.encode()),
        st.just(b"Bearer " + valid.encode() + b", Bearer " + valid.encode()),
        st.just(b"Bearer " + b"A" * 20000),
    )


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_fuzzed_requests_get_only_expected_statuses(issuer: FakeIssuer, guarded: Verifier, kind: str) -> None:
    """Fail closed at the HTTP layer (RFC 6750 section 3.1): no request input makes an adapter answer 5xx."""
    build, serve = SERVERS[kind]
    valid_denied = issuer.mint(repository_uuid="{00000000-0000-4000-8000-000000000000}")
    with serve(build(guarded)) as base:
        seen: set[int] = set()

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            auth=st.lists(_header_values(issuer.mint()) | _header_values(valid_denied), max_size=2),
            xff=st.lists(
                st.binary(max_size=60).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F)), max_size=2
            ),
            method=st.sampled_from(["GET", "POST"]),
        )
        def run(auth: list[bytes], xff: list[bytes], method: str) -> None:
            headers = [(b"Authorization", a) for a in auth] + [(b"X-Forwarded-For", x) for x in xff]
            status = _raw(base, _request(method, headers))
            seen.add(status)
            # 0: the HTTP server (not bbverify) dropped an oversized header; 431 likewise.
            assert status in ALLOWED | {0, 431}, (kind, status, headers)

        run()
        assert {200, 401} <= seen and (403 in seen or 400 in seen)


# -- client IP spoofing ---------------------------------------------------------------


def _status(base: str, token: str, headers: list[tuple[str, str]]) -> int:
    raw = [(b"Authorization", f"Bearer {token}".encode())] + [(k.encode(), v.encode()) for k, v in headers]
    return _raw(base, _request("GET", raw))


SPOOFS = [
    [("X-Forwarded-For", "203.0.113.9")],
    [("X-Forwarded-For", "203.0.113.9, 203.0.113.10")],
    [("X-Real-IP", "203.0.113.9")],
    [("Forwarded", "for=203.0.113.9")],
    [("True-Client-IP", "203.0.113.9")],
    [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "203.0.113.10")],
]


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_client_ip_cannot_be_spoofed_without_trusted_proxies(issuer: FakeIssuer, kind: str) -> None:
    """RFC 7239 section 8.1 / CWE-348: with no trusted proxy, forwarding headers never set the client IP."""
    v = issuer.verifier(policies=[IPRanges([ALLOWED_NET])])
    build, serve = SERVERS[kind]
    token = issuer.mint()
    with serve(build(v)) as base:
        for headers in SPOOFS:
            assert _status(base, token, headers) == 403, headers
    # The same rule admits the loopback peer itself, so the 403s above were about the address.
    v_loop = issuer.verifier(policies=[IPRanges(["127.0.0.0/8"])])
    with serve(build(v_loop)) as base:
        assert _status(base, token, SPOOFS[0]) == 200


@pytest.mark.parametrize("kind", sorted(SERVERS))
@pytest.mark.parametrize("trusted", [1, ["127.0.0.0/8"]], ids=["one-hop", "cidr"])
def test_client_ip_behind_a_trusted_proxy(issuer: FakeIssuer, kind: str, trusted: object) -> None:
    """RFC 7239 section 8.1: only the entry the trusted proxy appended counts; a client prefix is ignored."""
    v = issuer.verifier(policies=[IPRanges([ALLOWED_NET])])
    build, serve = SERVERS[kind]
    token = issuer.mint()
    cases = [
        ("203.0.113.9", 200),  # the proxy saw an allowed client
        ("203.0.113.9, 198.51.100.7", 403),  # the client forged the first entry; the proxy saw 198.51.100.7
        ("198.51.100.7, 203.0.113.9", 200),
        ("unknown", 403),
        ("203.0.113.9:443", 200),
        ("::ffff:203.0.113.9", 200),
        ("203.0.113.9%eth0, junk", 403),
    ]
    with serve(build(v, trusted_proxies=trusted)) as base:
        for xff, expected in cases:
            assert _status(base, token, [("X-Forwarded-For", xff)]) == expected, xff
        # Without the header the peer (the proxy itself, 127.0.0.1) is not an allowed client.
        assert _status(base, token, []) == 403


# -- bounded load --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_bounded_load_has_no_5xx_and_no_wrong_answer(kind: str) -> None:
    """Availability and correctness under concurrency: 16 clients x 40 requests, every answer as expected."""
    with FakeIssuer() as issuer:
        v = issuer.verifier(policies=[Repositories(issuer.repository_uuid)])
        build, serve = SERVERS[kind]
        good = [issuer.mint() for _ in range(8)]
        cases: list[tuple[str | None, int]] = [(t, 200) for t in good]
        cases += [
            (good[0][:-3] + "AAA", 401),
            (issuer.mint(repository_uuid="{00000000-0000-4000-8000-000000000000}"), 403),
            (issuer.mint(audience="elsewhere"), 401),
            (None, 401),
        ]
        problems: list[str] = []
        lock = threading.Lock()
        with serve(build(v)) as base:
            parts = urlsplit(base)
            barrier = threading.Barrier(16)

            def client(index: int) -> None:
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
                barrier.wait(30)
                try:
                    for j in range(40):
                        token, expected = cases[(index * 5 + j) % len(cases)]
                        headers = {"Authorization": f"Bearer {token}"} if token else {}
                        conn.request("GET", PATH, headers=headers)
                        response = conn.getresponse()
                        response.read()
                        if response.status != expected:
                            with lock:
                                problems.append(f"{kind}: expected {expected}, got {response.status}")
                finally:
                    conn.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert problems == []
        assert issuer.jwks_requests == 1  # sixteen cold clients, one key fetch


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_key_outage_is_503_with_retry_after(issuer: FakeIssuer, kind: str) -> None:
    """RFC 9110 section 15.6.4: no keys is the server's problem (503 + Retry-After), never a 401 or a 500."""
    build, serve = SERVERS[kind]
    v = issuer.verifier()
    issuer.fail("500")
    try:
        with serve(build(v)) as base:
            parts = urlsplit(base)
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
            try:
                conn.request("GET", PATH, headers={"Authorization": f"Bearer {issuer.mint()}"})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
    finally:
        issuer.recover()
    assert response.status == 503
    assert int(response.getheader("Retry-After") or "0") >= 1


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


def test_flask_typo_after_extension_fails_at_registration(issuer: FakeIssuer) -> None:
    from bbverify.flask import BBVerify, require_pipeline

    app = _flask_app(issuer)
    BBVerify(app)  # the README's order: extension first, routes below
    with pytest.raises(ConfigurationError, match="unknown policy 'deplyo'") as caught:

        @app.post("/deploy")
        @require_pipeline(policy="deplyo")
        def deploy() -> dict[str, bool]:
            return {"ok": True}

    assert caught.value.key == "view 'deploy': policy"


def test_flask_typo_in_blueprint_registered_later(issuer: FakeIssuer) -> None:
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


def test_flask_correct_name_after_extension_serves(issuer: FakeIssuer) -> None:
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


def test_check_routes_names_the_route() -> None:
    from bbverify.fastapi import check_routes

    with FakeIssuer() as fake:
        app = _fastapi_app(fake, ["deploy"])
        with pytest.raises(ConfigurationError) as caught:
            check_routes(app)
        assert caught.value.key == "route '/release': Security.scopes[0]"
        check_routes(_fastapi_app(fake, ["deployment"]))  # a granted name passes


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's sys.exit(3)
def test_real_uvicorn_refuses_to_start_with_a_misspelt_scope(issuer: FakeIssuer) -> None:
    # Default lifespan "auto": Starlette reports lifespan.startup.failed, so uvicorn stops.
    with pytest.raises(RuntimeError, match="did not start"), serve_asgi(_fastapi_app(issuer, ["deploy"])):
        pass


def test_real_uvicorn_serves_with_correct_scopes(issuer: FakeIssuer, http: httpx.Client) -> None:
    with serve_asgi(_fastapi_app(issuer, ["pipeline"])) as url:
        assert http.post(url + "/release").status_code == 401
        assert http.post(url + "/release", headers=bearer(issuer.mint())).status_code == 200


# -- f14: WSGI decodes PATH_INFO as PEP 3333 says -------------------------------------------


def test_wsgi_path_decoding() -> None:
    assert wsgi_path("/caf\u00c3\u00a9") == "/caf\u00e9"  # UTF-8 bytes as latin-1
    assert wsgi_path("/plain") == "/plain" and wsgi_path("") == "/" and wsgi_path(None) == "/"
    assert wsgi_path("/\u00ff") == "/\ufffd"  # not UTF-8: replaced, as uvicorn and Werkzeug do
    assert wsgi_path("/\u20ac") == "/\u20ac"  # already text (not latin-1): used as it is


def test_asgi_and_wsgi_exclusions_agree_on_real_servers(issuer: FakeIssuer, http: httpx.Client) -> None:
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
def test_unix_spellings(remote_addr: str) -> None:
    assert wsgi_peer(remote_addr) == UNIX_SOCKET_PEER


def test_ip_peers_unchanged() -> None:
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
def test_real_werkzeug_on_a_unix_socket(
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
def test_unknown_scope_types_are_refused(issuer: FakeIssuer, kind: str | None) -> None:
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
