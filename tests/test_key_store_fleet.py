"""A fleet sharing one key store: clock skew, stuck locks, odd stores and replies, forks.

Each test is the fast form of a reproduction from the fleet review (ids fNN in the
section titles): several
``RemoteKeySet`` instances share one store, each with its own injectable wall
clock, against bbverify.testing.FakeIssuer on loopback; Redis is a real
redis-server on 127.0.0.1 (or a fake RESP peer on a loopback socket).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock

from bbverify import KeysUnavailable
from bbverify.budget import DEFAULT_BURST, DEFAULT_INTERVAL, FetchBudget, parse_max_age, parse_retry_after
from bbverify.config import verifier_from_layers
from bbverify.errors import ConfigurationError
from bbverify.keys import RemoteKeySet
from bbverify.stores import FileKeyStore, MemoryKeyStore, RedisKeyStore, _digest
from bbverify.testing import FakeIssuer

DAY = 86400.0


@pytest.fixture
def fake() -> Iterator[FakeIssuer]:
    with FakeIssuer() as issuer:
        yield issuer


def source(
    fake: FakeIssuer, store: Any, clock: FakeClock, skew: list[float] | None = None, **kw: Any
) -> RemoteKeySet:
    offset = skew if skew is not None else [0.0]
    kw.setdefault("timeout", 2.0)
    return RemoteKeySet(
        jwks_url=fake.jwks_url,
        key_store=store,
        clock=lambda: clock() + offset[0],
        monotonic=clock,
        **kw,
    )


# -- f06, f01: times from other hosts' clocks ------------------------------------------------


def test_two_hosts_with_skewed_clocks_share_one_budget(fake: FakeIssuer) -> None:
    # f06: a host 2 minutes ahead used to reset the fleet's bucket on every write.
    store = MemoryKeyStore()
    clock = FakeClock(time.time())
    fast = source(fake, store, clock, [120.0])
    slow = source(fake, store, clock)
    start = clock.now
    for _ in range(200):  # one simulated hour of random-kid flood on both hosts
        if clock.now - start >= 3600:
            break
        for ks in (fast, slow):
            with contextlib.suppress(Exception):
                ks.get_key(uuid.uuid4().hex, "RS256")
        clock.advance(30)
    # The documented fleet bound: burst + 3600/interval requests an hour.
    assert fake.jwks_requests <= DEFAULT_BURST + 3600 / DEFAULT_INTERVAL


def test_a_clock_jump_on_one_host_does_not_wedge_the_fleet(fake: FakeIssuer) -> None:
    # f01: a failed fetch on a host a day ahead wrote not_before a day in the future.
    store = MemoryKeyStore()
    clock = FakeClock(time.time())
    skew = [0.0]
    good = source(fake, store, clock)
    jumpy = source(fake, store, clock, skew)
    good.warm_up()
    skew[0] = DAY
    fake.fail("500")
    with pytest.raises(KeysUnavailable):
        jumpy.warm_up()
    skew[0] = 0.0
    fake.recover()
    new = fake.rotate()
    followed = None
    for step in range(1, 13):
        clock.advance(300)
        try:
            good.get_key(new.kid, "RS256")
        except Exception:
            continue
        followed = step * 300
        break
    # Within cooldown + store poll after the first read, on 300 s steps.
    assert followed is not None and followed <= 600


def test_clamp_bounds_future_times_and_keeps_the_spending() -> None:
    budget = FetchBudget()
    now = 1_000_000.0
    state = budget.new_state()
    budget.spend(state, now + DAY)
    budget.failed(state, now + DAY, retry_after=10 * DAY)
    spent = state.tokens
    budget.clamp(state, now)
    assert state.updated == now and state.last_attempt == now
    assert state.tokens == spent  # not refilled, not reset
    assert state.not_before <= now + budget.failure_backoff + 60
    assert state.retry_until <= now + budget.max_retry_after + 120
    assert budget.wait(state, now + budget.max_retry_after + 121) == 0.0


def test_an_unreadable_budget_counts_as_spent(fake: FakeIssuer) -> None:
    store = MemoryKeyStore()
    clock = FakeClock(time.time())
    ks = source(fake, store, clock)
    entry = {"format": "bbverify.keys/1", "source": ks.source_name, "budget": {"tokens": "lots"}}
    store.write(ks.source_name, json.dumps(entry).encode())
    ks.get_key(fake.signing_key.kid, "RS256")
    state = json.loads(store.read(ks.source_name) or b"{}")["budget"]
    assert state["tokens"] <= 0.0  # one token, spent: never a full bucket from garbage


# -- f12: keys this process cannot use -------------------------------------------------------


def test_a_process_that_cannot_use_the_keys_does_not_drop_them(fake: FakeIssuer) -> None:
    store = MemoryKeyStore()
    clock = FakeClock(time.time())
    kid = fake.signing_key.kid
    source(fake, store, clock).warm_up()
    odd = source(fake, store, clock, min_rsa_bits=3072)
    for _ in range(40):
        with contextlib.suppress(Exception):
            odd.get_key(kid, "RS256")
        clock.advance(15)
    assert b'"jwks"' in (store.read(odd.source_name) or b"")
    fresh = source(fake, store, clock)
    assert fresh.get_key(kid, "RS256").kid == kid


# -- f05, f05b: a fetch lock held forever ----------------------------------------------------


def test_a_wedged_file_lock_falls_back_to_fetching_alone(fake: FakeIssuer, tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys")
    ks = RemoteKeySet(jwks_url=fake.jwks_url, key_store=store, timeout=1.0)
    fd = os.open(str(tmp_path / "keys" / (_digest(ks.source_name) + ".lock")), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: a wedged holder
        assert ks.get_key(fake.signing_key.kid, "RS256").kid == fake.signing_key.kid
        assert fake.jwks_requests == 1
    finally:
        os.close(fd)


def test_a_redis_lock_without_expiry_goes_stale(fake: FakeIssuer, redis_url: str) -> None:
    import redis

    store = RedisKeyStore(redis_url, prefix=f"t{uuid.uuid4().hex}:")
    ks = RemoteKeySet(jwks_url=fake.jwks_url, key_store=store, timeout=1.0)
    client = redis.Redis.from_url(redis_url)
    lock_key = f"{store.prefix}lock:{_digest(ks.source_name)}"
    client.set(lock_key, b"someone")  # no expiry
    assert ks.get_key(fake.signing_key.kid, "RS256").kid == fake.signing_key.kid
    ttl = client.pttl(lock_key)
    assert 0 < ttl <= store.lock_ttl * 1000  # given our TTL, so it expires like ours


def test_lock_ttl_must_exceed_the_fetch_timeout(fake: FakeIssuer, redis_url: str) -> None:
    store = RedisKeyStore(redis_url, lock_ttl=2.0)
    with pytest.raises(ConfigurationError) as exc:
        RemoteKeySet(jwks_url=fake.jwks_url, key_store=store, timeout=2.0)
    assert exc.value.key == "key_store.lock_ttl"


# -- f07: any exception from the Redis client ------------------------------------------------


def test_an_odd_redis_reply_falls_back_without_internals(fake: FakeIssuer) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            for _ in range(10_000):
                if stop.is_set() or not conn.recv(65536):
                    return
                conn.sendall(b"+OK\r\n")  # well-formed, never what redis-py expects

    def serve() -> None:
        server.settimeout(0.2)
        for _ in range(200):
            if stop.is_set():
                return
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        store = RedisKeyStore(f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        verifier = fake.verifier(key_store=store, timeout=2)
        for _ in range(2):
            verifier.verify(fake.mint())
        assert fake.jwks_requests == 1
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_an_unexpected_error_never_reaches_the_503_text(fake: FakeIssuer) -> None:
    class Broken:
        def read(self, name: str) -> bytes | None:
            raise AttributeError("'NoneType' object has no attribute 'decode'")

        def write(self, name: str, data: bytes) -> None:
            raise AttributeError("internal")

        @contextlib.contextmanager
        def lock(self, name: str, timeout: float) -> Iterator[bool]:
            yield True

    ks = RemoteKeySet(jwks_url=fake.jwks_url, key_store=Broken(), timeout=1.0)
    with pytest.raises(KeysUnavailable) as exc:
        ks.warm_up()
    assert "NoneType" not in exc.value.message and "decode" not in exc.value.message


# -- f11: fork while a thread waits for the file lock ----------------------------------------


def test_fork_while_waiting_for_the_file_lock_does_not_keep_it(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys")
    path = str(tmp_path / "keys" / (_digest("src") + ".lock"))
    blocker = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(blocker, fcntl.LOCK_EX)
    waiting = threading.Event()
    got: list[bool] = []

    def loader() -> None:
        waiting.set()
        with store.lock("src", 3.0) as held:
            got.append(held)

    thread = threading.Thread(target=loader)
    thread.start()
    waiting.wait(2)
    time.sleep(0.05)  # the thread now polls with its descriptor open
    child = os.fork()
    if child == 0:  # a long-lived worker that never touches the store
        os.close(blocker)  # (the test's own stand-in holder is not the subject)
        time.sleep(3)
        os._exit(0)
    try:
        os.close(blocker)  # the holder goes away; the thread takes and releases the lock
        thread.join(5)
        assert got == [True]
        with FileKeyStore(tmp_path / "keys").lock("src", 0.5) as held:
            assert held  # free although the forked child is alive
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


# -- f02: ASCII digits only --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "12\u00b2"])
def test_non_ascii_digits_are_malformed(text: str) -> None:
    assert parse_retry_after(text, 0.0) is None
    assert parse_max_age(f"max-age={text}") is None


# -- f10: errors name the environment variable -------------------------------------------------


def test_a_bad_key_store_variable_is_named(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[bbverify]\nworkspace = "acme"\naudience = "ari:x"\n')
    env = {
        "BBVERIFY_KEY_STORE_KIND": "redis",
        "BBVERIFY_KEY_STORE_URL": "redis://127.0.0.1:1/0",
        "BBVERIFY_KEY_STORE_TIMEOUT": "5",
    }
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_layers(str(path), env)
    assert "BBVERIFY_KEY_STORE_TIMEOUT" in str(exc.value)
