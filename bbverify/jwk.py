"""Verifying keys: a JWK turned into a key that checks a JWS signature.

Only asymmetric algorithms exist here: an HMAC or ``none`` key cannot even be
represented, which is what makes algorithm confusion impossible. A key is
usable only for the algorithms of its own type (and its own ``alg`` when the
JWK names one), so a token cannot pick how its signature is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import ErrorCode, InvalidToken, UnusableKey
from .token import b64url_decode

__all__ = ["SUPPORTED_ALGORITHMS", "UnusableKey", "VerifyingKey", "parse_jwk"]

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_PKCS1 = padding.PKCS1v15()
_PSS = {
    bits: padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.DIGEST_LENGTH)
    for bits, h in _HASHES.items()
}
# RFC 7518 3.4: each ES algorithm is bound to exactly one curve.
_EC_CURVES: dict[str, tuple[str, type[ec.EllipticCurve], int]] = {
    "ES256": ("P-256", ec.SECP256R1, 32),
    "ES384": ("P-384", ec.SECP384R1, 48),
    "ES512": ("P-521", ec.SECP521R1, 66),
}
_RSA_ALGS = frozenset(f"{p}{b}" for p in ("RS", "PS") for b in ("256", "384", "512"))
SUPPORTED_ALGORITHMS = _RSA_ALGS | frozenset(_EC_CURVES)
MAX_RSA_BITS = 8192  # bigger moduli only cost verification time

# ROCA (CVE-2017-15361): primes from the flawed generator are 65537**a mod M
# plus a multiple of M, M a primorial, so n mod r lies in the subgroup that
# 65537 generates mod r for every small prime r | M. Every M for moduli of
# 992 bits and more includes the primes up to 353; a healthy modulus passes
# all 70 tests by chance with probability about 1e-25.
_ROCA_PRIMES = tuple(r for r in range(3, 354) if all(r % d for d in range(2, int(r**0.5) + 1)))
_ROCA_SUBGROUPS = {r: frozenset(pow(65537, k, r) for k in range(r)) for r in _ROCA_PRIMES}


def _roca_fingerprint(n: int) -> bool:
    return all(n % r in _ROCA_SUBGROUPS[r] for r in _ROCA_PRIMES)


@dataclass(frozen=True, slots=True, eq=False)
class VerifyingKey:
    """A public key from the issuer's key set, ready to check signatures."""

    kid: str | None
    kty: str
    alg: str | None
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    size_bytes: int
    curve: str | None = None

    def accepts(self, alg: str) -> bool:
        """Whether this key may check a signature made with ``alg``."""
        if self.alg is not None and self.alg != alg:
            return False
        if self.kty == "RSA":
            return alg in _RSA_ALGS
        curve = _EC_CURVES.get(alg)
        return curve is not None and curve[0] == self.curve

    def verify(self, alg: str, signature: bytes, signing_input: bytes) -> None:
        """Raise ``InvalidToken(bad_signature)`` unless the signature holds."""
        try:
            if self.kty == "RSA":
                # RFC 8017 8.2.2: the signature is exactly as long as the modulus.
                if len(signature) != self.size_bytes:
                    raise InvalidSignature
                pad = _PKCS1 if alg[0] == "R" else _PSS[alg[2:]]
                rsa_key: rsa.RSAPublicKey = self.key  # type: ignore[assignment]
                rsa_key.verify(signature, signing_input, pad, _HASHES[alg[2:]])
            else:
                if len(signature) != 2 * self.size_bytes:
                    raise InvalidSignature
                r = int.from_bytes(signature[: self.size_bytes], "big")
                s = int.from_bytes(signature[self.size_bytes :], "big")
                ec_key: ec.EllipticCurvePublicKey = self.key  # type: ignore[assignment]
                ec_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]))
        except InvalidSignature:
            raise InvalidToken("signature does not verify", code=ErrorCode.BAD_SIGNATURE) from None
        except Exception:
            # Fail closed on anything cryptography raises for odd inputs.
            raise InvalidToken("signature could not be checked", code=ErrorCode.BAD_SIGNATURE) from None


def _uint(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise UnusableKey(f"member {name!r} missing or not a string")
    try:
        raw = b64url_decode(value, name)
    except InvalidToken:
        raise UnusableKey(f"member {name!r} is not base64url") from None
    return int.from_bytes(raw, "big")


def parse_jwk(jwk: object, allowed_algorithms: frozenset[str], *, min_rsa_bits: int = 2048) -> VerifyingKey:
    """Build a :class:`VerifyingKey` from one JWK, or raise :class:`UnusableKey`."""
    if not isinstance(jwk, dict):
        raise UnusableKey("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise UnusableKey("'kid' is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise UnusableKey(f"'use' is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise UnusableKey("'key_ops' does not allow 'verify'")
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in allowed_algorithms):
        raise UnusableKey(f"'alg' {alg!r} is not an allowed algorithm")
    kty = jwk.get("kty")
    if kty == "RSA":
        if not allowed_algorithms & _RSA_ALGS:
            raise UnusableKey("no RSA algorithm is allowed")
        n, e = _uint(jwk, "n"), _uint(jwk, "e")
        bits = n.bit_length()
        if bits < min_rsa_bits or bits > MAX_RSA_BITS:
            raise UnusableKey(f"RSA modulus of {bits} bits is outside {min_rsa_bits}..{MAX_RSA_BITS}")
        if e < 3 or e % 2 == 0 or e.bit_length() > 32:
            raise UnusableKey(f"RSA exponent {e} is not sane (odd, 3 to 2**32)")
        if n % 2 == 0:
            raise UnusableKey("RSA modulus is even")
        if _roca_fingerprint(n):
            raise UnusableKey("RSA modulus has the ROCA fingerprint (CVE-2017-15361); its key is breakable")
        try:
            key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = rsa.RSAPublicNumbers(e, n).public_key()
        except Exception as exc:
            raise UnusableKey(f"RSA key rejected by cryptography: {exc}") from None
        return VerifyingKey(kid=kid, kty="RSA", alg=alg, key=key, size_bytes=(bits + 7) // 8)
    if kty == "EC":
        crv = jwk.get("crv")
        match = [(a, c) for a, c in _EC_CURVES.items() if c[0] == crv and a in allowed_algorithms]
        if not match:
            raise UnusableKey(f"EC curve {crv!r} has no allowed algorithm")
        ec_alg, (name, curve_cls, size) = match[0]
        if alg is not None and alg != ec_alg:
            raise UnusableKey(f"'alg' {alg!r} does not fit curve {name}")
        x, y = _uint(jwk, "x"), _uint(jwk, "y")
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, curve_cls()).public_key()
        except Exception as exc:
            raise UnusableKey(f"EC key rejected by cryptography: {exc}") from None
        return VerifyingKey(kid=kid, kty="EC", alg=alg, key=key, size_bytes=size, curve=name)
    raise UnusableKey(f"key type {kty!r} is not supported (RSA, EC)")
