"""A key-set fetch thread killed by a BaseException (gevent's Timeout, SystemExit) neither
wedges the key set nor outlives its failure: 503 while it lasts, then recovery.

Regression tests from the adversarial review (each failed before its fix).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from bbverify.errors import KeysUnavailable
from bbverify.testing import FakeIssuer


class _Abort(BaseException):
    """Stands for a BaseException escaping a custom session (gevent's Timeout, SystemExit...)."""


class _AbortOnce(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.aborted = 0

    def get(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.aborted == 0:
            self.aborted += 1
            raise _Abort("fetch thread aborted")
        return super().get(*args, **kwargs)


def test_fetch_thread_dying_with_base_exception_does_not_wedge_the_key_set(issuer: FakeIssuer) -> None:
    # Before: the future was never resolved and _inflight never cleared, so every
    # later call waited on the dead fetch: 503 forever, even after the issuer was fine.
    session = _AbortOnce()
    verifier = issuer.verifier(session=session, failure_backoff=0, cooldown=0, timeout=2)
    # The aborted fetch counts as failed (no backoff here), so get_key's retry fetches again.
    claims = verifier.verify(issuer.mint())
    assert claims.workspace_uuid == issuer.workspace_uuid
    assert session.aborted == 1
    assert verifier.keys.fetch_count == 2  # type: ignore[attr-defined]


def test_fetch_thread_dying_with_base_exception_answers_503_then_recovers(issuer: FakeIssuer) -> None:
    session = _AbortOnce()
    verifier = issuer.verifier(session=session, failure_backoff=3600, timeout=2)
    with pytest.raises(KeysUnavailable):
        verifier.verify(issuer.mint())
    verifier.warm_up()  # a forced fetch is not stuck behind the dead one
    assert verifier.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid
