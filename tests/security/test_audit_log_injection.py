"""The audit log line escapes control characters in claim values, so a CR/LF in a claim cannot
forge a second log line; structured consumers still get the exact value.

Regression test from the adversarial review (it failed before its fix).
"""

from __future__ import annotations

import logging

import pytest

from bbverify.audit import AUDIT_LOGGER
from bbverify.testing import FakeIssuer


def test_audit_log_escapes_control_characters_in_claims(
    issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # Claim values reach the audit line; a CR/LF in one must not forge a second line.
    repo = "{1de489be-0000-4000-8000-000000000001}\nallow code=ok repository=forged"
    step = "{1de489be-0000-4000-8000-000000000002}"
    token = issuer.mint(repository_uuid=repo, step_uuid=step)
    verifier = issuer.verifier()
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER.name):
        verifier.verify(token)
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER.name]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    assert "\\n" in lines[0]
    # Structured consumers still get the exact value.
    record = next(r for r in caplog.records if r.name == AUDIT_LOGGER.name)
    assert record.bbverify["repository"] == repo  # type: ignore[attr-defined]
