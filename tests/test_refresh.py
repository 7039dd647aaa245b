"""bbverify.refresh: the single-flight loader is composed into its owners, and owns their HTTP session."""

from __future__ import annotations

import threading

import pytest
import requests

from bbverify.addresses import AddressSet, parse_client_ip
from bbverify.ipranges import SAMPLE_FEED, AtlassianIPRanges
from bbverify.keys import RemoteKeySet
from bbverify.refresh import BackgroundLoader


def _loader(load: object = lambda: 1, session: requests.Session | None = None) -> BackgroundLoader[int]:
    installed: list[int] = []
    return BackgroundLoader(
        load,  # type: ignore[arg-type]
        lambda value, now: installed.append(value),
        lambda exc: f"failed: {exc}",
        session=session,
        timeout=5.0,
        clock=lambda: 0.0,
        name="bbverify-test",
    )


@pytest.mark.parametrize("owner", [RemoteKeySet, AtlassianIPRanges])
def test_owners_hold_a_loader_rather_than_being_one(owner: type) -> None:
    assert not issubclass(owner, BackgroundLoader)
    assert isinstance(owner.__dict__["fetch_count"], property)


def test_the_owner_shows_its_loaders_counters_and_error() -> None:
    feed = AtlassianIPRanges(SAMPLE_FEED)
    assert feed.fetch_count == feed._loader.fetch_count == 1
    assert feed.failure_count == 0 and feed.last_error is None
    feed._path = SAMPLE_FEED.with_name("missing.json")
    assert feed.refresh() is False
    assert (feed.fetch_count, feed.failure_count) == (2, 1)
    assert feed.last_error == feed._loader.last_error and "missing.json" in feed.last_error
    assert isinstance(feed.ranges(), AddressSet)  # the last good ranges stay
    assert parse_client_ip("34.199.54.113") in (feed.ranges() or AddressSet())


def test_the_key_sets_lock_is_the_loaders_even_after_a_fork_reset() -> None:
    keys = RemoteKeySet(jwks_url="https://example.invalid/keys.json")
    assert keys._lock is keys._loader.lock
    keys._loader._reset_after_fork()
    assert keys._lock is keys._loader.lock  # never a stale copy of the parent's lock


def test_a_failed_load_is_recorded_and_resolves_its_waiters() -> None:
    def boom() -> int:
        raise OSError("no route")

    loader = _loader(boom)
    with loader.lock:
        future = loader.launch_locked(0.0)
    assert loader.wait_for(future, 5.0) is False
    assert (loader.fetch_count, loader.failure_count, loader.last_error) == (1, 1, "failed: no route")
    assert loader.in_backoff(1.0, 5.0) and not loader.in_backoff(6.0, 5.0)
    assert loader.inflight is None


def test_a_private_session_is_made_once_and_dropped_after_a_fork() -> None:
    loader = _loader()
    first = loader.session()
    assert isinstance(first, requests.Session) and loader.session() is first
    loader._reset_after_fork()
    assert loader.session() is not first
    assert isinstance(loader.lock, type(threading.RLock()))


def test_a_callers_session_is_kept_across_a_fork() -> None:
    mine = requests.Session()
    loader = _loader(session=mine)
    loader._reset_after_fork()
    assert loader.session() is mine
