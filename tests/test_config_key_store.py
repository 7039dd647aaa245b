"""Configuration of the fetch budget and shared key stores: TOML, environment, Flask."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from bbverify.config import verifier_from_env, verifier_from_mapping, verifier_from_toml
from bbverify.errors import ConfigurationError
from bbverify.flask import EXTENSION_KEY, BBVerify
from bbverify.keys import RemoteKeySet
from bbverify.stores import FileKeyStore, MemoryKeyStore, RedisKeyStore

UUID = "{11111111-2222-3333-4444-555555555555}"


def remote(verifier: object) -> RemoteKeySet:
    keys = verifier.keys  # type: ignore[attr-defined]
    assert isinstance(keys, RemoteKeySet)
    return keys


def test_toml_budget_and_file_store(tmp_path: Path) -> None:
    path = tmp_path / "bbverify.toml"
    path.write_text(
        f"""
[bbverify]
workspace = "acme"
workspace_uuid = "{UUID}"
fetch_interval = 300
fetch_burst = 2
cooldown = 240
max_backoff = 900
min_cache_ttl = 120
max_cache_ttl = 1800
store_poll = 10

[bbverify.key_store]
kind = "file"
directory = "{tmp_path / "keys"}"
"""
    )
    keys = remote(verifier_from_toml(path))
    assert isinstance(keys.key_store, FileKeyStore)
    assert keys.key_store.directory == str(tmp_path / "keys")
    assert (keys.budget.interval, keys.budget.burst, keys.budget.cooldown) == (300.0, 2, 240.0)
    assert keys.budget.max_backoff == 900.0
    assert (keys.min_cache_ttl, keys.max_cache_ttl, keys.store_poll) == (120.0, 1800.0, 10.0)


def test_redis_store_from_a_mapping() -> None:
    keys = remote(
        verifier_from_mapping(
            {
                "workspace": "acme",
                "workspace_uuid": UUID,
                "key_store": {
                    "kind": "redis",
                    "url": "redis://127.0.0.1:1/0",
                    "timeout": 0.5,
                    "prefix": "x:",
                },
            }
        )
    )
    assert isinstance(keys.key_store, RedisKeyStore) and keys.key_store.prefix == "x:"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"kind": "disk"}, "key_store.kind"),
        ({"directory": "/tmp"}, "key_store.kind"),
        ({"kind": "file", "dirctory": "/tmp/x"}, "key_store.dirctory"),
        ({"kind": "file"}, "key_store.directory"),
        ({"kind": "file", "directory": "/tmp/x", "url": "redis://h"}, "key_store.url"),
        ({"kind": "redis", "url": "http://h"}, "key_store.url"),
        ({"kind": "redis", "url": "redis://h", "timeout": 30}, "key_store.timeout"),
        ({"kind": "redis", "url": "redis://h", "timeout": "soon"}, "key_store.timeout"),
    ],
)
def test_bad_key_store_tables_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_mapping({"workspace": "acme", "workspace_uuid": UUID, "key_store": table})
    assert exc.value.key == key


def test_bad_budget_setting_names_the_key() -> None:
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_mapping({"workspace": "acme", "workspace_uuid": UUID, "fetch_burst": 0})
    assert exc.value.key == "fetch_burst"


def test_environment(tmp_path: Path) -> None:
    env = {
        "BBVERIFY_WORKSPACE": "acme",
        "BBVERIFY_WORKSPACE_UUID": UUID,
        "BBVERIFY_FETCH_INTERVAL": "600",
        "BBVERIFY_KEY_STORE_KIND": "file",
        "BBVERIFY_KEY_STORE_DIRECTORY": str(tmp_path),
    }
    keys = remote(verifier_from_env(env))
    assert isinstance(keys.key_store, FileKeyStore) and keys.budget.interval == 600.0
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_env({**env, "BBVERIFY_KEY_STORE_DIRECTORY": "", "BBVERIFY_KEY_STORE_KIND": "file"})
    assert exc.value.key == "BBVERIFY_KEY_STORE_DIRECTORY"
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_env({**env, "BBVERIFY_KEY_STORE_DIRECTRY": "/x"})
    assert exc.value.key == "BBVERIFY_KEY_STORE_DIRECTRY"


def test_flask_config() -> None:
    app = Flask(__name__)
    app.config.update(
        BBVERIFY_WORKSPACE="acme",
        BBVERIFY_WORKSPACE_UUID=UUID,
        BBVERIFY_FETCH_BURST=1,
        BBVERIFY_KEY_STORE_KIND="memory",
    )
    BBVerify(app)
    keys = remote(app.extensions[EXTENSION_KEY].verifier)
    assert isinstance(keys.key_store, MemoryKeyStore) and keys.budget.burst == 1
