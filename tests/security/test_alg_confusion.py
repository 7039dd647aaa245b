"""Algorithm attacks: ``none``, HMAC with the public key, algorithms outside the allowlist."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from bbverify import ConfigurationError, Verifier
from bbverify.testing import FakeIssuer, b64url

from ._support import assert_rejected, compact, jdump

NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", "none ", " none", "none\t", "NoNe\n", "none\u0000"]


def _header(issuer: FakeIssuer, alg: str) -> dict[str, str]:
    return {"alg": alg, "kid": issuer.signing_key.kid, "typ": "JWT"}


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
@pytest.mark.parametrize("signature", [b"", b"\x00", b"x"], ids=["empty", "zero", "junk"])
def test_alg_none_every_spelling(issuer: FakeIssuer, verifier: Verifier, alg: str, signature: bytes) -> None:
    """CVE-2015-9235 / RFC 8725 section 3.1: 'none' in any spelling is an unsigned token; refuse it."""
    header = jdump(_header(issuer, alg))
    payload = jdump(issuer.claims())
    token = compact(header, payload, signature)
    code = "malformed" if not signature else "unsupported_algorithm"  # an empty segment fails the split
    assert_rejected(verifier, issuer, token, code)


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
def test_alg_none_with_genuine_signature(issuer: FakeIssuer, verifier: Verifier, alg: str) -> None:
    """RFC 8725 section 3.1: even correctly signed bytes do not make 'none' acceptable."""
    token = issuer.mint(header={"alg": alg})
    assert_rejected(verifier, issuer, token, "unsupported_algorithm")


def _public_key_encodings(issuer: FakeIssuer) -> dict[str, bytes]:
    public = issuer.signing_key.private_key.public_key()
    numbers = public.public_numbers()
    n_bytes = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    jwk = issuer.signing_key.public_jwk()
    return {
        "pem-spki": issuer.signing_key.public_pem(),
        "pem-spki-stripped": issuer.signing_key.public_pem().strip(),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der-spki": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der-pkcs1": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
        "ssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": jdump(jwk),
        "jwks-json": json.dumps({"keys": [jwk]}).encode(),
        "n-bytes": n_bytes,
        "n-b64url": jwk["n"].encode(),
    }


ENCODINGS = [
    "pem-spki",
    "pem-spki-stripped",
    "pem-pkcs1",
    "der-spki",
    "der-pkcs1",
    "ssh",
    "jwk-json",
    "jwk-json-compact",
    "jwks-json",
    "n-bytes",
    "n-b64url",
]
HMACS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("alg", sorted(HMACS))
def test_hmac_signed_with_public_key(issuer: FakeIssuer, verifier: Verifier, alg: str, encoding: str) -> None:
    """CVE-2015-9235 / CVE-2016-10555 / CVE-2022-29217: HS* keyed with the RSA public key is refused."""
    secret = _public_key_encodings(issuer)[encoding]
    header = b64url(jdump(_header(issuer, alg)))
    payload = b64url(jdump(issuer.claims()))
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(secret, signing_input, HMACS[alg]).digest()
    assert_rejected(verifier, issuer, f"{header}.{payload}.{b64url(mac)}", "unsupported_algorithm")


@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "HS256"], ["none"], ["RS256", "none"], []])
def test_verifier_cannot_be_configured_with_hmac_or_none(issuer: FakeIssuer, algorithms: list[str]) -> None:
    """RFC 8725 section 3.1: HS* and none are configuration errors, found at start-up."""
    with pytest.raises(ConfigurationError):
        issuer.verifier(algorithms=algorithms)


def test_ps256_signed_with_issuer_key_refused_by_default(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 8725 section 3.1: a real signature under an algorithm outside the allowlist (PS256) is refused."""
    header = b64url(jdump(_header(issuer, "PS256")))
    payload = b64url(jdump(issuer.claims()))
    signing_input = f"{header}.{payload}".encode()
    sig = issuer.signing_key.private_key.sign(
        signing_input,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert_rejected(verifier, issuer, f"{header}.{payload}.{b64url(sig)}", "unsupported_algorithm")


def test_ps256_allowed_but_key_bound_to_rs256(issuer: FakeIssuer) -> None:
    """RFC 7517 section 4.4: a JWK with alg RS256 never checks a PS256 signature, even if PS256 is allowed."""
    v = issuer.verifier(algorithms=["RS256", "PS256"])
    header = b64url(jdump(_header(issuer, "PS256")))
    payload = b64url(jdump(issuer.claims()))
    signing_input = f"{header}.{payload}".encode()
    sig = issuer.signing_key.private_key.sign(
        signing_input, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
    )
    assert_rejected(v, issuer, f"{header}.{payload}.{b64url(sig)}", "unknown_key")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS384", "RS512", "PS384", "PS512", "EdDSA"])
def test_other_algorithms_refused_by_default(issuer: FakeIssuer, verifier: Verifier, alg: str) -> None:
    """RFC 8725 section 3.1: only RS256 is accepted by default; ES*/PS*/EdDSA tokens are refused."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    header = b64url(jdump(_header(issuer, alg)))
    payload = b64url(jdump(issuer.claims()))
    der = attacker.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    assert_rejected(verifier, issuer, f"{header}.{payload}.{b64url(der)}", "unsupported_algorithm")


@pytest.mark.parametrize("alg", [None, 256, ["RS256"], {"RS256": True}, True, ""])
def test_alg_missing_or_not_a_string(issuer: FakeIssuer, verifier: Verifier, alg: object) -> None:
    """RFC 7515 section 4.1.1: 'alg' must be present and a string; the real signature does not help."""
    header = {"kid": issuer.signing_key.kid, "typ": "JWT"}
    if alg is not None:
        header["alg"] = alg  # type: ignore[assignment]
    token = issuer.sign(issuer.claims(), header=jdump(header))
    code = "unsupported_algorithm" if alg == "" else "malformed"
    assert_rejected(verifier, issuer, token, code)
