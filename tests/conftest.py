"""Shared fixtures. The ``bbverify_issuer`` fixture comes from bbverify's own pytest plugin."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def fresh_issuer() -> Iterator[FakeIssuer]:
    """A fake issuer of the test's own, for tests that rotate keys, break the issuer or count its requests."""
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module")
def other_issuer() -> Iterator[FakeIssuer]:
    """A second workspace's issuer (module-scoped): its tokens must be refused where ``issuer``'s pass."""
    with FakeIssuer(workspace="other-workspace") as fake:
        yield fake


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on 127.0.0.1 (ephemeral port) for the module; ``redis://...`` URL."""
    if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    from benchmarks.fleet_sim import redis_server  # imported here: only Redis tests need it

    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


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
