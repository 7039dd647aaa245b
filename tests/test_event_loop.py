"""Issue 10, item 3: nothing reachable from ``Verifier.averify`` or the ASGI adapter blocks the loop.

Real uvicorn on 127.0.0.1; the feed and key-set servers accept connections
and never answer (tests/misbehaving.py). An excluded ``/healthz`` is a
liveness check, so the bounds below are generous (it normally takes
milliseconds); what they catch is a loop stalled for seconds.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from misbehaving import misbehaving
from servers import bearer, serve_asgi
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bbverify import PolicyDenied, Verifier
from bbverify.asgi import PipelineAuthMiddleware
from bbverify.policies import IPRanges
from bbverify.testing import FakeIssuer


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _app(verifier: Verifier) -> PipelineAuthMiddleware:
    routes = [Route("/healthz", _ok), Route("/whoami", _ok)]
    return PipelineAuthMiddleware(Starlette(routes=routes), verifier=verifier, exclude_paths=["/healthz"])


def _timed(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = client.get(url, headers=headers)
    return time.monotonic() - started, response


def test_unloaded_lazy_feed_never_stalls_the_loop(issuer: FakeIssuer) -> None:
    with misbehaving("silent", max_stall=15.0) as feed_server:
        rule = IPRanges.from_atlassian_feed(feed_server.url, lazy=True, timeout=10.0)
        verifier = issuer.verifier(policies=[rule])
        verifier.warm_up()
        token = issuer.mint()
        with (
            serve_asgi(_app(verifier)) as base,
            httpx.Client(timeout=20) as client,
            ThreadPoolExecutor(5) as pool,
        ):
            guarded = [pool.submit(_timed, client, f"{base}/whoami", bearer(token)) for _ in range(4)]
            time.sleep(0.05)
            health = pool.submit(_timed, client, f"{base}/healthz")
            health_time, health_response = health.result(timeout=20)
            answers = [f.result(timeout=20) for f in guarded]
        assert health_response.status_code == 200
        assert health_time < 0.5, f"/healthz took {health_time:.2f}s while the feed stalled"
        for took, response in answers:
            assert response.status_code == 403
            assert response.json()["code"] == "ip_ranges_unavailable"
            assert took < 1.0, f"a guarded request waited {took:.2f}s on the loop"
        assert feed_server.stalling >= 1  # the feed was still stalling throughout


def test_averify_does_not_wait_for_an_unloaded_feed(issuer: FakeIssuer) -> None:
    with misbehaving("silent", max_stall=15.0) as feed_server:
        rule = IPRanges.from_atlassian_feed(feed_server.url, lazy=True, timeout=10.0)
        verifier = issuer.verifier(policies=[rule])
        verifier.warm_up()

        async def main() -> tuple[float, str]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                for _ in range(1000):
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            started = time.monotonic()
            try:
                await verifier.averify(issuer.mint(), client_ip="192.0.2.10")
            except PolicyDenied as exc:
                code = exc.code
            else:
                code = "accepted"
            task.cancel()
            return time.monotonic() - started, code

        took, code = asyncio.run(main())
        assert code == "ip_ranges_unavailable"
        assert took < 1.0


def test_stalled_key_set_never_stalls_the_loop(issuer: FakeIssuer) -> None:
    with misbehaving("silent", max_stall=15.0) as keys_server:
        verifier = Verifier(
            issuer=issuer.issuer, audience=issuer.audience, jwks_url=keys_server.url, timeout=2.0
        )
        token = issuer.mint()
        with (
            serve_asgi(_app(verifier)) as base,
            httpx.Client(timeout=20) as client,
            ThreadPoolExecutor(3) as pool,
        ):
            guarded = [pool.submit(_timed, client, f"{base}/whoami", bearer(token)) for _ in range(2)]
            time.sleep(0.1)
            health_time, health_response = pool.submit(_timed, client, f"{base}/healthz").result(20)
            answers = [f.result(timeout=20) for f in guarded]
        assert health_response.status_code == 200
        assert health_time < 0.5
        assert [r.status_code for _, r in answers] == [503, 503]
