"""JWK parsing and signature checking (bbverify.jwk)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bbverify.errors import InvalidToken
from bbverify.jwk import SUPPORTED_ALGORITHMS, UnusableKey, parse_jwk
from bbverify.testing import b64url, generate_rsa_key, sign_rs256

RS256 = frozenset({"RS256"})
ALL = SUPPORTED_ALGORITHMS


def _int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key(2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, **over: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": _int(nums.n)}
    jwk["e"] = _int(nums.e)
    jwk.update(over)
    return {k: v for k, v in jwk.items() if v is not None}


def ec_jwk(key: ec.EllipticCurvePrivateKey, **over: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    jwk: dict[str, Any] = {
        "kty": "EC",
        "kid": "e1",
        "crv": "P-256",
        "x": b64url(nums.x.to_bytes(size, "big")),
        "y": b64url(nums.y.to_bytes(size, "big")),
    }
    jwk.update(over)
    return {k: v for k, v in jwk.items() if v is not None}


def es256_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- parsing ---------------------------------------------------------------------------


def test_rsa_jwk_parses(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key), RS256)
    assert (key.kid, key.kty, key.alg, key.size_bytes) == ("r1", "RSA", "RS256", 256)
    assert key.accepts("RS256")


def test_minimal_rsa_jwk_without_optional_members(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key, kid=None, use=None, alg=None), RS256)
    assert key.kid is None and key.alg is None
    assert key.accepts("RS256")


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"use": "enc"}, "use"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"key_ops": "verify"}, "key_ops"),
        ({"alg": "RS384"}, "alg"),  # not in the allowlist
        ({"alg": "HS256"}, "alg"),
        ({"alg": 256}, "alg"),
        ({"kid": 7}, "kid"),
        ({"kty": "oct"}, "key type"),
        ({"kty": None}, "key type"),
        ({"n": None}, "'n'"),
        ({"n": "AQAB="}, "'n'"),
        ({"e": ""}, "'e'"),
        ({"e": _int(1)}, "exponent"),
        ({"e": _int(2)}, "exponent"),
        ({"e": _int(65536)}, "exponent"),
        ({"e": _int(2**40 + 1)}, "exponent"),
    ],
)
def test_rsa_jwk_filters(rsa_key: rsa.RSAPrivateKey, over: dict[str, Any], why: str) -> None:
    jwk = rsa_jwk(rsa_key)
    jwk.update(over)
    jwk = {k: v for k, v in jwk.items() if v is not None}
    with pytest.raises(UnusableKey, match=why):
        parse_jwk(jwk, RS256)


def test_key_ops_with_verify_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    assert parse_jwk(rsa_jwk(rsa_key, key_ops=["verify"]), RS256).kty == "RSA"


def test_small_rsa_keys_are_unusable() -> None:
    small = generate_rsa_key(1024)
    with pytest.raises(UnusableKey, match="1024 bits"):
        parse_jwk(rsa_jwk(small), RS256)


def test_even_modulus_is_unusable(rsa_key: rsa.RSAPrivateKey) -> None:
    n = rsa_key.public_key().public_numbers().n + 1
    with pytest.raises(UnusableKey, match="even"):
        parse_jwk(rsa_jwk(rsa_key, n=_int(n)), RS256)


@pytest.mark.parametrize("jwk", [None, [], "key", 1])
def test_non_object_jwk_is_unusable(jwk: object) -> None:
    with pytest.raises(UnusableKey):
        parse_jwk(jwk, RS256)


def test_ec_key_unusable_when_only_rs256_is_allowed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(UnusableKey, match="no allowed algorithm"):
        parse_jwk(ec_jwk(ec_key), RS256)


def test_ec_key_parses_when_es256_allowed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    key = parse_jwk(ec_jwk(ec_key), frozenset({"ES256"}))
    assert (key.kty, key.curve, key.size_bytes) == ("EC", "P-256", 32)
    assert key.accepts("ES256")
    assert not key.accepts("ES384")
    assert not key.accepts("RS256")


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"alg": "ES384"}, "does not fit"),
        ({"crv": "P-384"}, "rejected|no allowed"),
        ({"crv": "secp256k1"}, "no allowed"),
        ({"x": None}, "'x'"),
        ({"y": b64url(b"\x01" * 32)}, "rejected"),  # not on the curve
    ],
)
def test_ec_jwk_filters(ec_key: ec.EllipticCurvePrivateKey, over: dict[str, Any], why: str) -> None:
    jwk = ec_jwk(ec_key)
    jwk.update(over)
    jwk = {k: v for k, v in jwk.items() if v is not None}
    with pytest.raises(UnusableKey, match=why):
        parse_jwk(jwk, ALL)


def test_rsa_key_never_accepts_ec_or_hmac(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key, alg=None), ALL)
    assert key.accepts("RS256") and key.accepts("PS512")
    for alg in ("ES256", "HS256", "none", "RS1"):
        assert not key.accepts(alg)


def test_jwk_alg_pins_the_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key, alg="RS256"), ALL)
    assert key.accepts("RS256")
    assert not key.accepts("RS384")
    assert not key.accepts("PS256")


# -- signatures ----------------------------------------------------------------------------


def test_rs256_signature_verifies(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key), RS256)
    key.verify("RS256", sign_rs256(rsa_key, b"a.b"), b"a.b")


def test_rs256_signature_over_other_input_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key), RS256)
    with pytest.raises(InvalidToken) as exc:
        key.verify("RS256", sign_rs256(rsa_key, b"a.b"), b"a.c")
    assert exc.value.code == "bad_signature"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],  # short
        lambda s: b"\x00" + s,  # long, same integer
        lambda s: s + b"\x00",
        lambda s: b"",
        lambda s: b"\x00" * len(s),
        lambda s: b"\xff" * len(s),  # >= n
        lambda s: bytes([s[0] ^ 1]) + s[1:],
    ],
)
def test_mangled_rsa_signatures_fail(rsa_key: rsa.RSAPrivateKey, mangle: Any) -> None:
    key = parse_jwk(rsa_jwk(rsa_key), RS256)
    with pytest.raises(InvalidToken) as exc:
        key.verify("RS256", mangle(sign_rs256(rsa_key, b"a.b")), b"a.b")
    assert exc.value.code == "bad_signature"


def test_rs256_signature_does_not_pass_as_ps256(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key, alg=None), ALL)
    with pytest.raises(InvalidToken):
        key.verify("PS256", sign_rs256(rsa_key, b"a.b"), b"a.b")


def test_ps256_signature_verifies(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_jwk(rsa_jwk(rsa_key, alg=None), ALL)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    key.verify("PS256", rsa_key.sign(b"a.b", pss, hashes.SHA256()), b"a.b")


def test_es256_signature_verifies_in_jose_form(ec_key: ec.EllipticCurvePrivateKey) -> None:
    key = parse_jwk(ec_jwk(ec_key), frozenset({"ES256"}))
    sig = es256_sign(ec_key, b"a.b")
    key.verify("ES256", sig, b"a.b")
    with pytest.raises(InvalidToken) as exc:
        key.verify("ES256", sig + b"\x00", b"a.b")
    assert exc.value.code == "bad_signature"
    # A DER signature is not the JOSE r||s form.
    der = ec_key.sign(b"a.b", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidToken):
        key.verify("ES256", der, b"a.b")


def test_es256_zero_signature_fails(ec_key: ec.EllipticCurvePrivateKey) -> None:
    key = parse_jwk(ec_jwk(ec_key), frozenset({"ES256"}))
    with pytest.raises(InvalidToken) as exc:
        key.verify("ES256", b"\x00" * 64, b"a.b")
    assert exc.value.code == "bad_signature"


def test_roca_detection_does_not_flag_fresh_keys() -> None:
    """CVE-2017-15361 fingerprint: keys from a sound generator are not flagged (false positives ~1e-25).

    The Wycheproof ROCA key itself is refused in tests/test_wycheproof.py.
    """
    from bbverify.testing import SigningKey, generate_rsa_key

    for i in range(3):
        jwk = SigningKey(kid=f"k{i}", private_key=generate_rsa_key()).public_jwk()
        assert parse_jwk(jwk, frozenset({"RS256"})).kid == f"k{i}"
