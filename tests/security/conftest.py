"""Fixtures for the security tests: one warmed-up verifier per module."""

from __future__ import annotations

import pytest

from bbverify import Verifier
from bbverify.testing import FakeIssuer


@pytest.fixture(scope="module")
def verifier(issuer: FakeIssuer) -> Verifier:
    """The default (RS256-only) verifier for the module's issuer, keys already fetched.

    The long cooldown keeps unknown-kid attacks from refetching however slow
    the machine is, so fetch counts in these tests are exact.
    """
    v = issuer.verifier(cooldown=3600)
    v.warm_up()
    return v
