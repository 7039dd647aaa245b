"""Sections 1-4: the crypto floor, PyJWT, joserfc and bbverify, per token."""

from __future__ import annotations

import base64
import gc
import tracemalloc
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt as jose_jwt
from joserfc.jwk import RSAKey

from bbverify.testing import FakeIssuer

from .fixtures import CLIENT_IP, mint_tokens, realistic_rules
from .timing import Case, Result, measure

FLOOR = "floor: cryptography RSA verify"
PYJWT = "PyJWT jwt.decode"
JOSERFC = "joserfc decode + claims"
FRESH = "bbverify fresh, no rules"
FRESH_RULES = "bbverify fresh, 4 rules"
REPEATED = "bbverify repeated, no rules"
REPEATED_RULES = "bbverify repeated, 4 rules"


def _b64(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def run(issuer: FakeIssuer, *, tokens: int, rounds: int) -> tuple[dict[str, Result], dict[str, Any]]:
    pool = mint_tokens(issuer, tokens)
    repeated = pool[0]
    public_key = issuer.signing_key.private_key.public_key()
    split = [(t.rpartition(".")[0].encode("ascii"), _b64(t.rpartition(".")[2])) for t in pool]
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    rules, rules_kind = realistic_rules(issuer)

    def floor() -> int:
        verify = public_key.verify
        for signing_input, signature in split:
            verify(signature, signing_input, pkcs1, sha256)
        return len(split)

    require = {"require": ["exp", "iat", "aud", "iss"]}

    def pyjwt_decode() -> int:
        for t in pool:
            pyjwt.decode(
                t,
                public_key,
                algorithms=["RS256"],
                audience=issuer.audience,
                issuer=issuer.issuer,
                options=require,
            )
        return len(pool)

    jose_key = RSAKey.import_key(issuer.signing_key.public_jwk())
    registry = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer.issuer},
        aud={"essential": True, "value": issuer.audience},
        exp={"essential": True},
        iat={"essential": True},
    )

    def joserfc_decode() -> int:
        for t in pool:
            registry.validate(jose_jwt.decode(t, jose_key, algorithms=["RS256"]).claims)
        return len(pool)

    plain = issuer.verifier()
    ruled = issuer.verifier(policies=rules)
    for v in (plain, ruled):
        v.warm_up()
        v.verify(repeated, client_ip=CLIENT_IP)  # also proves the rules allow it

    def fresh(verifier: Any) -> Any:
        def go() -> int:
            verify = verifier.verify
            for t in pool:
                verify(t, client_ip=CLIENT_IP)
            return len(pool)

        return go

    def again(verifier: Any) -> Any:
        batch = len(pool) * 10

        def go() -> int:
            verify = verifier.verify
            for _ in range(batch):
                verify(repeated, client_ip=CLIENT_IP)
            return batch

        return go

    cases = [
        Case(FLOOR, floor),
        Case(PYJWT, pyjwt_decode),
        Case(JOSERFC, joserfc_decode),
        Case(FRESH, fresh(plain), setup=plain.clear_cache),
        Case(FRESH_RULES, fresh(ruled), setup=ruled.clear_cache),
        Case(REPEATED, again(plain)),
        Case(REPEATED_RULES, again(ruled)),
    ]
    info = {"token_bytes": len(repeated), "tokens": len(pool), "rules": rules_kind}
    results = measure(cases, rounds)
    info["bytes_per_cached_token"] = cached_token_bytes(issuer, pool)
    return results, info


def cached_token_bytes(issuer: FakeIssuer, pool: list[str]) -> float:
    """Memory one verified token holds in the verifier's cache, in bytes (tracemalloc, mean over ``pool``).

    What a fresh verifier holds more after verifying every token of ``pool``
    than before (claims, frozen payload, cache entry, the token string's
    dict slot; the token string itself belongs to the caller).
    """
    verifier = issuer.verifier(cache_size=len(pool) + 1)
    verifier.warm_up()
    verifier.verify(pool[0], client_ip=CLIENT_IP)  # first-call memos (header, parser) are not per token
    verifier.clear_cache()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t in pool:
            verifier.verify(t, client_ip=CLIENT_IP)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert verifier.cache_info()["tokens"] == len(pool)
    return (after - before) / len(pool)
