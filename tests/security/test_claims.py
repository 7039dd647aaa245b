"""Claim attacks on genuinely signed tokens: times, issuer, audience, Bitbucket claims, ``sub``.

Every token here is signed with the issuer's real key, so only the claim
check under test can refuse it.
The exception (core review, f01): tokens under an unknown ``kid`` whose
claims cannot be Bitbucket's are refused before any key fetch.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from bbverify import Verifier
from bbverify.errors import VerificationError
from bbverify.testing import FakeIssuer, SigningKey

from ._support import assert_rejected


def _sign(issuer: FakeIssuer, **changes: Any) -> str:
    claims = issuer.claims()
    for name, value in changes.items():
        if value is _DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return issuer.sign(claims)


_DROP = object()
BAD_TIMES: list[object] = [
    "1700000000",
    str(int(time.time()) + 3600),
    True,
    False,
    None,
    [int(time.time()) + 3600],
    {"$date": int(time.time()) + 3600},
    -1,
    -(10**12),
    10**400,
    253402300800,
    "",
    # Also refused (merged from tests/test_verifier.py): other containers, a finite but huge number.
    [1],
    {"t": 1},
    10**20,
]


@pytest.mark.parametrize("value", BAD_TIMES, ids=repr)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_time_claims_of_the_wrong_type_or_range(
    issuer: FakeIssuer, verifier: Verifier, claim: str, value: object
) -> None:
    """RFC 7519 sections 2 and 4.1.4-4.1.6: exp/iat/nbf are NumericDates (numbers >= 0, not bools/strings)."""
    assert_rejected(verifier, issuer, _sign(issuer, **{claim: value}), {"malformed"})


def test_expired_and_future_tokens(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7519 sections 4.1.4-4.1.6: expired, issued-in-the-future and not-yet-valid tokens are refused."""
    now = int(time.time())
    assert_rejected(verifier, issuer, issuer.mint(issued_at=now - 7200, lifetime=3600), "expired")
    assert_rejected(verifier, issuer, issuer.mint(issued_at=now + 3600), "not_yet_valid")
    assert_rejected(verifier, issuer, _sign(issuer, nbf=now + 3600), "not_yet_valid")
    assert_rejected(verifier, issuer, _sign(issuer, exp=now - 3600, iat=now), "invalid_claim")
    assert_rejected(verifier, issuer, _sign(issuer, exp=now - 11, iat=now - 3600), "expired")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_required_time_claims(issuer: FakeIssuer, verifier: Verifier, claim: str) -> None:
    """RFC 7519 section 4.1.4 (Bitbucket always sends exp and iat): no token lives forever."""
    assert_rejected(verifier, issuer, _sign(issuer, **{claim: _DROP}), "missing_claim")


def _issuer_lookalikes(real: str) -> list[object]:
    return [
        real + "/",
        real.upper(),
        real.replace("http://", "HTTP://"),
        real.replace("http://", "https://"),
        real.replace("127.0.0.1", "localhost"),
        real + "x",
        real[:-1],
        "x" + real,
        real + "/.well-known/openid-configuration",
        real.replace("/oidc", "/oidc/../oidc"),
        real + "?",
        real + "#",
        " " + real,
        real + " ",
        real + "\u0000",
        real.replace("demo-workspace", "demo-workspace2"),
        [real],
        [real, "https://evil.example"],
        {"iss": real},
        1,
        True,
        "",
    ]


def test_issuer_lookalikes(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7519 section 4.1.1 / OpenID Connect Core 3.1.3.7 step 2: iss must equal the issuer exactly."""
    for value in _issuer_lookalikes(issuer.issuer):
        assert_rejected(verifier, issuer, _sign(issuer, iss=value), "issuer_mismatch")


@pytest.mark.parametrize("value", [None, _DROP], ids=["null", "absent"])
def test_issuer_missing(issuer: FakeIssuer, verifier: Verifier, value: object) -> None:
    """RFC 7519 section 4.1.1: a token without an issuer is refused."""
    assert_rejected(verifier, issuer, _sign(issuer, iss=value), "missing_claim")


def test_other_workspace_issuer(issuer: FakeIssuer, verifier: Verifier) -> None:
    """OpenID Connect Core 3.1.3.7 step 2: another workspace's issuer (same host) is refused."""
    with FakeIssuer(workspace="other-workspace") as other:
        token = other.mint()
        assert_rejected(verifier, issuer, token, {"issuer_mismatch", "unknown_key"})
        # Re-signed by this issuer so only the iss comparison can refuse it.
        assert_rejected(verifier, issuer, _sign(issuer, iss=other.issuer), "issuer_mismatch")


def _audience_lookalikes(real: str) -> list[tuple[object, str]]:
    mismatch, malformed = "audience_mismatch", "malformed"
    return [
        (real + "x", mismatch),
        (real + "/", mismatch),
        (real[:-1], mismatch),
        ("x" + real, mismatch),
        (real.upper(), mismatch),
        (real.replace("workspace/", "workspace/{") + "}", mismatch),
        (real + " ", mismatch),
        ("", mismatch),
        ([real + "x", "other"], mismatch),
        (["other"], mismatch),
        ([real + " "], mismatch),
        (["ari:cloud:bitbucket::workspace/"], mismatch),
        ([], malformed),
        ([[real]], malformed),
        ([real, [real]], malformed),
        ([real, None], malformed),
        ([real, 1], malformed),
        (1, malformed),
        (True, malformed),
        ({"aud": real}, malformed),
    ]


def test_audience_lookalikes(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7519 section 4.1.3 / RFC 8725 section 3.9: aud must contain this service's audience exactly."""
    for value, code in _audience_lookalikes(issuer.audience):
        assert_rejected(verifier, issuer, _sign(issuer, aud=value), code)


@pytest.mark.parametrize("value", [None, _DROP], ids=["null", "absent"])
def test_audience_missing(issuer: FakeIssuer, verifier: Verifier, value: object) -> None:
    """RFC 8725 section 3.9: a token without an audience could be meant for anyone; refused."""
    assert_rejected(verifier, issuer, _sign(issuer, aud=value), "missing_claim")


def test_audience_in_a_list_is_accepted(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7519 section 4.1.3: aud may be an array; one exact match among extras is enough."""
    assert verifier.verify(_sign(issuer, aud=["other-1", issuer.audience, "other-2"])).subject


@pytest.mark.parametrize("claim", ["workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid", "sub"])
@pytest.mark.parametrize("value", [_DROP, None], ids=["absent", "null"])
def test_missing_bitbucket_claims(issuer: FakeIssuer, verifier: Verifier, claim: str, value: object) -> None:
    """Bitbucket Pipelines OIDC claims: every step token carries these; a token without one is refused."""
    assert_rejected(verifier, issuer, _sign(issuer, **{claim: value}), "missing_claim")


@pytest.mark.parametrize("claim", ["workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid", "sub"])
@pytest.mark.parametrize("value", ["", 1, ["{x}"], {"uuid": "x"}, True], ids=repr)
def test_bitbucket_claims_of_the_wrong_type(
    issuer: FakeIssuer, verifier: Verifier, claim: str, value: object
) -> None:
    """Bitbucket Pipelines OIDC claims are non-empty strings; anything else is malformed."""
    assert_rejected(verifier, issuer, _sign(issuer, **{claim: value}), "malformed")


@pytest.mark.parametrize("claim", ["deploymentEnvironmentUuid", "branchName"])
@pytest.mark.parametrize("value", [1, ["main"], {"x": 1}, True, None], ids=repr)
def test_optional_claims_of_the_wrong_type(
    issuer: FakeIssuer, verifier: Verifier, claim: str, value: object
) -> None:
    """Bitbucket Pipelines OIDC claims: optional claims, when present, are strings."""
    assert_rejected(verifier, issuer, _sign(issuer, **{claim: value}), "malformed")


def _braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


def test_sub_disagreeing_with_claims(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7519 section 4.1.2 + Bitbucket's sub format: sub must be built from the UUID claims it names."""
    env = issuer.environment_uuid
    base = issuer.claims()
    repo, step = base["repositoryUuid"], base["stepUuid"]
    deploy = issuer.claims(environment_uuid=env)
    d_repo, d_step = deploy["repositoryUuid"], deploy["stepUuid"]
    cases: list[dict[str, Any]] = [
        {"sub": f"{_braced()}:{step}"},  # another repository
        {"sub": f"{repo}:{_braced()}"},  # another step
        {"sub": f"{step}:{repo}"},  # swapped
        {"sub": f"{repo}:{env}:{step}"},  # environment in sub, not in the claims
        {"sub": f"{repo}:{step}:"},
        {"sub": f"{repo}:{step} "},
        {"sub": f"{repo.upper()}:{step}"},
        {"sub": f"{repo.strip('{}')}:{step.strip('{}')}"},
        {"sub": f"{repo}::{step}"},
    ]
    for change in cases:
        assert_rejected(verifier, issuer, issuer.sign({**base, **change}), "subject_mismatch")
    deploy_cases: list[dict[str, Any]] = [
        {"sub": f"{d_repo}:{d_step}"},  # environment in the claims, not in sub
        {"sub": f"{d_repo}:{_braced()}:{d_step}"},  # another environment in sub
        {"deploymentEnvironmentUuid": _braced()},  # another environment in the claims
        {"deploymentEnvironmentUuid": ""},
    ]
    for change in deploy_cases:
        assert_rejected(verifier, issuer, issuer.sign({**deploy, **change}), "subject_mismatch")
    # The genuine forms still pass.
    assert verifier.verify(issuer.sign(base)).deployment_environment_uuid is None
    assert verifier.verify(issuer.sign(deploy)).deployment_environment_uuid == env


def test_unknown_claims_are_kept(issuer: FakeIssuer, verifier: Verifier) -> None:
    """Bitbucket adds claims over time (pipelineRunUuid): unknown claims are kept, never refused."""
    run = _braced()
    claims = verifier.verify(_sign(issuer, pipelineRunUuid=run, somethingNew={"a": [1, 2]}))
    assert claims.pipeline_run_uuid == run
    assert claims.raw["somethingNew"]["a"] == (1, 2)


def test_workspace_uuid_mismatch(issuer: FakeIssuer) -> None:
    """Bitbucket Pipelines OIDC: with workspace_uuid configured, another workspace's token is refused."""
    v = issuer.verifier(workspace_uuid=issuer.workspace_uuid.upper().strip("{}"))
    assert v.verify(issuer.mint()).subject
    assert_rejected(v, issuer, _sign(issuer, workspaceUuid=_braced()), "workspace_mismatch")


# -- f01: everything checkable unsigned is checked before a key fetch ---------------------


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"workspaceUuid": "{00000000-0000-4000-8000-000000000000}"}, "workspace_mismatch"),
        ({"sub": "{x}:{y}"}, "subject_mismatch"),
        ({"branchName": ["main"]}, "malformed"),
        ({"deploymentEnvironmentUuid": 7}, "malformed"),
        ({"nbf": 4_000_000_000}, "not_yet_valid"),
        ({"nbf": "soon"}, "malformed"),
    ],
)
def test_implausible_bitbucket_claims_cost_no_fetch(
    issuer: FakeIssuer, extra: dict[str, Any], code: str
) -> None:
    forger = SigningKey(kid="attacker-kid", private_key=issuer.signing_key.private_key)
    verifier = issuer.verifier(workspace_uuid=issuer.workspace_uuid)  # cold: nothing fetched yet
    before = issuer.jwks_requests + issuer.discovery_requests
    with pytest.raises(VerificationError) as caught:
        verifier.verify(issuer.sign(issuer.claims(extra=extra), key=forger))
    assert caught.value.code == code
    assert issuer.jwks_requests + issuer.discovery_requests == before


def test_genuine_token_still_verifies_with_the_pin(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(workspace_uuid=issuer.workspace_uuid)
    assert verifier.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid
