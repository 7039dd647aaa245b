"""Django adapter through Django's test client: middleware, view decorator, settings and system checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

from django_support import (
    NAMED_POLICIES,
    Case,
    assert_refusal,
    configured,
    refusal_cases,
    rules_for,
    setup_django,
)

from bbverify.testing import FakeIssuer

setup_django()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from bbverify.django import PipelineAuthMiddleware, get_config, get_verifier  # noqa: E402
from bbverify.django.checks import check_settings  # noqa: E402


def _headers(authorization: str | None) -> dict[str, dict[str, str]]:
    """Keyword arguments for Client/AsyncClient requests carrying ``authorization``."""
    return {"headers": {} if authorization is None else {"Authorization": authorization}}


@pytest.fixture
def cases(issuer: FakeIssuer, other_issuer: FakeIssuer) -> list[Case]:
    return refusal_cases(issuer, other_issuer)


# -- settings ------------------------------------------------------------------------------


def test_settings_build_the_verifier(issuer: FakeIssuer) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        verifier = get_verifier()
        assert verifier is get_config().verifier  # built once, shared
        assert verifier.issuer == issuer.issuer
        # Without named policies in the Verifier, the test project's "deploy" views are E004.
        assert [e.id for e in check_settings()] == ([] if NAMED_POLICIES else ["bbverify.E004"] * 2)
    # override_settings is undone: a new verifier for new settings, never the old one.
    with configured(issuer):
        assert get_verifier() is not verifier


@pytest.mark.parametrize(
    ("overrides", "error_id", "needle"),
    [
        ({"BBVERIFY": None}, "bbverify.E001", "BBVERIFY: is not set"),
        ({"BBVERIFY": ["workspace"]}, "bbverify.E001", "BBVERIFY: must be a dict"),
        ({"BBVERIFY": {"workspace": "acme", "audience": "a", "rules": {"repositories": ["{x}", 3]}}},
         "bbverify.E002", "BBVERIFY['rules']['repositories']"),
        ({"BBVERIFY": {"workspace": "acme", "audience": "a", "leeway": "soon"}},
         "bbverify.E002", "BBVERIFY['leeway']"),
        ({"BBVERIFY": {"workspace": "acme", "audience": "a", "rules": {"branch": ["main"]}}},
         "bbverify.E002", "BBVERIFY['rules']['branch']"),
        ({"BBVERIFY_DJANGO": {"trusted_proxy": 1}}, "bbverify.E003", "BBVERIFY_DJANGO['trusted_proxy']"),
        ({"BBVERIFY_DJANGO": {"trusted_proxies": ["0.0.0.0/0"]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['trusted_proxies']: these ranges together trust every IPv4 address"),
        ({"BBVERIFY_DJANGO": {"routes": [{"prefix": "/api/", "policy": None}]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['routes'][0]['prefix']: routes by path prefix are refused"),
        ({"BBVERIFY_DJANGO": {"routes": [{"url_name": "", "policy": None}]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['routes'][0]['url_name']"),
        ({"BBVERIFY_DJANGO": {"routes": [{"url_name": "plain", "policy": "nope"}]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['routes'][0]['policy']"),
        ({"BBVERIFY_DJANGO": {"exclude_prefixes": ["/"]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['exclude_prefixes']: '/' would serve every path"),
        ({"DJANGO_BBVERIFY": {"trusted_proxies": 1}}, "bbverify.E005", "did you mean BBVERIFY_DJANGO"),
        ({"BBVERIFY_DJANGO": {"exclude_paths": ["healthz"]}}, "bbverify.E003",
         "BBVERIFY_DJANGO['exclude_paths']"),
        ({"BBVERIFY_TRUSTED_PROXIES": 1}, "bbverify.E005", "BBVERIFY_TRUSTED_PROXIES"),
        ({"BBVERFY": {}}, "bbverify.E005", "BBVERFY"),
    ],
)
def test_system_checks_name_the_setting(
    issuer: FakeIssuer, overrides: dict[str, Any], error_id: str, needle: str
) -> None:
    with configured(issuer), override_settings(**overrides):
        errors = check_settings()
        assert [e.id for e in errors] == [error_id], errors
        assert needle in errors[0].msg, errors[0].msg
        # The middleware refuses to start on the same mistake (under gunicorn no check runs).
        with pytest.raises(ImproperlyConfigured, match="bbverify"):
            PipelineAuthMiddleware(lambda request: None)


def test_manage_py_check_reports_the_error(issuer: FakeIssuer) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with configured(issuer, rules={"repositories": ["not-a-uuid"]}), pytest.raises(
        SystemCheckError, match=r"bbverify\.E002.*BBVERIFY\['rules'\]\['repositories'\]"
    ):
        call_command("check")


# -- middleware ----------------------------------------------------------------------------


def test_middleware_admits_and_sets_claims(issuer: FakeIssuer) -> None:
    adapter = {"exclude_paths": ["/healthz"]}
    with configured(issuer, middleware=True, adapter=adapter, rules=rules_for(issuer)):
        client = Client()
        token = issuer.mint()
        ok = client.get("/plain", **_headers(f"Bearer {token}"))
        assert ok.status_code == 200, ok.content
        assert ok.json()["subject"].startswith(issuer.repository_uuid)
        assert ok.json()["client_ip"] == "127.0.0.1"
        assert client.get("/healthz").json() == {"ok": True}
        assert client.get("/plain").status_code == 401


def test_middleware_every_refusal(issuer: FakeIssuer, cases: list[Case]) -> None:
    with configured(issuer, middleware=True, rules=rules_for(issuer)):
        client = Client()
        for case in cases:
            assert_refusal(client.get("/plain", **_headers(case.authorization)), case)


def test_middleware_every_refusal_async(issuer: FakeIssuer, cases: list[Case]) -> None:
    async def run() -> None:
        client = AsyncClient()
        for case in cases:
            assert_refusal(await client.get("/plain-async", **_headers(case.authorization)), case)

    with configured(issuer, middleware=True, rules=rules_for(issuer)):
        asyncio.run(run())


def test_decorator_every_refusal(issuer: FakeIssuer, cases: list[Case]) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        client = Client()
        assert client.get("/decorated", **_headers(f"Bearer {issuer.mint()}")).status_code == 200
        assert client.get("/plain").status_code == 200  # not decorated, no middleware
        for case in cases:
            assert_refusal(client.get("/decorated", **_headers(case.authorization)), case)


def test_async_decorator_every_refusal(issuer: FakeIssuer, cases: list[Case]) -> None:
    async def run() -> None:
        client = AsyncClient()
        ok = await client.get("/decorated-async", **_headers(f"Bearer {issuer.mint()}"))
        assert ok.status_code == 200, ok.content
        for case in cases:
            assert_refusal(await client.get("/decorated-async", **_headers(case.authorization)), case)

    with configured(issuer, rules=rules_for(issuer)):
        asyncio.run(run())


def test_optional_decorator(issuer: FakeIssuer, cases: list[Case], caplog: pytest.LogCaptureFixture) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        client = Client()
        with caplog.at_level("INFO", logger="bbverify"):
            anonymous = client.get("/optional")
        assert anonymous.status_code == 200
        assert anonymous.json()["subject"] is None
        # An anonymous request to an optional view is not a refusal, so it is not audited as one.
        assert not [r for r in caplog.records if "deny" in r.getMessage()]
        assert client.get("/optional", **_headers("Basic dXNlcjpwYXNz")).json()["subject"] is None
        ok = client.get("/optional", **_headers(f"Bearer {issuer.mint()}"))
        assert ok.json()["subject"].startswith(issuer.repository_uuid)
        # A token that is there but bad is refused: "optional" never means "anything goes".
        for case in cases:
            if case.code in ("missing_token", "unsupported_scheme"):
                continue
            assert_refusal(client.get("/optional", **_headers(case.authorization)), case)


def test_keys_unavailable_is_503_everywhere() -> None:
    with FakeIssuer() as down:
        token = down.mint()
        down.fail("down")
        with configured(down, middleware=True, failure_backoff=30):
            client = Client()
            for path in ("/plain", "/decorated", "/api/whoami", "/api/default"):
                response = client.get(path, **_headers(f"Bearer {token}"))
                assert response.status_code == 503, (path, response.content)
                assert response.json()["code"] == "keys_unavailable"
                assert response.json()["error"] == "temporarily_unavailable"
                assert int(response["Retry-After"]) >= 1
                assert "WWW-Authenticate" not in response


def test_trusted_proxies_and_ip_rules(issuer: FakeIssuer) -> None:
    rules = {"ip_ranges": ["203.0.113.0/24"]}
    token = issuer.mint()
    spoofed = {"headers": {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {token}"}}
    # Without trusted proxies X-Forwarded-For is the caller's own claim: ignored.
    with configured(issuer, middleware=True, rules=rules):
        denied = Client().get("/plain", **spoofed)
        assert denied.status_code == 403
        assert denied.json()["code"] == "ip_not_allowed"
    with configured(issuer, middleware=True, adapter={"trusted_proxies": ["127.0.0.1/32"]}, rules=rules):
        ok = Client().get("/plain", **spoofed)
        assert ok.status_code == 200, ok.content
        assert ok.json()["client_ip"] == "203.0.113.9"
    # Django's own proxy settings change nothing about the client address.
    with configured(issuer, middleware=True, rules=rules), override_settings(
        USE_X_FORWARDED_HOST=True, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")
    ):
        assert Client().get("/plain", **spoofed).status_code == 403


def test_async_verification_does_not_block_the_loop() -> None:
    """A cold key fetch from a slow issuer: the event loop keeps running meanwhile."""

    async def run(issuer: FakeIssuer, path: str) -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set() and ticks < 1000:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        response = await AsyncClient().get(path, **_headers(f"Bearer {issuer.mint()}"))
        stop.set()
        await task
        assert response.status_code == 200, response.content
        return ticks

    for middleware, path in ((True, "/plain-async"), (False, "/decorated-async")):
        with FakeIssuer() as slow:
            slow.fail("slow", delay=0.5)
            with configured(slow, middleware=middleware):
                # A blocking fetch would freeze the ticker for the whole 0.5 s.
                assert asyncio.run(run(slow, path)) >= 10


def test_on_error_hook_everywhere(issuer: FakeIssuer) -> None:
    adapter = {"on_error": "djangoproj.hooks.on_error"}
    expired = issuer.mint(issued_at=time.time() - 7200, lifetime=3600)
    with configured(issuer, middleware=True, adapter=adapter, rules=rules_for(issuer)):
        for path in ("/plain", "/plain-async"):
            assert Client().get(path).json() == {"refused": "missing_token"}
    with configured(issuer, adapter=adapter, rules=rules_for(issuer)):
        for path in ("/decorated", "/api/default"):
            response = Client().get(path, **_headers(f"Bearer {issuer.mint(branch='dev')}"))
            assert (response.status_code, response.json()) == (403, {"refused": "branch_not_allowed"})
            # The hook returned None: the default answer.
            response = Client().get(path, **_headers(f"Bearer {expired}"))
            assert (response.status_code, response.json()["code"]) == (401, "expired")


@pytest.mark.parametrize("path", ["djangoproj.hooks.missing", "djangoproj.hooks.NOT_CALLABLE", ""])
def test_on_error_must_be_a_function(issuer: FakeIssuer, path: str) -> None:
    with configured(issuer, adapter={"on_error": path}):
        errors = check_settings()
    assert [e.id for e in errors] == ["bbverify.E003"]
    assert "BBVERIFY_DJANGO['on_error']" in errors[0].msg
