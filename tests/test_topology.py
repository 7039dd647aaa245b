"""Issue 10, item 6: real multi-process servers against an issuer that fails, recovers and rotates.

* gunicorn ``--preload`` with 2 sync workers serving the Flask example (the
  app, and a key fetch in flight, are made in the master before the fork),
* uvicorn ``--workers 2`` serving the Starlette example.

Both listen on a Unix socket in a temporary directory; every answer names
the worker that gave it (``X-Worker-Pid``, added by tests/topology_apps.py).
The claims checked, with every wait bounded:

* while no key is known, the only 5xx is 503;
* every request sent 2 s or more after the issuer is reachable again is
  accepted, and both workers are seen accepting;
* after the issuer rotates its key (while it was down), the same holds for
  tokens signed by the new key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bbverify.testing import FakeIssuer

TESTS = Path(__file__).resolve().parent
RECOVERY = 2.0  # seconds within which every worker must accept again (the issue's figure)


def _env(issuer: FakeIssuer, server: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBVERIFY_")}
    env.update(
        TOPOLOGY_SERVER=server,
        BBVERIFY_ISSUER=issuer.issuer,
        BBVERIFY_AUDIENCE=issuer.audience,
        BBVERIFY_TIMEOUT="1",
        BBVERIFY_FAILURE_BACKOFF="0.3",
        BBVERIFY_COOLDOWN="0.3",
        # A generous fetch budget: this suite is about processes, not the budget.
        BBVERIFY_MAX_BACKOFF="0.3",
        BBVERIFY_FETCH_INTERVAL="0.1",
        BBVERIFY_FETCH_BURST="100",
    )
    return env


@contextmanager
def _server(command: list[str], env: dict[str, str], sock: Path) -> Iterator[httpx.Client]:
    proc = subprocess.Popen(
        command, env=env, cwd=TESTS, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    transport = httpx.HTTPTransport(uds=str(sock))
    client = httpx.Client(transport=transport, base_url="http://topology", timeout=10)
    try:
        for _ in range(300):  # up to ~30 s for the server to start
            if proc.poll() is not None:
                output = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"server exited: {output}")
            if sock.exists():
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        yield client
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own server's process group
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


def _ask(client: httpx.Client, token: str) -> tuple[float, int, str]:
    sent = time.monotonic()
    response = client.get("/whoami", headers={"Authorization": f"Bearer {token}", "Connection": "close"})
    return sent, response.status_code, response.headers.get("x-worker-pid", "?")


def _until_every_worker_accepts(
    client: httpx.Client, token: str, reachable_at: float, allowed: set[int]
) -> None:
    answers: list[tuple[float, int, str]] = []
    accepted: set[str] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(200):  # bounded: ~0.1 s a round, and the time test below
            answers += pool.map(lambda _: _ask(client, token), range(4))
            accepted = {pid for _, status, pid in answers if status == 200}
            late = time.monotonic() - reachable_at > RECOVERY + 1.0
            if len(accepted) >= 2 and late:
                break
            time.sleep(0.05)
    statuses = {status for _, status, _ in answers}
    assert statuses <= allowed, f"unexpected answers {sorted(statuses - allowed)}"
    assert len(accepted) >= 2, f"only workers {sorted(accepted)} ever accepted"
    refused_late = [
        (round(sent - reachable_at, 2), status, pid)
        for sent, status, pid in answers
        if sent - reachable_at >= RECOVERY and status != 200
    ]
    assert not refused_late, f"refused {RECOVERY}s after the issuer was reachable: {refused_late[:5]}"


def _scenario(issuer: FakeIssuer, command: list[str], server: str, sock: Path) -> None:
    issuer.fail("hang", 30.0)  # reachable but never answering while the server starts
    with _server(command, _env(issuer, server), sock) as client:
        token = issuer.mint()
        first = [_ask(client, token)[1] for _ in range(4)]
        assert set(first) <= {503}, first  # no key known yet: 503 and nothing else
        issuer.recover()
        _until_every_worker_accepts(client, token, time.monotonic(), {200, 503})

        issuer.stop()  # down: cached keys keep serving
        assert {_ask(client, token)[1] for _ in range(6)} == {200}
        issuer.rotate(keep_old=False)
        issuer.start()  # back, with the new key only
        back = time.monotonic()
        rotated = issuer.mint()
        _until_every_worker_accepts(client, rotated, back, {200, 401, 503})


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # A short path: Unix socket paths are limited to ~100 bytes.
    path = Path(f"/tmp/bbv-topo-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.mark.slow
def test_gunicorn_preload_two_sync_workers(sock_dir: Path) -> None:
    sock = sock_dir / "gunicorn.sock"
    command = [
        _tool("gunicorn"), "--preload", "--workers", "2", "--worker-class", "sync",
        "--bind", f"unix:{sock}", "--pythonpath", str(TESTS), "--graceful-timeout", "3",
        "--log-level", "warning", "topology_apps:flask_app",
    ]
    with FakeIssuer() as issuer:
        _scenario(issuer, command, "gunicorn", sock)


@pytest.mark.slow
def test_uvicorn_two_workers(sock_dir: Path) -> None:
    sock = sock_dir / "uvicorn.sock"
    command = [
        _tool("uvicorn"), "--factory", "topology_apps:starlette_app", "--workers", "2",
        "--uds", str(sock), "--app-dir", str(TESTS), "--log-level", "warning", "--no-proxy-headers",
    ]
    with FakeIssuer() as issuer:
        _scenario(issuer, command, "uvicorn", sock)
