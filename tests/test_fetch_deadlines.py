"""Issue 10, item 2: every fetch ends at its deadline, whatever the server does.

Servers here are real sockets on 127.0.0.1 (tests/misbehaving.py) that stall
for far longer than the deadline; a fetch that only had per-read timeouts
would last as long as the stall. "Before the stall ends" is checked against
the server's own count of connections still stalling, not against a timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from misbehaving import MisbehavingServer, misbehaving

from bbverify import InvalidToken, KeysUnavailable, RemoteKeySet, Verifier, verify
from bbverify.fetch import FetchError, fetch_json, private_session
from bbverify.policies import Repositories
from bbverify.testing import FakeIssuer

STALLS = ("silent", "trickle_status", "trickle_headers", "trickle_body", "endless_headers")


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("bbverify-jwks", "bbverify-ipranges")]


def _wait_threads_gone(limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while _loader_threads() and time.monotonic() < end:
        time.sleep(0.05)


@pytest.fixture
def stalled_issuer(issuer: FakeIssuer) -> Iterator[MisbehavingServer]:
    with misbehaving("ok", body=issuer.jwks, max_stall=12.0) as server:
        yield server


@pytest.mark.parametrize("mode", STALLS)
def test_fetch_ends_at_its_deadline(mode: str) -> None:
    with misbehaving(mode, max_stall=10.0) as server:
        started = time.monotonic()
        with pytest.raises((FetchError, requests.RequestException)):
            fetch_json(private_session(), server.url, deadline=started + 1.0, max_bytes=65536)
        elapsed = time.monotonic() - started
        # The stall lasts 10 s; per-read timeouts alone would last as long.
        assert elapsed < 3.0, f"{mode}: fetch lasted {elapsed:.1f}s past a 1s deadline"
        assert server.stalling == 1  # and the server was still stalling when it ended


@pytest.mark.parametrize("mode", ["silent", "trickle_headers", "trickle_body"])
def test_https_fetch_ends_at_its_deadline(mode: str) -> None:
    """Over TLS too: the handshake ("silent" never answers the ClientHello), headers and body."""
    with misbehaving(mode, max_stall=10.0, tls=True) as server:
        session = private_session()
        session.verify = server.cert_path
        started = time.monotonic()
        with pytest.raises((FetchError, requests.RequestException)):
            fetch_json(session, server.url, deadline=started + 1.0, max_bytes=65536)
        assert time.monotonic() - started < 3.0
        assert server.stalling == 1


def test_https_fetch_works(issuer: FakeIssuer) -> None:
    with misbehaving("ok", body=issuer.jwks, tls=True) as server:
        session = private_session()
        session.verify = server.cert_path
        document = fetch_json(session, server.url, deadline=time.monotonic() + 5, max_bytes=65536)
        assert document == issuer.jwks()
        # and again on the kept-alive connection
        assert fetch_json(session, server.url, deadline=time.monotonic() + 5, max_bytes=65536) == document
        assert server.connections == 1


def test_fetch_ends_at_its_deadline_on_a_reused_connection(issuer: FakeIssuer) -> None:
    session = private_session()
    with misbehaving("ok", body=issuer.jwks, max_stall=10.0) as server:
        assert fetch_json(session, server.url, deadline=time.monotonic() + 2, max_bytes=65536)
        server.mode = "trickle_headers"
        started = time.monotonic()
        with pytest.raises((FetchError, requests.RequestException)):
            fetch_json(session, server.url, deadline=started + 1.0, max_bytes=65536)
        assert time.monotonic() - started < 3.0
        assert server.stalling == 1
        assert server.connections == 1  # the stalled request came on the kept-alive connection


def test_cold_start_recovers_while_the_first_fetch_still_trickles(
    issuer: FakeIssuer, stalled_issuer: MisbehavingServer
) -> None:
    stalled_issuer.queue("trickle_headers")  # the first fetch trickles for 12 s; later ones answer
    verifier = Verifier(
        issuer=issuer.issuer, audience=issuer.audience, jwks_url=stalled_issuer.url,
        timeout=1.0, failure_backoff=0.2,
    )
    token = issuer.mint()
    accepted = False
    for _ in range(100):
        try:
            verifier.verify(token)
        except KeysUnavailable:
            time.sleep(0.1)
            continue
        accepted = True
        break
    assert accepted
    assert stalled_issuer.stalling == 1, "accepted only after the trickle ended"


def test_rotation_is_followed_while_a_refresh_trickles(issuer: FakeIssuer) -> None:
    with FakeIssuer() as own, misbehaving("ok", body=own.jwks, max_stall=12.0) as server:
        verifier = Verifier(
            issuer=own.issuer, audience=own.audience, jwks_url=server.url,
            timeout=1.0, cache_ttl=0.5, cooldown=0.0, failure_backoff=0.2,
        )
        verifier.warm_up()
        verifier.verify(own.mint())
        own.rotate(keep_old=False)
        server.queue("trickle_headers")
        time.sleep(0.6)  # past the TTL: the next use refreshes in the background
        token = own.mint()
        accepted = False
        for _ in range(100):
            try:
                verifier.verify(token)
            except (KeysUnavailable, InvalidToken):  # 503, or an unknown kid until the refetch lands
                time.sleep(0.1)
                continue
            accepted = True
            break
        assert accepted
        assert server.stalling == 1, "the new key was used only after the trickle ended"


def test_a_load_past_its_deadline_frees_the_slot_even_with_a_plain_session(issuer: FakeIssuer) -> None:
    """A caller's own session has no watchdog: the loader gives up on the load instead."""
    with misbehaving("ok", body=issuer.jwks, max_stall=8.0, interval=0.1) as server:
        server.queue("trickle_headers")  # the first load stalls for 8 s; later ones answer
        keys = RemoteKeySet(jwks_url=server.url, timeout=0.3, failure_backoff=0.0, session=requests.Session())
        key = None
        for _ in range(100):
            try:
                key = keys.get_key(issuer.signing_key.kid, "RS256")
                break
            except KeysUnavailable:
                time.sleep(0.05)
        assert key is not None
        assert server.stalling == 1, "keys arrived only after the stalled load ended"
    _wait_threads_gone()


def test_stuck_loads_are_bounded(issuer: FakeIssuer) -> None:
    with misbehaving("trickle_headers", max_stall=8.0, interval=0.1) as server:
        keys = RemoteKeySet(jwks_url=server.url, timeout=0.2, failure_backoff=0.0, session=requests.Session())
        most = 0
        for _ in range(20):
            with pytest.raises(KeysUnavailable):
                keys.get_key("nope", "RS256")
            most = max(most, len(_loader_threads()))
            time.sleep(0.05)
        assert keys.fetch_count >= 2  # a stuck load did not block new ones
        assert most <= 3  # refresh.MAX_ABANDONED stuck, and one live load
    _wait_threads_gone()


def test_one_call_verify_leaves_a_bounded_number_of_fetch_threads(issuer: FakeIssuer) -> None:
    _wait_threads_gone()
    with misbehaving("trickle_headers", max_stall=10.0, interval=0.05) as server:
        options = {
            "issuer": issuer.issuer, "audience": issuer.audience, "jwks_url": server.url,
            "timeout": 0.1, "failure_backoff": 0.0,
        }
        most = 0
        for _ in range(30):
            with pytest.raises(KeysUnavailable):
                verify(issuer.mint(), policies=[Repositories(issuer.repository_uuid)], **options)
            most = max(most, len(_loader_threads()))
        assert most <= 2
    _wait_threads_gone()


class _UnhashableRule:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnhashableRule)

    def __call__(self, claims: object, context: object) -> None:
        return None


def test_one_call_verify_fetches_once_whatever_the_rules() -> None:
    with FakeIssuer() as own:
        before = (own.discovery_requests, own.jwks_requests)
        for i in range(20):
            rules = [Repositories(own.repository_uuid)] if i % 2 else [_UnhashableRule()]
            verify(own.mint(), issuer=own.issuer, audience=own.audience, policies=rules)
        assert (own.discovery_requests - before[0], own.jwks_requests - before[1]) == (1, 1)
