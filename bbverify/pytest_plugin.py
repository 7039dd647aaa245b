"""pytest plugin (installed with bbverify): the ``bbverify_issuer`` fixture.

Use it to test your own protected API offline::

    def test_deploy_gate(bbverify_issuer):
        verifier = bbverify_issuer.verifier()
        token = bbverify_issuer.mint(environment_uuid=bbverify_issuer.environment_uuid)
        assert verifier.verify(token).is_deployment
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import FakeIssuer

__all__ = ["bbverify_issuer"]


@pytest.fixture
def bbverify_issuer() -> Iterator[FakeIssuer]:
    """A started :class:`~bbverify.testing.FakeIssuer` on 127.0.0.1, stopped after the test."""
    with FakeIssuer() as issuer:
        yield issuer
