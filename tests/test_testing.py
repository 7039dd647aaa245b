"""The FakeIssuer itself (a real loopback server) and the ``bbverify_issuer`` pytest fixture."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import requests
import urllib3

from bbverify import Verifier
from bbverify.testing import FAILURE_MODES, FakeIssuer, b64url

pytest_plugins = ["pytester"]

BRACED = re.compile(r"\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}")


def decode(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return decode(h), decode(p)


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=5, allow_redirects=False, **kwargs)


# -- lifecycle and documents ---------------------------------------------------------------------


def test_lifecycle_releases_the_port() -> None:
    fake = FakeIssuer()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    fake.start()
    assert fake.start() is fake  # idempotent
    url = fake.jwks_url
    assert url.startswith("http://127.0.0.1:")
    assert get(url).status_code == 200
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        get(url)


def test_documents(issuer: FakeIssuer) -> None:
    assert issuer.issuer == issuer.base_url + "/2.0/workspaces/demo-workspace/pipelines-config/identity/oidc"
    doc = get(issuer.issuer + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == issuer.issuer
    assert doc["jwks_uri"] == issuer.jwks_url
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = get(issuer.jwks_url).json()["keys"]
    assert [k["kid"] for k in keys] == [issuer.signing_key.kid]
    assert {k: keys[0][k] for k in ("kty", "use", "alg", "e")} == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "e": "AQAB",
    }
    assert len(base64.urlsafe_b64decode(keys[0]["n"] + "==")) == 256
    assert get(issuer.base_url + "/elsewhere").status_code == 404


def test_request_counters(issuer: FakeIssuer) -> None:
    jwks, disc = issuer.jwks_requests, issuer.discovery_requests
    get(issuer.jwks_url)
    get(issuer.jwks_url)
    get(issuer.issuer + "/.well-known/openid-configuration")
    assert (issuer.jwks_requests, issuer.discovery_requests) == (jwks + 2, disc + 1)


def test_audience_and_uuids(issuer: FakeIssuer) -> None:
    assert BRACED.fullmatch(issuer.workspace_uuid)
    assert BRACED.fullmatch(issuer.repository_uuid)
    assert issuer.audience == "ari:cloud:bitbucket::workspace/" + issuer.workspace_uuid[1:-1]
    with FakeIssuer(workspace="acme", workspace_uuid="{11111111-2222-4333-8444-555555555555}") as fake:
        assert "/workspaces/acme/" in fake.issuer
        assert fake.audience.endswith("/11111111-2222-4333-8444-555555555555")


def test_two_issuers_never_share_a_kid() -> None:
    with FakeIssuer() as a, FakeIssuer() as b:
        assert a.signing_key.kid != b.signing_key.kid


# -- minting --------------------------------------------------------------------------------------


def test_minted_tokens_look_like_bitbucket_ones(issuer: FakeIssuer) -> None:
    header, payload = parts(issuer.mint())
    assert header == {"kid": issuer.signing_key.kid, "typ": "JWT", "alg": "RS256"}
    for name in ("workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid"):
        assert BRACED.fullmatch(payload[name]), name
    assert payload["sub"] == f"{payload['repositoryUuid']}:{payload['stepUuid']}"
    assert payload["aud"] == issuer.audience
    assert payload["iss"] == issuer.issuer
    assert payload["exp"] - payload["iat"] == 3600
    assert payload["branchName"] == "main"
    assert "deploymentEnvironmentUuid" not in payload


def test_mint_options(issuer: FakeIssuer) -> None:
    env = issuer.environment_uuid
    _, p = parts(
        issuer.mint(environment_uuid=env, branch=None, audience=["a", "b"], lifetime=60, issued_at=1000)
    )
    assert p["sub"] == f"{p['repositoryUuid']}:{env}:{p['stepUuid']}"
    assert p["deploymentEnvironmentUuid"] == env
    assert "branchName" not in p
    assert p["aud"] == ["a", "b"]
    assert (p["iat"], p["exp"]) == (1000, 1060)
    _, p = parts(issuer.mint(extra={"pipelineRunUuid": "{x}", "iss": "other"}, drop=["exp"]))
    assert p["pipelineRunUuid"] == "{x}" and p["iss"] == "other" and "exp" not in p


def test_header_overrides_and_raw_bytes(issuer: FakeIssuer) -> None:
    header, _ = parts(issuer.mint(header={"kid": None, "typ": None, "jku": "http://x"}))
    assert header == {"alg": "RS256", "jku": "http://x"}
    token = issuer.sign(b"raw payload", header=b'{"alg":"RS256"}')
    h, p, _ = token.split(".")
    assert (h, p) == (b64url(b'{"alg":"RS256"}'), b64url(b"raw payload"))


def test_minted_token_verifies_with_the_helper_verifier(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(timeout=1.0)
    assert isinstance(verifier, Verifier)
    assert verifier.issuer == issuer.issuer
    assert verifier.verify(issuer.mint()).repository_uuid == issuer.repository_uuid


# -- keys -----------------------------------------------------------------------------------------


def test_rotation_and_removal() -> None:
    with FakeIssuer() as fake:
        first = fake.signing_key
        second = fake.rotate()
        assert fake.signing_key is second
        assert [k.kid for k in fake.keys] == [first.kid, second.kid]
        third = fake.rotate(keep_old=False)
        assert [k["kid"] for k in fake.jwks()["keys"]] == [third.kid]
        fake.remove_key(third.kid)
        assert fake.jwks()["keys"] == []
        fake.add_jwk({"kty": "junk"})
        assert fake.jwks()["keys"] == [{"kty": "junk"}]


def test_several_keys_at_start() -> None:
    with FakeIssuer(keys=2) as fake:
        assert len(fake.jwks()["keys"]) == 2
        assert fake.signing_key is fake.keys[-1]


# -- failure modes --------------------------------------------------------------------------------


def test_unknown_failure_mode() -> None:
    with pytest.raises(ValueError, match="unknown failure mode"):
        FakeIssuer().fail("flaky")


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("500", lambda r: r.status_code == 500),
        ("404", lambda r: r.status_code == 404),
        ("garbage", lambda r: r.status_code == 200 and r.content.startswith(b"<html>")),
        ("empty", lambda r: r.json() == {"keys": []}),
        ("huge", lambda r: len(r.content) > 4 * 1024 * 1024),
        ("redirect", lambda r: r.status_code == 302 and r.headers["Location"].startswith("https://")),
        ("slow", lambda r: r.status_code == 200 and r.json()["keys"]),
    ],
)
def test_failure_modes_as_seen_by_a_plain_client(mode: str, check: Any) -> None:
    with FakeIssuer() as fake:
        fake.fail(mode, delay=0.05)
        assert check(get(fake.jwks_url))
        fake.recover()
        assert get(fake.jwks_url).json()["keys"]
        # discovery is never affected
        assert get(fake.issuer + "/.well-known/openid-configuration").status_code == 200


def test_down_closes_the_connection() -> None:
    with FakeIssuer() as fake:
        fake.fail("down")
        with pytest.raises(requests.ConnectionError):
            get(fake.jwks_url)


def test_hang_and_drip_stall_the_body() -> None:
    with FakeIssuer() as fake:
        fake.fail("hang", delay=2.0)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(fake.jwks_url, timeout=0.2).content
        fake.fail("drip", delay=0.5)
        resp = requests.get(fake.jwks_url, timeout=0.2, stream=True)
        assert resp.status_code == 200  # the headers come at once, the body does not
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            resp.raw.read(100)
    # stop() returned although a handler was stalled: the server ends promptly


def test_failure_modes_are_all_documented() -> None:
    assert set(FAILURE_MODES) == {
        "down",
        "500",
        "404",
        "garbage",
        "empty",
        "slow",
        "hang",
        "drip",
        "huge",
        "redirect",
    }


# -- the pytest plugin ------------------------------------------------------------------------------


def test_plugin_fixture(pytester: pytest.Pytester) -> None:
    # A fresh pytest run finds the fixture through the package's pytest11 entry point.
    pytester.makepyfile(
        """
        import pytest
        from bbverify import InvalidToken
        from bbverify.testing import FakeIssuer

        seen = []

        def test_gate(bbverify_issuer):
            assert isinstance(bbverify_issuer, FakeIssuer)
            verifier = bbverify_issuer.verifier(timeout=1.0)
            claims = verifier.verify(bbverify_issuer.mint(environment_uuid=bbverify_issuer.environment_uuid))
            assert claims.is_deployment
            with pytest.raises(InvalidToken):
                verifier.verify(bbverify_issuer.mint(audience="someone-else"))
            seen.append(bbverify_issuer)

        def test_fresh_each_time(bbverify_issuer):
            # function-scoped: a new issuer, and the previous one was stopped
            assert bbverify_issuer is not seen[0]
            with pytest.raises(RuntimeError):
                seen[0].base_url
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
