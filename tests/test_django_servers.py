"""The Django test project under real servers on 127.0.0.1: gunicorn (WSGI), uvicorn (Django's ASGI app)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")
pytest.importorskip("gunicorn")

from django_support import Case, assert_refusal, refusal_cases
from servers import bearer, free_port

from bbverify.testing import FakeIssuer

TESTS = Path(__file__).resolve().parent


def _command(kind: str, port: int) -> list[str]:
    if kind == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--threads", "4", "--log-level", "warning", "djangoproj.wsgi:application"]
    return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level",
            "warning", "--no-proxy-headers", "--lifespan", "off", "djangoproj.asgi:application"]


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def django_server(request: pytest.FixtureRequest, issuer: FakeIssuer) -> Iterator[tuple[str, str]]:
    kind = str(request.param)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BBVERIFY_", "DJANGO"))}
    env.update(
        DJANGO_SETTINGS_MODULE="djangoproj.settings",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        DJANGOPROJ_ISSUER=issuer.issuer,
        DJANGOPROJ_AUDIENCE=issuer.audience,
        DJANGOPROJ_WORKSPACE_UUID=issuer.workspace_uuid,
        DJANGOPROJ_REPOSITORY=issuer.repository_uuid,
        DJANGOPROJ_MIDDLEWARE="1",
    )
    proc = subprocess.Popen(_command(kind, port), cwd=TESTS, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=2) as probe:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise AssertionError(f"{kind} exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    if probe.get(base + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            else:
                raise AssertionError(f"{kind} did not start")
        yield kind, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_valid_token_everywhere(
    django_server: tuple[str, str], issuer: FakeIssuer, http: httpx.Client
) -> None:
    kind, base = django_server
    token = issuer.mint()
    for path in ("/plain", "/plain-async", "/decorated", "/decorated-async", "/api/whoami", "/api/default"):
        response = http.get(base + path, headers=bearer(token))
        assert response.status_code == 200, (kind, path, response.text)
    answer = http.get(base + "/plain", headers=bearer(token)).json()
    assert answer["client_ip"] == "127.0.0.1"
    assert answer["subject"].startswith(issuer.repository_uuid)
    if kind == "uvicorn":
        # Under ASGI the async view runs on the event loop itself: the middleware awaited averify.
        assert http.get(base + "/plain-async", headers=bearer(token)).json()["thread"] == "MainThread"


def test_every_refusal(
    django_server: tuple[str, str], issuer: FakeIssuer, other_issuer: FakeIssuer, http: httpx.Client
) -> None:
    kind, base = django_server
    cases: list[Case] = [
        # gunicorn refuses header lines over 8190 bytes itself, before the app.
        c for c in refusal_cases(issuer, other_issuer) if c.code != "token_too_large"
    ]
    for case in cases:
        headers = {} if case.authorization is None else {"Authorization": case.authorization}
        for path in ("/plain", "/plain-async", "/api/default"):
            response = http.get(base + path, headers=headers)
            try:
                assert_refusal(response, case)
            except AssertionError as exc:
                raise AssertionError(f"{kind} {path} {case.name}: {exc}") from None
