"""Strict compact-JWS parsing (bbverify.token): everything that runs before the signature."""

from __future__ import annotations

import base64
import json

import pytest

from bbverify.errors import InvalidToken
from bbverify.token import (
    DEFAULT_MAX_TOKEN_BYTES,
    MAX_KID_LENGTH,
    b64url_decode,
    parse_header,
    parse_json_object,
    split,
)

RS256 = frozenset({"RS256"})


def enc(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def header_seg(header: object) -> str:
    return enc(json.dumps(header))


def code_of(exc: pytest.ExceptionInfo[InvalidToken]) -> str:
    return exc.value.code


# -- split -------------------------------------------------------------------------


def test_split_returns_parts_and_decoded_signature() -> None:
    parsed = split(f"{enc('{}')}.{enc('xyz')}.{enc(b'sig')}")
    assert parsed.header_segment == enc("{}")
    assert parsed.payload_segment == enc("xyz")
    assert parsed.signing_input == f"{enc('{}')}.{enc('xyz')}".encode()
    assert parsed.signature == b"sig"


def test_split_accepts_ascii_bytes() -> None:
    assert split(f"{enc('a')}.{enc('b')}.{enc(b'c')}".encode()).signature == b"c"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "a..c",
        ".b.c",
        "a.b.",
        "..",
        "a.b.c.d.e",  # a JWE
    ],
)
def test_split_requires_three_non_empty_segments(token: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        split(token)
    assert code_of(exc) == "malformed"


@pytest.mark.parametrize("token", [None, 123, ["a.b.c"], {"t": 1}])
def test_split_rejects_non_strings(token: object) -> None:
    with pytest.raises(InvalidToken) as exc:
        split(token)
    assert code_of(exc) == "malformed"


def test_size_cap_comes_before_any_parsing() -> None:
    # Not even valid segments: the cap must answer first, with its own code.
    huge = "!" * (DEFAULT_MAX_TOKEN_BYTES + 1)
    with pytest.raises(InvalidToken) as exc:
        split(huge)
    assert code_of(exc) == "token_too_large"
    with pytest.raises(InvalidToken) as exc:
        split(huge.encode())
    assert code_of(exc) == "token_too_large"


def test_size_cap_is_configurable_and_inclusive() -> None:
    token = f"{enc('a' * 300)}.{enc('b')}.{enc(b'c')}"
    assert split(token, max_bytes=len(token)).signature == b"c"
    with pytest.raises(InvalidToken) as exc:
        split(token, max_bytes=len(token) - 1)
    assert code_of(exc) == "token_too_large"


def test_non_ascii_bytes_are_malformed() -> None:
    with pytest.raises(InvalidToken) as exc:
        split(b"\xff.b.c")
    assert code_of(exc) == "malformed"


@pytest.mark.parametrize(
    "payload",
    ["ab+c", "ab/c", "abc=", "a b", "a", "abcde"],  # std alphabet, padding, space, impossible lengths
)
def test_payload_segment_must_look_like_unpadded_base64url(payload: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        split(f"{enc('{}')}.{payload}.{enc(b'sig')}")
    assert code_of(exc) == "malformed"


@pytest.mark.parametrize("sig", ["c2ln=", "c2l+", "c2l/", "c", "c2lnX"])
def test_signature_segment_is_strict(sig: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        split(f"{enc('{}')}.{enc('x')}.{sig}")
    assert code_of(exc) == "malformed"


# -- base64url -----------------------------------------------------------------------


def test_b64url_round_trips_every_length() -> None:
    for n in range(1, 40):
        data = bytes(range(200, 256))[:n]
        assert b64url_decode(enc(data)) == data


@pytest.mark.parametrize(
    "segment",
    [
        "QQ==",  # padded
        "QR",  # 'R' leaves non-zero spare bits: non-canonical spelling of "A"
        "QUF",  # 'F' has non-zero spare bits with a remainder of 3
        "Q",  # impossible length
        "Q+E",
        "Q/E",
        "",
    ],
)
def test_b64url_rejects_non_canonical(segment: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        b64url_decode(segment)
    assert code_of(exc) == "malformed"


def test_b64url_canonical_last_chars_accepted() -> None:
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode("QUE") == b"AA"
    assert b64url_decode("_w") == b"\xff"


# -- JSON ------------------------------------------------------------------------------


def test_json_object_is_parsed() -> None:
    assert parse_json_object(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'"x"',
        b"1",
        b"null",
        b"",
        b"{",
        b'{"a":1,"a":2}',  # duplicate member names
        b'{"a":{"b":1,"b":1}}',  # duplicates deeper down
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":1e999}',  # overflows to inf
        b"\xff\xfe{}",  # not UTF-8
        b'{"a":1} x',  # trailing garbage
    ],
)
def test_json_strictness(data: bytes) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_json_object(data)
    assert code_of(exc) == "malformed"


def test_moderate_nesting_parses() -> None:
    assert parse_json_object(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}")["a"]


@pytest.mark.parametrize("depth", [5000, 50_000])
def test_deep_nesting_is_malformed_not_recursion_error(depth: int) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_json_object(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    assert code_of(exc) == "malformed"


def test_deeply_nested_header_inside_size_cap_is_malformed() -> None:
    depth = 2500
    seg = enc(b'{"alg":"RS256","x":' + b"[" * depth + b"]" * depth + b"}")
    assert len(seg) < DEFAULT_MAX_TOKEN_BYTES
    with pytest.raises(InvalidToken) as exc:
        parse_header(seg, RS256)
    assert code_of(exc) == "malformed"


# -- header ------------------------------------------------------------------------------


def test_header_alg_and_kid() -> None:
    h = parse_header(header_seg({"alg": "RS256", "kid": "k1", "typ": "JWT"}), RS256)
    assert (h.alg, h.kid) == ("RS256", "k1")
    assert parse_header(header_seg({"alg": "RS256"}), RS256).kid is None


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt"])
def test_typ_jwt_accepted(typ: str) -> None:
    assert parse_header(header_seg({"alg": "RS256", "typ": typ}), RS256).alg == "RS256"


@pytest.mark.parametrize("typ", ["JOSE", "at+jwt", 1, ["JWT"]])
def test_other_typ_refused(typ: object) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg({"alg": "RS256", "typ": typ}), RS256)
    assert code_of(exc) == "unsupported_header"


@pytest.mark.parametrize("header", [{}, {"alg": None}, {"alg": 256}, {"alg": ["RS256"]}])
def test_missing_or_non_string_alg_is_malformed(header: dict[str, object]) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg(header), RS256)
    assert code_of(exc) == "malformed"


@pytest.mark.parametrize(
    "alg",
    # With the HMAC spellings of tests/security/test_alg_confusion.py (RFC 8725 section 3.1).
    ["none", "None", "NONE", "nOnE", " none", "none ", "HS256", "HS384", "HS512", "hs256", "Hs256 ", "HS256 ",
     "HS1", "Hs512"],
)  # fmt: skip
def test_none_and_hmac_refused_even_when_allowlisted(alg: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg({"alg": alg}), frozenset({alg, "RS256"}))
    assert code_of(exc) == "unsupported_algorithm"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES256", "EdDSA", "rs256", "RS256 "])
def test_algorithms_outside_the_allowlist_refused(alg: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg({"alg": alg}), RS256)
    assert code_of(exc) == "unsupported_algorithm"


def test_allowlist_is_honoured() -> None:
    assert parse_header(header_seg({"alg": "ES256"}), frozenset({"ES256"})).alg == "ES256"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "http://127.0.0.1:1/keys.json"),
        ("x5u", "http://127.0.0.1:1/cert.pem"),
        ("x5c", ["MIIB"]),
        ("jwk", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
        ("crit", ["exp"]),
        ("b64", False),
        ("cty", "JWT"),
        ("enc", "A256GCM"),
        ("zip", "DEF"),
    ],
)
def test_dangerous_header_parameters_refused(name: str, value: object) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg({"alg": "RS256", name: value}), RS256)
    assert code_of(exc) == "unsupported_header"


@pytest.mark.parametrize("kid", ["", 1, ["k"], {"k": 1}, True, "k" * (MAX_KID_LENGTH + 1), "a\nb", "a\x00"])
def test_kid_must_be_a_short_printable_string(kid: object) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(header_seg({"alg": "RS256", "kid": kid}), RS256)
    assert code_of(exc) == "malformed"


def test_kid_at_the_length_limit_is_accepted() -> None:
    kid = "k" * MAX_KID_LENGTH
    assert parse_header(header_seg({"alg": "RS256", "kid": kid}), RS256).kid == kid


def test_header_with_duplicate_alg_is_malformed() -> None:
    # A classic confusion: two parsers reading different 'alg' members.
    with pytest.raises(InvalidToken) as exc:
        parse_header(enc('{"alg":"RS256","alg":"none"}'), RS256)
    assert code_of(exc) == "malformed"


@pytest.mark.parametrize("seg", [enc("[]"), enc("not json"), "e30=", "e30+", enc(b"\xff")])
def test_header_segment_strictness(seg: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        parse_header(seg, RS256)
    assert code_of(exc) == "malformed"


# -- JWSReader and CompactJWS: the JWS layer ------------------------------------------


def test_reader_returns_header_and_payload_unverified() -> None:
    from bbverify.token import JWSReader

    reader = JWSReader(RS256)
    body = enc(json.dumps({"a": 1}))
    jws = reader.read(f"{header_seg({'alg': 'RS256', 'kid': 'k1'})}.{body}.{enc(b'sig')}")
    assert (jws.header.alg, jws.header.kid, jws.payload) == ("RS256", "k1", {"a": 1})
    assert jws.parsed.signature == b"sig"


def test_reader_remembers_headers_up_to_its_cap() -> None:
    from bbverify.token import JWSReader

    reader = JWSReader(RS256)
    body, sig = enc("{}"), enc(b"sig")
    first = reader.read(f"{header_seg({'alg': 'RS256', 'kid': 'k0'})}.{body}.{sig}").header
    assert reader.read(f"{header_seg({'alg': 'RS256', 'kid': 'k0'})}.{body}.{sig}").header is first
    for i in range(JWSReader.MAX_HEADERS + 10):
        reader.read(f"{header_seg({'alg': 'RS256', 'kid': f'k{i}'})}.{body}.{sig}")
    assert len(reader) == JWSReader.MAX_HEADERS


def test_reader_applies_the_size_cap_and_the_allowlist() -> None:
    from bbverify.token import JWSReader

    reader = JWSReader(RS256, max_bytes=512)
    with pytest.raises(InvalidToken) as exc:
        reader.read("a" * 513)
    assert code_of(exc) == "token_too_large"
    with pytest.raises(InvalidToken) as exc:
        reader.read(f"{header_seg({'alg': 'HS256'})}.{enc('{}')}.{enc(b'sig')}")
    assert code_of(exc) == "unsupported_algorithm"


def test_verify_signature_uses_the_header_alg_and_the_signing_input() -> None:
    from bbverify.token import JWSReader

    seen: list[tuple[str, bytes, bytes]] = []

    class Key:
        def verify(self, alg: str, signature: bytes, signing_input: bytes) -> None:
            seen.append((alg, signature, signing_input))

    head, body = header_seg({"alg": "RS256"}), enc("{}")
    JWSReader(RS256).read(f"{head}.{body}.{enc(b'sig')}").verify_signature(Key())
    assert seen == [("RS256", b"sig", f"{head}.{body}".encode())]
