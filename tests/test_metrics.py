"""bbverify.metrics and the key-set status it reads."""

from __future__ import annotations

import gc

import pytest
from clock import FakeClock
from prometheus_client import CollectorRegistry, generate_latest

from bbverify.errors import KeysUnavailable
from bbverify.keys import RemoteKeySet, StaticKeySet
from bbverify.metrics import VerifierMetrics
from bbverify.testing import FakeIssuer


def test_remote_key_set_status_loaded_stale_failures(issuer: FakeIssuer) -> None:
    clock = FakeClock(1000.0)
    keys = RemoteKeySet(jwks_url=issuer.jwks_url, cache_ttl=10, max_stale=100, monotonic=clock)
    before = keys.status()
    assert before["loaded"] is False and before["age_seconds"] is None and before["keys"] == 0
    keys.warm_up()
    fresh = keys.status()
    assert fresh["loaded"] is True and fresh["stale"] is False and fresh["keys"] >= 1
    assert fresh["fetches"] == 1 and fresh["failures"] == 0
    clock.advance(20)  # past cache_ttl, within max_stale: served stale
    stale = keys.status()
    assert stale["loaded"] is True and stale["stale"] is True
    assert stale["age_seconds"] == pytest.approx(20, abs=0.5)
    clock.advance(200)  # past max_stale: unusable
    assert keys.status()["loaded"] is False


def test_failures_are_counted() -> None:
    with FakeIssuer() as fake:
        fake.fail("500")
        keys = RemoteKeySet(jwks_url=fake.jwks_url, timeout=2, failure_backoff=0)
        with pytest.raises(KeysUnavailable):
            keys.warm_up()
        status = keys.status()
    assert status["failures"] == 1 and status["loaded"] is False and status["last_error"]


def test_static_key_set_status(issuer: FakeIssuer) -> None:
    status = StaticKeySet(issuer.jwks()).status()
    assert status["loaded"] is True and status["keys"] == len(issuer.jwks()["keys"])


def test_watch_chains_hooks_and_does_not_keep_verifiers_alive(issuer: FakeIssuer) -> None:
    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    verifier = metrics.watch(issuer.verifier())
    assert metrics.watch(verifier) is verifier  # twice is once
    verifier.verify(issuer.mint())
    text = generate_latest(registry).decode()
    assert text.count('bbverify_decisions_total{code="ok"') == 1
    assert f'bbverify_key_set_keys{{issuer="{issuer.issuer}"}}' in text
    del verifier
    gc.collect()
    assert metrics.verifiers() == []
    assert "bbverify_key_set_keys{" not in generate_latest(registry).decode()


def test_budget_is_reported_when_a_key_source_has_one(issuer: FakeIssuer) -> None:
    class Budgeted(StaticKeySet):
        def status(self) -> dict[str, object]:
            return {**super().status(), "budget_remaining": 42}

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    verifier = metrics.watch(issuer.verifier(keys=Budgeted(issuer.jwks())))
    text = generate_latest(registry).decode()
    assert f'bbverify_key_fetch_budget_remaining{{issuer="{issuer.issuer}"}} 42.0' in text
    assert verifier is not None
