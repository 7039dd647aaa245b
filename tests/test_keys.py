"""RemoteKeySet and StaticKeySet, with HTTP mocked by ``responses`` (unit level).

The same behaviours against a real loopback server are in test_keys_integration.py.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
import responses
from clock import FakeClock, wait_until

from bbverify.errors import ConfigurationError, InvalidToken, KeysUnavailable
from bbverify.keys import RemoteKeySet, StaticKeySet, check_fetch_url, is_loopback_host
from bbverify.testing import SigningKey, generate_rsa_key

ISSUER = "https://issuer.test/2.0/workspaces/acme/pipelines-config/identity/oidc"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
JWKS = ISSUER + "/keys.json"


@pytest.fixture(scope="module")
def k1() -> SigningKey:
    return SigningKey("k1", generate_rsa_key())


@pytest.fixture(scope="module")
def k2() -> SigningKey:
    return SigningKey("k2", generate_rsa_key())


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def jwks(*keys: SigningKey, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys] + (extra or [])}


def keyset(**options: Any) -> RemoteKeySet:
    options.setdefault("jwks_url", JWKS)
    options.setdefault("timeout", 1.0)
    return RemoteKeySet(**options)


# -- URL rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", [None, "", "example.com", "10.0.0.1", "0.0.0.0", "localhost.example.com"])
def test_non_loopback_hosts(host: str | None) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "url",
    ["https://example.com/keys.json", "http://127.0.0.1:8000/k", "http://localhost/k", "http://[::1]:1/"],
)
def test_fetch_urls_accepted(url: str) -> None:
    assert check_fetch_url(url) == url


@pytest.mark.parametrize(
    "url", ["http://example.com/keys.json", "ftp://127.0.0.1/k", "file:///etc/passwd", "https://", "", "keys"]
)
def test_fetch_urls_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        check_fetch_url(url, "jwks_url")
    assert exc.value.key == "jwks_url"


def test_plain_http_issuer_for_discovery_is_refused() -> None:
    with pytest.raises(ConfigurationError) as exc:
        RemoteKeySet(issuer="http://example.com/oidc")
    assert exc.value.key == "issuer"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"jwks_url": None, "issuer": None}, "jwks_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"cooldown": float("nan")}, "cooldown"),
        ({"cache_ttl": float("inf")}, "cache_ttl"),
        ({"max_stale": -5}, "max_stale"),
        ({"failure_backoff": "5"}, "failure_backoff"),
        ({"min_rsa_bits": 1024}, "min_rsa_bits"),
        ({"allowed_algorithms": frozenset({"HS256"})}, "algorithms"),
        ({"allowed_algorithms": frozenset()}, "algorithms"),
    ],
)
def test_remote_key_set_configuration_errors(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        keyset(**options)
    assert exc.value.key == key


# -- fetching ---------------------------------------------------------------------------------


def test_building_makes_no_request(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1))
    ks = keyset()
    assert len(rsps.calls) == 0
    assert ks.fetch_count == 0
    assert ks.cached_key("k1", "RS256") is None
    assert len(rsps.calls) == 0


def test_first_use_fetches_once_then_serves_from_cache(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1))
    ks = keyset()
    key = ks.get_key("k1", "RS256")
    assert key.kid == "k1"
    assert ks.get_key("k1", "RS256") is key
    assert ks.cached_key("k1", "RS256") is key
    assert len(rsps.calls) == 1


def test_request_headers_ask_for_json_without_compression(
    rsps: responses.RequestsMock, k1: SigningKey
) -> None:
    rsps.get(JWKS, json=jwks(k1))
    keyset().warm_up()
    sent = rsps.calls[0].request.headers
    assert sent["Accept-Encoding"] == "identity"
    assert "json" in sent["Accept"]


def test_compressed_answer_is_refused_not_misread(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    body = gzip.compress(json.dumps(jwks(k1)).encode())
    rsps.get(JWKS, body=body, headers={"Content-Encoding": "gzip"})
    ks = keyset()
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    assert ks.last_error is not None and "Content-Encoding" in ks.last_error


def test_discovery_finds_the_jwks(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(DISCOVERY, json={"issuer": ISSUER, "jwks_uri": JWKS})
    rsps.get(JWKS, json=jwks(k1))
    ks = RemoteKeySet(issuer=ISSUER, timeout=1)
    assert ks.jwks_url is None
    assert ks.get_key("k1", "RS256").kid == "k1"
    assert ks.jwks_url == JWKS
    assert [c.request.url for c in rsps.calls] == [DISCOVERY, JWKS]


@pytest.mark.parametrize(
    "document",
    [
        {"issuer": ISSUER + "/", "jwks_uri": JWKS},  # trailing slash
        {"issuer": ISSUER.upper(), "jwks_uri": JWKS},
        {"issuer": "https://evil.test/oidc", "jwks_uri": JWKS},
        {"jwks_uri": JWKS},
        {"issuer": ISSUER, "jwks_uri": "http://evil.test/keys.json"},  # not https
        {"issuer": ISSUER, "jwks_uri": "http://127.0.0.1:8080/keys.json"},  # https issuer, plain http keys
        {"issuer": ISSUER},
        ["not", "an", "object"],
    ],
)
def test_bad_discovery_means_keys_unavailable(
    rsps: responses.RequestsMock, k1: SigningKey, document: object
) -> None:
    rsps.get(DISCOVERY, json=document)
    jwks_route = rsps.get(JWKS, json=jwks(k1))
    ks = RemoteKeySet(issuer=ISSUER, timeout=1)
    with pytest.raises(KeysUnavailable) as exc:
        ks.get_key("k1", "RS256")
    assert exc.value.status_code == 503
    assert jwks_route.call_count == 0


@pytest.mark.parametrize("status", [201, 203, 204, 301, 304, 400, 404, 429, 500, 503])
def test_only_200_is_accepted(rsps: responses.RequestsMock, k1: SigningKey, status: int) -> None:
    rsps.get(JWKS, json=jwks(k1), status=status)
    with pytest.raises(KeysUnavailable):
        keyset().get_key("k1", "RS256")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(rsps: responses.RequestsMock, k1: SigningKey, status: int) -> None:
    elsewhere = "https://elsewhere.test/keys.json"
    rsps.get(JWKS, status=status, headers={"Location": elsewhere})
    target = rsps.get(elsewhere, json=jwks(k1))
    ks = keyset()
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    assert target.call_count == 0
    assert ks.last_error is not None and str(status) in ks.last_error


@pytest.mark.parametrize(
    "body",
    [
        b"<html>",
        b"",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "oct", "k": "AAAA"}]}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_unusable_documents(rsps: responses.RequestsMock, body: bytes) -> None:
    rsps.get(JWKS, body=body)
    ks = keyset(max_body_bytes=200_000)
    with pytest.raises(KeysUnavailable):
        ks.get_key("k1", "RS256")
    assert ks.last_error


def test_body_cap(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    document = jwks(k1, extra=[{"kty": "junk", "pad": "x" * 5000}])
    rsps.get(JWKS, json=document)
    ks = keyset(max_body_bytes=4000)
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    assert ks.last_error is not None and "exceeds" in ks.last_error
    # The same document under a larger cap is fine: the cap is what refused it.
    keyset(max_body_bytes=10_000).warm_up()


def test_key_count_cap(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1, extra=[{"kty": "oct"}] * 5))
    with pytest.raises(KeysUnavailable):
        keyset(max_keys=5).warm_up()
    keyset(max_keys=6).warm_up()


def test_only_usable_keys_are_kept(rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey) -> None:
    weak = SigningKey("weak", generate_rsa_key(1024)).public_jwk()
    e_one = dict(k2.public_jwk(), kid="e1", e="AQ")
    enc_key = dict(k2.public_jwk(), kid="enc", use="enc")
    rs384 = dict(k2.public_jwk(), kid="rs384", alg="RS384")
    ops = dict(k2.public_jwk(), kid="ops", key_ops=["encrypt"])
    rsps.get(JWKS, json=jwks(k1, extra=[weak, e_one, enc_key, rs384, ops, {"kty": "EC", "kid": "ec"}]))
    ks = keyset(cooldown=1000)
    assert ks.get_key("k1", "RS256").kid == "k1"
    for kid in ("weak", "e1", "enc", "rs384", "ops", "ec"):
        assert ks.cached_key(kid, "RS256") is None
        with pytest.raises(InvalidToken) as exc:
            ks.get_key(kid, "RS256")
        assert exc.value.code == "unknown_key"


def test_duplicate_kid_is_unusable(rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1, k2, extra=[dict(k2.public_jwk())]))
    ks = keyset(cooldown=1000)
    assert ks.get_key("k1", "RS256").kid == "k1"
    with pytest.raises(InvalidToken) as exc:
        ks.get_key("k2", "RS256")
    assert exc.value.code == "unknown_key"


def test_a_set_of_only_duplicates_is_no_set(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1, k1))
    with pytest.raises(KeysUnavailable):
        keyset().warm_up()


# -- tokens without kid -------------------------------------------------------------------------


def test_no_kid_uses_the_single_key(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    rsps.get(JWKS, json=jwks(k1))
    assert keyset().get_key(None, "RS256").kid == "k1"


def test_no_kid_with_several_keys_is_unknown_and_never_refetches(
    rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey
) -> None:
    rsps.get(JWKS, json=jwks(k1, k2))
    ks = keyset(cooldown=0)
    ks.warm_up()
    for _ in range(3):
        with pytest.raises(InvalidToken) as exc:
            ks.get_key(None, "RS256")
        assert exc.value.code == "unknown_key"
    assert len(rsps.calls) == 1


# -- cooldown, TTL, stale, backoff --------------------------------------------------------------


def test_unknown_kid_refetches_at_most_once_per_cooldown(
    rsps: responses.RequestsMock, k1: SigningKey
) -> None:
    rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    ks = keyset(cooldown=30, monotonic=clock)
    ks.warm_up()
    clock.advance(31)
    for _ in range(5):
        with pytest.raises(InvalidToken) as exc:
            ks.get_key("nope", "RS256")
        assert exc.value.code == "unknown_key"
    assert len(rsps.calls) == 2  # warm-up + one refetch
    clock.advance(29)
    with pytest.raises(InvalidToken):
        ks.get_key("nope", "RS256")
    assert len(rsps.calls) == 2
    clock.advance(2)
    with pytest.raises(InvalidToken):
        ks.get_key("nope", "RS256")
    assert len(rsps.calls) == 3


def test_unknown_kid_right_after_a_fetch_does_not_refetch(
    rsps: responses.RequestsMock, k1: SigningKey
) -> None:
    rsps.get(JWKS, json=jwks(k1))
    ks = keyset(cooldown=30, monotonic=FakeClock())
    ks.warm_up()
    with pytest.raises(InvalidToken):
        ks.get_key("nope", "RS256")
    assert len(rsps.calls) == 1


def test_new_kid_found_by_refetch(rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey) -> None:
    route = rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    ks = keyset(cooldown=30, monotonic=clock)
    ks.warm_up()
    route.body = json.dumps(jwks(k1, k2))
    clock.advance(31)
    assert ks.get_key("k2", "RS256").kid == "k2"
    assert len(rsps.calls) == 2


def test_ttl_refresh_happens_in_the_background(
    rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey
) -> None:
    route = rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    ks = keyset(cache_ttl=60, cooldown=1000, monotonic=clock)
    ks.warm_up()
    clock.advance(59)
    ks.get_key("k1", "RS256")
    assert len(rsps.calls) == 1
    route.body = json.dumps(jwks(k2))
    clock.advance(2)
    assert ks.get_key("k1", "RS256").kid == "k1"  # still answered from the cache
    wait_until(lambda: ks.cached_key("k2", "RS256") is not None)
    assert ks.get_key("k2", "RS256").kid == "k2"
    assert len(rsps.calls) == 2
    with pytest.raises(InvalidToken):
        ks.get_key("k1", "RS256")


def test_current_keys_alone_also_triggers_the_ttl_refresh(
    rsps: responses.RequestsMock, k1: SigningKey, k2: SigningKey
) -> None:
    # The verifier's token cache asks only current_keys(); a service whose traffic
    # is all cache hits must still refresh, or a removed key would keep vouching.
    route = rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    ks = keyset(cache_ttl=60, monotonic=clock)
    ks.warm_up()
    route.body = json.dumps(jwks(k2))
    clock.advance(61)
    # cached_key() never starts a fetch, not even the due refresh.
    for _ in range(3):
        assert ks.cached_key("k1", "RS256") is not None
        assert ks.cached_key("k2", "RS256") is None
    assert len(rsps.calls) == 1
    before = ks.current_keys()
    assert before is not None and [k.kid for k in before] == ["k1"]
    wait_until(lambda: ks.cached_key("k1", "RS256") is None)
    assert ks.cached_key("k1", "RS256") is None
    assert ks.current_keys() is not before
    assert len(rsps.calls) == 2


def test_failed_refresh_keeps_good_keys_until_max_stale(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    route = rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    ks = keyset(cache_ttl=60, max_stale=600, failure_backoff=5, monotonic=clock)
    ks.warm_up()
    route.status = 500
    clock.advance(61)
    assert ks.get_key("k1", "RS256").kid == "k1"
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None and "500" in ks.last_error
    clock.advance(500)
    assert ks.get_key("k1", "RS256").kid == "k1"  # stale but allowed
    clock.advance(100)
    with pytest.raises(KeysUnavailable) as exc:
        ks.get_key("k1", "RS256")
    assert exc.value.retry_after >= 1
    assert ks.cached_key("k1", "RS256") is None


@pytest.mark.parametrize(
    "body",
    [
        '{"keys": []}',
        "garbage",
        '{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}',
        '{"keys": 5}',
    ],
)
def test_empty_or_invalid_set_never_replaces_a_good_one(
    rsps: responses.RequestsMock, k1: SigningKey, body: str
) -> None:
    route = rsps.get(JWKS, json=jwks(k1))
    clock = FakeClock()
    # A backoff, so the last get_key starts no refresh that outlives the test.
    ks = keyset(cache_ttl=10, failure_backoff=5, monotonic=clock)
    ks.warm_up()
    route.body = body
    clock.advance(11)
    assert ks.get_key("k1", "RS256").kid == "k1"  # starts the background refresh
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None
    assert len(rsps.calls) == 2
    assert ks.get_key("k1", "RS256").kid == "k1"


def test_cold_start_failure_backs_off_then_recovers(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    route = rsps.get(JWKS, status=503)
    clock = FakeClock()
    ks = keyset(failure_backoff=5, monotonic=clock)
    with pytest.raises(KeysUnavailable) as first:
        ks.get_key("k1", "RS256")
    assert first.value.code == "keys_unavailable"
    clock.advance(2)
    with pytest.raises(KeysUnavailable) as second:
        ks.get_key("k1", "RS256")
    assert len(rsps.calls) == 1  # inside the backoff: no new request
    assert 1 <= second.value.retry_after <= 5
    route.status = 200
    route.body = json.dumps(jwks(k1))
    clock.advance(4)
    assert ks.get_key("k1", "RS256").kid == "k1"
    assert len(rsps.calls) == 2
    assert ks.last_error is None


def test_warm_up_raises_and_reports(rsps: responses.RequestsMock) -> None:
    rsps.get(JWKS, body=ConnectionError("refused"))
    ks = keyset()
    with pytest.raises(KeysUnavailable) as exc:
        ks.warm_up()
    assert "refused" in exc.value.message


def test_custom_session_is_used_without_redirects(rsps: responses.RequestsMock, k1: SigningKey) -> None:
    import requests

    class CountingSession(requests.Session):
        calls = 0

        def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            CountingSession.calls += 1
            assert kwargs["allow_redirects"] is False
            return super().get(url, **kwargs)

    rsps.get(JWKS, json=jwks(k1))
    keyset(session=CountingSession()).warm_up()
    assert CountingSession.calls == 1


# -- StaticKeySet ------------------------------------------------------------------------------


def test_static_key_set(k1: SigningKey, k2: SigningKey) -> None:
    ks = StaticKeySet(jwks(k1, k2))
    assert ks.get_key("k1", "RS256").kid == "k1"
    assert ks.cached_key("k2", "RS256") is not None
    with pytest.raises(InvalidToken) as exc:
        ks.get_key("k3", "RS256")
    assert exc.value.code == "unknown_key"
    with pytest.raises(InvalidToken):
        ks.get_key("k1", "RS384")


@pytest.mark.parametrize("document", [{}, {"keys": []}, {"keys": "x"}, {"keys": [{"kty": "oct"}]}])
def test_static_key_set_needs_a_usable_key(document: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as exc:
        StaticKeySet(document)
    assert exc.value.key == "jwks"


def test_static_key_set_async(k1: SigningKey) -> None:
    import asyncio

    ks = StaticKeySet(jwks(k1))
    assert asyncio.run(ks.aget_key("k1", "RS256")).kid == "k1"


@pytest.mark.parametrize("value", ["5", True, -1, "abc", None, float("nan")])
def test_max_backoff_is_checked_like_every_duration(value: Any) -> None:
    with pytest.raises(ConfigurationError) as exc:
        RemoteKeySet(jwks_url="https://example.invalid/keys.json", max_backoff=value)
    assert exc.value.key == "max_backoff"


def test_max_backoff_below_failure_backoff_is_raised_to_it() -> None:
    keys = RemoteKeySet(jwks_url="https://example.invalid/keys.json", failure_backoff=30, max_backoff=10)
    assert keys.budget.max_backoff == 30


# -- a start during an issuer outage (finding f07) ---------------------------------------------


def test_a_failed_discovery_costs_one_token_and_the_bucket_never_goes_negative(
    rsps: responses.RequestsMock, k1: SigningKey
) -> None:
    import requests as _requests

    rsps.get(DISCOVERY, body=_requests.ConnectionError("network not up yet"))
    clock = FakeClock()
    ks = RemoteKeySet(issuer=ISSUER, timeout=1.0, monotonic=clock)  # default budget
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    # One request was sent, so one token was spent (not the key set's too).
    assert ks._local_budget.tokens == pytest.approx(2.0)
    for _ in range(4):  # retries as fast as the backoff allows, while the issuer is down
        clock.advance(ks.budget.wait(ks._local_budget, clock()) + 0.01)
        ks.refresh_if_due()
        wait_until(lambda: ks._inflight is None)
        assert ks._local_budget.tokens >= 0.0
    assert ks.status()["budget_remaining"] >= 0.0


def test_a_service_started_during_an_outage_is_ready_soon_after_the_issuer_returns(
    rsps: responses.RequestsMock, k1: SigningKey
) -> None:
    """Default settings, the issuer back 10 s after start: keys within a minute (docs/configuration.md)."""
    import requests as _requests

    clock = FakeClock()
    start = clock()
    down = rsps.get(DISCOVERY, body=_requests.ConnectionError("network not up yet"))
    ks = RemoteKeySet(issuer=ISSUER, timeout=1.0, monotonic=clock)
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    ready_at = None
    for _ in range(60):  # a readiness probe every second of fake time, for at most a minute
        clock.advance(1.0)
        if clock() - start >= 10 and down is not None:
            rsps.remove(down)
            down = None
            rsps.get(DISCOVERY, json={"issuer": ISSUER, "jwks_uri": JWKS})
            rsps.get(JWKS, json=jwks(k1))
        ks.refresh_if_due()
        wait_until(lambda: ks._inflight is None)
        if ks.status()["loaded"]:
            ready_at = clock() - start
            break
    assert ready_at is not None and ready_at <= 30.0, ks.status()
    assert ks.get_key("k1", "RS256") is not None
    assert ks._local_budget.tokens >= 0.0
