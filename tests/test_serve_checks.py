"""``bbverify serve``'s start-up checks and what it tells the operator (findings f01, f04-f06, f10, f11).

In process: :func:`bbverify.serve.check` and the gateway's ``/readyz`` and
``/metrics`` through an ASGI client. The command itself, as users run it,
is in test_gateway_serve.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bbverify.errors import ConfigurationError
from bbverify.gateway import Gateway, gateway_from_toml
from bbverify.metrics import VerifierMetrics, key_sources
from bbverify.serve import _reset_metrics_dir, check
from bbverify.stores import FileKeyStore
from bbverify.testing import FakeIssuer

WORKSPACE_UUID = "{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}"
REPOSITORY_UUID = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
OFFLINE_ISSUER = "http://127.0.0.1:9/2.0/workspaces/acme/pipelines-config/identity/oidc"


def config(tmp_path: Path, *, top: str = "", serve: str = "", issuer: str = OFFLINE_ISSUER) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""[bbverify]
issuer = "{issuer}"
workspace_uuid = "{WORKSPACE_UUID}"
default_policy = "p"
{top}
[bbverify.policies.p]
allow = [ {{ repositories = ["{REPOSITORY_UUID}"] }} ]

[bbverify.serve]
protocol = "nginx"
{serve}
[[bbverify.serve.routes]]
path_prefix = "/"
"""
    )
    return path


# -- f01: BBVERIFY_* layered over the file, as verify --config does -----------------------------


def test_serve_applies_bbverify_variables_over_the_file(tmp_path: Path) -> None:
    path = config(tmp_path)
    store_dir = tmp_path / "keys"
    environ = {"BBVERIFY_KEY_STORE_KIND": "file", "BBVERIFY_KEY_STORE_DIRECTORY": str(store_dir)}
    gateway = gateway_from_toml(path, environ=environ, metrics=VerifierMetrics(registry=None))
    ((_, source),) = key_sources(gateway.verifier)
    assert isinstance(source.key_store, FileKeyStore)
    assert check(str(path), environ=environ)["protocol"] == "nginx"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BBVERIFY_REPOSITORIES", "not-a-uuid"),  # invalid
        ("BBVERIFY_KEY_STORE_KND", "file"),  # misspelt
        ("BBVERIFY_TIMEOUT", "soon"),  # a verifier setting
        ("BBVERIFY_ISSUER", "not a url"),  # what `bbverify fake-issuer` tells you to set, mistyped
    ],
)
def test_an_invalid_or_misspelt_variable_is_a_start_up_error_naming_it(
    variable: str, value: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        check(str(config(tmp_path)), environ={variable: value})
    assert variable in str(exc.value)


def test_the_command_exits_2_on_an_invalid_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBVERIFY_")}
    env["BBVERIFY_REPOSITORIES"] = "not-a-uuid"
    proc = subprocess.run(
        [sys.executable, "-m", "bbverify", "serve", "--config", str(config(tmp_path)), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "BBVERIFY_REPOSITORIES" in proc.stderr and "Traceback" not in proc.stderr


# -- f05: settings that would do nothing under serve ---------------------------------------------


def test_a_memory_key_store_is_refused(tmp_path: Path) -> None:
    for workers in (1, 2):
        with pytest.raises(ConfigurationError) as exc:
            check(str(config(tmp_path, top='[bbverify.key_store]\nkind = "memory"\n')), workers=workers)
        assert exc.value.key == "key_store.kind"
    with pytest.raises(ConfigurationError) as exc:  # through the environment too
        check(str(config(tmp_path)), environ={"BBVERIFY_KEY_STORE_KIND": "memory"})
    assert exc.value.key == "key_store.kind"


@pytest.mark.parametrize("spec", ['"unix"', '["unix", "10.0.0.0/8"]', '"unix, 127.0.0.1/32"'])
def test_trusting_unix_socket_proxies_is_refused_on_a_tcp_gateway(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        check(str(config(tmp_path, serve=f"trusted_proxies = {spec}\n")))
    assert exc.value.key == "serve.trusted_proxies"
    assert check(str(config(tmp_path, serve='trusted_proxies = ["127.0.0.1/32"]\n')))


# -- f10: several workers, no shared store --------------------------------------------------------


def test_several_workers_without_a_store_warn_with_the_sizing_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(config(tmp_path))
    with caplog.at_level(logging.WARNING, logger="bbverify.serve"):
        check(path, workers=2)
    (record,) = [r for r in caplog.records if r.name == "bbverify.serve"]
    assert "key_store" in record.message and "Sizing the budget" in record.message
    assert "277 s" in record.message  # 3600 x 2 / (30 - 2 x 2)


@pytest.mark.parametrize(
    ("top", "workers"),
    [
        ("", 1),
        ('[bbverify.key_store]\nkind = "file"\ndirectory = "{dir}"\n', 2),
        ("fetch_burst = 1\nfetch_interval = 280\ncooldown = 280\n", 2),
    ],
)
def test_no_warning_with_one_worker_a_store_or_a_sized_budget(
    top: str, workers: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(config(tmp_path, top=top.format(dir=tmp_path / "keys")))
    with caplog.at_level(logging.WARNING, logger="bbverify.serve"):
        check(path, workers=workers)
    assert not [r for r in caplog.records if r.name == "bbverify.serve"]


# -- f11: a user-set PROMETHEUS_MULTIPROC_DIR ------------------------------------------------------


def test_a_user_multiproc_dir_is_emptied_of_metric_files(tmp_path: Path) -> None:
    for name in ("counter_123.db", "histogram_123.db", "gauge_livesum_7.db"):
        (tmp_path / name).write_bytes(b"stale")
    _reset_metrics_dir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("other", ["notes.txt", "counter_123.db.bak", "sub"])
def test_a_user_multiproc_dir_holding_anything_else_is_refused_untouched(other: str, tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    if other == "sub":
        (tmp_path / other).mkdir()
    else:
        (tmp_path / other).write_text("mine")
    with pytest.raises(ConfigurationError) as exc:
        _reset_metrics_dir(str(tmp_path))
    assert exc.value.key == "PROMETHEUS_MULTIPROC_DIR" and other in str(exc.value)
    assert (tmp_path / "counter_1.db").exists()


def test_a_missing_user_multiproc_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="existing directory"):
        _reset_metrics_dir(str(tmp_path / "absent"))


# -- f06 and f03: the key store's state and budget on /readyz and /metrics ----------------------------


async def _get(gateway: Gateway, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw") as client:
        return await client.get(path)


def test_readyz_and_metrics_show_a_store_that_refuses_us(tmp_path: Path) -> None:
    with FakeIssuer() as fake:
        store_dir = tmp_path / "keys"
        store = f'[bbverify.key_store]\nkind = "file"\ndirectory = "{store_dir}"\n'
        top = f'audience = "{fake.audience}"\n{store}'
        path = config(tmp_path, top=top, issuer=fake.issuer)
        gateway = gateway_from_toml(path, environ={}, metrics=VerifierMetrics(CollectorRegistry()))
        gateway.verifier.warm_up()
        ready = asyncio.run(_get(gateway, "/readyz")).json()
        assert ready["ready"] is True and ready["key_stores"] == {fake.issuer: "ok"}
        metrics = asyncio.run(_get(gateway, "/metrics")).text
        assert f'bbverify_key_store_state{{issuer="{fake.issuer}",state="ok"}} 1.0' in metrics
        # The fleet's budget as the store holds it (one attempt spent), not the idle local bucket.
        assert f'bbverify_key_fetch_budget_remaining{{issuer="{fake.issuer}"}} 2.0' in metrics
        # Someone loosens the entry's mode: the store is refused until that is fixed.
        (entry,) = store_dir.glob("*.json")
        os.chmod(entry, 0o666)
        other = gateway_from_toml(path, environ={}, metrics=VerifierMetrics(CollectorRegistry()))
        other.verifier.warm_up()
        ready = asyncio.run(_get(other, "/readyz")).json()
        # Still ready (it verifies on its own budget), and the state says why it fetched alone.
        assert ready["ready"] is True and ready["key_stores"] == {fake.issuer: "misconfigured"}
        metrics = asyncio.run(_get(other, "/metrics")).text
        state = f'bbverify_key_store_state{{issuer="{fake.issuer}",state="misconfigured"}} 1.0'
        assert state in metrics
