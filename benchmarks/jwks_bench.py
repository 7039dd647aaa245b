"""Section 6: the key set under load, and memory under many distinct tokens."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bbverify import InvalidToken, StaticKeySet, VerificationError, Verifier
from bbverify.testing import FakeIssuer, b64url


def concurrent_new_key(issuer: FakeIssuer, callers: int, *, use_async: bool) -> dict[str, Any]:
    """``callers`` verifications at once, all needing a key published after the last fetch."""
    # The new kid appears after the cooldown that follows the last fetch, as a
    # real rotation would (Bitbucket rotates rarely).
    verifier = issuer.verifier(cooldown=0.2)
    verifier.warm_up()
    new_key = issuer.rotate()
    token = issuer.mint(key=new_key)
    time.sleep(0.3)
    issuer.fail("slow", 0.2)  # keep the fetch in flight while every caller arrives
    before = issuer.jwks_requests
    ok = 0
    try:
        if use_async:

            async def all_at_once() -> int:
                results = await asyncio.gather(
                    *(verifier.averify(token) for _ in range(callers)), return_exceptions=True
                )
                return sum(1 for r in results if not isinstance(r, BaseException))

            ok = asyncio.run(all_at_once())
        else:
            gate = threading.Barrier(callers)
            lock = threading.Lock()
            counts = [0]

            def one() -> None:
                gate.wait()
                try:
                    verifier.verify(token)
                except VerificationError:
                    return
                with lock:
                    counts[0] += 1

            threads = [threading.Thread(target=one) for _ in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ok = counts[0]
    finally:
        issuer.recover()
    return {"callers": callers, "verified": ok, "fetches": issuer.jwks_requests - before}


def random_kid_flood(issuer: FakeIssuer, seconds: float, cooldown: float, threads: int = 4) -> dict[str, Any]:
    """Tokens with made-up kids, as fast as ``threads`` threads can send them."""
    verifier = issuer.verifier(cooldown=cooldown)
    verifier.warm_up()
    tokens = [issuer.mint(header={"kid": uuid.uuid4().hex}) for _ in range(200)]
    before = issuer.jwks_requests
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    counts = {"rejected": 0, "other": 0}

    def flood(offset: int) -> None:
        rejected = other = 0
        i = offset
        while time.monotonic() < stop:
            try:
                verifier.verify(tokens[i % len(tokens)])
                other += 1
            except InvalidToken as exc:
                if exc.code == "unknown_key":
                    rejected += 1
                else:
                    other += 1
            except VerificationError:
                other += 1
            i += 1
        with lock:
            counts["rejected"] += rejected
            counts["other"] += other

    started = time.monotonic()
    workers = [threading.Thread(target=flood, args=(n * 50,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    fetches = issuer.jwks_requests - before
    return {
        "seconds": elapsed,
        "cooldown": cooldown,
        "requests": counts["rejected"] + counts["other"],
        "rejected_unknown_key": counts["rejected"],
        "fetches": fetches,
        "fetch_limit": int(elapsed // cooldown) + 1,
        "cache": verifier.cache_info(),
    }


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _ES256Issuer:
    """ES256 signing is ~50x cheaper than RS256, so tens of thousands of valid tokens stay affordable."""

    def __init__(self, issuer: FakeIssuer) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "kid": "bench-ec",
            "alg": "ES256",
            "use": "sig",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
        self.header = b64url(json.dumps({"alg": "ES256", "kid": "bench-ec", "typ": "JWT"}).encode())

    def mint(self) -> str:
        claims = self.issuer.claims(environment_uuid=self.issuer.environment_uuid)
        signing_input = f"{self.header}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def memory(issuer: FakeIssuer, tokens: int, cache_size: int = 4096) -> dict[str, Any]:
    """Verify ``tokens`` distinct valid tokens; RSS and cache sizes along the way."""
    es = _ES256Issuer(issuer)
    verifier = Verifier(
        issuer=issuer.issuer,
        audience=issuer.audience,
        algorithms=("ES256",),
        keys=StaticKeySet({"keys": [es.jwk]}, allowed_algorithms=frozenset({"ES256"})),
        cache_size=cache_size,
    )
    batch = max(1, tokens // 10)  # tokens are minted batch by batch, so they never all sit in memory
    samples: list[tuple[int, int, int]] = []
    start_rss = _rss_kib()
    done = 0
    t0 = time.perf_counter()
    while done < tokens:
        for token in [es.mint() for _ in range(min(batch, tokens - done))]:
            verifier.verify(token)
            done += 1
        if done in (batch, tokens // 2, tokens):
            samples.append((done, _rss_kib(), verifier.cache_info()["tokens"]))
    return {
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "start_rss_kib": start_rss,
        "samples": samples,
        "cache": verifier.cache_info(),
    }
