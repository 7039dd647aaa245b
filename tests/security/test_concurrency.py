"""Many threads sharing one Verifier through a cold start, key rotation, an outage and a key removal.

Bounded: 16 threads x 60 verifications per phase. Key-set timing runs on an
injected clock, so the fetch counts are exact, not timing-dependent.
"""

from __future__ import annotations

import threading
import time

from clock import FakeClock

from bbverify import RemoteKeySet, VerificationError, Verifier
from bbverify.testing import FakeIssuer, SigningKey, generate_rsa_key

THREADS, ITERATIONS = 16, 60
TTL, COOLDOWN, MAX_STALE, BACKOFF = 600.0, 30.0, 3600.0, 5.0

Case = tuple[str, str | None]  # token, expected error code (None: must verify)


def _run_phase(v: Verifier, cases: list[Case]) -> list[str]:
    """All threads start together and verify a rotating mix; return every wrong or unexpected outcome."""
    barrier = threading.Barrier(THREADS)
    problems: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait(timeout=30)
        for j in range(ITERATIONS):
            token, expected = cases[(index * 7 + j) % len(cases)]
            try:
                v.verify(token)
                got = None
            except VerificationError as exc:
                got = exc.code
            except BaseException as exc:  # anything else is a bug, recorded for the assert
                got = f"unexpected {exc!r}"
            if got != expected:
                with lock:
                    problems.append(f"case {(index * 7 + j) % len(cases)}: expected {expected}, got {got}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    return problems


def _invalid_cases(issuer: FakeIssuer, outsider: SigningKey) -> list[Case]:
    now = int(time.time())
    good = issuer.mint()
    h, p, s = good.split(".")
    other_p = issuer.mint(environment_uuid=issuer.environment_uuid).split(".")[1]
    return [
        (f"{h}.{other_p}.{s}", "bad_signature"),
        (f"{h}.{p}.{s[:-4]}AAAA", "bad_signature"),
        (issuer.mint(issued_at=now - 7200, lifetime=3600), "expired"),
        (issuer.mint(audience="someone-else"), "audience_mismatch"),
        (issuer.mint(key=outsider), "unknown_key"),
        (issuer.mint(header={"alg": "none"}), "unsupported_algorithm"),
        ("not.a.token", "malformed"),
    ]


def test_shared_verifier_under_rotation_and_outage() -> None:
    """Thread safety of the verified-token cache and the key set (one fetch per needed refresh)."""
    outsider = SigningKey(kid="outsider", private_key=generate_rsa_key())
    with FakeIssuer() as issuer:
        clock = FakeClock()
        keys = RemoteKeySet(
            jwks_url=issuer.jwks_url,
            cache_ttl=TTL,
            cooldown=COOLDOWN,
            max_stale=MAX_STALE,
            failure_backoff=BACKOFF,
            monotonic=clock,
        )
        # A token cache smaller than the working set keeps eviction busy under contention.
        v = issuer.verifier(keys=keys, cache_size=16)
        old_key = issuer.signing_key
        old_valid: list[Case] = [(issuer.mint(), None) for _ in range(24)]
        invalid = _invalid_cases(issuer, outsider)

        # Phase 1: cold start, every thread at once -> exactly one fetch.
        assert _run_phase(v, old_valid + invalid) == []
        assert issuer.jwks_requests == 1

        # Phase 2: rotation; the new kid is unknown until one refetch after the cooldown.
        issuer.rotate(keep_old=True)
        new_valid: list[Case] = [(issuer.mint(), None) for _ in range(24)]
        new_invalid = _invalid_cases(issuer, outsider)
        clock.advance(COOLDOWN)
        assert _run_phase(v, new_valid + old_valid + invalid + new_invalid) == []
        assert issuer.jwks_requests == 2

        # Phase 3: outage after the TTL; stale keys keep serving, one failed background refresh.
        issuer.fail("500")
        clock.advance(TTL)
        assert _run_phase(v, new_valid + old_valid + invalid) == []
        inflight = keys._inflight
        if inflight is not None:
            inflight.result(timeout=10)
        assert issuer.jwks_requests == 3
        assert keys.last_error is not None

        # Phase 4: recovery and removal of the old key; after one refresh old tokens fail everywhere.
        issuer.recover()
        issuer.remove_key(old_key.kid)
        clock.advance(BACKOFF)
        assert v.verify(new_valid[0][0]).subject  # due for refresh: starts it in the background
        inflight = keys._inflight
        if inflight is not None:
            inflight.result(timeout=10)
        assert issuer.jwks_requests == 4
        removed: list[Case] = [(token, "unknown_key") for token, _ in old_valid]
        # (The invalid cases signed by the old key now fail at the key lookup first.)
        assert _run_phase(v, new_valid + removed + new_invalid) == []
        # Old-key tokens want a refetch, but the cooldown caps it: no fetch storm.
        assert issuer.jwks_requests == 4


def test_async_and_sync_callers_share_one_fetch() -> None:
    """averify (event loop) and verify (threads) wait on the same single in-flight fetch."""
    import asyncio

    with FakeIssuer() as issuer:
        v = issuer.verifier()
        tokens = [issuer.mint() for _ in range(8)]
        problems: list[str] = []

        async def many() -> None:
            results = await asyncio.gather(*(v.averify(t) for t in tokens), return_exceptions=True)
            problems.extend(repr(r) for r in results if isinstance(r, BaseException))

        threads = [threading.Thread(target=lambda t=t: v.verify(t)) for t in tokens]
        for t in threads:
            t.start()
        asyncio.run(many())
        for t in threads:
            t.join(30)
        assert problems == []
        assert issuer.jwks_requests == 1
