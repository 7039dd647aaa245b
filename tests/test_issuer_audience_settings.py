"""Issuer and audience settings: a newcomer's mistakes get a start-up error or are normalised (issue 17)."""

from __future__ import annotations

import pytest

from bbverify import Verifier
from bbverify.errors import ConfigurationError
from bbverify.testing import FakeIssuer

ISSUER = "https://api.bitbucket.org/2.0/workspaces/acme/pipelines-config/identity/oidc"
UUID = "1de489be-6a25-4b7c-9f5e-0b7a2c1d3e4f"


@pytest.mark.parametrize(
    "pasted",
    [
        f"ari:cloud:bitbucket::workspace/{{{UUID}}}",
        f"ari:cloud:bitbucket::workspace/{UUID.upper()}",
        f"ARI:CLOUD:BITBUCKET::WORKSPACE/{{{UUID.upper()}}}",
    ],
)
def test_default_audience_is_normalised_as_bitbucket_writes_it(pasted: str) -> None:
    verifier = Verifier(workspace="acme", audience=pasted)
    assert verifier.audiences == frozenset({f"ari:cloud:bitbucket::workspace/{UUID}"})


def test_a_normalised_audience_accepts_the_genuine_token() -> None:
    with FakeIssuer() as issuer:
        braced = "ari:cloud:bitbucket::workspace/{" + issuer.audience.rsplit("/", 1)[1].upper() + "}"
        if not issuer.audience.startswith("ari:cloud:bitbucket::workspace/"):
            pytest.skip("the fake issuer's audience is not in Bitbucket's default form")
        verifier = Verifier(issuer=issuer.issuer, audience=braced)
        assert verifier.verify(issuer.mint()).workspace_uuid


def test_default_audience_with_a_malformed_uuid_names_the_audience() -> None:
    with pytest.raises(ConfigurationError) as info:
        Verifier(workspace="acme", audience="ari:cloud:bitbucket::workspace/not-a-uuid")
    assert info.value.key == "audience"


def test_bitbucket_issuer_with_a_trailing_slash_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError) as info:
        Verifier(issuer=ISSUER + "/", audience="x")
    assert info.value.key == "issuer"
    assert repr(ISSUER) in str(info.value) and "workspace='acme'" in str(info.value)


def test_other_issuers_may_end_with_a_slash() -> None:
    # Generic OIDC issuers can (RFC 8414 allows a path); only Bitbucket's shape is known.
    assert Verifier(issuer="https://idp.example/", audience="x").issuer == "https://idp.example/"


def test_issuer_url_pasted_as_workspace_points_at_the_slug() -> None:
    with pytest.raises(ConfigurationError) as info:
        Verifier(workspace=ISSUER, audience="x")
    assert info.value.key == "workspace" and "workspace='acme'" in str(info.value)
