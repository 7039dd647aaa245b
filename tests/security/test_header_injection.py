"""Header parameters that try to choose the key or change how the token is read."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from loopback import Answer, JSONServer, Request

from bbverify import Verifier
from bbverify.testing import FakeIssuer, SigningKey, generate_rsa_key

from ._support import assert_rejected, jdump


@pytest.fixture(scope="module")
def attacker() -> SigningKey:
    """The attacker's own RSA key: it signs, and its public half is what the headers point at."""
    return SigningKey(kid="attacker-1", private_key=generate_rsa_key())


@pytest.fixture(scope="module")
def evil(attacker: SigningKey) -> Iterator[JSONServer]:
    """A second loopback server serving the attacker's JWKS and certificate; it must never be asked."""
    jwks = jdump({"keys": [attacker.public_jwk()]})

    def respond(request: Request) -> Answer:
        return 200, {"Content-Type": "application/json"}, jwks

    with JSONServer(respond=respond) as server:
        yield server


def _self_signed_der(key: SigningKey) -> bytes:
    import datetime

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.bitbucket.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key.private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _headers(attacker: SigningKey, evil: JSONServer) -> dict[str, dict[str, object]]:
    cert = base64.b64encode(_self_signed_der(attacker)).decode()
    return {
        "jwk": {"jwk": attacker.public_jwk()},
        "jku": {"jku": evil.url + "/keys.json"},
        "x5u": {"x5u": evil.url + "/cert.pem"},
        "x5c": {"x5c": [cert]},
        "jku+jwk": {"jku": evil.url + "/keys.json", "jwk": attacker.public_jwk()},
    }


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "jku+jwk"])
@pytest.mark.parametrize("signer", ["attacker", "issuer"])
def test_embedded_key_headers_are_never_followed(
    issuer: FakeIssuer,
    verifier: Verifier,
    attacker: SigningKey,
    evil: JSONServer,
    name: str,
    signer: str,
) -> None:
    """CVE-2018-0114 / RFC 8725 section 3.10: jwk/jku/x5u/x5c never pick the key; no token URL is fetched.

    Signed by the attacker's key (kid = the attacker's, or the issuer's), and
    also re-signed by the issuer itself so only the header check can refuse.
    """
    before = evil.hits
    extra = dict(_headers(attacker, evil)[name])
    if signer == "attacker":
        for kid in (attacker.kid, issuer.signing_key.kid):
            token = issuer.sign(issuer.claims(), header={**extra, "kid": kid}, key=attacker)
            assert_rejected(verifier, issuer, token, "unsupported_header")
    else:
        token = issuer.sign(issuer.claims(), header=extra)
        assert_rejected(verifier, issuer, token, "unsupported_header")
    assert evil.hits == before == 0


KID_INJECTIONS = [
    "../../dev/null",
    "../../../../../../etc/passwd",
    "/dev/null",
    "..\\..\\windows\\win.ini",
    "' OR '1'='1",
    "x'; DROP TABLE keys; --",
    "1 UNION SELECT 'secret' --",
    "http://127.0.0.1:1/keys.json",
    "https://evil.example/keys.json",
    "file:///etc/passwd",
    "$(touch /tmp/pwned)",
    "{{7*7}}",
    "%00",
    "*",
    " ",
]


@pytest.mark.parametrize("kid", KID_INJECTIONS)
def test_kid_injection_strings(issuer: FakeIssuer, verifier: Verifier, kid: str) -> None:
    """CVE-2018-1000531 class (kid used as a path/query): a kid is only ever a dictionary key.

    The token is signed with the issuer's real key, so a lookup that resolved
    the kid to that key (or to an empty/null secret) would let it through.
    """
    before = issuer.jwks_requests
    token = issuer.mint(header={"kid": kid})
    assert_rejected(verifier, issuer, token, "unknown_key")
    # The module's verifier fetched moments ago: unknown kids wait out the cooldown.
    assert issuer.jwks_requests == before


@pytest.mark.parametrize(
    "kid",
    ["k" * 10_000, "k" * 257, "", "kid\n", "kid\u0000", "\u202ekid"],
    ids=["10k", "257", "empty", "newline", "nul", "bidi"],
)
def test_kid_oversized_empty_or_unprintable(issuer: FakeIssuer, verifier: Verifier, kid: str) -> None:
    """RFC 7515 section 4.1.4 / RFC 8725 section 3.10: a kid that is no sane name is malformed."""
    token = issuer.mint(header={"kid": kid})
    assert_rejected(verifier, issuer, token, {"malformed", "token_too_large"})


@pytest.mark.parametrize("kid", [1, 0, True, False, ["k"], {"kid": "k"}, 1.5, None])
def test_kid_not_a_string(issuer: FakeIssuer, verifier: Verifier, kid: object) -> None:
    """RFC 7515 section 4.1.4: kid is a string; other JSON types are malformed (null included)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    token = issuer.sign(issuer.claims(), header=jdump(header))
    assert_rejected(verifier, issuer, token, "malformed")


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": True},
        {"crit": []},
        {"crit": "b64"},
        {"crit": ["http://example.com/unknown"]},
    ],
    ids=["crit-exp", "crit-b64-true", "crit-empty", "crit-string", "crit-unknown"],
)
def test_crit_is_refused(issuer: FakeIssuer, verifier: Verifier, extra: dict[str, object]) -> None:
    """RFC 7515 section 4.1.11: critical extensions bbverify does not implement make the token invalid."""
    assert_rejected(verifier, issuer, issuer.mint(header=extra), "unsupported_header")


@pytest.mark.parametrize("b64", [False, True, 0, "false"])
def test_b64_unencoded_payload_refused(issuer: FakeIssuer, verifier: Verifier, b64: object) -> None:
    """RFC 7797 section 3: 'b64' changes the signing input; bbverify refuses it in any form."""
    claims = issuer.claims()
    for crit in ([], ["b64"]):
        header = {"b64": b64, **({"crit": crit} if crit else {})}
        assert_rejected(verifier, issuer, issuer.sign(claims, header=header), "unsupported_header")
    # The RFC 7797 form: the signing input carries the payload bytes as they are.
    from bbverify.testing import b64url, sign_rs256

    head = b64url(jdump({"alg": "RS256", "kid": issuer.signing_key.kid, "b64": False, "crit": ["b64"]}))
    raw = jdump(claims).decode()
    sig = sign_rs256(issuer.signing_key.private_key, f"{head}.{raw}".encode())
    for payload in (raw, ""):
        assert_rejected(verifier, issuer, f"{head}.{payload}.{b64url(sig)}", "malformed")


@pytest.mark.parametrize("cty", ["JWT", "jwt", "application/jwt", "json"])
def test_nested_cty_refused(issuer: FakeIssuer, verifier: Verifier, cty: str) -> None:
    """RFC 7519 section 5.2: a nested JWT (cty: JWT) is not unwrapped; the outer token is refused."""
    inner = issuer.mint()
    outer_payload = inner.encode()
    assert_rejected(verifier, issuer, issuer.sign(outer_payload, header={"cty": cty}), "unsupported_header")
    assert_rejected(verifier, issuer, issuer.sign(issuer.claims(), header={"cty": cty}), "unsupported_header")


@pytest.mark.parametrize("extra", [{"enc": "A256GCM"}, {"zip": "DEF"}], ids=["enc", "zip"])
def test_jwe_parameters_refused(issuer: FakeIssuer, verifier: Verifier, extra: dict[str, object]) -> None:
    """RFC 7516 section 4.1: JWE parameters in a JWS header are refused, not interpreted."""
    assert_rejected(verifier, issuer, issuer.mint(header=extra), "unsupported_header")


@pytest.mark.parametrize("typ", ["JWE", "at+jwt", "", 1, ["JWT"]])
def test_unexpected_typ_refused(issuer: FakeIssuer, verifier: Verifier, typ: object) -> None:
    """RFC 8725 section 3.11: explicit typing; a typ other than JWT marks another kind of token."""
    assert_rejected(verifier, issuer, issuer.mint(header={"typ": typ}), "unsupported_header")


def test_unknown_kid_refetches_at_most_once_per_cooldown(issuer: FakeIssuer) -> None:
    """RFC 8725 section 3.10 (DoS): a flood of unknown kids costs one refetch per cooldown, not one each."""
    v = issuer.verifier(cooldown=3600)
    v.warm_up()
    before = issuer.jwks_requests
    for i in range(50):
        assert_rejected(v, issuer, issuer.mint(header={"kid": f"unknown-{i}"}), "unknown_key")
    assert issuer.jwks_requests == before
