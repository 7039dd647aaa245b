"""The Verifier end to end against a loopback FakeIssuer: configuration, every check, the caches."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from clock import FakeClock

import bbverify
from bbverify import (
    ConfigurationError,
    InvalidToken,
    KeysUnavailable,
    PipelineClaims,
    PolicyDenied,
    RequestContext,
    VerificationError,
    Verifier,
    verify,
)
from bbverify.testing import FakeIssuer, SigningKey, b64url, generate_rsa_key
from bbverify.verifier import BITBUCKET_ISSUER_TEMPLATE, bitbucket_audience, bitbucket_issuer

WS_UUID = "{1de489be-0a2b-4c3d-8e9f-0123456789ab}"
NOW = float(int(time.time()))
FAST: dict[str, Any] = {"timeout": 1.0, "failure_backoff": 0.1, "cooldown": 0.0}


def frozen(at: float = NOW) -> FakeClock:
    return FakeClock(at)


@pytest.fixture(scope="module")
def v(issuer: FakeIssuer) -> Verifier:
    """A verifier on a fixed clock, so that tokens minted at NOW are checked at NOW."""
    verifier = issuer.verifier(clock=frozen(), **FAST)
    verifier.warm_up()
    return verifier


def mint(issuer: FakeIssuer, **options: Any) -> str:
    options.setdefault("issued_at", NOW)
    return issuer.mint(**options)


def rejected(verifier: Verifier, token: object, code: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as exc:
        verifier.verify(token)  # type: ignore[arg-type]
    assert exc.value.code == code, exc.value
    assert exc.value.status_code == 401
    return exc.value


# -- construction -----------------------------------------------------------------------------


def test_workspace_derives_the_issuer() -> None:
    verifier = Verifier(workspace="acme", audience="aud")
    assert verifier.issuer == BITBUCKET_ISSUER_TEMPLATE.format(workspace="acme")
    assert verifier.issuer == ("https://api.bitbucket.org/2.0/workspaces/acme/pipelines-config/identity/oidc")
    assert bitbucket_issuer("acme") == verifier.issuer


@pytest.mark.parametrize("slug", ["", " ", "a/b", "../x", "-acme", "acme!", "a" * 101, "ac me", "é"])
def test_workspace_slug_is_validated(slug: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace=slug, audience="aud")
    assert exc.value.key == "workspace"


@pytest.mark.parametrize("slug", ["acme", "a", "acme-corp_2.0", "9lives"])
def test_workspace_slugs_accepted(slug: str) -> None:
    assert slug in Verifier(workspace=slug, audience="aud").issuer


def test_workspace_and_disagreeing_issuer_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", issuer=bitbucket_issuer("other"), audience="aud")
    assert exc.value.key == "issuer"


def test_issuer_or_workspace_required() -> None:
    with pytest.raises(ConfigurationError):
        Verifier(audience="aud")


@pytest.mark.parametrize("audience", [None, [], "", [""], [1], ["ok", None]])
def test_audience_required(audience: Any) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", audience=audience)
    assert exc.value.key == "audience"


def test_workspace_uuid_gives_the_default_audience() -> None:
    verifier = Verifier(workspace="acme", workspace_uuid=WS_UUID.upper().strip("{}"))
    assert verifier.audiences == frozenset(
        {"ari:cloud:bitbucket::workspace/1de489be-0a2b-4c3d-8e9f-0123456789ab"}
    )
    assert verifier.workspace_uuid == WS_UUID
    assert bitbucket_audience(WS_UUID) == next(iter(verifier.audiences))


def test_bad_workspace_uuid() -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", workspace_uuid="not-a-uuid")
    assert exc.value.key == "workspace_uuid"


@pytest.mark.parametrize(
    "algorithms",
    [["HS256"], ["RS256", "HS256"], ["none"], ["None"], ["RS256", "none"], [], ["EdDSA"], "HS512"],
)
def test_hmac_none_and_unknown_algorithms_refused_at_construction(algorithms: Any) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", audience="aud", algorithms=algorithms)
    assert exc.value.key == "algorithms"


def test_algorithms_default_to_rs256_only() -> None:
    assert Verifier(workspace="acme", audience="aud").algorithms == frozenset({"RS256"})
    assert Verifier(workspace="acme", audience="aud", algorithms="RS256").algorithms == frozenset({"RS256"})


@pytest.mark.parametrize("leeway", [-1, 300.5, 1000, float("nan"), float("inf"), "10"])
def test_leeway_bounds(leeway: Any) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", audience="aud", leeway=leeway)
    assert exc.value.key == "leeway"


def test_leeway_default_and_maximum() -> None:
    assert Verifier(workspace="acme", audience="aud").leeway == 10
    assert Verifier(workspace="acme", audience="aud", leeway=300).leeway == 300


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": "http://example.com/oidc"},
        {"issuer": "https://example.com/oidc", "jwks_url": "http://example.com/keys.json"},
        {"issuer": "https://example.com/oidc", "jwks_url": "ftp://127.0.0.1/keys.json"},
    ],
)
def test_plain_http_is_refused_off_loopback(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Verifier(audience="aud", **options)


def test_non_callable_policy_refused() -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", audience="aud", policies=[lambda c, r: None, "deny"])  # type: ignore[list-item]
    assert exc.value.key == "policies[1]"


def test_construction_makes_no_request_warm_up_does(issuer: FakeIssuer) -> None:
    before = (issuer.discovery_requests, issuer.jwks_requests)
    verifier = Verifier(issuer=issuer.issuer, audience=[issuer.audience, "other"], jwks_url=None, **FAST)
    assert (issuer.discovery_requests, issuer.jwks_requests) == before
    verifier.warm_up()
    assert (issuer.discovery_requests, issuer.jwks_requests) == (before[0] + 1, before[1] + 1)
    # and verifying then needs no further request
    verifier.verify(issuer.mint())
    assert issuer.jwks_requests == before[1] + 1


# -- the happy path ------------------------------------------------------------------------------


def test_valid_token(v: Verifier, issuer: FakeIssuer) -> None:
    claims = v.verify(mint(issuer, extra={"pipelineRunUuid": "{abc}"}))
    assert isinstance(claims, PipelineClaims)
    assert claims.workspace_uuid == issuer.workspace_uuid
    assert claims.repository_uuid == issuer.repository_uuid
    assert claims.workspace_uuid.startswith("{") and claims.step_uuid.startswith("{")
    assert claims.deployment_environment_uuid is None
    assert claims.branch_name == "main"
    assert claims.audience == (issuer.audience,)
    assert claims.issuer == issuer.issuer
    assert claims.raw["pipelineRunUuid"] == "{abc}"
    assert claims.issued_at.timestamp() == NOW


def test_deployment_token(v: Verifier, issuer: FakeIssuer) -> None:
    claims = v.verify(mint(issuer, environment_uuid=issuer.environment_uuid, branch=None))
    assert claims.deployment_environment_uuid == issuer.environment_uuid
    assert claims.subject.count(":") == 2
    assert claims.branch_name is None


def test_bytes_token(v: Verifier, issuer: FakeIssuer) -> None:
    assert v.verify(mint(issuer).encode()).workspace_uuid == issuer.workspace_uuid


def test_audience_array_with_extra_audiences(v: Verifier, issuer: FakeIssuer) -> None:
    claims = v.verify(mint(issuer, audience=["x" * 150, issuer.audience, "y"]))
    assert claims.audience == ("x" * 150, issuer.audience, "y")


def test_workspace_uuid_check(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(clock=frozen(), workspace_uuid=issuer.workspace_uuid.upper(), audience=None)
    assert verifier.verify(mint(issuer)).workspace_uuid == issuer.workspace_uuid
    other = "{00000000-0000-4000-8000-000000000000}"
    rejected(verifier, mint(issuer, extra={"workspaceUuid": other}), "workspace_mismatch")


# -- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a..c", None, 17, ["x"], "é.b.c"])
def test_garbage(v: Verifier, token: object) -> None:
    rejected(v, token, "malformed")


def test_size_cap(v: Verifier, issuer: FakeIssuer) -> None:
    token = mint(issuer, extra={"pad": "x" * 9000})
    rejected(v, token, "token_too_large")
    big = issuer.verifier(clock=frozen(), max_token_bytes=20000)
    assert big.verify(token).raw["pad"] == "x" * 9000


def test_max_token_bytes_bounds() -> None:
    for bad in (100, 10**6):
        with pytest.raises(ConfigurationError):
            Verifier(workspace="acme", audience="a", max_token_bytes=bad)


def test_payload_that_is_not_json_is_malformed(v: Verifier, issuer: FakeIssuer) -> None:
    for body in (b"not json", b"[]", b'{"a":1,"a":2}', b'{"exp":NaN}', b"[" * 2500 + b"]" * 2500):
        rejected(v, issuer.sign(body), "malformed")


def test_deeply_nested_claim_is_malformed(v: Verifier, issuer: FakeIssuer) -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    rejected(v, mint(issuer, extra={"deep": deep}), "malformed")


def test_non_canonical_payload_encoding_is_malformed(v: Verifier, issuer: FakeIssuer) -> None:
    # A payload segment whose last character has non-zero spare bits, correctly signed.
    from bbverify.testing import sign_rs256

    claims = issuer.claims(issued_at=NOW)
    seg = b64url(json.dumps(claims).encode())
    while len(seg) % 4 != 2:
        claims["pad"] = claims.get("pad", "") + "x"
        seg = b64url(json.dumps(claims).encode())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    seg = seg[:-1] + alphabet[alphabet.index(seg[-1]) | 1]
    header = b64url(json.dumps({"alg": "RS256", "kid": issuer.signing_key.kid}).encode())
    signing_input = f"{header}.{seg}".encode()
    sig = b64url(sign_rs256(issuer.signing_key.private_key, signing_input))
    rejected(v, f"{header}.{seg}.{sig}", "malformed")


# -- header checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "RS384", "ES256", "PS256"]
)
def test_algorithm_refused(v: Verifier, issuer: FakeIssuer, alg: str) -> None:
    rejected(v, mint(issuer, header={"alg": alg}), "unsupported_algorithm")


def test_alg_none_with_empty_signature_is_refused(v: Verifier, issuer: FakeIssuer) -> None:
    header = b64url(b'{"alg":"none"}')
    payload = b64url(json.dumps(issuer.claims(issued_at=NOW)).encode())
    with pytest.raises(InvalidToken):
        v.verify(f"{header}.{payload}.")


@pytest.mark.parametrize("kid", ["", "k" * 300, 5, ["a"]])
def test_kid_shape(v: Verifier, issuer: FakeIssuer, kid: Any) -> None:
    rejected(v, mint(issuer, header={"kid": kid}), "malformed")


def test_unknown_kid(v: Verifier, issuer: FakeIssuer) -> None:
    rejected(v, mint(issuer, header={"kid": "nobody"}), "unknown_key")


def test_token_without_kid_uses_the_only_key(v: Verifier, issuer: FakeIssuer) -> None:
    assert v.verify(mint(issuer, header={"kid": None})).workspace_uuid == issuer.workspace_uuid


# -- signature -------------------------------------------------------------------------------------


def test_signature_by_another_key_under_our_kid(v: Verifier, issuer: FakeIssuer) -> None:
    impostor = SigningKey(issuer.signing_key.kid, generate_rsa_key())
    rejected(v, mint(issuer, key=impostor), "bad_signature")


def test_tampered_payload(v: Verifier, issuer: FakeIssuer) -> None:
    header, _, sig = mint(issuer).split(".")
    other = mint(issuer, extra={"branchName": "release"}).split(".")[1]
    rejected(v, f"{header}.{other}.{sig}", "bad_signature")


def test_truncated_signature(v: Verifier, issuer: FakeIssuer) -> None:
    head, body, sig = mint(issuer).split(".")
    short = b64url(base64.urlsafe_b64decode(sig + "==")[:-1])
    rejected(v, f"{head}.{body}.{short}", "bad_signature")


# -- time ------------------------------------------------------------------------------------------


def at(issuer: FakeIssuer, now: float, **options: Any) -> Verifier:
    return issuer.verifier(clock=frozen(now), **options)


def test_expiry_with_default_leeway(issuer: FakeIssuer) -> None:
    token = mint(issuer, lifetime=60)
    exp = NOW + 60
    assert at(issuer, exp + 9.9).verify(token)
    rejected(at(issuer, exp + 10), token, "expired")
    rejected(at(issuer, exp, leeway=0), token, "expired")
    assert at(issuer, exp + 299, leeway=300).verify(token)


def test_issued_in_the_future(issuer: FakeIssuer) -> None:
    token = mint(issuer, issued_at=NOW + 30)
    rejected(at(issuer, NOW), token, "not_yet_valid")
    assert at(issuer, NOW + 20.5).verify(token)  # within the 10 s leeway
    assert at(issuer, NOW, leeway=30).verify(token)


def test_nbf_is_honoured(issuer: FakeIssuer) -> None:
    token = mint(issuer, extra={"nbf": NOW + 100})
    rejected(at(issuer, NOW), token, "not_yet_valid")
    assert at(issuer, NOW + 95).verify(token)
    assert at(issuer, NOW).verify(mint(issuer, extra={"nbf": NOW - 1}))


def test_float_times_are_accepted(v: Verifier, issuer: FakeIssuer) -> None:
    claims = v.verify(mint(issuer, extra={"iat": NOW - 0.5, "exp": NOW + 99.5}))
    assert claims.expires_at.timestamp() == NOW + 99.5


# -- issuer and audience ----------------------------------------------------------------------------


def test_several_configured_audiences(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(clock=frozen(), audience=["api://one", "api://two"])
    assert verifier.verify(mint(issuer, audience="api://two")).audience == ("api://two",)
    assert verifier.verify(mint(issuer, audience=["x", "api://one"]))
    rejected(verifier, mint(issuer), "audience_mismatch")


# -- Bitbucket claims -------------------------------------------------------------------------------


# -- errors ---------------------------------------------------------------------------------------


def test_error_classes_and_statuses() -> None:
    assert issubclass(InvalidToken, VerificationError)
    assert issubclass(PolicyDenied, VerificationError)
    assert issubclass(KeysUnavailable, VerificationError)
    assert (InvalidToken.status_code, PolicyDenied.status_code, KeysUnavailable.status_code) == (
        401,
        403,
        503,
    )
    err = InvalidToken("boom", code="expired")
    assert (err.code, err.message, str(err)) == ("expired", "boom", "expired: boom")
    assert KeysUnavailable("x").code == "keys_unavailable"
    assert KeysUnavailable("x", retry_after=0).retry_after == 1


def test_messages_never_echo_the_token(v: Verifier, issuer: FakeIssuer) -> None:
    token = mint(issuer, extra={"iss": "https://evil"})
    with pytest.raises(InvalidToken) as exc:
        v.verify(token)
    assert token not in exc.value.message
    assert token.split(".")[1] not in str(exc.value)


def test_policy_denial_is_403(v: Verifier, issuer: FakeIssuer) -> None:
    def deny(claims: PipelineClaims, ctx: RequestContext) -> None:
        raise PolicyDenied("no", code="branch_denied", rule="branch")

    with pytest.raises(PolicyDenied) as exc:
        v.verify(mint(issuer), policies=deny)
    assert (exc.value.code, exc.value.status_code, exc.value.rule) == ("branch_denied", 403, "branch")


def test_broken_rule_fails_closed(v: Verifier, issuer: FakeIssuer) -> None:
    def broken(claims: PipelineClaims, ctx: RequestContext) -> None:
        raise RuntimeError("bug")

    with pytest.raises(PolicyDenied) as exc:
        v.verify(mint(issuer), policies=[broken])
    assert exc.value.code == "policy_error"
    with pytest.raises(PolicyDenied):
        v.verify(mint(issuer), policies=[lambda c, r: False])


def test_rule_sees_the_request_context(v: Verifier, issuer: FakeIssuer) -> None:
    seen: list[RequestContext] = []
    v.verify(
        mint(issuer), client_ip="203.0.113.7", policies=lambda c, r: seen.append(r), method="POST", path="/d"
    )
    assert seen == [RequestContext("203.0.113.7", NOW, "POST", "/d")]


def test_only_verification_errors_escape(issuer: FakeIssuer) -> None:
    class Exploding:
        def get_key(self, kid: str | None, alg: str) -> Any:
            raise ZeroDivisionError

        async def aget_key(self, kid: str | None, alg: str) -> Any:
            raise ZeroDivisionError

        def cached_key(self, kid: str | None, alg: str) -> Any:
            raise ZeroDivisionError

    verifier = issuer.verifier(keys=Exploding())
    with pytest.raises(VerificationError) as exc:
        verifier.verify(mint(issuer))
    assert exc.value.status_code == 401
    with pytest.raises(VerificationError):
        asyncio.run(verifier.averify(mint(issuer)))


def test_decisions_are_reported(issuer: FakeIssuer) -> None:
    seen: list[bbverify.Decision] = []
    verifier = issuer.verifier(clock=frozen(), on_decision=seen.append)
    verifier.verify(mint(issuer), client_ip="203.0.113.9")
    with pytest.raises(InvalidToken):
        verifier.verify("x.y.z")
    assert [(d.allowed, d.code) for d in seen] == [(True, "ok"), (False, "malformed")]
    assert seen[0].repository == issuer.repository_uuid


# -- verified-token cache -------------------------------------------------------------------------------


def test_cached_token_still_expires(issuer: FakeIssuer) -> None:
    clock = FakeClock(NOW)
    verifier = issuer.verifier(clock=clock)
    token = mint(issuer, lifetime=60)
    verifier.verify(token)
    assert verifier.cache_info()["tokens"] == 1
    clock.now = NOW + 60 + 10
    rejected(verifier, token, "expired")
    assert verifier.cache_info()["tokens"] == 0


def test_policies_run_on_cached_tokens(issuer: FakeIssuer) -> None:
    calls: list[str] = []
    allow = [True]

    def rule(claims: PipelineClaims, ctx: RequestContext) -> bool:
        calls.append(claims.step_uuid)
        return allow[0]

    verifier = issuer.verifier(clock=frozen(), policies=rule)
    token = mint(issuer)
    verifier.verify(token)
    verifier.verify(token)
    assert len(calls) == 2 and verifier.cache_info()["tokens"] == 1
    allow[0] = False
    with pytest.raises(PolicyDenied):
        verifier.verify(token)
    extra: list[str] = []
    allow[0] = True
    verifier.verify(token, policies=lambda c, r: extra.append(c.step_uuid))
    assert len(extra) == 1


def test_cached_and_fresh_answers_are_the_same(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(clock=frozen())
    token = mint(issuer)
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    verifier.clear_cache()
    assert verifier.cache_info()["tokens"] == 0
    assert verifier.verify(token) == first


# -- async ----------------------------------------------------------------------------------------------


def test_averify(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(clock=frozen())

    async def main() -> tuple[PipelineClaims, InvalidToken]:
        claims = await verifier.averify(mint(issuer))
        try:
            await verifier.averify(mint(issuer, audience="nope"))
        except InvalidToken as exc:
            return claims, exc
        raise AssertionError("accepted a wrong audience")

    claims, error = asyncio.run(main())
    assert claims.workspace_uuid == issuer.workspace_uuid
    assert error.code == "audience_mismatch"


# -- one-call form --------------------------------------------------------------------------------------


def _shared_sources(issuer_url: str) -> list[object]:
    from bbverify.verifier import _KEY_SOURCES

    return [keys for keys, _ in _KEY_SOURCES.values() if keys.issuer == issuer_url]


def test_one_call_verify_shares_one_key_set(issuer: FakeIssuer) -> None:
    options = {"issuer": issuer.issuer, "audience": [issuer.audience], "timeout": 1.0, "cooldown": 0.5}
    before = issuer.jwks_requests
    a = verify(issuer.mint(), **options)
    built = _shared_sources(issuer.issuer)
    b = verify(issuer.mint(), **dict(options, audience=[issuer.audience]))  # an equal, not the same, list
    again = _shared_sources(issuer.issuer)
    assert a.workspace_uuid == b.workspace_uuid == issuer.workspace_uuid
    assert len(built) == 1 and again == built and again[0] is built[0]
    assert issuer.jwks_requests == before + 1


def test_one_call_verify_by_workspace_makes_no_request_for_garbage() -> None:
    with pytest.raises(InvalidToken):
        verify("not.a.token", workspace="acme-one-call", audience="aud")
    first = _shared_sources(bitbucket_issuer("acme-one-call"))
    with pytest.raises(InvalidToken):
        verify("not.a.token", workspace="acme-one-call", audience="aud")
    second = _shared_sources(bitbucket_issuer("acme-one-call"))
    assert len(first) == 1 and second[0] is first[0]


def test_one_call_verify_without_audience() -> None:
    with pytest.raises(ConfigurationError):
        verify("a.b.c", workspace="acme")


def test_base64_helper_matches_stdlib() -> None:
    assert b64url(b"\xff\xfe") == base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"=").decode()


def test_one_call_key_sources_are_bounded_and_keep_the_busy_caller() -> None:
    from bbverify.verifier import _KEY_SOURCES, _MAX_KEY_SOURCES

    busy = "http://127.0.0.1:9/busy"
    for n in range(_MAX_KEY_SOURCES + 20):
        for issuer_url in (busy, f"http://127.0.0.1:9/other-{n}"):
            with pytest.raises(InvalidToken):
                verify("not.a.token", issuer=issuer_url, audience="aud")
        assert len(_KEY_SOURCES) <= _MAX_KEY_SOURCES
    assert len(_shared_sources(busy)) == 1  # used all along, so never the one evicted
    assert not _shared_sources("http://127.0.0.1:9/other-0")  # the least recently used went
