"""Shared fixtures. The ``bbverify_issuer`` fixture comes from bbverify's own pytest plugin."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import httpx
import pytest

from bbverify.testing import FakeIssuer


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    """A fake issuer shared by the tests of one module (key generation is slow)."""
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """An HTTP client for the adapter tests' loopback servers."""
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A temporary directory with a short path: Unix socket paths are limited to ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="bbv-") as directory:
        yield directory
