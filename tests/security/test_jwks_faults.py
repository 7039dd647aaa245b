"""The key-set fault matrix, end to end through ``Verifier.verify`` against loopback servers.

Timing-dependent behaviour (TTL, backoff, staleness, cooldown) runs on an
injected monotonic clock; hangs are held open by a gate the test controls,
so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clock import FakeClock
from loopback import Answer, JSONServer, Request

from bbverify import InvalidToken, KeysUnavailable, PipelineClaims, RemoteKeySet, Verifier
from bbverify.testing import FakeIssuer, SigningKey, b64url, generate_rsa_key

from ._support import assert_rejected, jdump

TTL, COOLDOWN, MAX_STALE, BACKOFF = 600.0, 30.0, 3600.0, 5.0


@pytest.fixture(autouse=True)
def _recover(issuer: FakeIssuer) -> Iterator[None]:
    yield
    issuer.recover()


def _remote(url: str, clock: Callable[[], float] | None = None, **options: Any) -> RemoteKeySet:
    settings: dict[str, Any] = {
        "timeout": 5.0,
        "cache_ttl": TTL,
        "cooldown": COOLDOWN,
        "max_stale": MAX_STALE,
        "failure_backoff": BACKOFF,
    }
    settings.update(options)
    if clock is not None:
        settings["monotonic"] = clock
    return RemoteKeySet(jwks_url=url, **settings)


def _verifier(issuer: FakeIssuer, keys: RemoteKeySet) -> Verifier:
    return issuer.verifier(keys=keys)


def _settle(keys: RemoteKeySet) -> None:
    """Wait for a background refresh to finish (it runs on its own thread)."""
    inflight = keys._inflight
    if inflight is not None:
        inflight.result(timeout=10)


def _unavailable(v: Verifier, token: str) -> KeysUnavailable:
    with pytest.raises(KeysUnavailable) as info:
        v.verify(token)
    exc = info.value
    assert exc.code == "keys_unavailable" and exc.status_code == 503 and exc.retry_after >= 1
    return exc


def test_down_at_cold_start_then_recovers_without_restart(issuer: FakeIssuer) -> None:
    """Availability: no keys -> 503 (never 401); the backoff limits retries; recovery needs no restart."""
    clock = FakeClock()
    keys = _remote(issuer.jwks_url, clock)
    v = _verifier(issuer, keys)
    issuer.fail("down")
    before = issuer.jwks_requests
    _unavailable(v, issuer.mint())
    assert issuer.jwks_requests == before + 1
    # Within the failure backoff nobody refetches, however many requests arrive.
    for _ in range(20):
        _unavailable(v, issuer.mint())
    assert issuer.jwks_requests == before + 1
    issuer.recover()
    _unavailable(v, issuer.mint())  # still within the backoff
    clock.advance(BACKOFF)
    assert v.verify(issuer.mint()).subject
    assert issuer.jwks_requests == before + 2


@pytest.mark.parametrize("mode", ["down", "500", "404", "garbage", "empty", "huge", "redirect"])
def test_failure_modes_at_cold_start(issuer: FakeIssuer, mode: str) -> None:
    """RFC 7517 section 5 / fail closed: an unusable key set answer is 503 KeysUnavailable, never a crash."""
    clock = FakeClock()
    v = _verifier(issuer, _remote(issuer.jwks_url, clock))
    issuer.fail(mode)
    exc = _unavailable(v, issuer.mint())
    assert "keys" in exc.message
    issuer.recover()
    clock.advance(BACKOFF)
    assert v.verify(issuer.mint()).subject


@pytest.mark.parametrize("mode", ["down", "500", "garbage", "empty", "huge", "redirect"])
def test_stale_keys_serve_until_max_stale_then_503(issuer: FakeIssuer, mode: str) -> None:
    """Availability: a failed refresh never replaces good keys; they serve up to max_stale, then 503."""
    clock = FakeClock()
    keys = _remote(issuer.jwks_url, clock)
    v = _verifier(issuer, keys)
    v.warm_up()
    seen = issuer.mint()
    assert v.verify(seen).subject
    issuer.fail(mode)
    start = issuer.jwks_requests
    clock.advance(TTL)  # due for refresh: the refresh runs in the background and fails
    assert v.verify(issuer.mint()).subject
    _settle(keys)
    assert issuer.jwks_requests == start + 1 and keys.last_error
    # Within the backoff no other refresh starts.
    for _ in range(5):
        assert v.verify(issuer.mint()).subject
    assert issuer.jwks_requests == start + 1
    clock.advance(MAX_STALE - TTL - 1)  # one second before the keys become too old
    assert v.verify(issuer.mint()).subject
    assert v.verify(seen).subject
    _settle(keys)
    assert issuer.jwks_requests == start + 2
    clock.advance(1)
    _unavailable(v, issuer.mint())
    _unavailable(v, seen)  # the token cache does not outlive the keys either
    issuer.recover()
    clock.advance(2 * BACKOFF)  # the second consecutive failure doubled the backoff
    assert v.verify(seen).subject


def test_hanging_server_returns_keys_unavailable(issuer: FakeIssuer) -> None:
    """Availability: a server that sends headers then nothing cannot hold a request past the deadline."""
    v = _verifier(issuer, _remote(issuer.jwks_url, timeout=0.3))
    issuer.fail("hang", delay=5.0)
    exc = _unavailable(v, issuer.mint())
    assert "0.3" in exc.message or "keys" in exc.message


def test_drip_feeding_server_returns_keys_unavailable(issuer: FakeIssuer) -> None:
    """Availability (slowloris): a body dripped a byte at a time is cut off by the total deadline.

    A per-read timeout alone would wait the whole drip (about a minute here).
    """
    keys = _remote(issuer.jwks_url, timeout=0.5)
    v = _verifier(issuer, keys)
    issuer.fail("drip", delay=0.1)
    _unavailable(v, issuer.mint())
    _settle(keys)
    assert keys.last_error is not None


def test_cached_kid_is_served_while_a_fetch_hangs(issuer: FakeIssuer) -> None:
    """Availability: a refetch in flight (unknown kid) never delays tokens whose key is cached."""
    newcomer = SigningKey(kid="newcomer", private_key=generate_rsa_key())
    published: dict[str, Any] = {"keys": [issuer.signing_key.public_jwk()]}

    def respond(request: Request) -> Answer:
        return 200, {"Content-Type": "application/json"}, jdump(published)

    with JSONServer(respond=respond) as server:
        keys = _remote(server.url + "/keys.json", timeout=30.0, cooldown=0.0)
        v = _verifier(issuer, keys)
        v.warm_up()
        published["keys"].append(newcomer.public_jwk())
        server.gate = threading.Event()
        server.entered.clear()
        result: list[object] = []

        def slow_caller() -> None:
            try:
                result.append(v.verify(issuer.sign(issuer.claims(), key=newcomer)))
            except Exception as exc:  # recorded and asserted below
                result.append(exc)

        caller = threading.Thread(target=slow_caller)
        caller.start()
        assert server.entered.wait(10)
        # The fetch is now held open by the gate; cached-kid traffic must not wait for it.
        others = [v.verify(issuer.mint()) for _ in range(25)]
        assert all(isinstance(c, PipelineClaims) for c in others)
        assert caller.is_alive() and result == []
        server.gate.set()
        caller.join(10)
        assert len(result) == 1 and isinstance(result[0], PipelineClaims), result
        assert server.hits == 2  # warm-up, then exactly one refetch


def test_concurrent_callers_share_one_hanging_fetch(issuer: FakeIssuer) -> None:
    """Availability: callers that need keys wait on one in-flight fetch; a deadline frees them all."""
    with JSONServer({"keys": []}) as server:
        server.gate = threading.Event()
        keys = _remote(server.url + "/keys.json", timeout=0.5)
        v = _verifier(issuer, keys)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                v.verify(issuer.mint())
            except BaseException as exc:  # recorded and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(errors) == 8 and all(isinstance(e, KeysUnavailable) for e in errors), errors
        assert server.hits == 1
        server.gate.set()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_is_not_followed(issuer: FakeIssuer, status: int) -> None:
    """SSRF (RFC 8725 section 3.10): a redirect from the JWKS URL is never followed (target counts 0)."""
    good = jdump(issuer.jwks())
    with JSONServer(respond=lambda request: (200, {"Content-Type": "application/json"}, good)) as target:

        def redirect(request: Request) -> Answer:
            return status, {"Location": target.url + "/keys.json"}, b""

        with JSONServer(respond=redirect) as origin:
            v = _verifier(issuer, _remote(origin.url + "/keys.json"))
            _unavailable(v, issuer.mint())
            assert origin.hits == 1
            assert target.hits == 0


def test_oversized_body_without_content_length_is_cut_off(issuer: FakeIssuer) -> None:
    """Availability: the body cap holds even when the length is not announced up front."""
    big = b'{"keys": [' + b" " * (600 * 1024) + b"]}"
    with JSONServer(respond=lambda request: (200, {}, big)) as server:
        keys = _remote(server.url + "/keys.json", max_body_bytes=64 * 1024)
        v = _verifier(issuer, keys)
        _unavailable(v, issuer.mint())
        assert "exceeds" in (keys.last_error or "")


@pytest.mark.parametrize(
    "document",
    [{"keys": "nope"}, {"keys": None}, [], {"keys": [None, 1, "x"]}, {"keys": [{}] * 100}, {"nokeys": []}],
    ids=["keys-string", "keys-null", "array", "junk-entries", "too-many", "no-keys"],
)
def test_malformed_key_sets(issuer: FakeIssuer, document: object) -> None:
    """RFC 7517 section 5: a document that is not a usable JWK Set yields 503, not a crash."""
    body = json.dumps(document).encode()
    with JSONServer(respond=lambda request: (200, {}, body)) as server:
        _unavailable(_verifier(issuer, _remote(server.url + "/keys.json")), issuer.mint())


def test_key_rotation_new_kid_after_one_fetch_removed_kid_after_refresh() -> None:
    """RFC 7517 section 4.5 / OpenID Connect Core 10.1.1: rotation picks up new kids, drops removed ones."""
    with FakeIssuer() as issuer:
        clock = FakeClock()
        keys = _remote(issuer.jwks_url, clock)
        v = _verifier(issuer, keys)
        old = issuer.signing_key
        old_token = issuer.mint()
        assert v.verify(old_token).subject
        assert issuer.jwks_requests == 1

        new = issuer.rotate(keep_old=True)
        new_token = issuer.mint()
        assert issuer.signing_key is new
        # Within the cooldown of the last fetch an unknown kid does not refetch.
        assert_rejected_once(v, new_token, "unknown_key")
        assert issuer.jwks_requests == 1
        clock.advance(COOLDOWN)
        assert v.verify(new_token).subject
        assert issuer.jwks_requests == 2
        for _ in range(10):
            assert v.verify(issuer.mint()).subject
        assert v.verify(old_token).subject  # the old key is still published
        assert issuer.jwks_requests == 2

        issuer.remove_key(old.kid)
        assert v.verify(old_token).subject  # not refreshed yet: the cached key still vouches
        clock.advance(TTL)
        assert v.verify(issuer.mint()).subject  # starts the background refresh
        _settle(keys)
        assert issuer.jwks_requests == 3
        assert_rejected_once(v, old_token, "unknown_key")  # the token cache follows the key set
        assert_rejected_once(v, issuer.mint(key=old), "unknown_key")
        assert v.verify(new_token).subject
        assert issuer.jwks_requests == 3


def assert_rejected_once(v: Verifier, token: str, code: str) -> None:
    with pytest.raises(InvalidToken) as info:
        v.verify(token)
    assert info.value.code == code, repr(info.value)


def test_duplicate_kids_are_unusable_other_keys_keep_working() -> None:
    """RFC 7517 section 4.5: kids must be distinct in a set; a duplicated kid matches no key at all."""
    with FakeIssuer(keys=2) as issuer:
        first, second = issuer.keys
        impostor = SigningKey(kid=first.kid, private_key=generate_rsa_key())
        issuer.add_jwk(impostor.public_jwk())
        v = _verifier(issuer, _remote(issuer.jwks_url, FakeClock()))
        assert v.verify(issuer.mint(key=second)).subject
        assert_rejected(v, issuer, issuer.mint(key=first), "unknown_key")
        assert_rejected(v, issuer, issuer.mint(key=impostor), "unknown_key")
        assert v.verify(issuer.mint(key=second)).subject


def _pkcs1_sha256_encoding(message: bytes, size: int) -> bytes:
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info


def test_weak_keys_are_skipped_good_keys_keep_working() -> None:
    """RFC 8725 section 3.5 / NIST SP 800-131A: sub-2048-bit, e=1, even-e and even-n RSA keys are skipped.

    The e=1 key shares the issuer's modulus and the forged token's signature
    is the bare PKCS#1 encoding: it verifies under e=1, so accepting that key
    would accept the forgery.
    """
    with FakeIssuer() as issuer:
        good = issuer.signing_key
        weak_1024 = SigningKey(kid="weak-1024", private_key=generate_rsa_key(1024))
        n = good.private_key.public_key().public_numbers().n
        n_b64 = b64url(n.to_bytes(256, "big"))
        fake_512 = b64url((1 << 511 | 0x10001).to_bytes(64, "big"))
        extras = [
            weak_1024.public_jwk(),
            {"kty": "RSA", "kid": "weak-512", "alg": "RS256", "n": fake_512, "e": "AQAB"},
            {"kty": "RSA", "kid": "e-one", "alg": "RS256", "n": n_b64, "e": "AQ"},
            {
                "kty": "RSA",
                "kid": "e-even",
                "alg": "RS256",
                "n": n_b64,
                "e": b64url((65536).to_bytes(3, "big")),
            },
            {
                "kty": "RSA",
                "kid": "n-even",
                "alg": "RS256",
                "n": b64url((n + 1).to_bytes(256, "big")),
                "e": "AQAB",
            },
            {"kty": "RSA", "kid": "enc-use", "use": "enc", "n": n_b64, "e": "AQAB"},
            {"kty": "oct", "kid": "symmetric", "k": b64url(b"secret")},
        ]
        for jwk in extras:
            issuer.add_jwk(jwk)
        v = _verifier(issuer, _remote(issuer.jwks_url, FakeClock()))
        assert v.verify(issuer.mint()).subject
        assert_rejected(v, issuer, issuer.mint(key=weak_1024), "unknown_key")
        # The e=1 forgery: signature == the padded message itself.
        header = b64url(jdump({"alg": "RS256", "kid": "e-one", "typ": "JWT"}))
        payload = b64url(jdump(issuer.claims()))
        forged = _pkcs1_sha256_encoding(f"{header}.{payload}".encode(), 256)
        assert_rejected(v, issuer, f"{header}.{payload}.{b64url(forged)}", "unknown_key")
        for kid in ("weak-512", "e-even", "n-even", "enc-use", "symmetric"):
            assert_rejected(v, issuer, issuer.mint(header={"kid": kid}), "unknown_key")
        assert issuer.jwks_requests == 1


def test_only_weak_keys_means_unavailable() -> None:
    """Fail closed: a key set whose every key is unusable is an outage (503), not an empty success."""
    weak = SigningKey(kid="weak-1024", private_key=generate_rsa_key(1024))
    body = jdump({"keys": [weak.public_jwk()]})
    with FakeIssuer() as issuer, JSONServer(respond=lambda request: (200, {}, body)) as server:
        v = _verifier(issuer, _remote(server.url + "/keys.json"))
        _unavailable(v, issuer.sign(issuer.claims(), key=weak))
