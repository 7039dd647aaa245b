"""Configuration fails closed: a misspelt rule variable or an empty pinned workspace UUID is
refused at start-up, never silently dropped.

Regression tests from the adversarial review (each failed before its fix).
"""

from __future__ import annotations

import pytest

from bbverify import Verifier
from bbverify.config import rules_from_env
from bbverify.errors import ConfigurationError
from bbverify.testing import FakeIssuer


def test_rules_from_env_refuses_a_misspelt_rule_setting() -> None:
    # A typo must never silently drop a rule (verifier_from_env already refuses it).
    with pytest.raises(ConfigurationError) as info:
        rules_from_env({"BBVERIFY_REPOSITORYS": "{7c2e0f8e-9c56-4c1a-9d2b-0d3f1d1c7a11}"})
    assert info.value.key == "BBVERIFY_REPOSITORYS"
    # Verifier settings are still allowed (and ignored) there.
    assert len(rules_from_env({"BBVERIFY_BRANCHES": "main", "BBVERIFY_WORKSPACE": "acme"})) == 1


def test_empty_workspace_uuid_is_refused_not_ignored(issuer: FakeIssuer) -> None:
    # workspace_uuid="" (an unset variable read with a default) used to drop the pin silently.
    with pytest.raises(ConfigurationError) as info:
        Verifier(issuer=issuer.issuer, audience=issuer.audience, workspace_uuid="")
    assert info.value.key == "workspace_uuid"
