"""Helpers shared by the security tests: forging tokens and asserting rejections.

Loopback servers come from the suite's one harness, ``tests/loopback.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bbverify import InvalidToken, VerificationError, Verifier
from bbverify.testing import FakeIssuer, b64url

__all__ = ["assert_rejected", "b64url", "compact", "jdump"]


def jdump(obj: Any) -> bytes:
    """Compact JSON, as a signer would write it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def compact(header: bytes, payload: bytes, signature: bytes) -> str:
    """Assemble a compact JWS from raw parts (no signing)."""
    return f"{b64url(header)}.{b64url(payload)}.{b64url(signature)}"


def assert_rejected(
    verifier: Verifier,
    issuer: FakeIssuer,
    token: object,
    code: str | set[str],
    error: type[VerificationError] = InvalidToken,
) -> VerificationError:
    """``token`` is refused with exactly ``error``/``code``, and a fresh valid token still passes.

    The second half catches poisoned caches: a rejection must leave no state
    that changes the next decision.
    """
    with pytest.raises(VerificationError) as info:
        verifier.verify(token)  # type: ignore[arg-type]
    exc = info.value
    assert type(exc) is error, repr(exc)
    codes = {code} if isinstance(code, str) else code
    assert exc.code in codes, repr(exc)
    claims = verifier.verify(issuer.mint())
    assert claims.workspace_uuid == issuer.workspace_uuid
    return exc
