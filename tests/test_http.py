"""Unit tests of the shared HTTP layer: bearer parsing, error answers, client IP."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bbverify import ConfigurationError, InvalidToken, KeysUnavailable, PolicyDenied, Verifier
from bbverify.http import (
    Guard,
    InvalidRequest,
    MissingToken,
    TrustedProxies,
    bearer_token,
    client_ip,
    error_response,
    normalize_ip,
    quote_header_value,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


# -- bearer token --------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",
        f"BEARER {TOKEN}",
        f"BeArEr   {TOKEN}  ",
        f"  Bearer {TOKEN}",
        f"Bearer\t{TOKEN}".replace("\t", " "),
    ],
)
def test_bearer_token_accepts_any_scheme_case(header: str) -> None:
    assert bearer_token([header]) == TOKEN
    assert bearer_token([header.encode()]) == TOKEN


def test_bearer_token_padding_allowed() -> None:
    assert bearer_token(["Bearer abc=="]) == "abc=="


@pytest.mark.parametrize(
    ("values", "error", "code"),
    [
        ([], MissingToken, "missing_token"),
        (["Basic dXNlcjpwYXNz"], MissingToken, "unsupported_scheme"),
        (["Token abc"], MissingToken, "unsupported_scheme"),
        ([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], InvalidRequest, "multiple_authorization"),
        (["", f"Bearer {TOKEN}"], InvalidRequest, "multiple_authorization"),
        ([""], InvalidRequest, "malformed_authorization"),
        (["   "], InvalidRequest, "malformed_authorization"),
        (["Bearer"], InvalidRequest, "empty_token"),
        (["Bearer    "], InvalidRequest, "empty_token"),
        (["Bearer a b"], InvalidRequest, "malformed_authorization"),
        (["Bearer a,Bearer b"], InvalidRequest, "multiple_authorization"),  # two lines joined by a server
        (['Bearer "abc"'], InvalidRequest, "malformed_authorization"),
        (["Bearer abc=def"], InvalidRequest, "malformed_authorization"),
        (["Bearer tökén"], InvalidRequest, "malformed_authorization"),
        ([b"Bearer \xe9\xff"], InvalidRequest, "malformed_authorization"),
        ([b"\xff\xfe"], InvalidRequest, "malformed_authorization"),
        (["B@d{scheme} x"], InvalidRequest, "malformed_authorization"),
        (["Bearer abc\r\nX-Evil: 1"], InvalidRequest, "malformed_authorization"),
    ],
)
def test_bearer_token_refusals(values: list[str | bytes], error: type[Exception], code: str) -> None:
    with pytest.raises(error) as info:
        bearer_token(values)
    assert info.value.code == code  # type: ignore[attr-defined]


def test_missing_and_invalid_request_statuses() -> None:
    assert MissingToken("x").status_code == 401
    assert InvalidRequest("x").status_code == 400


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80)), max_size=3))
def test_bearer_token_never_raises_anything_else(values: list[str | bytes]) -> None:
    try:
        token = bearer_token(values)
    except (MissingToken, InvalidRequest):
        return
    assert token and token.isascii() and " " not in token


# -- error answers ---------------------------------------------------------------------


def _body(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return json.loads(resp.body)


def test_missing_token_has_no_error_attribute() -> None:
    resp = error_response(MissingToken("the request has no Authorization header"), realm="api")
    assert resp.status == 401
    assert resp.header("WWW-Authenticate") == 'Bearer realm="api"'
    assert _body(resp) == {
        "error": "unauthorized",
        "code": "missing_token",
        "message": "the request has no Authorization header",
    }
    assert resp.header("content-type") == "application/json"
    assert resp.header("Cache-Control") == "no-store"


@pytest.mark.parametrize(
    ("error", "status", "attr"),
    [
        (InvalidToken("token has expired", code="expired"), 401, "invalid_token"),
        (PolicyDenied("repository not allowed", code="repository_not_allowed"), 403, "insufficient_scope"),
        (InvalidRequest("two headers", code="multiple_authorization"), 400, "invalid_request"),
    ],
)
def test_error_attributes(error: InvalidToken, status: int, attr: str) -> None:
    resp = error_response(error)
    assert resp.status == status
    challenge = resp.header("WWW-Authenticate")
    assert challenge == f'Bearer realm="bbverify", error="{attr}", error_description="{error.message}"'
    assert _body(resp) == {"error": attr, "code": error.code, "message": error.message}
    assert resp.header("Retry-After") is None


def test_keys_unavailable_is_503_with_retry_after() -> None:
    resp = error_response(KeysUnavailable("issuer down", retry_after=7))
    assert resp.status == 503
    assert resp.header("Retry-After") == "7"
    assert resp.header("WWW-Authenticate") is None
    assert _body(resp)["code"] == "keys_unavailable"
    assert _body(resp)["error"] == "temporarily_unavailable"


def test_header_injection_is_neutralised() -> None:
    nasty = 'bad "quote" \\ back\r\nSet-Cookie: x=1\x00\u00e9'
    resp = error_response(PolicyDenied(nasty, code="policy_denied"))
    challenge = resp.header("WWW-Authenticate")
    assert challenge is not None
    assert "\r" not in challenge and "\n" not in challenge and "\x00" not in challenge
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"')
    assert '"' not in description[:-1] and "\\" not in description
    # The body keeps the message, JSON-escaped.
    assert _body(resp)["message"] == nasty
    for _, value in resp.headers:
        assert value.isascii() and "\n" not in value


def test_quote_header_value_limits_length() -> None:
    assert quote_header_value("a" * 1000) == "a" * 200
    assert quote_header_value('x"y') == "x y"
    assert quote_header_value("a\r\n\tb") == "a b"


# -- client address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:8080", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("fe80::1%eth0", None),  # zone ids match no range, as in IPRanges (issue 11 item 6)
        ("[fe80::1%25eth0]:80", None),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::FFFF:cb00:7107", "203.0.113.7"),
        (b"198.51.100.1", "198.51.100.1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("1.2.3", None),
        ("999.1.1.1", None),
        ("1.2.3.4:port", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]junk", None),
        ("1.2.3.4:80:90", None),
        ("example.com", None),
        (b"\xff\xfe", None),
        ("1.2.3.4\u00e9", None),
        (None, None),
    ],
)
def test_normalize_ip(raw: str | bytes | None, expected: str | None) -> None:
    assert normalize_ip(raw) == expected


PROXY = "10.0.0.2"
OTHER_PROXY = "10.0.0.3"
CLIENT = "203.0.113.7"
SPOOF = "198.51.100.66"
CIDRS = TrustedProxies.parse(["10.0.0.0/8", "fd00::/8"])
ONE_HOP = TrustedProxies.parse(1)
TWO_HOPS = TrustedProxies.parse(2)


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # No trusted proxy: the peer, whatever the header says.
        (CLIENT, [SPOOF], None, CLIENT),
        (CLIENT, [], None, CLIENT),
        ("::ffff:203.0.113.7", [SPOOF], None, CLIENT),
        ("junk", [SPOOF], None, None),
        (None, [SPOOF], None, None),
        # One hop: the last entry.
        (PROXY, [CLIENT], ONE_HOP, CLIENT),
        (PROXY, [f"{SPOOF}, {CLIENT}"], ONE_HOP, CLIENT),
        (PROXY, [SPOOF, CLIENT], ONE_HOP, CLIENT),  # two header lines, joined in order
        (PROXY, [f"{SPOOF},{CLIENT}:5555"], ONE_HOP, CLIENT),
        (PROXY, [], ONE_HOP, None),  # too few entries: unknown, not the proxy
        (PROXY, [f"{SPOOF}, junk"], ONE_HOP, None),  # junk where the client should be
        (PROXY, [f"{SPOOF}, unknown"], ONE_HOP, None),
        (PROXY, [f"junk, {CLIENT}"], ONE_HOP, CLIENT),  # junk left of the client is harmless
        (PROXY, [f"{SPOOF}, , {CLIENT}"], ONE_HOP, CLIENT),
        (PROXY, ["[2001:db8::5]:80"], ONE_HOP, "2001:db8::5"),
        # Two hops: the second entry from the right.
        (PROXY, [f"{SPOOF}, {CLIENT}, {OTHER_PROXY}"], TWO_HOPS, CLIENT),
        (PROXY, [CLIENT, OTHER_PROXY], TWO_HOPS, CLIENT),
        (PROXY, [OTHER_PROXY], TWO_HOPS, None),
        # CIDRs: walk from the right over trusted addresses.
        (PROXY, [CLIENT], CIDRS, CLIENT),
        (PROXY, [f"{SPOOF}, {CLIENT}"], CIDRS, CLIENT),
        (PROXY, [f"{SPOOF}, {CLIENT}, {OTHER_PROXY}"], CIDRS, CLIENT),
        (PROXY, [f"{SPOOF}, {CLIENT}", OTHER_PROXY], CIDRS, CLIENT),
        (CLIENT, [SPOOF], CIDRS, CLIENT),  # peer is not a proxy: header ignored
        (PROXY, [], CIDRS, PROXY),  # a trusted host calling directly
        (PROXY, [OTHER_PROXY], CIDRS, OTHER_PROXY),  # all trusted: the leftmost
        (PROXY, [f"{SPOOF}, junk, {OTHER_PROXY}"], CIDRS, None),
        (PROXY, ["fd00::9, ::ffff:203.0.113.7"], CIDRS, CLIENT),
        ("fd00::1", [CLIENT], CIDRS, CLIENT),
        ("fd00::1%eth0", [CLIENT], CIDRS, None),  # a zoned peer is in no range, not even as a proxy
        (PROXY, [b"\xff" + CLIENT.encode()], CIDRS, None),
        (PROXY, [b"\xff, " + CLIENT.encode()], CIDRS, CLIENT),  # non-ASCII junk left of the client
        (PROXY, ["\u00e9", CLIENT], ONE_HOP, CLIENT),
        (PROXY, [", ".join(["10.0.0.9"] * 100)], CIDRS, None),  # absurdly long chain
    ],
)
def test_client_ip_walk(
    peer: str | None, xff: list[str | bytes], trusted: TrustedProxies | None, expected: str | None
) -> None:
    assert client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        (0, None),
        ("0", None),
        ("", None),
        ([], None),
        (2, TrustedProxies(hops=2)),
        ("3", TrustedProxies(hops=3)),
        ("10.0.0.0/8, 192.168.0.1", TrustedProxies.parse(["10.0.0.0/8", "192.168.0.1/32"])),
    ],
)
def test_trusted_proxies_parse(spec: object, expected: TrustedProxies | None) -> None:
    assert TrustedProxies.parse(spec) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [-1, 1000, True, ["10.0.0.0/33"], ["nope"], "10.0.0.0/8, junk", 1.5, ["0.0.0.0/0"], "10.0.0.0/8, ::/0"],
)
def test_trusted_proxies_parse_refuses(spec: object) -> None:
    with pytest.raises(ConfigurationError):
        TrustedProxies.parse(spec)  # type: ignore[arg-type]


_entry = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:{443}"),
    st.ip_addresses(v=4).map(lambda a: f"{a}:8080"),
    st.text(max_size=20),
    st.sampled_from(["unknown", "", " ", "[", "]", ":", "%", "::ffff:1.2.3.4", "fe80::1%eth0"]),
)
_trust = st.one_of(
    st.none(),
    st.integers(min_value=1, max_value=5).map(TrustedProxies.parse),
    st.just(CIDRS),
    # Built directly: parse() refuses to trust everyone, but the walk must still be safe.
    st.just(TrustedProxies(networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))),
)


@settings(max_examples=200, deadline=None)
@given(
    peer=st.one_of(st.none(), _entry, st.binary(max_size=20)),
    lines=st.lists(
        st.one_of(st.lists(_entry, max_size=6).map(", ".join), st.binary(max_size=30)), max_size=3
    ),
    trusted=_trust,
)
def test_client_ip_never_raises_and_is_an_address(
    peer: str | bytes | None, lines: list[str | bytes], trusted: TrustedProxies | None
) -> None:
    result = client_ip(peer, lines, trusted)
    if result is not None:
        assert str(ipaddress.ip_address(result)) == result
    if trusted is None:
        # A header from an untrusted client never changes the answer.
        assert result == normalize_ip(peer)


@settings(max_examples=200, deadline=None)
@given(spoof=st.lists(_entry, max_size=5), client=st.ip_addresses(v=4).map(str))
def test_cidr_walk_never_returns_spoofed_entry(spoof: list[str], client: str) -> None:
    # Whatever the client puts in front, the proxy's appended entry wins when it is untrusted.
    assume(ipaddress.ip_address(client) not in ipaddress.ip_network("10.0.0.0/8"))
    assert client_ip(PROXY, [", ".join(spoof), client], CIDRS) == client


# -- guard settings ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_verifier() -> Verifier:
    return Verifier(issuer="https://issuer.example/oidc", audience="aud")


def test_guard_exclusions(offline_verifier: Verifier) -> None:
    guard = Guard(offline_verifier, exclude_paths=["/healthz"], exclude_prefixes=["/public/"])
    assert guard.is_excluded("/healthz")
    assert not guard.is_excluded("/healthz/")
    assert not guard.is_excluded("/healthzz")
    assert guard.is_excluded("/public/a/b")
    assert not guard.is_excluded("/public")
    assert not guard.is_excluded("/admin")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exclude_paths": ["healthz"]},
        {"exclude_prefixes": [""]},
        {"realm": 'a"b'},
        {"realm": "a\r\nb"},
        {"realm": ""},
        {"trusted_proxies": ["not-a-cidr"]},
        {"on_error": "nope"},
    ],
)
def test_guard_refuses_bad_settings(offline_verifier: Verifier, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Guard(offline_verifier, **kwargs)  # type: ignore[arg-type]


def test_guard_refuses_non_verifier_and_non_rules(offline_verifier: Verifier) -> None:
    with pytest.raises(ConfigurationError):
        Guard("verifier")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Guard(offline_verifier, ["not callable"])  # type: ignore[list-item]


def test_on_error_failure_falls_back(offline_verifier: Verifier) -> None:
    def broken(error: object) -> object:
        raise RuntimeError("boom")

    guard = Guard(offline_verifier, on_error=broken)
    assert guard.custom_error(MissingToken("x")) is None


def test_core_and_plain_adapters_import_without_frameworks() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('starlette', 'fastapi', 'flask', 'werkzeug', 'uvicorn'):\n"
        "    sys.modules[name] = None\n"
        "import bbverify, bbverify.http, bbverify.asgi, bbverify.wsgi\n"
        "try:\n"
        "    import bbverify.flask\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "joined", ["Bearer a.b.c, Bearer d.e.f", "Bearer a.b.c,Basic Zm9vOmJhcg==", "Bearer x, Bearer y"]
)
def test_header_lines_joined_by_the_server_are_multiple_authorization(joined: str) -> None:
    # WSGI servers and Django fold repeated Authorization lines into one, comma-joined.
    with pytest.raises(InvalidRequest) as info:
        bearer_token([joined])
    assert info.value.code == "multiple_authorization"


def test_a_comma_alone_is_still_malformed() -> None:
    with pytest.raises(InvalidRequest) as info:
        bearer_token(["Bearer a,b"])
    assert info.value.code == "malformed_authorization"
