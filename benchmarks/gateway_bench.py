"""Section 7: ``bbverify serve`` behind real nginx, against nginx alone, in front of a trivial upstream.

Three processes plus nginx, all on 127.0.0.1: the upstream (``benchmarks.serve
asgi open``: one Starlette route under uvicorn), the gateway (``bbverify serve
--workers 2``, protocol nginx, the 4 realistic rules), and two nginx servers
in one nginx process: one proxying straight to the upstream, one with the
``auth_request`` recipe of docs/gateway.md. Rounds alternate between them.
Then the gateway alone: p50/p99 of sequential checks on one keep-alive
connection, for a repeated token (the verified-token cache) and fresh ones.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bbverify.testing import FakeIssuer

from .fixtures import ALLOWED_CIDRS, MAX_STEP_SECONDS, braced, mint_tokens
from .http_bench import Server, Stats, load

DOC = Path(__file__).resolve().parent.parent / "docs" / "gateway.md"


def available() -> str | None:
    """``None`` when nginx and uvicorn are there, else why not."""
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        return "nginx is not installed (apt-get install nginx)"
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _recipe() -> str:
    m = re.search(r"<!-- gateway-nginx\b[^>]*-->\s*```nginx\n(.*?)```", DOC.read_text(), re.S)
    assert m is not None, "docs/gateway.md lost its nginx recipe"
    return m.group(1)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its direct children (the uvicorn workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _gateway_config(issuer: FakeIssuer, tmp: Path) -> Path:
    cidrs = ", ".join(f'"{c}"' for c in (*ALLOWED_CIDRS, "127.0.0.1/32"))
    path = tmp / "bbverify.toml"
    path.write_text(
        f"""[bbverify]
issuer = "{issuer.issuer}"
audience = "{issuer.audience}"

[bbverify.rules]
repositories = ["{issuer.repository_uuid}", "{braced()}", "{braced()}"]
environments = ["{issuer.environment_uuid}"]
ip_ranges = [{cidrs}]
max_step_minutes = {MAX_STEP_SECONDS / 60}

# The base rules decide; this policy says on purpose that every token they admit may pass.
[bbverify.policies.any-build]
allow = [ {{ repositories = ["{issuer.repository_uuid}"] }} ]

[bbverify.serve]
protocol = "nginx"
trusted_proxies = ["127.0.0.1/32"]

[[bbverify.serve.routes]]
path_prefix = "/"
policy = "any-build"
"""
    )
    return path


def _check(conn: http.client.HTTPConnection, token: str) -> int:
    t0 = time.perf_counter_ns()
    conn.request(
        "GET",
        "/auth",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Original-Method": "GET",
            "X-Original-URI": "/",
            "X-Original-Host": "app.example.com",
        },
    )
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"gateway answered {resp.status}")
    return time.perf_counter_ns() - t0


def _pcts(samples: list[int]) -> tuple[float, float]:
    data = sorted(samples)
    return data[len(data) // 2] / 1e6, data[min(len(data) - 1, int(0.99 * len(data)))] / 1e6


def run(
    issuer: FakeIssuer, *, requests: int, rounds: int, latency_samples: int, threads: int = 4
) -> dict[str, Any]:
    token = mint_tokens(issuer, 1)[0]
    fresh = mint_tokens(issuer, latency_samples)
    tmp = Path(tempfile.mkdtemp(prefix="bbverify-gw-bench-"))
    procs: list[subprocess.Popen[Any]] = []
    upstream = Server("asgi", "open", {})
    try:
        gw_port = _free_port()
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bbverify",
                "serve",
                "--config",
                str(_gateway_config(issuer, tmp)),
                "--port",
                str(gw_port),
                "--workers",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # the access log: one line per check
        )
        procs.append(gateway)
        _wait_port(gw_port, gateway)
        plain_port, auth_port = _free_port(), _free_port()
        recipe = (
            _recipe()
            .replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{auth_port};")
            .replace("127.0.0.1:9180", f"127.0.0.1:{gw_port}")
            .replace("127.0.0.1:8000", f"127.0.0.1:{upstream.port}")
        )
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt; fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
    server {{
        listen 127.0.0.1:{plain_port};
        location / {{ proxy_pass http://127.0.0.1:{upstream.port}; }}
    }}
{recipe}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proxy = subprocess.Popen(
            [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proxy)
        _wait_port(plain_port, proxy)
        _wait_port(auth_port, proxy)
        ports = {"nginx -> upstream": plain_port, "nginx + gateway (2 workers) -> upstream": auth_port}
        results: dict[str, Stats] = {}
        for port in ports.values():
            load(port, token, max(threads * 25, requests // 10), threads)  # warm-up
        gated_requests = 0
        gateway_cpu = upstream_cpu = 0.0
        for _ in range(rounds):
            for label, port in ports.items():
                gated = port == auth_port
                before = (_cpu_seconds(gateway.pid), upstream.cpu_seconds()) if gated else (0.0, 0.0)
                stats = load(port, token, requests // rounds, threads)
                if gated:
                    gateway_cpu += _cpu_seconds(gateway.pid) - before[0]
                    upstream_cpu += upstream.cpu_seconds() - before[1]
                    gated_requests += len(stats.latencies_ns)
                total = results.setdefault(label, Stats())
                total.latencies_ns.extend(stats.latencies_ns)
                total.elapsed_ns += stats.elapsed_ns
                total.errors += stats.errors
                total.round_rps.append(stats.rps)
        plain, gated = results.values()
        kept = statistics.median(g / p for g, p in zip(gated.round_rps, plain.round_rps, strict=True))

        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=10)
        for _ in range(50):
            _check(conn, token)  # warm-up: key set, caches, both workers' connections
        repeated = [_check(conn, token) for _ in range(latency_samples)]
        new = [_check(conn, t) for t in fresh]
        conn.close()
        return {
            "http": results,
            "kept": kept,
            # CPU per request through the gated path: the gateway's checks against the upstream's handler.
            "gateway_cpu_us": gateway_cpu / max(1, gated_requests) * 1e6,
            "upstream_cpu_us": upstream_cpu / max(1, gated_requests) * 1e6,
            "repeated": _pcts(repeated),
            "fresh": _pcts(new),
            "samples": latency_samples,
        }
    finally:
        for proc in reversed(procs):
            _stop(proc)
        upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)
