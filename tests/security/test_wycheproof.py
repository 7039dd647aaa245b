"""Project Wycheproof JWS and JWK vectors (tests/vectors/wycheproof/, Apache-2.0, see its LICENSE).

Wycheproof payloads are not Bitbucket claims, so these run the JWS layer of
``Verifier.verify`` directly: split, header and algorithm allowlist, key
selection from the vector's key set (through ``parse_jwk``), signature.
Every asymmetric algorithm bbverify supports is allowed here, to give the
vectors the widest surface; the default verifier allows only RS256.

Where bbverify is stricter than a vector's "valid" on purpose, the reason is
listed in ``STRICTER``; every "invalid" vector must be refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bbverify import ConfigurationError, StaticKeySet, VerificationError
from bbverify.jwk import SUPPORTED_ALGORITHMS, UnusableKey, parse_jwk
from bbverify.token import parse_header, split

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "wycheproof"
ALL_ALGORITHMS = frozenset(SUPPORTED_ALGORITHMS)

# Vectors Wycheproof calls valid that bbverify refuses by design.
STRICTER = {
    "hmac": "HS* is never accepted: a resource server holds only public keys (RFC 8725 section 3.1)",
    "empty-payload": "an empty payload segment is malformed (Bitbucket tokens always carry claims)",
    "key-alg-binding": "a JWK's 'alg' binds the key to that algorithm only (RFC 7517 section 4.4)",
    "non-jwa-alg": "'ES521' is not a JWA algorithm name (RFC 7518 section 3.1), so the key is unusable",
    "lax-base64": "characters outside base64url are refused, never skipped (RFC 7515 section 2)",
}


def _load(name: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    data = json.loads((VECTORS / name).read_text())
    cases = []
    for group in data["testGroups"]:
        for test in group["tests"]:
            cases.append((f"{name.split('_test')[0]}-{test['tcId']}-{test['comment']}", group, test))
    return cases


def _keyset(group: dict[str, Any]) -> dict[str, Any]:
    keys = group.get("public") or group.get("private") or {}
    return keys if "keys" in keys else {"keys": [keys]}


def jws_accepts(jws: object, keyset: dict[str, Any]) -> bool:
    """The JWS layer of ``Verifier.verify`` with every supported algorithm allowed."""
    try:
        # The JSON serialization arrives as a dict: the splitter refuses it.
        parsed = split(jws)
        header = parse_header(parsed.header_segment, ALL_ALGORITHMS)
        key = StaticKeySet(keyset, allowed_algorithms=ALL_ALGORITHMS).get_key(header.kid, header.alg)
        key.verify(header.alg, parsed.signature, parsed.signing_input)
    except (VerificationError, ConfigurationError):
        return False
    return True


def _stricter_reason(group: dict[str, Any], test: dict[str, Any]) -> str | None:
    jws = test["jws"]
    header = json.loads(_b64(jws.split(".")[0])) if isinstance(jws, str) and jws.count(".") == 2 else {}
    keys = _keyset(group)["keys"]
    if str(header.get("alg", "")).startswith("HS") or any(k.get("kty") == "oct" for k in keys):
        return "hmac"
    if isinstance(jws, str) and jws.split(".")[1:2] == [""]:
        return "empty-payload"
    if any(k.get("alg") == "ES521" for k in keys):
        return "non-jwa-alg"
    if any(k.get("alg") not in (None, header.get("alg")) for k in keys):
        return "key-alg-binding"
    return None


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


SIGNATURE_CASES = _load("json_web_signature_test.json")
KEY_CASES = _load("json_web_key_test.json")


@pytest.mark.parametrize(("case", "group", "test"), SIGNATURE_CASES, ids=[c[0] for c in SIGNATURE_CASES])
def test_wycheproof_jws(case: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    """Wycheproof JWS vectors: RFC 7515 / RFC 7518 signatures, base64url strictness, alg none, key misuse."""
    accepted = jws_accepts(test["jws"], _keyset(group))
    if test["result"] == "invalid":
        assert not accepted, f"{case} was accepted"
        return
    reason = _stricter_reason(group, test)
    if reason is None and test["comment"].startswith("InvalidCharacterInserted"):
        reason = "lax-base64"
    if reason is not None:
        assert reason in STRICTER
        assert not accepted, f"{case}: expected the stricter refusal ({STRICTER[reason]})"
    else:
        assert accepted, f"{case} (valid) was refused"


@pytest.mark.parametrize(("case", "group", "test"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_wycheproof_jwk(case: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    """Wycheproof JWK vectors: weak, mismatched, wrong-use and ROCA keys (CVE-2017-15361) are never usable."""
    keyset = _keyset(group)
    accepted = jws_accepts(test["jws"], keyset)
    if test["result"] == "invalid":
        assert not accepted, f"{case} was accepted"
        # Invalid key groups: the JWK itself must be unusable (not just the token).
        if group["comment"] in {
            "jws_rsa_roca_key",
            "keysize_too_small",
            "exponentOne",
            "wrong_algorithm",
            "invalid_algorithm",
            "invalid_use",
            "invalid_point",
            "wrong_curve",
            "wrong_kty",
            "invalid_aes_gcm_key",
            "invalid_aes_kw_key",
        }:
            for jwk in keyset["keys"]:
                with pytest.raises(UnusableKey):
                    parse_jwk(jwk, ALL_ALGORITHMS)
        return
    reason = _stricter_reason(group, test)
    if reason is not None:
        assert not accepted
    else:
        assert accepted, f"{case} (valid) was refused"


def test_roca_detection_does_not_flag_fresh_keys() -> None:
    """CVE-2017-15361 fingerprint: keys from a sound generator are not flagged (false positives ~1e-25)."""
    from bbverify.testing import SigningKey, generate_rsa_key

    for i in range(3):
        jwk = SigningKey(kid=f"k{i}", private_key=generate_rsa_key()).public_jwk()
        assert parse_jwk(jwk, frozenset({"RS256"})).kid == f"k{i}"


def test_every_vector_file_was_used() -> None:
    """Guard against an empty or missing vector directory silently passing the suite."""
    assert len(SIGNATURE_CASES) == 401 and len(KEY_CASES) == 26
    assert (VECTORS / "LICENSE").is_file()
