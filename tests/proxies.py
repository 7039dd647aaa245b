"""Real reverse proxies on 127.0.0.1 for the gateway tests: nginx and Caddy, started and stopped here.

Each runs from a configuration in a temporary directory, on a free loopback
port, as a child process that the context manager terminates. Without the
binary the caller skips with a stated reason, except under CI=true, where a
missing proxy is a failure (.ci/run installs both).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def require(binary: str) -> str:
    """The path of ``binary``; skip (or fail under CI=true) when it is not installed."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/usr/bin")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{binary} is not installed; CI must run the real-proxy tests (.ci/run installs it)")
    pytest.skip(f"{binary} is not installed on this machine (apt-get install {binary})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def doc_block(marker: str, doc: str = "gateway.md") -> str:
    """The fenced block that follows ``<!-- marker ...-->`` in a doc (the recipe the docs show)."""
    text = (DOCS / doc).read_text()
    m = re.search(r"<!-- " + re.escape(marker) + r"\b[^>]*-->\s*```[a-z]*\n(.*?)```", text, re.S)
    if m is None:
        raise AssertionError(f"docs/{doc} has no block marked {marker!r}")
    return m.group(1)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):  # at most ~15 s
        if proc.poll() is not None:
            raise RuntimeError(
                f"proxy exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            threading.Event().wait(0.05)
    raise RuntimeError(f"proxy did not listen on {port}: {log.read_text(errors='replace')[-2000:]}")


@contextmanager
def _running(cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_listening(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def nginx(server_block: str, tmp: Path) -> Iterator[str]:
    """Run nginx with ``server_block`` (its ``listen`` line must be ``127.0.0.1:8080``, replaced here)."""
    binary = require("nginx")
    port = free_port()
    block = server_block.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{block}
}}
"""
    )
    with _running(
        [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], port, tmp / "nginx.out"
    ) as addr:
        yield addr


@contextmanager
def caddy(site_block: str, tmp: Path) -> Iterator[str]:
    """Run Caddy with ``site_block`` (its address must be ``http://:8080``, replaced here)."""
    binary = require("caddy")
    port = free_port()
    block = site_block.replace("http://:8080", f"http://:{port}")
    conf = tmp / "Caddyfile"
    conf.write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + block)
    env = {
        **os.environ,
        "HOME": str(tmp),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }
    cmd = [binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
    with _running(cmd, port, tmp / "caddy.out", env) as addr:
        yield addr
