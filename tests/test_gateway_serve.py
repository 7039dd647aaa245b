"""``bbverify serve`` as users run it: a subprocess with two uvicorn workers, then SIGTERM.

Also: the docs' examples for the gateway run as they stand.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import httpx
import pytest
from gateway_harness import DOCS
from servers import bearer, free_port

from bbverify.gateway import gateway_from_mapping
from bbverify.metrics import VerifierMetrics
from bbverify.testing import FakeIssuer


def _config(fake: FakeIssuer, tmp: Path, extra: str = "") -> Path:
    path = tmp / "bbverify.toml"
    path.write_text(
        f"""[bbverify]
issuer = "{fake.issuer}"
audience = "{fake.audience}"

default_policy = "build"

[bbverify.rules]
repositories = ["{fake.repository_uuid}"]

[bbverify.policies.build]
allow = [ {{ repositories = ["{fake.repository_uuid}"] }} ]

[bbverify.serve]
protocol = "forwarded"
{extra}
[[bbverify.serve.routes]]
path_prefix = "/deploy"
methods = ["POST"]

[[bbverify.serve.routes]]
path_prefix = "/public/"
public = true
"""
    )
    return path


def _wait(url: str, client: httpx.Client, proc: subprocess.Popen[str]) -> httpx.Response:
    for _ in range(300):  # at most ~30 s (workers import and warm the key set)
        if proc.poll() is not None:
            raise AssertionError(f"bbverify serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            r = client.get(url)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        threading.Event().wait(0.1)
    raise AssertionError(f"{url} never answered 200")


def _stale_metrics_dir(tmp_path: Path, workspace_uuid: str) -> Path:
    """A PROMETHEUS_MULTIPROC_DIR as a previous run leaves it: 5 ok decisions already counted."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    code = (
        "from prometheus_client import Counter\n"
        "c = Counter('bbverify_decisions', 'x', ['code', 'rule', 'workspace'])\n"
        f"c.labels('ok', '', {workspace_uuid!r}).inc(5)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert list(directory.glob("counter_*.db"))
    return directory


def test_serve_two_workers_then_sigterm(issuer: FakeIssuer, tmp_path: Path, http: httpx.Client) -> None:
    port = free_port()
    config = _config(issuer, tmp_path)
    # A user-set multiprocess directory with the last run's files (f11): emptied at start.
    stale = _stale_metrics_dir(tmp_path, issuer.workspace_uuid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBVERIFY_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(stale)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bbverify",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/healthz", http, proc)
        ready = _wait(base + "/readyz", http, proc)
        assert ready.json()["ready"] is True
        check = {
            "X-Forwarded-Method": "POST",
            "X-Forwarded-Uri": "/deploy/x",
            "X-Forwarded-Host": "a.example.com",
        }
        ok = http.get(base + "/auth", headers={**check, **bearer(issuer.mint())})
        assert ok.status_code == 200
        assert ok.headers["x-bbverify-repository"] == issuer.repository_uuid
        other = issuer.mint(repository_uuid="{11111111-2222-3333-4444-555555555555}")
        denied = http.get(base + "/auth", headers={**check, **bearer(other)})
        assert denied.status_code == 403
        assert denied.json()["code"] == "repository_not_allowed"
        # Multiprocess metrics: both decisions are counted whichever worker answered them.
        metrics = http.get(base + "/metrics").text
        assert re.search(r'bbverify_decisions_total\{code="ok",rule="",workspace="[^"]+"\} 1\.0', metrics), (
            metrics
        )
        assert 'code="repository_not_allowed"' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    # Where it listens, once, with the number of workers (f04).
    listening = [line for line in err.splitlines() if "listening on" in line]
    assert listening == [f"bbverify serve: listening on http://127.0.0.1:{port} (2 workers)"], err
    # One JSON access line per check on stderr.
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("code") == "ok" and line.get("route") == "routes[0]" for line in lines), err


def test_serve_configuration_error_exits_2(issuer: FakeIssuer, tmp_path: Path) -> None:
    config = _config(issuer, tmp_path, extra='protocl = "nginx"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "bbverify", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "serve.protocl" in proc.stderr


def _blocks(language: str) -> list[str]:
    text = (DOCS / "gateway.md").read_text()
    return re.findall(r"```" + language + r"\n(.*?)```", text, re.S)


def test_docs_toml_examples_load() -> None:
    blocks = _blocks("toml")
    assert blocks
    for block in blocks:
        table = tomllib.loads(block)["bbverify"]
        gateway_from_mapping(table, metrics=VerifierMetrics(registry=None))


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_docs_python_examples_run(index: int) -> None:
    code = _blocks("python")[index]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_sigterm_lets_a_check_in_flight_finish(tmp_path: Path, http: httpx.Client) -> None:
    with FakeIssuer() as fake:
        fake.fail("slow", delay=2.0)  # every key fetch takes 2 s: the check below is in flight meanwhile
        port = free_port()
        config = _config(fake, tmp_path, extra="")
        config.write_text(config.read_text().replace("[bbverify.rules]", "timeout = 5.0\n\n[bbverify.rules]"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bbverify", "serve", "--config", str(config), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        result: list[httpx.Response | BaseException] = []
        try:
            _wait(base + "/healthz", http, proc)
            check = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/deploy", **bearer(fake.mint())}

            def ask() -> None:
                try:
                    result.append(httpx.get(base + "/auth", headers=check, timeout=15))
                except BaseException as exc:
                    result.append(exc)

            asker = threading.Thread(target=ask)
            asker.start()
            threading.Event().wait(0.5)
            proc.send_signal(signal.SIGTERM)
            asker.join(timeout=20)
        finally:
            try:
                _, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate(timeout=10)
    assert len(result) == 1
    response = result[0]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    # A single uvicorn process re-raises the signal once it has shut down cleanly,
    # so that a supervisor sees it; with workers, the supervisor exits 0.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err, err


def test_gateway_toml_refuses_near_miss_tables_like_the_library(tmp_path: Path) -> None:
    # The gateway reads its file through config.load_toml_table, so a misspelt
    # rules table is an error here too rather than silently dropped rules.
    from bbverify.errors import ConfigurationError
    from bbverify.gateway import gateway_from_toml

    path = tmp_path / "bbverify.toml"
    path.write_text(
        '[bbverify]\nworkspace = "acme"\naudience = "x"\n\n[bbverify_rules]\nrepositories = ["{x}"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match="bbverify_rules"):
        gateway_from_toml(path)
