"""Section 5: requests/s and latency of a tiny app, unprotected vs protected.

Each server runs in its own process (``benchmarks.serve``); the load
generator runs here, in threads, each with one keep-alive connection. Both
servers of a pair are up at once and the rounds alternate between them, so
machine drift hits both alike.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bbverify.testing import FakeIssuer

from .fixtures import ALLOWED_CIDRS, MAX_STEP_SECONDS, braced, mint_tokens


def adapters_available() -> str | None:
    """``None`` when both middlewares import, else why not."""
    try:
        import flask  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from bbverify.asgi import PipelineAuthMiddleware as _A  # noqa: F401
        from bbverify.policies import IPRanges  # noqa: F401
        from bbverify.wsgi import PipelineAuthMiddleware as _W  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


SERVERS = {"asgi": "Starlette + uvicorn", "wsgi": "Flask + werkzeug threaded"}


@dataclass
class Stats:
    latencies_ns: list[int] = field(default_factory=list)
    elapsed_ns: int = 0
    errors: int = 0
    server_cpu_s: float = 0.0
    round_rps: list[float] = field(default_factory=list)

    @property
    def server_cpu_us(self) -> float:
        """Server CPU time (user + system) per request: steadier than req/s on a busy machine."""
        return self.server_cpu_s / len(self.latencies_ns) * 1e6

    @property
    def rps(self) -> float:
        return len(self.latencies_ns) / (self.elapsed_ns / 1e9)

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ns)
        return data[min(len(data) - 1, int(q * len(data)))] / 1e6


class Server:
    def __init__(self, kind: str, mode: str, config: dict[str, Any]) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", kind, mode, json.dumps(config)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{kind}/{mode} server did not start")
        self.port = int(line.split()[1])

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _connect(port: int) -> http.client.HTTPConnection:
    for _ in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.connect()
            # Without this, delayed ACKs add ~40 ms to every request on some servers.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"cannot connect to port {port}")


def load(port: int, token: str, requests: int, threads: int) -> Stats:
    """``requests`` GETs of / over ``threads`` keep-alive connections."""
    headers = {"Authorization": f"Bearer {token}"}
    stats = Stats()
    lock = threading.Lock()
    per_thread = requests // threads
    conns = [_connect(port) for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)

    def worker(conn: http.client.HTTPConnection) -> None:
        mine: list[int] = []
        errors = 0
        start_line.wait()
        clock = time.perf_counter_ns
        for _ in range(per_thread):
            t0 = clock()
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            mine.append(clock() - t0)
            if resp.status != 200 or body != b"ok":
                errors += 1
        with lock:
            stats.latencies_ns.extend(mine)
            stats.errors += errors

    workers = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for w in workers:
        w.start()
    start_line.wait()
    t0 = time.perf_counter_ns()
    for w in workers:
        w.join()
    stats.elapsed_ns = time.perf_counter_ns() - t0
    for c in conns:
        c.close()
    return stats


def run(issuer: FakeIssuer, *, requests: int, rounds: int, threads: int = 4) -> dict[str, Stats]:
    token = mint_tokens(issuer, 1)[0]
    config = {
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "repository": issuer.repository_uuid,
        "other_repositories": [braced(), braced()],
        "environment": issuer.environment_uuid,
        # The load generator is on loopback, so its address joins the realistic ranges.
        "cidrs": [*ALLOWED_CIDRS, "127.0.0.1/32"],
        "max_minutes": MAX_STEP_SECONDS / 60,
    }
    results: dict[str, Stats] = {}
    for kind, label in SERVERS.items():
        servers = {mode: Server(kind, mode, config) for mode in ("open", "protected")}
        try:
            for server in servers.values():
                load(server.port, token, max(threads * 25, requests // 10), threads)  # warm-up
            for _ in range(rounds):
                for mode, server in servers.items():
                    cpu_before = server.cpu_seconds()
                    stats = load(server.port, token, requests // rounds, threads)
                    stats.server_cpu_s = server.cpu_seconds() - cpu_before
                    total = results.setdefault(f"{label}, {mode}", Stats())
                    total.latencies_ns.extend(stats.latencies_ns)
                    total.elapsed_ns += stats.elapsed_ns
                    total.errors += stats.errors
                    total.server_cpu_s += stats.server_cpu_s
                    total.round_rps.append(stats.rps)
        finally:
            for server in servers.values():
                server.stop()
    return results


def kept_throughput(protected: Stats, unprotected: Stats) -> float:
    """Median over rounds of protected/open req/s; each pair ran back to back, so drift cancels."""
    return statistics.median(p / o for p, o in zip(protected.round_rps, unprotected.round_rps, strict=True))
