"""JSON-level attacks on header and payload: duplicates, non-finite and huge numbers, nesting."""

from __future__ import annotations

import json

import pytest

from bbverify import Verifier
from bbverify.testing import FakeIssuer

from ._support import assert_rejected, jdump


def _header_bytes(issuer: FakeIssuer) -> bytes:
    return jdump({"alg": "RS256", "kid": issuer.signing_key.kid, "typ": "JWT"})


def _with_member(document: bytes, raw_member: str) -> bytes:
    """Append ``raw_member`` (already JSON text) as the object's last member."""
    assert document.endswith(b"}")
    return document[:-1] + b"," + raw_member.encode() + b"}"


@pytest.mark.parametrize(
    "member",
    ['"alg":"none"', '"alg":"HS256"', '"alg":"RS256"', '"kid":"other"', '"typ":"JWT"'],
)
def test_duplicate_header_members(issuer: FakeIssuer, verifier: Verifier, member: str) -> None:
    """RFC 7515 section 5.2 step 4 / RFC 8259 section 4: duplicate header names are refused.

    Parsers disagree on which duplicate wins (CVE-2017-12973 class); the token
    is signed with the issuer's key so only the duplicate check can refuse it.
    """
    header = _with_member(_header_bytes(issuer), member)
    assert_rejected(verifier, issuer, issuer.sign(issuer.claims(), header=header), "malformed")


@pytest.mark.parametrize("name", ["aud", "exp", "iss", "sub", "repositoryUuid", "workspaceUuid", "iat"])
def test_duplicate_payload_members(issuer: FakeIssuer, verifier: Verifier, name: str) -> None:
    """RFC 7519 section 4 / RFC 8259 section 4: a claim name appearing twice makes the JWT invalid."""
    claims = issuer.claims()
    other = {"aud": "ari:cloud:bitbucket::workspace/other", "exp": 99999999999, "iat": 0}.get(name, "{x}")
    # Both orders: the legitimate value first or last.
    for payload in (
        _with_member(jdump(claims), f"{json.dumps(name)}:{json.dumps(other)}"),
        b'{"' + name.encode() + b'":' + jdump(other) + b"," + jdump(claims)[1:],
        _with_member(jdump(claims), f"{json.dumps(name)}:{json.dumps(claims[name])}"),
    ):
        assert_rejected(verifier, issuer, issuer.sign(payload), "malformed")


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E999", str(10**400), "1" + "0" * 5000]
)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_non_finite_and_huge_numbers_in_payload(
    issuer: FakeIssuer, verifier: Verifier, literal: str, claim: str
) -> None:
    """RFC 8259 section 6: NaN/Infinity are not JSON, 1e400 overflows, 10**400 is no NumericDate."""
    claims = issuer.claims()
    claims.pop(claim, None)
    payload = _with_member(jdump(claims), f'"{claim}":{literal}')
    assert_rejected(verifier, issuer, issuer.sign(payload), {"malformed", "token_too_large"})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400", str(10**400)])
def test_non_finite_numbers_in_header(issuer: FakeIssuer, verifier: Verifier, literal: str) -> None:
    """RFC 8259 section 6: the header parser refuses non-JSON numbers before anything else."""
    header = _with_member(_header_bytes(issuer), f'"x":{literal}')
    code = "malformed"
    if literal.isdigit():
        # A huge integer is valid JSON: the unknown member is ignored, so this token verifies.
        assert verifier.verify(issuer.sign(issuer.claims(), header=header)).subject
        header = _with_member(_header_bytes(issuer).replace(b'"alg":"RS256",', b""), f'"alg":{literal}')
    assert_rejected(verifier, issuer, issuer.sign(issuer.claims(), header=header), code)


@pytest.mark.parametrize("depth", [33, 100, 3000])
@pytest.mark.parametrize("bracket", ["[]", "{}"])
def test_deeply_nested_payload(issuer: FakeIssuer, verifier: Verifier, depth: int, bracket: str) -> None:
    """RFC 8725 section 3.2 (DoS) / CVE-2020-10735 class: deep nesting is refused, never a RecursionError."""
    opening, closing = ('{"a":' * depth, "}" * depth) if bracket == "{}" else ("[" * depth, "]" * depth)
    payload = _with_member(jdump(issuer.claims()), f'"deep":{opening}1{closing}')
    assert_rejected(verifier, issuer, issuer.sign(payload), {"malformed", "token_too_large"})


@pytest.mark.parametrize("depth", [1000, 3000, 100_000])
def test_deeply_nested_header(issuer: FakeIssuer, verifier: Verifier, depth: int) -> None:
    """RFC 8725 section 3.2 (DoS): a header nested too deeply is refused before the key lookup."""
    header = _with_member(_header_bytes(issuer), '"x":' + "[" * depth + "]" * depth)
    assert_rejected(
        verifier, issuer, issuer.sign(issuer.claims(), header=header), {"malformed", "token_too_large"}
    )


@pytest.mark.parametrize("depth", [500, 1000, 2000])
def test_deeply_nested_header_within_size_cap(issuer: FakeIssuer, verifier: Verifier, depth: int) -> None:
    """RFC 8725 section 3.2: nesting under the size cap is parsed or refused as malformed, nothing else.

    Where the interpreter's recursion limit lies decides which (on 3.11 depth
    1000 is refused); an unknown header member is otherwise ignored (RFC 7515
    section 4), so a parsed header lets the genuine token verify.
    """
    kid = issuer.signing_key.kid.encode()
    header = b'{"x":' + b"[" * depth + b"]" * depth + b',"alg":"RS256","kid":"' + kid + b'"}'
    token = issuer.sign(issuer.claims(), header=header)
    assert len(token) <= 8192
    try:
        parsed = True
        json.loads(header)
    except RecursionError:
        parsed = False
    if parsed:
        assert verifier.verify(token).subject
    else:
        assert_rejected(verifier, issuer, token, "malformed")


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'"a string"',
        b"1",
        b"null",
        b"true",
        b"",
        b"\xef\xbb\xbf{}",
        b"{",
        b"{}extra",
        b'{"a":1}{"b":2}',
    ],
    ids=["array", "string", "number", "null", "true", "empty", "bom", "truncated", "trailing", "two-objects"],
)
def test_payload_not_a_json_object(issuer: FakeIssuer, verifier: Verifier, payload: bytes) -> None:
    """RFC 7519 section 7.2 step 10: the payload must be a JSON object (genuinely signed or not)."""
    assert_rejected(verifier, issuer, issuer.sign(payload), "malformed")


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe{}", b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}'],
    ids=["utf16-bom", "surrogate", "overlong"],
)
def test_payload_invalid_utf8(issuer: FakeIssuer, verifier: Verifier, payload: bytes) -> None:
    """RFC 8259 section 8.1: JSON text exchanged between systems is UTF-8; invalid UTF-8 is refused."""
    assert_rejected(verifier, issuer, issuer.sign(payload), "malformed")


@pytest.mark.parametrize("digits", [4301, 20_000])
def test_integers_beyond_the_parser_digit_limit(issuer: FakeIssuer, digits: int) -> None:
    """CVE-2020-10735 (quadratic int parsing): over-long integers are malformed, even in a signed token.

    The size cap is raised to 64 KiB so the parser, not the cap, meets the number.
    """
    v = issuer.verifier(max_token_bytes=65536)
    claims = issuer.claims()
    claims.pop("exp")
    payload = _with_member(jdump(claims), '"exp":' + "9" * digits)
    assert_rejected(v, issuer, issuer.sign(payload), "malformed")
