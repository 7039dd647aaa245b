"""Named policies and two workspaces through the middleware, the decorator and the DRF classes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

from django_support import NAMED_POLICIES, setup_django

from bbverify.testing import FakeIssuer

pytestmark = pytest.mark.skipif(not NAMED_POLICIES, reason="named policies are not in this Verifier")

setup_django()

from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from bbverify.django.checks import check_settings  # noqa: E402


@pytest.fixture(scope="module")
def acme() -> Iterator[FakeIssuer]:
    with FakeIssuer(workspace="acme") as fake:
        yield fake


@pytest.fixture(scope="module")
def subsidiary() -> Iterator[FakeIssuer]:
    with FakeIssuer(workspace="acme-subsidiary") as fake:
        yield fake


@pytest.fixture(scope="module")
def stranger() -> Iterator[FakeIssuer]:
    with FakeIssuer(workspace="stranger") as fake:
        yield fake


def two_workspaces(acme: FakeIssuer, subsidiary: FakeIssuer) -> dict[str, Any]:
    """``BBVERIFY`` for two workspaces, each deploying to its own environment under one policy."""
    return {
        "workspaces": [
            {"name": "acme", "issuer": acme.issuer, "audience": acme.audience,
             "workspace_uuid": acme.workspace_uuid},
            {"name": "subsidiary", "issuer": subsidiary.issuer, "audience": subsidiary.audience,
             "workspace_uuid": subsidiary.workspace_uuid},
        ],
        "default_policy": "any-build",
        "policies": {
            "any-build": {"allow": [{"workspace": ["acme", "subsidiary"]}]},
            "deploy": {
                "allow": [
                    {"workspace": ["acme"], "environments": [acme.environment_uuid]},
                    {"workspace": ["subsidiary"], "environments": [subsidiary.environment_uuid],
                     "branches": ["main"]},
                ]
            },
        },
        "timeout": 2,
    }


def _status(client: Any, method: str, path: str, token: str | None) -> tuple[int, str | None]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = getattr(client, method)(path, headers=headers)
    code = response.json().get("code") if response.status_code >= 400 else None
    return response.status_code, code


def test_two_workspaces_under_their_own_policies(
    acme: FakeIssuer, subsidiary: FakeIssuer, stranger: FakeIssuer
) -> None:
    acme_build = acme.mint()
    acme_deploy = acme.mint(environment_uuid=acme.environment_uuid)
    sub_build = subsidiary.mint()
    sub_deploy = subsidiary.mint(environment_uuid=subsidiary.environment_uuid)
    sub_deploy_feature = subsidiary.mint(environment_uuid=subsidiary.environment_uuid, branch="feature/x")
    # Each workspace's environment belongs to that workspace's entry only.
    sub_into_acme_env = subsidiary.mint(environment_uuid=acme.environment_uuid)
    strange = stranger.mint(environment_uuid=stranger.environment_uuid)

    deploy_expectations = [
        (acme_deploy, 200), (sub_deploy, 200),
        (acme_build, 403), (sub_build, 403), (sub_deploy_feature, 403), (sub_into_acme_env, 403),
        (strange, 401),
    ]
    default_expectations = [(acme_build, 200), (sub_build, 200), (sub_deploy, 200), (strange, 401)]
    settings = {
        "BBVERIFY": two_workspaces(acme, subsidiary),
        "BBVERIFY_DJANGO": {"routes": [{"url_name": "plain", "policy": "deploy"}]},
        "MIDDLEWARE": [],
    }
    with override_settings(**settings):
        assert check_settings() == []
        # The decorator and the DRF permission, each naming the policy.
        for client, method, path in (
            (Client(), "get", "/decorated-deploy"),
            (APIClient(), "get", "/api/deployments/"),
            (APIClient(), "post", "/api/deployments/"),
        ):
            for token, status in deploy_expectations:
                expected = 201 if (method, status) == ("post", 200) else status
                assert _status(client, method, path, token)[0] == expected, (path, status)
        for client, path in ((Client(), "/decorated"), (APIClient(), "/api/default")):
            for token, status in default_expectations:
                assert _status(client, "get", path, token)[0] == status, (path, status)
        assert _status(Client(), "get", "/decorated-deploy", strange) == (401, "issuer_mismatch")

    # The middleware: routes pick "deploy" for the view named "plain", the default policy elsewhere.
    with override_settings(**{**settings, "MIDDLEWARE": ["bbverify.django.PipelineAuthMiddleware"]}):
        client = Client()
        for token, status in deploy_expectations:
            assert _status(client, "get", "/plain", token)[0] == status
        for token, status in default_expectations:
            assert _status(client, "get", "/decorated", token)[0] == status
        # Several entries (any_of): the denial names the policy, not one entry's rule.
        assert _status(client, "get", "/plain", acme_build) == (403, "policy_denied")


def test_view_policy_unknown_to_settings_is_a_system_check_error(acme: FakeIssuer) -> None:
    table = {
        "issuer": acme.issuer,
        "audience": acme.audience,
        "policies": {"other": {"allow": [{"branches": ["main"]}]}},
    }
    with override_settings(BBVERIFY=table):
        errors = check_settings()
    assert {e.id for e in errors} == {"bbverify.E004"}
    assert any("decorated_deploy" in e.msg for e in errors)
    assert any("DeploymentViewSet" in e.msg for e in errors)


def test_named_policy_errors_name_the_setting(acme: FakeIssuer) -> None:
    table = {
        "issuer": acme.issuer,
        "audience": acme.audience,
        "policies": {"deploy": {"allow": [{"branches": ["main"]}, {"branches": [3]}]}},
    }
    with override_settings(BBVERIFY=table):
        errors = check_settings()
    assert [e.id for e in errors] == ["bbverify.E002"]
    assert "BBVERIFY['policies']['deploy']['allow'][1]['branches']" in errors[0].msg
