"""Counts that must stay bounded whatever the traffic: caches, and JWKS fetches.

The key set's clock is injected, so "one fetch per cooldown" is checked by
moving time, not by sleeping; every assertion is a count.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from clock import FakeClock

from bbverify import InvalidToken, RemoteKeySet, VerificationError, Verifier
from bbverify.testing import FakeIssuer

COOLDOWN = 30.0


def _verifier(issuer: FakeIssuer, clock: FakeClock, **options: object) -> Verifier:
    # The bucket refills fast here: these tests are about the cooldown floor.
    keys = RemoteKeySet(jwks_url=issuer.jwks_url, cooldown=COOLDOWN, fetch_interval=1.0, monotonic=clock)
    verifier = issuer.verifier(keys=keys, **options)
    verifier.warm_up()
    return verifier


# -- caches ------------------------------------------------------------------------------


def test_token_cache_holds_at_most_cache_size_entries(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(cache_size=16)
    tokens = [issuer.mint() for _ in range(60)]
    for token in tokens:
        verifier.verify(token)
    info = verifier.cache_info()
    assert info["tokens"] == 16
    assert info["token_limit"] == 16
    assert info["headers"] <= 64  # the header memo is bounded too
    # The newest tokens are the ones kept: verifying the last again is a hit.
    claims = verifier.verify(tokens[-1])
    assert verifier.verify(tokens[-1]) is claims


def test_cache_size_zero_caches_nothing(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(cache_size=0)
    token = issuer.mint()
    first = verifier.verify(token)
    assert verifier.verify(token) is not first
    assert verifier.cache_info()["tokens"] == 0


def test_header_cache_is_capped_under_many_distinct_headers(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier()
    verifier.warm_up()
    for _ in range(150):
        with pytest.raises(InvalidToken) as exc:
            verifier.verify(issuer.mint(header={"kid": uuid.uuid4().hex}))
        assert exc.value.code == "unknown_key"
    info = verifier.cache_info()
    assert 0 < info["headers"] <= 64
    assert info["tokens"] == 0  # refused tokens are never cached


# -- JWKS fetches --------------------------------------------------------------------------


def _needs_new_key(issuer: FakeIssuer, clock: FakeClock) -> tuple[Verifier, str, int]:
    verifier = _verifier(issuer, clock)
    clock.now += COOLDOWN + 1  # a real rotation comes long after the last fetch
    token = issuer.mint(key=issuer.rotate())
    issuer.fail("slow", 0.3)  # keep the one fetch in flight while everyone arrives
    return verifier, token, issuer.jwks_requests


def test_one_fetch_for_many_threads_needing_the_same_new_key(fresh_issuer: FakeIssuer) -> None:
    verifier, token, before = _needs_new_key(fresh_issuer, FakeClock())
    callers = 40
    gate = threading.Barrier(callers)
    verified: list[str] = []
    failures: list[BaseException] = []

    def call() -> None:
        gate.wait()
        try:
            verified.append(verifier.verify(token).step_uuid)
        except VerificationError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh_issuer.recover()
    assert failures == []
    assert len(verified) == callers
    assert fresh_issuer.jwks_requests - before == 1


def test_one_fetch_for_many_coroutines_needing_the_same_new_key(fresh_issuer: FakeIssuer) -> None:
    verifier, token, before = _needs_new_key(fresh_issuer, FakeClock())

    async def all_at_once() -> list[object]:
        return await asyncio.gather(*(verifier.averify(token) for _ in range(40)), return_exceptions=True)

    results = asyncio.run(all_at_once())
    fresh_issuer.recover()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert fresh_issuer.jwks_requests - before == 1


def test_random_kid_flood_fetches_at_most_once_per_cooldown(fresh_issuer: FakeIssuer) -> None:
    clock = FakeClock()
    verifier = _verifier(fresh_issuer, clock)
    flood = [fresh_issuer.mint(header={"kid": uuid.uuid4().hex}) for _ in range(100)]
    before = fresh_issuer.jwks_requests

    def send_all() -> int:
        refused = 0
        for token in flood:
            with pytest.raises(InvalidToken) as exc:
                verifier.verify(token)
            assert exc.value.code == "unknown_key"
            refused += 1
        return refused

    # Within the cooldown of the warm-up fetch: unknown kids never refetch.
    assert send_all() == len(flood)
    assert fresh_issuer.jwks_requests - before == 0
    fetches = []
    for _ in range(3):
        clock.now += COOLDOWN + 1
        send_all()
        clock.now += COOLDOWN / 2  # still inside the new cooldown window
        send_all()
        fetches.append(fresh_issuer.jwks_requests - before)
    # One refetch per cooldown window, however many unknown kids arrived in it.
    assert fetches == [1, 2, 3]
    # The genuine key still works throughout, and nothing was cached from the flood.
    verifier.verify(fresh_issuer.mint())
    assert verifier.cache_info()["tokens"] == 1
