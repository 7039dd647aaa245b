"""The first hour with the ``bbverify`` command (issue 17).

Pipes, exit codes, what it shows, and ``fake-issuer``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_runner import cli_env
from cli_runner import run_cli as run

from bbverify import InvalidToken, PolicyDenied
from bbverify.policies import Repositories
from bbverify.testing import FakeIssuer

ROOT = Path(__file__).resolve().parent.parent


def test_broken_pipe_is_quiet() -> None:
    # The reader is gone before the command writes anything: every write meets EPIPE.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbverify", "ip-ranges", "--sample"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert code == 141


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_empty_token_says_so_and_points_at_oidc_true(command: str) -> None:
    extra = ["--workspace", "acme", "--audience", "x"] if command == "verify" else []
    for result in (run(command, "", *extra), run(command, "-", *extra, stdin="\n")):
        assert result.returncode == 2
        assert "the token is empty" in result.stderr
        assert "oidc: true" in result.stderr
        assert "Traceback" not in result.stderr


def test_inspect_shows_the_lifetime(issuer: FakeIssuer) -> None:
    result = run("inspect", issuer.mint(lifetime=1500))
    assert result.returncode == 0
    assert "lifetime     1500 s (25.0 min, exp - iat)" in result.stdout
    as_json = json.loads(run("inspect", "--json", issuer.mint(lifetime=600)).stdout)
    assert as_json["lifetime_seconds"] == 600


def test_ip_ranges_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("ip-ranges", "--source", str(tmp_path / "none.json")).returncode == 2
    assert run("ip-ranges", "--source", "http://example.com/feed.json").returncode == 2
    both = run("ip-ranges", "--sample", "--source", "x.json")
    assert both.returncode == 2 and "not both" in both.stderr


def test_ip_ranges_sample_feed_is_reachable_with_a_flag() -> None:
    result = run("ip-ranges", "--sample")
    assert result.returncode == 0
    assert "34.199.54.113/32" in result.stdout.split()


def test_verify_shows_unverified_iss_and_aud_beside_the_configured_ones() -> None:
    with FakeIssuer("ours") as ours, FakeIssuer("theirs") as theirs:
        token = theirs.mint()  # another workspace's token: fails on its key first
        args = ("verify", token, "--issuer", ours.issuer, "--audience", ours.audience)
        result = run(*args)
        assert result.returncode == 1
        assert json.dumps(theirs.issuer) in result.stdout
        assert json.dumps([ours.issuer]) in result.stdout
        assert json.dumps(theirs.audience) in result.stdout
        assert json.dumps([ours.audience]) in result.stdout
        seen = json.loads(run(*args, "--json").stdout)["seen"]
        assert seen == {
            "token_iss": theirs.issuer,
            "token_aud": theirs.audience,
            "configured_issuers": [ours.issuer],
            "configured_audiences": [ours.audience],
        }


def test_demo_verbose_prints_response_bodies() -> None:
    result = run("demo", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    bodies = [line.split("body: ", 1)[1] for line in result.stdout.splitlines() if "body: " in line]
    assert len(bodies) >= 10
    assert any(json.loads(b).get("code") == "expired" for b in bodies)
    assert "body: " not in run("demo").stdout


# -- fake-issuer --------------------------------------------------------------------------------


@pytest.fixture
def fake_issuer_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    repo = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbverify", "fake-issuer", "--repository-uuid", repo],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    settings: dict[str, str] = {"repository": repo}
    try:
        deadline = time.monotonic() + 30
        for _ in range(50):  # the banner is a dozen lines
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                break
            if line.startswith("Fake Bitbucket issuer on "):
                settings["base"] = line.split()[4]
            if "BBVERIFY_ISSUER=" in line:
                settings["issuer"] = line.split("=", 1)[1].strip()
            if "BBVERIFY_WORKSPACE_UUID=" in line:
                settings["workspace_uuid"] = line.split("=", 1)[1].split()[0]
            if line.startswith("Try your app:"):
                break
        assert {"base", "issuer", "workspace_uuid"} <= set(settings), settings
        assert settings["base"].startswith("http://127.0.0.1:")
        yield proc, settings
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_fake_issuer_mints_every_kind_and_stops_cleanly(
    fake_issuer_process: tuple[subprocess.Popen[str], dict[str, str]], stop_with: signal.Signals
) -> None:
    from bbverify import Verifier

    proc, settings = fake_issuer_process
    verifier = Verifier(
        issuer=settings["issuer"],
        workspace_uuid=settings["workspace_uuid"],
        policies=[Repositories(settings["repository"])],
    )
    with httpx.Client(timeout=10) as client:

        def mint(kind: str) -> str:
            resp = client.get(f"{settings['base']}/mint/{kind}")
            assert resp.status_code == 200, resp.text
            assert not resp.text[-1:].isspace()  # the body is the bare token
            return resp.text

        assert verifier.verify(mint("valid")).repository_uuid == settings["repository"]
        assert verifier.verify(mint("deployment")).is_deployment
        for kind, code in (("expired", "expired"), ("wrong-audience", "audience_mismatch")):
            with pytest.raises(InvalidToken) as caught:
                verifier.verify(mint(kind))
            assert caught.value.code == code
        with pytest.raises(PolicyDenied) as denied:
            verifier.verify(mint("other-repository"))
        assert denied.value.code == "repository_not_allowed"
        assert client.get(f"{settings['base']}/mint/nope").status_code == 404

    proc.send_signal(stop_with)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Traceback" not in err and "fake issuer stopped" in err


def test_fake_issuer_refuses_a_non_loopback_host() -> None:
    result = run("fake-issuer", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "loopback only" in result.stderr
    bad = run("fake-issuer", "--repository-uuid", "nope")
    assert bad.returncode == 2 and "--repository-uuid" in bad.stderr
