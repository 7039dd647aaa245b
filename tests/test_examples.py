"""Every example runs as a new user would run it: a subprocess in --fake mode.

The servers print a curl command with a minted token; the test follows it
with real HTTP requests, then stops the server.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CURL_RE = re.compile(
    r'curl (?:-X POST )?-H "Authorization: Bearer ([A-Za-z0-9_.\-]+)" (http://127\.0\.0\.1:\d+)(/\S+)'
)

REFUSAL_RE = re.compile(
    r'curl -i (?:-X (?P<method>POST) )?(?:-H "Authorization: Bearer (?P<token>[A-Za-z0-9_.\-]+)" )?'
    r"(?P<url>http://127\.0\.0\.1:\d+/\S+)\s+# (?P<status>\d{3}) (?P<code>[a-z_]+)$"
)


def _env() -> dict[str, str]:
    # The examples fall back to the fake issuer without BBVERIFY_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBVERIFY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Running:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def refusal_commands(self, count: int) -> list[re.Match[str]]:
        """The --fake mode's refusal lines: ``curl -i ... URL   # STATUS code``."""
        found: list[re.Match[str]] = []
        while len(found) < count:
            try:
                line = self.lines.get(timeout=30)
            except queue.Empty:
                raise AssertionError(
                    f"example printed too few refusals; output so far: {self.seen}"
                ) from None
            if line is None:
                raise AssertionError(f"example exited early; output: {self.seen}")
            self.seen.append(line)
            m = REFUSAL_RE.search(line)
            if m:
                found.append(m)
        return found

    def curl_commands(self, count: int) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        while len(found) < count:
            try:
                line = self.lines.get(timeout=30)
            except queue.Empty:
                raise AssertionError(f"example printed no curl command; output so far: {self.seen}") from None
            if line is None:
                raise AssertionError(f"example exited early; output: {self.seen}")
            self.seen.append(line)
            m = CURL_RE.search(line)
            if m:
                found.append((m.group(1), m.group(2), m.group(3)))
        return found


SERVERS = ["starlette_app.py", "fastapi_app.py", "flask_app.py", "django_app/run.py"]


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, Running]]:
    # Started together: each spends most of its start-up generating a key.
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--fake", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
        for name in SERVERS
    }
    try:
        yield {name: Running(proc) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.parametrize("name", SERVERS)
def test_server_example(running: dict[str, Running], name: str) -> None:
    (build_token, base, whoami), (deploy_token, _, deploy) = running[name].curl_commands(2)
    assert (whoami, deploy) == ("/whoami", "/deploy")
    with httpx.Client(timeout=10) as http:
        ok = http.get(base + whoami, headers={"Authorization": f"Bearer {build_token}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["repository"].startswith("{")
        deployed = http.post(base + deploy, headers={"Authorization": f"Bearer {deploy_token}"})
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["deploying_to"].startswith("{")
        # A build step's token may not deploy; no token is refused.
        assert http.post(base + deploy, headers={"Authorization": f"Bearer {build_token}"}).status_code == 403
        missing = http.get(base + whoami)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert http.get(base + "/healthz").json() == {"ok": True}
        # --fake also prints refusals, each with the answer it gets: follow them.
        refusals = running[name].refusal_commands(5)
        assert {m["code"] for m in refusals[:4]} == {
            "missing_token",
            "expired",
            "audience_mismatch",
            "bad_signature",
        }
        assert refusals[4]["method"] == "POST" and refusals[4]["url"].endswith("/deploy")
        for m in refusals:
            headers = {"Authorization": f"Bearer {m['token']}"} if m["token"] else {}
            answer = http.request(m["method"] or "GET", m["url"], headers=headers)
            assert answer.status_code == int(m["status"]), (m.group(0), answer.text)
            if answer.headers["content-type"].startswith("application/json"):
                assert answer.json()["code"] == m["code"]
            else:  # Starlette's own @requires answers in plain text
                assert answer.text.lower() == m["code"]


# The examples configured from BBVERIFY_* variables (Django's reads its settings module).
ENV_SERVERS = ["starlette_app.py", "fastapi_app.py", "flask_app.py"]


@pytest.mark.parametrize("name", ENV_SERVERS)
@pytest.mark.parametrize("extra", [{}, {"bbverify_workspace": "acme"}])
def test_server_example_without_settings_is_a_usage_error(name: str, extra: dict[str, str]) -> None:
    # Never a silent fallback to a fake issuer (lower-case names are not settings).
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--port", "0"],
        capture_output=True,
        text=True,
        env={**_env(), **extra},
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr and "--fake" in result.stderr
    assert "Bearer" not in result.stdout
    if extra:
        assert "found bbverify_workspace: the names are upper case" in result.stderr


def test_server_example_bad_settings_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "starlette_app.py"), "--port", "0"],
        capture_output=True,
        text=True,
        env={**_env(), "BBVERIFY_WORKSPACE": "acme"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "audience" in result.stderr and "Traceback" not in result.stderr


def test_script_example() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "script_verify.py"), "--fake"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "accepted:" in result.stdout
    assert "refused (401 expired)" in result.stdout


def test_script_example_refuses_garbage() -> None:
    env = {
        **_env(),
        "BBVERIFY_WORKSPACE": "acme",
        "BBVERIFY_WORKSPACE_UUID": "{" + "1" * 8 + "-1111-1111-1111-" + "1" * 12 + "}",
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "script_verify.py"), "not-a-token"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # A malformed token is refused before any key fetch, so no network is needed.
    assert result.returncode == 1
    assert "refused (401 malformed)" in result.stdout
