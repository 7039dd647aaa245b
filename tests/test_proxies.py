"""The proxy and server recipes of docs/adapters.md, each run for real (issue 11 items 2 and 9).

nginx in front of ``uvicorn --uds`` (one worker in a thread, and several
worker processes), gunicorn (which never rewrites ``REMOTE_ADDR``) behind
nginx and on its own, and the hazard of uvicorn's ``--forwarded-allow-ips``.
All on 127.0.0.1 or Unix sockets in a temporary directory (the ``short_tmp`` fixture). The
harness (``serve_nginx``, ``serve_asgi_uds``, ``run_process`` in
tests/servers.py) is shared: reuse it for other proxy tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import (
    bearer,
    free_port,
    run_process,
    serve_asgi,
    serve_asgi_uds,
    serve_nginx,
    wait_for_port,
    wait_for_unix_socket,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bbverify.asgi import PipelineAuthMiddleware
from bbverify.http import request_client_ip
from bbverify.policies import IPRanges
from bbverify.testing import FakeIssuer

TESTS = str(Path(__file__).parent)
SPOOF = "34.199.54.113"  # a Bitbucket address a caller would like to be


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"client_ip": request_client_ip(request)})


def guarded(issuer: FakeIssuer, cidrs: list[str], trusted: Any) -> PipelineAuthMiddleware:
    verifier = issuer.verifier(policies=[IPRanges(cidrs)])
    return PipelineAuthMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]), verifier=verifier, trusted_proxies=trusted
    )


def app_env(issuer: FakeIssuer, trusted: str) -> dict[str, str]:
    """What a deployment sets: the verifier and its IP rule from BBVERIFY_*, the proxy setting."""
    return {
        "BBVERIFY_ISSUER": issuer.issuer,
        "BBVERIFY_JWKS_URL": issuer.jwks_url,
        "BBVERIFY_AUDIENCE": issuer.audience,
        "BBVERIFY_IP_RANGES": "127.0.0.1/32",
        "APP_TRUSTED_PROXIES": trusted,
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.parametrize("trusted", [1, ["unix"]])
def test_nginx_in_front_of_uvicorn_uds(issuer: FakeIssuer, short_tmp: str, trusted: Any) -> None:
    token = issuer.mint()
    app = guarded(issuer, ["127.0.0.1/32"], trusted)
    with (
        serve_asgi_uds(app, short_tmp) as sock,
        serve_nginx(short_tmp, f"unix:{sock}") as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        ok = client.get("/whoami", headers=bearer(token))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"client_ip": "127.0.0.1"}
        # A client-written entry stays left of what nginx appends: not believed.
        spoofed = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": SPOOF})
        assert spoofed.json() == {"client_ip": "127.0.0.1"}
    only_bitbucket = guarded(issuer, [f"{SPOOF}/32"], trusted)
    with (
        serve_asgi_uds(only_bitbucket, short_tmp) as sock,
        serve_nginx(short_tmp, f"unix:{sock}") as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        refused = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": SPOOF})
        assert refused.status_code == 403
        assert refused.json()["code"] == "ip_not_allowed"


def test_nginx_without_the_forwarded_for_line_passes_the_client_header(
    issuer: FakeIssuer, short_tmp: str
) -> None:
    # Why the recipe sets X-Forwarded-For: without it nginx forwards the client's own header
    # untouched, and a hop count then believes whatever the caller wrote.
    app = guarded(issuer, [f"{SPOOF}/32"], 1)
    with serve_asgi_uds(app, short_tmp) as sock:
        bare = f"location / {{ proxy_pass http://unix:{sock}:; }}"
        with serve_nginx(short_tmp, f"unix:{sock}", bare) as url, httpx.Client(base_url=url, timeout=10) as c:
            answer = c.get("/whoami", headers={**bearer(issuer.mint()), "X-Forwarded-For": SPOOF})
    assert answer.status_code == 200
    assert answer.json() == {"client_ip": SPOOF}


def test_uvicorn_several_workers_behind_nginx(issuer: FakeIssuer, short_tmp: str) -> None:
    sock = os.path.join(short_tmp, "app.sock")
    argv = [sys.executable, "-m", "uvicorn", "--factory", "proxy_app:make_asgi", "--uds", sock]
    argv += ["--workers", "2", "--log-level", "warning", "--no-access-log"]
    with run_process(argv, env=app_env(issuer, "unix"), cwd=TESTS) as process:
        wait_for_unix_socket(sock, process, timeout=60)
        with serve_nginx(short_tmp, f"unix:{sock}") as url, httpx.Client(base_url=url, timeout=10) as client:
            token = issuer.mint()
            for _ in range(6):
                answer = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": SPOOF})
                assert answer.status_code == 200, answer.text
                assert answer.json()["client_ip"] == "127.0.0.1"
            assert client.get("/whoami").status_code == 401


def test_gunicorn_behind_nginx_on_a_unix_socket(issuer: FakeIssuer, short_tmp: str) -> None:
    sock = os.path.join(short_tmp, "gunicorn.sock")
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", "2"]
    argv += ["--log-level", "warning", "proxy_app:make_wsgi()"]
    with run_process(argv, env=app_env(issuer, "unix"), cwd=TESTS) as process:
        wait_for_unix_socket(sock, process, timeout=60)
        with serve_nginx(short_tmp, f"unix:{sock}") as url, httpx.Client(base_url=url, timeout=10) as client:
            token = issuer.mint()
            answer = client.get("/whoami", headers={**bearer(token), "X-Forwarded-For": SPOOF})
            assert answer.status_code == 200, answer.text
            # gunicorn leaves REMOTE_ADDR empty on a Unix socket: bbverify's "unix" entry trusts it.
            assert answer.json() == {"client_ip": "127.0.0.1", "remote_addr": ""}


def test_gunicorn_never_rewrites_remote_addr(issuer: FakeIssuer) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    argv += ["--log-level", "warning", "--forwarded-allow-ips", "*", "proxy_app:make_wsgi()"]
    env = app_env(issuer, "")
    env["BBVERIFY_IP_RANGES"] = f"{SPOOF}/32"
    with run_process(argv, env=env, cwd=TESTS) as process:
        wait_for_port(port, process, timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            answer = client.get("/whoami", headers={**bearer(issuer.mint()), "X-Forwarded-For": SPOOF})
    assert answer.status_code == 403
    assert answer.json()["code"] == "ip_not_allowed"


@pytest.mark.parametrize(
    ("options", "believed"),
    [
        ({"proxy_headers": True, "forwarded_allow_ips": "*"}, True),  # trusts every peer: never do this
        ({"proxy_headers": True}, True),  # uvicorn's default trusts 127.0.0.1, i.e. any local caller
        ({"proxy_headers": False}, False),  # --no-proxy-headers: bbverify sees the real peer
    ],
)
def test_uvicorn_proxy_headers_decide_before_bbverify(
    issuer: FakeIssuer, http: httpx.Client, options: dict[str, Any], believed: bool
) -> None:
    app = guarded(issuer, [f"{SPOOF}/32"], None)  # no trusted_proxies: bbverify ignores the header
    with serve_asgi(app, **options) as url:
        answer = http.get(f"{url}/whoami", headers={**bearer(issuer.mint()), "X-Forwarded-For": SPOOF})
    if believed:
        assert answer.status_code == 200
        assert answer.json() == {"client_ip": SPOOF}
    else:
        assert answer.status_code == 403
        assert answer.json()["code"] == "ip_not_allowed"


@pytest.mark.parametrize(("trusted", "code"), [(None, "client_ip_unknown"), (["unix"], "ip_not_allowed")])
def test_uds_client_rewritten_by_uvicorn_is_not_the_peer(
    issuer: FakeIssuer, short_tmp: str, trusted: Any, code: str
) -> None:
    # uvicorn --uds --forwarded-allow-ips='*' puts the leftmost (client-written) entry in
    # scope["client"]; bbverify still takes the Unix socket as the peer and walks the header itself.
    from servers import uds_client

    app = guarded(issuer, [f"{SPOOF}/32"], trusted)
    with (
        serve_asgi_uds(app, short_tmp, proxy_headers=True, forwarded_allow_ips="*") as sock,
        uds_client(sock, timeout=10) as client,
    ):
        headers = {**bearer(issuer.mint()), "X-Forwarded-For": f"{SPOOF}, 203.0.113.9"}
        answer = client.get("/whoami", headers=headers)
    assert answer.status_code == 403
    assert answer.json()["code"] == code


def test_trusted_proxies_resolve_keeps_returning_text() -> None:
    """resolve() answers in text as it always did; resolve_address() gives the address object."""
    import ipaddress

    from bbverify.http import TrustedProxies

    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    assert proxies is not None
    assert proxies.resolve("10.0.0.1", ["203.0.113.9"]) == "203.0.113.9"
    assert proxies.resolve_address("10.0.0.1", ["203.0.113.9"]) == ipaddress.ip_address("203.0.113.9")
    assert proxies.resolve("10.0.0.1", ["junk"]) is None
