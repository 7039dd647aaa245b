"""The key source against a real loopback issuer (FakeIssuer): failures, rotation, concurrency.

Tests that change the issuer (failure modes, rotation, extra keys) make their
own FakeIssuer; the module-scoped ``issuer`` is only read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clock import FakeClock, wait_until
from loopback import Answer, JSONServer, Request

from bbverify import InvalidToken, KeysUnavailable, RemoteKeySet, Verifier
from bbverify.testing import FakeIssuer, SigningKey, generate_rsa_key

FAST = {"timeout": 0.5, "failure_backoff": 0.1, "cooldown": 0.0, "fetch_interval": 0.001}


@pytest.fixture
def fresh() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        yield fake


def remote(fake: FakeIssuer, **options: Any) -> RemoteKeySet:
    for k, v in FAST.items():
        options.setdefault(k, v)
    return RemoteKeySet(issuer=fake.issuer, **options)


# -- the happy path ----------------------------------------------------------------------------


def test_discovery_then_keys(issuer: FakeIssuer) -> None:
    v = issuer.verifier(**FAST)
    before = (issuer.discovery_requests, issuer.jwks_requests)
    assert v.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid
    assert (issuer.discovery_requests, issuer.jwks_requests) == (before[0] + 1, before[1] + 1)


def test_explicit_jwks_url_skips_discovery(issuer: FakeIssuer) -> None:
    v = issuer.verifier(jwks_url=issuer.jwks_url, **FAST)
    before = issuer.discovery_requests
    v.verify(issuer.mint())
    assert issuer.discovery_requests == before


def test_discovery_issuer_must_match_exactly(issuer: FakeIssuer) -> None:
    # Discovery at issuer + "/" still reaches the fake, which names the issuer
    # without the slash: not the configured issuer, so no keys.
    v = Verifier(issuer=issuer.issuer + "/", audience=issuer.audience, **FAST)
    jwks_before = issuer.jwks_requests
    with pytest.raises(KeysUnavailable) as exc:
        v.warm_up()
    assert exc.value.status_code == 503
    assert issuer.jwks_requests == jwks_before


# -- failure modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["down", "500", "404", "garbage", "empty", "huge", "redirect"])
def test_failure_modes_mean_keys_unavailable(fresh: FakeIssuer, mode: str) -> None:
    fresh.fail(mode)
    v = fresh.verifier(**FAST)
    with pytest.raises(KeysUnavailable) as exc:
        v.verify(fresh.mint())
    assert exc.value.code == "keys_unavailable"
    assert exc.value.status_code == 503
    assert exc.value.retry_after >= 1
    assert fresh.jwks_requests == 1


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_total_deadline(fresh: FakeIssuer, mode: str) -> None:
    fresh.fail(mode, delay=0.05 if mode == "drip" else 3.0)
    v = fresh.verifier(timeout=0.4, failure_backoff=0.1)
    result: list[BaseException] = []

    def call() -> None:
        try:
            v.verify(fresh.mint())
        except BaseException as exc:
            result.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(5)  # a generous bound: the point is that it returns at all
    assert not caller.is_alive(), "verify() kept waiting on a stuck issuer"
    assert len(result) == 1 and isinstance(result[0], KeysUnavailable)


def test_drip_fetch_thread_itself_gives_up(fresh: FakeIssuer) -> None:
    # The waiting caller returns at the timeout; the fetch must also end, so
    # that the next caller can start a fresh one instead of waiting forever.
    fresh.fail("drip", delay=0.05)
    ks = remote(fresh, timeout=0.3, failure_backoff=0.0)
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None
    fresh.recover()
    ks.warm_up()
    assert ks.last_error is None


def test_frozen_injected_clock_does_not_disable_the_deadline(fresh: FakeIssuer) -> None:
    fresh.fail("drip", delay=0.05)
    ks = remote(fresh, timeout=0.3, failure_backoff=0.0, monotonic=FakeClock(5000.0))
    with pytest.raises(KeysUnavailable):
        ks.warm_up()
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None


def test_concurrent_callers_share_one_fetch(fresh: FakeIssuer) -> None:
    fresh.fail("slow", delay=0.3)
    v = fresh.verifier(timeout=2.0)
    tokens = [fresh.mint() for _ in range(8)]
    barrier = threading.Barrier(len(tokens))
    errors: list[BaseException] = []
    ok: list[str] = []

    def call(token: str) -> None:
        barrier.wait()
        try:
            ok.append(v.verify(token).step_uuid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors == []
    assert len(ok) == len(tokens)
    assert fresh.jwks_requests == 1
    assert fresh.discovery_requests == 1


def test_cold_start_down_then_recovers_after_backoff(fresh: FakeIssuer) -> None:
    fresh.fail("down")
    clock = FakeClock(5000.0)
    v = fresh.verifier(keys=remote(fresh, failure_backoff=5, monotonic=clock))
    token = fresh.mint()
    with pytest.raises(KeysUnavailable):
        v.verify(token)
    fresh.recover()
    clock.advance(4)
    with pytest.raises(KeysUnavailable) as exc:
        v.verify(token)  # still inside the backoff: no new attempt
    assert exc.value.retry_after == 1
    assert fresh.jwks_requests == 1
    clock.advance(1.5)
    assert v.verify(token).workspace_uuid == fresh.workspace_uuid  # no restart needed
    assert fresh.jwks_requests == 2


def test_recovery_on_the_real_clock(fresh: FakeIssuer) -> None:
    fresh.fail("500")
    v = fresh.verifier(timeout=0.5, failure_backoff=0.2)
    with pytest.raises(KeysUnavailable):
        v.verify(fresh.mint())
    fresh.recover()
    time.sleep(0.25)
    assert v.verify(fresh.mint()).workspace_uuid == fresh.workspace_uuid


def test_failed_refresh_serves_stale_keys_until_max_stale(fresh: FakeIssuer) -> None:
    clock = FakeClock(5000.0)
    ks = remote(fresh, cache_ttl=60, max_stale=300, failure_backoff=1, monotonic=clock)
    v = fresh.verifier(keys=ks, cache_size=0)
    token = fresh.mint()
    v.verify(token)
    fresh.fail("500")
    clock.advance(61)
    v.verify(token)  # answered from the keys; refresh fails in the background
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None
    clock.advance(200)
    v.verify(token)
    clock.advance(40)
    with pytest.raises(KeysUnavailable):
        v.verify(token)
    fresh.recover()
    clock.advance(10)  # three consecutive failures: the backoff doubled twice
    v.verify(token)


@pytest.mark.parametrize("mode", ["empty", "garbage", "500", "huge"])
def test_bad_refresh_never_replaces_good_keys(fresh: FakeIssuer, mode: str) -> None:
    clock = FakeClock(5000.0)
    ks = remote(fresh, cache_ttl=60, monotonic=clock)
    v = fresh.verifier(keys=ks, cache_size=0)
    token = fresh.mint()
    v.verify(token)
    fresh.fail(mode)
    clock.advance(61)
    v.verify(token)
    wait_until(lambda: ks.last_error is not None)
    assert ks.last_error is not None
    assert fresh.jwks_requests == 2
    assert v.verify(token).workspace_uuid == fresh.workspace_uuid


def test_key_count_cap(fresh: FakeIssuer) -> None:
    for i in range(64):
        fresh.add_jwk({"kty": "oct", "kid": f"junk-{i}"})
    with pytest.raises(KeysUnavailable):
        fresh.verifier(**FAST).warm_up()
    assert fresh.jwks_requests == 1


# -- which keys are kept ----------------------------------------------------------------------------


def test_weak_and_odd_keys_are_skipped(fresh: FakeIssuer) -> None:
    weak = SigningKey("weak-1024", generate_rsa_key(1024))
    fresh.add_jwk(weak.public_jwk())
    good = fresh.signing_key.public_jwk()
    fresh.add_jwk(dict(good, kid="exp-one", e="AQ"))
    fresh.add_jwk(dict(good, kid="for-encryption", use="enc"))
    fresh.add_jwk(dict(good, kid="rs512-only", alg="RS512"))
    v = fresh.verifier(**FAST)
    assert v.verify(fresh.mint()).workspace_uuid == fresh.workspace_uuid
    for kid, key in [
        ("weak-1024", weak),
        ("exp-one", fresh.signing_key),
        ("for-encryption", fresh.signing_key),
        ("rs512-only", fresh.signing_key),
    ]:
        with pytest.raises(InvalidToken) as exc:
            v.verify(fresh.mint(key=key, header={"kid": kid}))
        assert exc.value.code == "unknown_key"


def test_duplicate_kid_makes_that_kid_unusable(fresh: FakeIssuer) -> None:
    older = fresh.signing_key
    fresh.rotate()
    fresh.add_jwk(fresh.signing_key.public_jwk())
    v = fresh.verifier(**FAST)
    with pytest.raises(InvalidToken) as exc:
        v.verify(fresh.mint())
    assert exc.value.code == "unknown_key"
    assert v.verify(fresh.mint(key=older)).workspace_uuid == fresh.workspace_uuid


def test_a_set_whose_only_kid_is_duplicated_is_no_set(fresh: FakeIssuer) -> None:
    fresh.add_jwk(fresh.signing_key.public_jwk())
    with pytest.raises(KeysUnavailable):
        fresh.verifier(**FAST).verify(fresh.mint())


def test_key_of_another_type_for_the_kid_is_refused() -> None:
    # An EC key published under the kid the token names: an RS256 token must
    # not be checked with it, whatever the allowlist.
    with FakeIssuer(keys=1) as fake:
        from cryptography.hazmat.primitives.asymmetric import ec

        from bbverify.testing import b64url

        nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
        fake.add_jwk(
            {
                "kty": "EC",
                "kid": "ec-1",
                "crv": "P-256",
                "x": b64url(nums.x.to_bytes(32, "big")),
                "y": b64url(nums.y.to_bytes(32, "big")),
            }
        )
        v = fake.verifier(algorithms=["RS256", "ES256"], **FAST)
        v.warm_up()
        with pytest.raises(InvalidToken) as exc:
            v.verify(fake.mint(header={"kid": "ec-1"}))
        assert exc.value.code == "unknown_key"


# -- refetch discipline ----------------------------------------------------------------------------


def test_unknown_kid_refetches_once_per_cooldown(fresh: FakeIssuer) -> None:
    clock = FakeClock(5000.0)
    v = fresh.verifier(keys=remote(fresh, cooldown=30, monotonic=clock))
    v.warm_up()
    clock.advance(31)
    stranger = SigningKey("stranger", generate_rsa_key())
    for _ in range(5):
        with pytest.raises(InvalidToken) as exc:
            v.verify(fresh.mint(key=stranger))
        assert exc.value.code == "unknown_key"
    assert fresh.jwks_requests == 2


def test_bad_signature_never_refetches(fresh: FakeIssuer) -> None:
    v = fresh.verifier(**FAST)
    v.warm_up()
    token = fresh.mint()
    forged = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    for _ in range(3):
        with pytest.raises(InvalidToken) as exc:
            v.verify(forged)
        assert exc.value.code in ("bad_signature", "malformed")
    assert fresh.jwks_requests == 1


def test_token_without_kid_never_refetches(fresh: FakeIssuer) -> None:
    fresh.rotate()  # two keys: a kid-less token is ambiguous
    v = fresh.verifier(**FAST)
    v.warm_up()
    for _ in range(3):
        with pytest.raises(InvalidToken) as exc:
            v.verify(fresh.mint(header={"kid": None}))
        assert exc.value.code == "unknown_key"
    assert fresh.jwks_requests == 1


def test_jku_and_friends_never_cause_a_request(issuer: FakeIssuer) -> None:
    with FakeIssuer() as attacker:
        v = issuer.verifier(**FAST)
        before = issuer.jwks_requests + issuer.discovery_requests
        for name, value in [
            ("jku", attacker.jwks_url),
            ("x5u", attacker.jwks_url),
            ("jwk", attacker.signing_key.public_jwk()),
            ("x5c", ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
        ]:
            with pytest.raises(InvalidToken) as exc:
                v.verify(attacker.mint(header={name: value}))
            assert exc.value.code == "unsupported_header"
        assert attacker.jwks_requests == 0 and attacker.discovery_requests == 0
        assert issuer.jwks_requests + issuer.discovery_requests == before


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_new_kid_accepted_after_one_fetch(fresh: FakeIssuer) -> None:
    v = fresh.verifier(**FAST)
    v.verify(fresh.mint())
    fresh.rotate()
    assert v.verify(fresh.mint()).workspace_uuid == fresh.workspace_uuid
    assert fresh.jwks_requests == 2
    v.verify(fresh.mint())
    assert fresh.jwks_requests == 2


def test_removed_key_rejected_after_refresh_even_if_cached(fresh: FakeIssuer) -> None:
    old_token = fresh.mint()
    clock = FakeClock(5000.0)
    ks = remote(fresh, cache_ttl=60, cooldown=0, monotonic=clock)
    v = fresh.verifier(keys=ks)
    v.verify(old_token)
    assert v.cache_info()["tokens"] == 1
    fresh.rotate(keep_old=False)
    v.verify(old_token)  # served from the verified-token cache, keys not refreshed yet
    # A token of the new key forces a refetch, which drops the old key.
    v.verify(fresh.mint())
    with pytest.raises(InvalidToken) as exc:
        v.verify(old_token)
    assert exc.value.code == "unknown_key"


def test_ttl_refresh_drops_removed_key_for_cached_token(fresh: FakeIssuer) -> None:
    old_token = fresh.mint()
    clock = FakeClock(5000.0)
    ks = remote(fresh, cache_ttl=60, cooldown=1000, monotonic=clock)
    v = fresh.verifier(keys=ks)
    v.verify(old_token)
    fresh.rotate(keep_old=False)
    clock.advance(61)
    v.verify(old_token)  # still the current key as far as anyone knows; refresh starts
    wait_until(lambda: fresh.jwks_requests == 2 and ks.cached_key(None, "RS256") is not None)
    wait_until(lambda: ks.cached_key(fresh.keys[0].kid, "RS256") is not None)
    with pytest.raises(InvalidToken) as exc:
        v.verify(old_token)
    assert exc.value.code == "unknown_key"
    assert fresh.jwks_requests == 2


# -- async -----------------------------------------------------------------------------------------


def test_averify_awaits_a_fetch(fresh: FakeIssuer) -> None:
    fresh.fail("slow", delay=0.2)
    v = fresh.verifier(timeout=2.0)
    tokens = [fresh.mint() for _ in range(5)]

    async def main() -> list[str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        claims = await asyncio.gather(*(v.averify(t) for t in tokens))
        tick.cancel()
        # The loop kept running while the fetch was in flight.
        assert ticks >= 1
        return [c.step_uuid for c in claims]

    assert len(set(asyncio.run(main()))) == len(tokens)
    assert fresh.jwks_requests == 1


def test_averify_gives_up_at_the_timeout(fresh: FakeIssuer) -> None:
    fresh.fail("hang", delay=3.0)
    v = fresh.verifier(timeout=0.3)

    async def main() -> BaseException | None:
        try:
            await v.averify(fresh.mint())
        except BaseException as exc:
            return exc
        return None

    assert isinstance(asyncio.run(main()), KeysUnavailable)


# -- content encoding ------------------------------------------------------------------------------


def test_server_that_compresses_when_allowed_still_works(issuer: FakeIssuer) -> None:
    # Many real servers (CDNs) gzip JSON whenever the client allows it. The
    # body is read raw to cap its size, so bbverify must not allow it.
    import gzip
    import json

    seen: list[str | None] = []

    def compressing(request: Request) -> Answer:
        body = json.dumps(issuer.jwks()).encode()
        accept = request.headers.get("Accept-Encoding")
        seen.append(accept)
        if accept and "gzip" in accept:
            return 200, {"Content-Encoding": "gzip"}, gzip.compress(body)
        return 200, {}, body

    with JSONServer(respond=compressing) as server:
        url = f"{server.url}/keys.json"
        v = Verifier(issuer=issuer.issuer, audience=issuer.audience, jwks_url=url, **FAST)
        assert v.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid
        assert seen == ["identity"]
