"""Django REST framework classes through DRF's APIClient: authentication, permissions, answers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

from django_support import Case, assert_refusal, configured, refusal_cases, rules_for, setup_django

from bbverify.testing import FakeIssuer

setup_django()

from django.test.utils import override_settings  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from bbverify.drf import HasPipelinePolicy, PipelineUser  # noqa: E402


@pytest.fixture
def cases(issuer: FakeIssuer, other_issuer: FakeIssuer) -> list[Case]:
    return refusal_cases(issuer, other_issuer)


def _client(authorization: str | None = None) -> APIClient:
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def test_authentication_gives_a_user_and_the_claims(issuer: FakeIssuer) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        response = _client(f"Bearer {issuer.mint()}").get("/api/whoami")
        assert response.status_code == 200, response.content
        assert response.json()["subject"].startswith(issuer.repository_uuid + ":")
        assert response.json()["repository"] == issuer.repository_uuid


def test_no_token_is_401_with_the_bearer_challenge(issuer: FakeIssuer) -> None:
    # IsAuthenticated (DRF's own) denies: DRF answers 401 because authenticate_header gives a challenge.
    with configured(issuer, rules=rules_for(issuer)):
        for authorization in (None, "Basic dXNlcjpwYXNz"):
            response = _client(authorization).get("/api/whoami")
            assert response.status_code == 401
            assert response["WWW-Authenticate"] == 'Bearer realm="bbverify"'


def test_authentication_every_refusal(issuer: FakeIssuer, cases: list[Case]) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        for case in cases:
            response = _client(case.authorization).get("/api/whoami")
            if case.code in ("missing_token", "unsupported_scheme"):
                # No bearer token: authentication steps aside, IsAuthenticated gives DRF's 401.
                assert response.status_code == 401
                assert response["WWW-Authenticate"] == 'Bearer realm="bbverify"'
                continue
            assert_refusal(response, case)


def test_permission_every_refusal(issuer: FakeIssuer, cases: list[Case]) -> None:
    with configured(issuer, rules=rules_for(issuer)):
        ok = _client(f"Bearer {issuer.mint()}").get("/api/default")
        assert ok.status_code == 200, ok.content
        for case in cases:
            assert_refusal(_client(case.authorization).get("/api/default"), case)


def test_drf_default_exception_handler_keeps_status_headers_and_fields(
    issuer: FakeIssuer, cases: list[Case]
) -> None:
    """Without bbverify's EXCEPTION_HANDLER, DRF renders the same answer through its own renderer."""
    with configured(issuer, rules=rules_for(issuer)), override_settings(
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": ["bbverify.drf.PipelineAuthentication"],
            "UNAUTHENTICATED_USER": None,
        }
    ):
        for case in cases:
            response = _client(case.authorization).get("/api/default")
            assert response.status_code == case.status, case.name
            body = json.loads(response.content)
            assert (body["error"], body["code"]) == (case.error, case.code), case.name
            challenge = response.get("WWW-Authenticate")
            assert challenge is not None and challenge.startswith('Bearer realm="bbverify"'), case.name


def test_pipeline_user() -> None:
    from bbverify.claims import PipelineClaims

    assert PipelineUser.is_authenticated and not PipelineUser.is_anonymous
    assert isinstance(HasPipelinePolicy("deploy")(), HasPipelinePolicy)
    assert HasPipelinePolicy("deploy")().policy == "deploy"
    assert not hasattr(PipelineClaims, "is_authenticated")


def test_permission_refuses_bad_policy_names() -> None:
    from bbverify.errors import ConfigurationError

    for bad in ("", 3):
        with pytest.raises(ConfigurationError):
            HasPipelinePolicy(bad)  # type: ignore[arg-type]
