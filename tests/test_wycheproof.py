"""Wycheproof JWS and JWK vectors, run through bbverify's own parsing and key handling.

The vectors are generic JWS (payloads like ``foo``, not Bitbucket claims), so
they are checked at the layer that handles them: ``token.split`` ->
``token.parse_header`` -> a ``StaticKeySet`` built from the vector's key ->
``VerifyingKey.verify`` -> strict decoding of the payload segment.

* Every vector marked invalid must be rejected (an ``InvalidToken`` somewhere
  in the chain, or no usable key at all).
* With the default allowlist (RS256 only) nothing but a valid RS256 vector may
  ever be accepted: no HS*, ES*, PS* or ``none``.
* Vectors marked valid are accepted, except where bbverify refuses on purpose;
  each such refusal is asserted and counted by reason (see ``BY_DESIGN``).

Vectors: tests/vectors/wycheproof/ (Apache-2.0, see LICENSE there).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbverify.errors import ConfigurationError, InvalidToken
from bbverify.jwk import SUPPORTED_ALGORITHMS
from bbverify.keys import StaticKeySet
from bbverify.token import b64url_decode, parse_header, split

VECTORS = Path(__file__).parent / "vectors" / "wycheproof"
JWS_FILE = VECTORS / "json_web_signature_test.json"
JWK_FILE = VECTORS / "json_web_key_test.json"

DEFAULT = frozenset({"RS256"})
EVERY = SUPPORTED_ALGORITHMS

# Reasons a vector marked valid is nonetheless refused by bbverify, on purpose.
HMAC = "HMAC is never accepted (only asymmetric keys exist in bbverify)"
EMPTY_PAYLOAD = "empty payload segment (a JWT always has claims)"
KEY_ALG = "the key's 'alg' member names another algorithm than the token's"


def load(path: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    doc = json.loads(path.read_text())
    return [
        (f"{group['comment']}-{test['tcId']}-{test['comment']}", group, test)
        for group in doc["testGroups"]
        for test in group["tests"]
    ]


JWS_CASES = load(JWS_FILE)
JWK_CASES = load(JWK_FILE)


def declared_alg(jws: str) -> str | None:
    """The header 'alg', read leniently (only to classify a vector, never to verify)."""
    try:
        header = json.loads(b64url_decode(jws.split(".")[0]))
    except Exception:
        return None
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else None


def group_jwks(group: dict[str, Any]) -> dict[str, Any]:
    """The vector's verification keys as a JWKS (public part when given)."""
    material = group.get("public") or group.get("private") or {}
    return material if "keys" in material else {"keys": [material]}


def check(jws: object, jwks: dict[str, Any], allowed: frozenset[str]) -> None:
    """Accept or raise InvalidToken, the way Verifier does before the claims."""
    parsed = split(jws)
    header = parse_header(parsed.header_segment, allowed)
    try:
        keys = StaticKeySet(jwks, allowed_algorithms=allowed)
    except ConfigurationError:
        raise InvalidToken("no usable key in the vector's key set", code="unknown_key") from None
    key = keys.get_key(header.kid, header.alg)
    key.verify(header.alg, parsed.signature, parsed.signing_input)
    b64url_decode(parsed.payload_segment, "payload")


def by_design(jws: str, jwks: dict[str, Any]) -> str | None:
    alg = declared_alg(jws) or ""
    keys = [k for k in jwks["keys"] if isinstance(k, dict)]
    if alg.upper().startswith("HS") or (keys and all(k.get("kty") == "oct" for k in keys)):
        return HMAC
    if isinstance(jws, str) and jws.count(".") == 2 and jws.split(".")[1] == "":
        return EMPTY_PAYLOAD
    key_algs = {k.get("alg") for k in keys}
    if key_algs and None not in key_algs and alg not in key_algs:
        return KEY_ALG
    return None


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    # Shown with `pytest -s`; the figures are in the report too.
    print("\nwycheproof:", dict(sorted(counts.items())))


def test_vector_files_are_the_expected_ones() -> None:
    assert len(JWS_CASES) == json.loads(JWS_FILE.read_text())["numberOfTests"] == 401
    assert len(JWK_CASES) == json.loads(JWK_FILE.read_text())["numberOfTests"] == 26
    assert (VECTORS / "LICENSE").is_file()


@pytest.mark.parametrize(("name", "group", "test"), JWS_CASES, ids=[c[0] for c in JWS_CASES])
def test_jws_vector(name: str, group: dict[str, Any], test: dict[str, Any], tally: Counter[str]) -> None:
    jws, jwks = test["jws"], group_jwks(group)

    # 1. A default (RS256-only) verifier accepts nothing but valid RS256.
    try:
        check(jws, jwks, DEFAULT)
    except InvalidToken:
        default_accepted = False
    else:
        default_accepted = True
    if default_accepted:
        assert test["result"] == "valid", f"{name}: invalid vector accepted"
        assert declared_alg(jws) == "RS256", f"{name}: non-RS256 accepted by default"

    # 2. With every asymmetric algorithm allowed, invalid is rejected and valid
    #    is accepted unless refused on purpose.
    if test["result"] == "invalid":
        with pytest.raises(InvalidToken):
            check(jws, jwks, EVERY)
        tally["invalid rejected"] += 1
        return
    reason = by_design(jws, jwks)
    if reason is None:
        check(jws, jwks, EVERY)
        tally[f"valid accepted ({declared_alg(jws)})"] += 1
    else:
        with pytest.raises(InvalidToken):
            check(jws, jwks, EVERY)
        tally[f"valid refused by design: {reason}"] += 1


@pytest.mark.parametrize(("name", "group", "test"), JWK_CASES, ids=[c[0] for c in JWK_CASES])
def test_jwk_vector(name: str, group: dict[str, Any], test: dict[str, Any], tally: Counter[str]) -> None:
    jws, jwks = test["jws"], group_jwks(group)
    if test["result"] == "invalid":
        with pytest.raises(InvalidToken):
            check(jws, jwks, EVERY)
        tally["jwk invalid rejected"] += 1
        return
    reason = by_design(jws, jwks)
    if reason is None:
        check(jws, jwks, EVERY)
        tally["jwk valid accepted"] += 1
    else:
        with pytest.raises(InvalidToken):
            check(jws, jwks, EVERY)
        tally[f"jwk valid refused by design: {reason}"] += 1


def test_default_allowlist_accepts_the_valid_rs256_vectors() -> None:
    # The RS256-only path is not vacuous: the plain valid RS256 vectors pass it.
    accepted = 0
    for _name, group, test in JWS_CASES:
        jws, jwks = test["jws"], group_jwks(group)
        if test["result"] == "valid" and declared_alg(jws) == "RS256" and by_design(jws, jwks) is None:
            check(jws, jwks, DEFAULT)
            accepted += 1
    assert accepted >= 5


# -- raw RSASSA-PKCS1-v1_5 / SHA-256 vectors against VerifyingKey (the RS256 primitive) -------------

RSA_FILE = VECTORS / "rsa_signature_2048_sha256_test.json"
RSA_CASES = [
    (f"rsa2048-{test['tcId']}-{test['comment'] or 'plain'}", group, test)
    for group in json.loads(RSA_FILE.read_text())["testGroups"]
    for test in group["tests"]
]


@pytest.mark.parametrize(("name", "group", "test"), RSA_CASES, ids=[c[0] for c in RSA_CASES])
def test_rsa_pkcs1_sha256_vector(name: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    from bbverify.jwk import parse_jwk

    key = parse_jwk(group["keyJwk"], DEFAULT)
    assert key.accepts("RS256")
    msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    if test["result"] == "valid":
        key.verify("RS256", sig, msg)
    else:
        # 'acceptable' (legacy encodings) is refused too: the strict reading is the safe one.
        with pytest.raises(InvalidToken) as exc:
            key.verify("RS256", sig, msg)
        assert exc.value.code == "bad_signature"
