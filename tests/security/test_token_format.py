"""Compact-serialization attacks: segments, base64url alphabet and padding, signatures, size, types."""

from __future__ import annotations

import json

import pytest

from bbverify import Verifier
from bbverify.testing import FakeIssuer, b64url
from bbverify.token import DEFAULT_MAX_TOKEN_BYTES

from ._support import assert_rejected


@pytest.fixture
def token(issuer: FakeIssuer) -> str:
    return issuer.mint()


@pytest.mark.parametrize("count", [1, 2, 4, 5, 6])
def test_wrong_segment_count(issuer: FakeIssuer, verifier: Verifier, token: str, count: int) -> None:
    """RFC 7515 section 7.1: a compact JWS has three segments (five is a JWE, RFC 7516 section 7.1)."""
    h, p, s = token.split(".")
    parts = {1: [h], 2: [h, p], 4: [h, p, s, s], 5: [h, "", p, s, s], 6: [h, p, s, h, p, s]}[count]
    assert_rejected(verifier, issuer, ".".join(parts), "malformed")


@pytest.mark.parametrize("variant", ["trailing-dot", "leading-dot", "double-dot", "empty-header", "dots"])
def test_empty_segments(issuer: FakeIssuer, verifier: Verifier, token: str, variant: str) -> None:
    """RFC 7515 section 7.1: empty or extra segments are not a JWS."""
    h, p, s = token.split(".")
    bad = {
        "trailing-dot": token + ".",
        "leading-dot": "." + token,
        "double-dot": f"{h}..{p}.{s}",
        "empty-header": f".{p}.{s}",
        "dots": "..",
    }[variant]
    assert_rejected(verifier, issuer, bad, "malformed")


def test_json_serialization_refused(issuer: FakeIssuer, verifier: Verifier, token: str) -> None:
    """RFC 7515 section 7.2: only the compact serialization is accepted, not the JSON one."""
    h, p, s = token.split(".")
    general = json.dumps({"payload": p, "signatures": [{"protected": h, "signature": s}]})
    flattened = json.dumps({"payload": p, "protected": h, "signature": s})
    for bad in (general, flattened, general.encode()):
        assert_rejected(verifier, issuer, bad, "malformed")


@pytest.mark.parametrize("segment", [0, 1, 2])
@pytest.mark.parametrize("pad", ["=", "==", "==="])
def test_padding_refused(issuer: FakeIssuer, verifier: Verifier, token: str, segment: int, pad: str) -> None:
    """RFC 7515 section 2 (Base64url Encoding): padding characters are omitted; '=' is refused."""
    parts = token.split(".")
    parts[segment] += pad
    assert_rejected(verifier, issuer, ".".join(parts), "malformed")


def _mint_until(issuer: FakeIssuer, segment: int, ok: object) -> list[str]:
    """Mint tokens with varying filler until segment ``segment`` satisfies ``ok``."""
    for i in range(200):
        filler = "?~>" * (i % 7) + "x" * (i // 7)
        parts = issuer.mint(header={"x": filler}, extra={"x": filler}).split(".")
        if ok(parts[segment]):  # type: ignore[operator]
            return parts
    raise AssertionError("no suitable token minted")


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_standard_alphabet_refused(issuer: FakeIssuer, verifier: Verifier, segment: int) -> None:
    """RFC 4648 section 5 / RFC 7515 section 2: '+' and '/' are not base64url."""
    parts = _mint_until(issuer, segment, lambda seg: "-" in seg or "_" in seg)
    parts[segment] = parts[segment].replace("-", "+").replace("_", "/")
    # The signature covers the encoded payload, so a re-spelt payload may also fail as a bad signature.
    codes = {"malformed", "bad_signature"} if segment == 1 else "malformed"
    assert_rejected(verifier, issuer, ".".join(parts), codes)


def _non_canonical(segment: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(segment[-1])
    # Set a spare low bit of the last character: lax decoders give the same bytes.
    return segment[:-1] + alphabet[i | 1]


# A 256-byte RS256 signature always encodes to 342 characters (remainder 2).
@pytest.mark.parametrize(("segment", "rem"), [(0, 2), (0, 3), (1, 2), (1, 3), (2, 2)])
def test_non_canonical_last_character(issuer: FakeIssuer, verifier: Verifier, segment: int, rem: int) -> None:
    """RFC 4648 section 3.5: non-zero spare bits make the encoding non-canonical (token malleability).

    The payload is checked after the signature (which covers its encoded form),
    so there a re-spelt last character fails as a bad signature.
    """
    parts = _mint_until(issuer, segment, lambda seg: len(seg) % 4 == rem)
    parts[segment] = _non_canonical(parts[segment])
    codes = {"malformed", "bad_signature"} if segment == 1 else "malformed"
    assert_rejected(verifier, issuer, ".".join(parts), codes)


@pytest.mark.parametrize("ws", [" ", "\n", "\r\n", "\t", "\u00a0", "\u200b"])
@pytest.mark.parametrize("where", ["start", "end", "header", "payload", "signature"])
def test_whitespace_inside_or_around(
    issuer: FakeIssuer, verifier: Verifier, token: str, ws: str, where: str
) -> None:
    """RFC 7515 section 7.1: no whitespace is allowed anywhere in a compact JWS."""
    h, p, s = token.split(".")
    mid = lambda seg: seg[: len(seg) // 2] + ws + seg[len(seg) // 2 :]  # noqa: E731
    bad = {
        "start": ws + token,
        "end": token + ws,
        "header": f"{mid(h)}.{p}.{s}",
        "payload": f"{h}.{mid(p)}.{s}",
        "signature": f"{h}.{p}.{mid(s)}",
    }[where]
    assert_rejected(verifier, issuer, bad, "malformed")


def test_bearer_prefix_is_not_part_of_the_token(issuer: FakeIssuer, verifier: Verifier, token: str) -> None:
    """RFC 6750 section 2.1: the 'Bearer ' scheme belongs to the header, not to the token."""
    assert_rejected(verifier, issuer, "Bearer " + token, "malformed")


@pytest.mark.parametrize(
    "mutate",
    [
        "stripped",
        "truncated-1",
        "truncated-half",
        "zeros",
        "ones",
        "longer-1",
        "longer-zero",
        "doubled",
        "other",
    ],
)
def test_signature_tampering(issuer: FakeIssuer, verifier: Verifier, token: str, mutate: str) -> None:
    """RFC 8017 section 8.2.2 / RFC 7515 section 5.2: the signature must be exactly right, byte for byte."""
    h, p, s = token.split(".")
    import base64

    raw = base64.urlsafe_b64decode(s + "==")
    other = issuer.mint().split(".")[2]
    new_sig = {
        "truncated-1": b64url(raw[:-1]),
        "truncated-half": b64url(raw[: len(raw) // 2]),
        "zeros": b64url(bytes(len(raw))),
        "ones": b64url(b"\xff" * len(raw)),
        "longer-1": b64url(raw + b"\x00"),
        "longer-zero": b64url(b"\x00" + raw),
        "doubled": b64url(raw + raw),
        "other": other,
    }
    if mutate == "stripped":
        assert_rejected(verifier, issuer, f"{h}.{p}.", "malformed")
        assert_rejected(verifier, issuer, f"{h}.{p}", "malformed")
    else:
        assert_rejected(verifier, issuer, f"{h}.{p}.{new_sig[mutate]}", "bad_signature")


def test_oversized_signature(issuer: FakeIssuer, verifier: Verifier, token: str) -> None:
    """RFC 8725 section 3.2 (DoS): a signature that blows the size cap is refused before any crypto."""
    h, p, _ = token.split(".")
    assert_rejected(verifier, issuer, f"{h}.{p}.{'A' * DEFAULT_MAX_TOKEN_BYTES}", "token_too_large")


def test_payload_swapped_between_tokens(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7515 section 5.2: a signature covers its own header and payload only (cut-and-paste)."""
    a, b = issuer.mint().split("."), issuer.mint(environment_uuid=issuer.environment_uuid).split(".")
    assert_rejected(verifier, issuer, f"{a[0]}.{b[1]}.{a[2]}", "bad_signature")


@pytest.mark.parametrize("kind", ["str", "bytes", "bytearray"])
@pytest.mark.parametrize("size", [DEFAULT_MAX_TOKEN_BYTES + 1, 1_000_000])
def test_oversized_token(issuer: FakeIssuer, verifier: Verifier, token: str, kind: str, size: int) -> None:
    """RFC 8725 section 3.2 (DoS): tokens over the size cap are refused before parsing."""
    h, p, s = token.split(".")
    big = f"{h}.{p}{'A' * (size - len(token))}.{s}"
    value: object = {"str": big, "bytes": big.encode(), "bytearray": bytearray(big.encode())}[kind]
    assert_rejected(verifier, issuer, value, "token_too_large")


def test_oversized_claims_signed_by_issuer(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 8725 section 3.2: even a genuinely signed token is refused over the cap."""
    token = issuer.mint(extra={"blob": "x" * DEFAULT_MAX_TOKEN_BYTES})
    assert_rejected(verifier, issuer, token, "token_too_large")


@pytest.mark.parametrize(
    "value",
    [None, 0, 1, 1.5, True, {"token": "x"}, ["a.b.c"], ("a", "b", "c"), object(), memoryview(b"a.b.c")],
    ids=["None", "zero", "int", "float", "bool", "dict", "list", "tuple", "object", "memoryview"],
)
def test_non_string_tokens(issuer: FakeIssuer, verifier: Verifier, value: object) -> None:
    """Fail closed on any type that is not str/bytes: nothing but a VerificationError leaves verify()."""
    assert_rejected(verifier, issuer, value, "malformed")


@pytest.mark.parametrize(
    "value",
    ["é.b.c", "\u0430.b.c", "eyJ\u00e9.x.y", b"\xff\xfe.b.c", "\ud800.a.b", "a.b.c\x00", "a.b.c\u00a0",
     "a.b\u2024c.d"],
    ids=["latin", "cyrillic", "in-header", "bytes-non-ascii", "lone-surrogate", "nul", "nbsp",
         "one-dot-leader"],
)
def test_non_ascii_tokens(issuer: FakeIssuer, verifier: Verifier, value: object) -> None:
    """RFC 7515 section 7.1: a compact JWS is ASCII base64url; anything else is malformed."""
    assert_rejected(verifier, issuer, value, "malformed")


def test_non_ascii_inside_genuine_token(issuer: FakeIssuer, verifier: Verifier, token: str) -> None:
    """RFC 7515 section 7.1: a homoglyph in a genuine token is refused, not normalised away."""
    h, p, s = token.split(".")
    i = next(i for i, c in enumerate(p) if c == "a")
    bad = f"{h}.{p[:i]}\u0430{p[i + 1 :]}.{s}"
    assert_rejected(verifier, issuer, bad, "malformed")


def test_bytes_token_is_checked_like_str(issuer: FakeIssuer, verifier: Verifier, token: str) -> None:
    """The bytes form of a valid token verifies; the bytes form of a tampered token does not."""
    assert verifier.verify(token.encode()).subject
    h, p, s = token.split(".")
    assert_rejected(verifier, issuer, f"{h}.{p}.{s[:-2]}AA".encode(), {"bad_signature", "malformed"})
