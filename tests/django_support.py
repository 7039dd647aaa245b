"""Django for the tests: one settings module (tests/djangoproj), set up once, changed only per test.

Django's settings are process-wide, so the Django tests never call
``settings.configure``; they set up ``djangoproj.settings`` once (without
leaving ``DJANGO_SETTINGS_MODULE`` in the environment of the other tests'
subprocesses) and change settings with ``override_settings``, which bbverify
follows through Django's ``setting_changed`` signal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import django
from django.conf import settings
from django.test.utils import override_settings

from bbverify.errors import VerificationError
from bbverify.http import error_response
from bbverify.testing import FakeIssuer
from bbverify.verifier import Verifier

SETTINGS_MODULE = "djangoproj.settings"


def setup_django() -> None:
    """Set Django up with the test project (idempotent)."""
    if settings.configured:
        return
    previous = os.environ.get("DJANGO_SETTINGS_MODULE")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    try:
        django.setup()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        else:
            os.environ["DJANGO_SETTINGS_MODULE"] = previous


#: Named policies (contract 1) are in this Verifier.
NAMED_POLICIES = hasattr(Verifier, "check_policy")


def bbverify_settings(issuer: FakeIssuer, **extra: Any) -> dict[str, Any]:
    """A ``BBVERIFY`` dict for ``issuer``, with the policy ``deploy`` the test project's views name."""
    values: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "workspace_uuid": issuer.workspace_uuid,
        "timeout": 2,
        "failure_backoff": 1,
    }
    if NAMED_POLICIES:
        values["policies"] = {"deploy": {"allow": [{"environments": [issuer.environment_uuid]}]}}
    return {**values, **extra}


@contextmanager
def configured(issuer: FakeIssuer, *, middleware: bool = False, adapter: dict[str, Any] | None = None,
               **extra: Any) -> Iterator[None]:
    """Override the bbverify settings (and the middleware) for one test."""
    values: dict[str, Any] = {"BBVERIFY": bbverify_settings(issuer, **extra)}
    values["MIDDLEWARE"] = ["bbverify.django.PipelineAuthMiddleware"] if middleware else []
    values["BBVERIFY_DJANGO"] = adapter or {}
    with override_settings(**values):
        yield


@dataclass(frozen=True)
class Case:
    """One refusal: the Authorization header to send and the answer expected."""

    name: str
    authorization: str | None
    status: int
    code: str
    error: str  # the body's "error" (RFC 6750 attribute, or unauthorized / temporarily_unavailable)


ALLOWED_BRANCH = "main"


def refusal_cases(issuer: FakeIssuer, other: FakeIssuer) -> list[Case]:
    """Every answer of the README's error-code table reachable over HTTP, under settings from
    :func:`bbverify_settings` with ``rules = {"branches": ["main"], "repositories": [issuer's]}``
    and ``max_step_minutes = 120``.

    Not reachable through Django: ``multiple_authorization`` (Django's handlers join
    repeated headers into one line, refused as ``malformed_authorization``),
    ``verification_failed``, ``policy_denied`` and ``policy_error`` (internal faults and
    code-only rules, covered by the core and the other adapters' tests).
    """
    now = time.time()
    good = issuer.mint()
    header, payload, signature = good.split(".")
    other_key = other.signing_key
    cases = [
        Case("no header", None, 401, "missing_token", "unauthorized"),
        Case("basic", "Basic dXNlcjpwYXNz", 401, "unsupported_scheme", "unauthorized"),
        Case("junk header", "Bearer a b", 400, "malformed_authorization", "invalid_request"),
        # Django joins two Authorization lines with ", "; the code says what happened.
        Case("two tokens", f"Bearer {good}, Bearer {good}", 400, "multiple_authorization",
             "invalid_request"),
        Case("empty", "Bearer", 400, "empty_token", "invalid_request"),
        Case("malformed", "Bearer abc.def", 401, "malformed", "invalid_token"),
        Case("too large", "Bearer " + "a" * 9000 + ".b.c", 401, "token_too_large", "invalid_token"),
        Case("alg", "Bearer " + issuer.mint(header={"alg": "HS256"}), 401, "unsupported_algorithm",
             "invalid_token"),
        Case("jku", "Bearer " + issuer.mint(header={"jku": "https://evil.example/keys"}), 401,
             "unsupported_header", "invalid_token"),
        Case("signature", f"Bearer {header}.{payload}.{signature[:-4]}AAAA", 401, "bad_signature",
             "invalid_token"),
        Case("unknown kid", "Bearer " + issuer.mint(header={"kid": "no-such-key"}), 401, "unknown_key",
             "invalid_token"),
        Case("other key", "Bearer " + issuer.mint(key=other_key), 401, "unknown_key", "invalid_token"),
        Case("expired", "Bearer " + issuer.mint(issued_at=now - 7200, lifetime=3600), 401, "expired",
             "invalid_token"),
        Case("future", "Bearer " + issuer.mint(issued_at=now + 3600), 401, "not_yet_valid", "invalid_token"),
        Case("exp<iat", "Bearer " + issuer.mint(lifetime=-60), 401, "invalid_claim", "invalid_token"),
        Case("issuer", "Bearer " + issuer.sign(issuer.claims(extra={"iss": other.issuer})), 401,
             "issuer_mismatch", "invalid_token"),
        Case("audience", "Bearer " + issuer.mint(audience=other.audience), 401, "audience_mismatch",
             "invalid_token"),
        Case("missing claim", "Bearer " + issuer.mint(drop=["stepUuid"]), 401, "missing_claim",
             "invalid_token"),
        Case("sub", "Bearer " + issuer.sign(issuer.claims(extra={"sub": "{a}:{b}"})), 401,
             "subject_mismatch", "invalid_token"),
        Case("workspace",
             "Bearer " + issuer.sign(issuer.claims(extra={"workspaceUuid": other.workspace_uuid})), 401,
             "workspace_mismatch", "invalid_token"),
        Case("branch", "Bearer " + issuer.mint(branch="feature/x"), 403, "branch_not_allowed",
             "insufficient_scope"),
        Case("repository", "Bearer " + issuer.mint(repository_uuid=other.repository_uuid), 403,
             "repository_not_allowed", "insufficient_scope"),
        Case("step", "Bearer " + issuer.mint(lifetime=4 * 3600), 403, "token_lifetime_too_long",
             "insufficient_scope"),
    ]
    return cases


RULES = {"branches": [ALLOWED_BRANCH], "max_step_minutes": 120}


def rules_for(issuer: FakeIssuer) -> dict[str, Any]:
    return {**RULES, "repositories": [issuer.repository_uuid]}


def assert_refusal(response: Any, case: Case) -> None:
    """Status, headers and body exactly as bbverify.http.error_response words them."""
    assert response.status_code == case.status, (case.name, response.content)
    body = json.loads(response.content)
    assert body["code"] == case.code, case.name
    assert body["error"] == case.error, case.name
    assert set(body) == {"error", "code", "message"}
    # Django responses and httpx responses both have case-insensitive .headers.
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    expected = error_response(_error(case, body), "bbverify")
    assert response.content == expected.body, case.name
    assert response.headers["WWW-Authenticate"] == expected.header("WWW-Authenticate"), case.name


def _error(case: Case, body: dict[str, str]) -> VerificationError:
    from bbverify.errors import InvalidToken, KeysUnavailable, PolicyDenied
    from bbverify.http import InvalidRequest, MissingToken

    cls: type[VerificationError] = {
        400: InvalidRequest, 403: PolicyDenied, 503: KeysUnavailable
    }.get(case.status, InvalidToken)
    if case.error == "unauthorized":
        cls = MissingToken
    return cls(body["message"], code=body["code"])
