"""Shared key stores (bbverify.stores) and the fetch budget in RemoteKeySet, against real servers.

The issuer is bbverify.testing.FakeIssuer on loopback; Redis is a real
redis-server on 127.0.0.1 and a free port, started and stopped here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock

from bbverify import InvalidToken, KeysUnavailable
from bbverify.errors import ConfigurationError
from bbverify.keys import ENTRY_FORMAT, RemoteKeySet
from bbverify.stores import FileKeyStore, MemoryKeyStore, RedisKeyStore, StoreUnavailable
from bbverify.testing import FakeIssuer, SigningKey, generate_rsa_key
from benchmarks.fleet_sim import free_port


@pytest.fixture
def fake() -> Iterator[FakeIssuer]:
    with FakeIssuer() as issuer:
        yield issuer


def keyset(fake: FakeIssuer, clock: FakeClock, store: Any = None, **options: Any) -> RemoteKeySet:
    options.setdefault("timeout", 2.0)
    return RemoteKeySet(issuer=fake.issuer, key_store=store, monotonic=clock, clock=clock, **options)


# -- the file store ---------------------------------------------------------------------------


def test_file_store_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigurationError) as exc:
        FileKeyStore(shared)
    assert exc.value.key == "key_store.directory"


def test_file_store_creates_a_private_directory_and_replaces_atomically(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys")
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert store.read("a") is None
    store.write("a", b"one")
    store.write("a", b"two")
    assert store.read("a") == b"two"
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".tmp")] == []


def test_file_store_lock_is_exclusive(tmp_path: Path) -> None:
    one, two = FileKeyStore(tmp_path), FileKeyStore(tmp_path)
    with one.lock("a", 0) as held:
        assert held
        with two.lock("a", 0.05) as other:
            assert not other  # flock is per open file: a second holder waits, then gives up
    with two.lock("a", 0) as held:
        assert held  # released on exit


def test_file_store_ignores_a_file_others_could_have_written(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    store.write("a", b"x")
    Path(store.path("a")).chmod(0o666)
    with pytest.raises(StoreUnavailable):
        store.read("a")


def test_one_process_fetches_and_the_others_read_the_store(fake: FakeIssuer, tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    sets = [keyset(fake, clock, FileKeyStore(tmp_path)) for _ in range(4)]
    for ks in sets:
        assert ks.get_key(fake.signing_key.kid, "RS256").kid == fake.signing_key.kid
    assert fake.discovery_requests == 1 and fake.jwks_requests == 1


def test_a_restarted_service_verifies_from_the_store_before_any_fetch(
    fake: FakeIssuer, tmp_path: Path
) -> None:
    clock = FakeClock(1_800_000_000.0)
    keyset(fake, clock, FileKeyStore(tmp_path)).warm_up()
    fake.fail("down")
    restarted = fake.verifier(keys=keyset(fake, clock, FileKeyStore(tmp_path)), clock=clock)
    token = fake.mint(issued_at=clock())
    assert restarted.verify(token).workspace_uuid == fake.workspace_uuid
    assert fake.jwks_requests == 1


def test_the_fleet_shares_one_unknown_kid_floor(fake: FakeIssuer, tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    one = keyset(fake, clock, FileKeyStore(tmp_path), cooldown=180, store_poll=15)
    two = keyset(fake, clock, FileKeyStore(tmp_path), cooldown=180, store_poll=15)
    one.warm_up()
    two.warm_up()
    assert fake.jwks_requests == 1
    clock.advance(200)
    with pytest.raises(InvalidToken):
        one.get_key("random-1", "RS256")  # refetches: the floor has passed
    assert fake.jwks_requests == 2
    clock.advance(20)
    with pytest.raises(InvalidToken):
        two.get_key("random-2", "RS256")  # reads one's result from the store instead
    assert fake.jwks_requests == 2
    new = fake.rotate()
    clock.advance(20)
    with pytest.raises(InvalidToken):
        two.get_key(new.kid, "RS256")  # the fleet's floor holds for the genuine kid too
    clock.advance(160)
    assert two.get_key(new.kid, "RS256").kid == new.kid
    clock.advance(20)
    assert one.get_key(new.kid, "RS256").kid == new.kid  # from the store
    assert fake.jwks_requests == 3


# -- what a store returns is checked like a fresh fetch ----------------------------------------


def _entry(fake: FakeIssuer, clock: FakeClock, **changes: Any) -> bytes:
    data = {
        "format": ENTRY_FORMAT,
        "source": fake.issuer,
        "jwks_url": fake.jwks_url,
        "jwks": fake.jwks(),
        "fetched_at": clock(),
        "ttl": 600,
        "etag": None,
        "last_modified": None,
        "budget": {
            "tokens": 3,
            "updated": None,
            "last_attempt": None,
            "not_before": 0,
            "retry_until": 0,
            "failures": 0,
        },
    }
    data.update(changes)
    return json.dumps(data).encode()


def _weak_jwks() -> dict[str, Any]:
    return {"keys": [SigningKey("weak", generate_rsa_key(1024)).public_jwk()]}


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda f, c: b"{not json",
        lambda f, c: b"\xff\xfe",
        lambda f, c: _entry(f, c, format="other/1"),
        lambda f, c: _entry(f, c, source="https://elsewhere.test/oidc"),  # a foreign entry
        lambda f, c: _entry(f, c, jwks=_weak_jwks()),  # a 1024-bit key: refused like on the wire
        lambda f, c: _entry(f, c, jwks={"keys": "x"}),
        lambda f, c: _entry(f, c, fetched_at=c() + 86400),
        lambda f, c: _entry(f, c, jwks_url="http://evil.example/keys.json"),
        lambda f, c: _entry(f, c, budget={"tokens": "lots"}),
    ],
)
def test_a_corrupt_or_foreign_entry_is_ignored_and_logged(
    fake: FakeIssuer, corrupt: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = MemoryKeyStore()
    ks = keyset(fake, clock, store)
    store.write(ks.source_name, corrupt(fake, clock))
    with caplog.at_level(logging.WARNING, logger="bbverify.keys"):
        assert ks.get_key(fake.signing_key.kid, "RS256").kid == fake.signing_key.kid
    assert fake.jwks_requests == 1  # fetched from the issuer instead
    assert any("ignoring the key store's entry" in r.message for r in caplog.records)
    assert json.loads(store.read(ks.source_name) or b"")["format"] == ENTRY_FORMAT  # and repaired


def stored_tokens(directory: Path) -> float:
    (entry,) = directory.glob("*.json")
    return float(json.loads(entry.read_text())["budget"]["tokens"])


def test_status_reports_the_fleet_budget_held_in_the_store(fake: FakeIssuer, tmp_path: Path) -> None:
    """/metrics' budget gauge reads status(): with a store, the store's bucket, not the local one (f03)."""
    clock = FakeClock(1_800_000_000.0)
    first = keyset(fake, clock, FileKeyStore(tmp_path))
    first.warm_up()
    spent = stored_tokens(tmp_path)
    assert spent == pytest.approx(2.0)  # one attempt: discovery rode on the key-set request's token
    assert first.status()["budget_remaining"] == pytest.approx(spent)
    assert first.status()["budget_source"] == "store"
    # Another process that only read the entry reports the same fleet budget.
    second = keyset(fake, clock, FileKeyStore(tmp_path))
    second.warm_up()
    assert fake.jwks_requests == 1
    assert second.status()["budget_remaining"] == pytest.approx(spent)
    # The figure is as of now: the bucket refills on the wall clock.
    clock.advance(90)
    assert second.status()["budget_remaining"] == pytest.approx(spent + 0.5)


def test_keys_read_from_the_store_are_logged_as_such(
    fake: FakeIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with caplog.at_level(logging.INFO, logger="bbverify.keys"):
        keyset(fake, clock, FileKeyStore(tmp_path)).warm_up()
        keyset(fake, clock, FileKeyStore(tmp_path)).warm_up()
    lines = [r.getMessage() for r in caplog.records if "installed" in r.getMessage()]
    assert len(lines) == 2 and fake.jwks_requests == 1
    assert "key store" not in lines[0] and f"from {fake.jwks_url}" in lines[0]
    assert lines[1].startswith("installed 1 usable key(s) from the key store (fetched from ")


def test_status_reports_the_process_budget_while_the_store_is_unavailable(fake: FakeIssuer) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = MemoryKeyStore()
    ks = keyset(fake, clock, store)

    def down(name: str) -> bytes | None:
        raise StoreUnavailable("down")

    store.read = down  # type: ignore[method-assign]
    ks.warm_up()
    assert ks.status()["budget_source"] == "process"
    assert ks.status()["budget_remaining"] == pytest.approx(2.0)


# -- Redis ------------------------------------------------------------------------------------


def test_redis_store_shares_one_fetch(fake: FakeIssuer, redis_url: str) -> None:
    clock = FakeClock(1_800_000_000.0)
    prefix = f"t{free_port()}:"
    sets = [keyset(fake, clock, RedisKeyStore(redis_url, prefix=prefix)) for _ in range(3)]
    for ks in sets:
        ks.warm_up()
    assert fake.jwks_requests == 1
    with RedisKeyStore(redis_url, prefix=prefix).lock("x", 0) as held:
        assert held
        with RedisKeyStore(redis_url, prefix=prefix).lock("x", 0.05) as other:
            assert not other


def test_redis_down_falls_back_to_fetching_alone(fake: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)  # nothing listens there
    v = fake.verifier(keys=keyset(fake, clock, store), clock=clock)
    with caplog.at_level(logging.WARNING, logger="bbverify.keys"):
        assert v.verify(fake.mint(issued_at=clock())).workspace_uuid == fake.workspace_uuid
    assert any("key store unavailable" in r.message for r in caplog.records)


def with_credentials(redis_url: str, user: str, password: str) -> str:
    return redis_url.replace("redis://", f"redis://{user}:{password}@", 1)


def test_redis_credentials_and_acl_user_in_the_url_work(fake: FakeIssuer, redis_url: str) -> None:
    """The syntax docs/configuration.md gives for a Redis ACL user and password (f09)."""
    import redis

    prefix = f"acl{free_port()}:"
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "bbverify-ok",
        enabled=True,
        passwords=["+s3cret/pw"],
        keys=[f"{prefix}*"],
        commands=["+get", "+set", "+pttl", "+pexpire", "+evalsha", "+eval", "+script", "+del"],
    )
    url = with_credentials(redis_url, "bbverify-ok", "s3cret%2Fpw")  # percent-encoded "/"
    ks = keyset(fake, FakeClock(1_800_000_000.0), RedisKeyStore(url, prefix=prefix))
    ks.warm_up()
    assert ks.status()["key_store"] == "ok" and ks.status()["budget_source"] == "store"
    assert admin.keys(f"{prefix}*")


@pytest.mark.parametrize("problem", ["wrong password", "no permission"])
def test_a_redis_store_that_refuses_us_shows_as_misconfigured_and_we_still_verify(
    problem: str, fake: FakeIssuer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A permanent refusal differs from an outage in status() (f06); requests never fail because of it."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "bbverify-nokeys", enabled=True, passwords=["+right"], keys=["elsewhere:*"], commands=["+@all"]
    )
    password = "wrong" if problem == "wrong password" else "right"
    clock = FakeClock(1_800_000_000.0)
    ks = keyset(fake, clock, RedisKeyStore(with_credentials(redis_url, "bbverify-nokeys", password)))
    v = fake.verifier(keys=ks, clock=clock)
    with caplog.at_level(logging.WARNING, logger="bbverify.keys"):
        assert v.verify(fake.mint(issued_at=clock())).workspace_uuid == fake.workspace_uuid
    status = ks.status()
    assert status["key_store"] == "misconfigured", status
    assert status["key_store_error"] and status["budget_source"] == "process"
    assert any(r.levelno == logging.ERROR and "refused" in r.message for r in caplog.records)


def test_a_redis_outage_shows_as_unavailable_not_misconfigured(fake: FakeIssuer) -> None:
    clock = FakeClock(1_800_000_000.0)
    ks = keyset(fake, clock, RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2))
    assert ks.status()["key_store"] == "unknown"
    ks.warm_up()
    assert ks.status()["key_store"] == "unavailable"
    assert keyset(fake, clock).status()["key_store"] is None  # no store at all


def test_a_file_store_entry_others_could_write_shows_as_misconfigured(
    fake: FakeIssuer, tmp_path: Path
) -> None:
    clock = FakeClock(1_800_000_000.0)
    keyset(fake, clock, FileKeyStore(tmp_path)).warm_up()
    (entry,) = tmp_path.glob("*.json")
    os.chmod(entry, 0o666)  # not private: refused until someone fixes the mode
    ks = keyset(fake, clock, FileKeyStore(tmp_path))
    ks.warm_up()
    assert ks.status()["key_store"] == "misconfigured"
    assert "not a regular file of this user" in ks.status()["key_store_error"]


def test_redis_tls_options_in_the_url_reach_the_client() -> None:
    """The documented rediss:// options (f09) are passed on; nothing connects yet."""
    store = RedisKeyStore(
        "rediss://user:pw@127.0.0.1:1/0?ssl_ca_certs=/etc/ssl/redis-ca.pem&ssl_check_hostname=true"
    )
    options = store._client.connection_pool.connection_kwargs
    assert options["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem" and options["username"] == "user"
    assert options["socket_timeout"] == 0.25


@pytest.mark.parametrize(
    "query",
    ["socket_timeout=30", "socket_connect_timeout=30", "retry_on_timeout=true", "ssl_ca_cert=/x", "db=zero"],
)
def test_redis_url_options_that_undo_our_deadlines_or_do_not_exist_are_start_up_errors(query: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        RedisKeyStore(f"redis://:secret@127.0.0.1:1/0?{query}")
    assert exc.value.key == "key_store.url" and "secret" not in str(exc.value)


def test_redis_client_without_timeouts_is_refused() -> None:
    import redis

    with pytest.raises(ConfigurationError) as exc:
        RedisKeyStore(client=redis.Redis(host="127.0.0.1", port=1))  # redis-py's default: 5 s
    assert exc.value.key == "key_store.client"
    assert RedisKeyStore(client=redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.5))


# -- conditional requests, max-age, Retry-After -----------------------------------------------


def test_validators_make_the_next_fetch_conditional_and_304_renews(fake: FakeIssuer) -> None:
    clock = FakeClock(1_800_000_000.0)
    fake.cache_control = "max-age=600"
    ks = keyset(fake, clock, fetch_interval=1)
    ks.warm_up()
    clock.advance(601)
    ks.get_key(fake.signing_key.kid, "RS256")  # starts the background refresh
    assert ks._inflight is None or ks._wait_for(ks._inflight, 5)
    assert fake.not_modified_answers == 1 and fake.jwks_requests == 2
    clock.advance(300)
    ks.get_key(fake.signing_key.kid, "RS256")  # renewed: no refresh yet
    assert fake.jwks_requests == 2


def test_max_age_is_honoured_within_bounds(fake: FakeIssuer) -> None:
    clock = FakeClock(1_800_000_000.0)
    fake.cache_control = "max-age=5"
    ks = keyset(fake, clock, min_cache_ttl=300, max_cache_ttl=900, fetch_interval=1)
    ks.warm_up()
    clock.advance(100)  # past max-age, inside the floor
    ks.get_key(fake.signing_key.kid, "RS256")
    assert fake.jwks_requests == 1
    fake.cache_control = "max-age=100000"
    clock.advance(250)
    ks.get_key(fake.signing_key.kid, "RS256")
    assert ks._inflight is None or ks._wait_for(ks._inflight, 5)
    assert fake.jwks_requests == 2
    clock.advance(901)  # the ceiling, not a day
    ks.get_key(fake.signing_key.kid, "RS256")
    assert ks._inflight is None or ks._wait_for(ks._inflight, 5)
    assert fake.jwks_requests == 3


@pytest.mark.parametrize("http_date", [False, True])
def test_no_request_before_retry_after(fake: FakeIssuer, http_date: bool) -> None:
    clock = FakeClock(1_800_000_000.0)
    fake.limit_requests(2, 3600, clock=clock, http_date=http_date)
    ks = keyset(fake, clock, fetch_interval=0.001, cooldown=0, failure_backoff=0.001, max_backoff=0.001)
    ks.warm_up()  # discovery + key set: the whole allowance
    clock.advance(1)
    with pytest.raises(InvalidToken):
        ks.get_key("random", "RS256")  # answered 429
    statuses = [r.status for r in fake.requests]
    assert statuses == [200, 200, 429]
    for _ in range(50):
        clock.advance(60)
        with pytest.raises((InvalidToken, KeysUnavailable)):
            ks.get_key("random", "RS256")
        ks.warm_up()  # not even an explicit warm-up asks; the cached keys still serve
    assert not any(r.early for r in fake.requests)
    assert len(fake.requests) == 3
    clock.advance(3600)
    ks.warm_up()
    assert not any(r.early for r in fake.requests)
    assert fake.requests[-1].status == 200


def test_a_token_for_another_workspace_costs_no_fetch(fake: FakeIssuer, tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    fake.limit_requests(60, 3600, clock=clock)  # records every request
    v = fake.verifier(keys=keyset(fake, clock, FileKeyStore(tmp_path)), clock=clock)
    with FakeIssuer(workspace="elsewhere") as other:
        for _ in range(20):
            token = other.mint(issued_at=clock(), header={"kid": os.urandom(8).hex()})
            with pytest.raises(InvalidToken) as exc:
                v.verify(token)
            assert exc.value.code == "issuer_mismatch"
    assert fake.requests == []
