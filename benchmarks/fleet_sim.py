"""A fleet of processes fetching one issuer's keys within Bitbucket's anonymous limit.

    python -m benchmarks.fleet_sim --store file     # 16 processes share a FileKeyStore
    python -m benchmarks.fleet_sim --store redis    # 16 processes share a redis-server on 127.0.0.1
    python -m benchmarks.fleet_sim --store none --processes 4 \
        --fetch-interval 660 --cooldown 660 --fetch-burst 1

What runs (everything on loopback, real OS processes, real HTTP, real stores):

* a :class:`bbverify.testing.FakeIssuer` that enforces a rolling limit of 60
  requests an hour per client address (all processes share 127.0.0.1, as a
  fleet behind one NAT address does) and answers 429 with ``Retry-After``
  beyond it, recording every request;
* ``--processes`` worker processes, each with its own
  :class:`~bbverify.Verifier` and :class:`~bbverify.keys.RemoteKeySet`
  (default budget settings unless overridden), sharing the store;
* one accelerated clock (``--speed`` simulated seconds per real second) that
  every component reads: the issuer's limiter, the key sets' clocks and the
  verifiers' ``exp``/``iat`` checks;
* in every worker, a client sending plausible tokens (right issuer, audience,
  claims, lifetime) with random ``kid`` values without pause (the issue's
  "50 a second" is scaled to what the machine sustains; what matters is that
  an unknown ``kid`` arrives far more often than any fetch is allowed), and a
  valid token signed by the current key about every simulated second;
* at ``--rotation-hour`` the issuer publishes a new key (the old one stays
  published) and valid tokens are signed with the new key from then on.

Reported, from the issuer's own log and the workers' counts: requests in the
busiest rolling hour, 429s, requests sent before a ``Retry-After`` had passed,
valid tokens refused (new-key tokens count only after ``--rotation-limit``,
300 s by default), and the rotation delay
(publication of the new key to its first acceptance, per process; the
largest is reported). Exit status 1 if a limit is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

LIMIT_PER_HOUR = 30  # half the anonymous budget
ROTATION_LIMIT = 300.0  # seconds


@dataclass(frozen=True)
class SimClock:
    """``start + (time.time() - real_start) * speed``: one clock for every process."""

    real_start: float
    speed: float
    start: float

    def __call__(self) -> float:
        return self.start + (time.time() - self.real_start) * self.speed


@dataclass
class Settings:
    store: str = "file"
    processes: int = 16
    hours: float = 24.0
    rotation_hour: float = 5.0
    speed: float = 360.0
    fetch_interval: float | None = None
    cooldown: float | None = None
    fetch_burst: int | None = None
    rotation_limit: float = ROTATION_LIMIT
    seed: int = 1


@dataclass
class WorkerReport:
    attack: int = 0
    attack_unexpected: int = 0
    valid: int = 0
    valid_refused: int = 0
    refused_codes: dict[str, int] = field(default_factory=dict)
    new_key_refused_in_delay: int = 0
    first_new_accept: float | None = None
    first_accept: float | None = None
    startup_refused: int = 0


@dataclass
class Report:
    settings: Settings
    requests: int
    max_rolling_hour: int
    received_429: int
    before_retry_after: int
    valid_checked: int
    valid_refused: int
    startup_refused: int
    attack_tokens: int
    rotation_delay: float | None
    rotation_delay_first: float | None
    wall_seconds: float
    refused_codes: dict[str, int]

    @property
    def ok(self) -> bool:
        return (
            self.max_rolling_hour <= LIMIT_PER_HOUR
            and self.before_retry_after == 0
            and self.valid_refused == 0
            and self.rotation_delay is not None
            and self.rotation_delay <= self.settings.rotation_limit
        )

    def lines(self) -> list[str]:
        s = self.settings
        delay = "never" if self.rotation_delay is None else f"{self.rotation_delay / 60:.1f} min"
        first = "never" if self.rotation_delay_first is None else f"{self.rotation_delay_first / 60:.1f} min"
        return [
            f"store={s.store} processes={s.processes} simulated={s.hours:g} h speed={s.speed:g}x "
            f"rotation at hour {s.rotation_hour:g} (wall {self.wall_seconds:.1f} s)",
            f"  requests to the issuer:            {self.requests}",
            f"  max requests in a rolling hour:    {self.max_rolling_hour} (limit {LIMIT_PER_HOUR})",
            f"  429s received:                     {self.received_429}",
            f"  requests before a Retry-After:     {self.before_retry_after}",
            f"  valid tokens refused:              {self.valid_refused} of {self.valid_checked}",
            f"  refused at start-up (no keys yet): {self.startup_refused}",
            f"  rotation delay (slowest process):  {delay} (first process: {first}; "
            f"limit {s.rotation_limit / 60:g} min)",
            f"  random-kid tokens sent:            {self.attack_tokens}",
            f"  result:                            {'OK' if self.ok else 'LIMIT BROKEN'}",
        ]


# -- redis-server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: str) -> Iterator[str]:
    """A throw-away ``redis-server`` on 127.0.0.1 and a free port, no persistence; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            time.sleep(0.02)
        else:
            proc.kill()
            proc.wait(5)
            continue  # the port was taken meanwhile: try another
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return
    raise RuntimeError("could not start redis-server")


# -- worker ---------------------------------------------------------------------------------------


def _worker(
    index: int,
    settings: Settings,
    issuer_info: dict[str, Any],
    store_arg: str | None,
    keys_pem: list[bytes],
    shared: Any,
    ready: Any,
    loaded: Any,
    results: Any,
) -> None:
    from cryptography.hazmat.primitives import serialization

    from bbverify import InvalidToken, Verifier
    from bbverify.errors import VerificationError
    from bbverify.keys import RemoteKeySet
    from bbverify.stores import FileKeyStore, RedisKeyStore
    from bbverify.testing import SigningKey, b64url, sign_rs256

    real_start, sim_start_value = shared["real_start"], shared["sim_start"]

    def clock() -> float:
        # Read at each call: the parent sets the start once everyone is loaded.
        return sim_start_value.value + (time.time() - real_start.value) * settings.speed

    store: Any = None
    if settings.store == "file":
        assert store_arg is not None
        store = FileKeyStore(store_arg)
    elif settings.store == "redis":
        assert store_arg is not None
        store = RedisKeyStore(store_arg)
    options: dict[str, Any] = {}
    if settings.fetch_interval is not None:
        options["fetch_interval"] = settings.fetch_interval
    if settings.cooldown is not None:
        options["cooldown"] = settings.cooldown
    if settings.fetch_burst is not None:
        options["fetch_burst"] = settings.fetch_burst
    keys = RemoteKeySet(
        issuer=issuer_info["issuer"], key_store=store, monotonic=clock, clock=clock, timeout=5.0, **options
    )
    verifier = Verifier(
        issuer=issuer_info["issuer"], audience=issuer_info["audience"], keys=keys, clock=clock, cache_size=0
    )
    signing = [
        SigningKey(kid, serialization.load_pem_private_key(pem, password=None))  # type: ignore[arg-type]
        for kid, pem in zip(issuer_info["kids"], keys_pem, strict=True)
    ]
    rng = random.Random(settings.seed * 1000 + index)
    loaded.put(index)
    ready.wait()  # the parent sets the clock, then releases everyone at once
    sim_start = sim_start_value.value
    report = WorkerReport()
    end = settings.hours * 3600.0

    def payload(now: float) -> dict[str, Any]:
        step = "{" + str(uuid.UUID(int=rng.getrandbits(128))) + "}"
        repo = issuer_info["repository_uuid"]
        return {
            "sub": f"{repo}:{step}",
            "aud": issuer_info["audience"],
            "stepUuid": step,
            "iss": issuer_info["issuer"],
            "repositoryUuid": repo,
            "branchName": "main",
            "exp": int(now + 3600),
            "iat": int(now),
            "pipelineUuid": step,
            "workspaceUuid": issuer_info["workspace_uuid"],
        }

    def mint(key: SigningKey, now: float) -> str:
        header = json.dumps({"kid": key.kid, "typ": "JWT", "alg": "RS256"}).encode()
        body = json.dumps(payload(now)).encode()
        signing_input = f"{b64url(header)}.{b64url(body)}".encode()
        return signing_input.decode() + "." + b64url(sign_rs256(key.private_key, signing_input))

    fake_signature = b64url(bytes(256))
    valid_token, valid_kid, valid_at = "", "", -1e9
    for _ in range(10_000_000):  # bounded; the simulated end stops it
        t = clock() - sim_start
        if t >= end:
            break
        # The attacker: plausible claims, random kid, a signature never checked.
        header = json.dumps({"kid": uuid.UUID(int=rng.getrandbits(128)).hex, "alg": "RS256"}).encode()
        attack = f"{b64url(header)}.{b64url(json.dumps(payload(clock())).encode())}.{fake_signature}"
        report.attack += 1
        try:
            verifier.verify(attack)
            report.attack_unexpected += 1
        except InvalidToken as exc:
            if exc.code != "unknown_key":
                report.attack_unexpected += 1
        except VerificationError:
            pass  # 503 while no keys: counted on valid tokens below
        # A genuine pipeline: a valid token, signed by the key the issuer signs with now.
        published = shared["published_at"].value
        rotated = published > 0
        key = signing[1] if rotated else signing[0]
        if key.kid != valid_kid or t - valid_at >= 600.0:
            valid_token, valid_kid, valid_at = mint(key, clock()), key.kid, t
        if report.first_accept is None:
            # Start-up: until this process has its first keys, a refusal is 503 by design.
            try:
                verifier.verify(valid_token)
                report.first_accept = t
            except VerificationError:
                report.startup_refused += 1
            time.sleep(0.01)
            continue
        report.valid += 1
        try:
            verifier.verify(valid_token)
            if rotated and report.first_new_accept is None:
                report.first_new_accept = clock() - sim_start - published
        except VerificationError as exc:
            since = clock() - sim_start - published
            if rotated and report.first_new_accept is None and since <= settings.rotation_limit:
                report.new_key_refused_in_delay += 1
            else:
                report.valid_refused += 1
                report.refused_codes[exc.code] = report.refused_codes.get(exc.code, 0) + 1
        time.sleep(0.01)  # leave CPU for the other processes
    results.put((index, asdict(report)))


# -- parent ---------------------------------------------------------------------------------------


def max_rolling(times: list[float], window: float = 3600.0) -> int:
    """The most requests inside any window of ``window`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run(settings: Settings) -> Report:
    from cryptography.hazmat.primitives import serialization

    from bbverify.testing import FakeIssuer

    wall_start = time.monotonic()
    # A fork server imports bbverify once and forks every worker from it:
    # fast to start, and no worker is forked from a process with threads.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.fleet_sim", "bbverify", "bbverify.stores", "bbverify.testing"])
    with tempfile.TemporaryDirectory(prefix="bbverify-fleet-") as tmp, contextlib.ExitStack() as stack:
        store_arg: str | None = None
        if settings.store == "file":
            store_arg = os.path.join(tmp, "keys")
        elif settings.store == "redis":
            store_arg = stack.enter_context(redis_server(tmp))
        elif settings.store != "none":
            raise SystemExit(f"unknown store {settings.store!r}")
        issuer = stack.enter_context(FakeIssuer())
        new_key = issuer._new_key()
        info = {
            "issuer": issuer.issuer,
            "audience": issuer.audience,
            "workspace_uuid": issuer.workspace_uuid,
            "repository_uuid": issuer.repository_uuid,
            "kids": [issuer.signing_key.kid, new_key.kid],
        }
        pems = [
            k.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            for k in (issuer.signing_key, new_key)
        ]
        shared = {
            name: ctx.Value("d", -1.0, lock=False) for name in ("published_at", "real_start", "sim_start")
        }
        ready = ctx.Event()
        loaded = ctx.Queue()
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(i, settings, info, store_arg, pems, shared, ready, loaded, results),
                daemon=True,
            )
            for i in range(settings.processes)
        ]
        for p in procs:
            p.start()
        # Start the clock only once every interpreter has imported bbverify.
        for _ in procs:
            loaded.get(timeout=180)
        real_start = time.time()
        clock = SimClock(real_start, settings.speed, 1_800_000_000.0)
        shared["real_start"].value = real_start
        shared["sim_start"].value = clock.start
        issuer.limit_requests(60, 3600.0, clock=clock)
        ready.set()

        rotation_at = settings.rotation_hour * 3600.0
        end = settings.hours * 3600.0
        published = -1.0
        for _ in range(100_000_000):
            t = clock() - clock.start
            if published < 0 and t >= rotation_at:
                issuer.rotate(key=new_key)
                published = clock() - clock.start
                shared["published_at"].value = published
            if t >= end:
                break
            time.sleep(0.001)

        reports: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(reports) < len(procs) and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                index, data = results.get(timeout=1)
                reports[index] = data
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        if len(reports) < len(procs):
            raise RuntimeError(f"only {len(reports)} of {len(procs)} workers reported")
        requests = list(issuer.requests)
        if os.environ.get("FLEET_SIM_DEBUG"):
            for r in requests:
                print(f"{(r.at - clock.start) / 60:8.2f} min {r.path[-30:]} {r.status}", file=sys.stderr)

    times = [r.at - clock.start for r in requests]
    delays = [r["first_new_accept"] for r in reports.values()]
    codes: dict[str, int] = {}
    for r in reports.values():
        for code, n in r["refused_codes"].items():
            codes[code] = codes.get(code, 0) + n
    return Report(
        settings=settings,
        requests=len(requests),
        max_rolling_hour=max_rolling(times),
        received_429=sum(1 for r in requests if r.status == 429),
        before_retry_after=sum(1 for r in requests if r.early),
        valid_checked=sum(r["valid"] for r in reports.values()),
        valid_refused=sum(r["valid_refused"] for r in reports.values()),
        startup_refused=sum(r["startup_refused"] for r in reports.values()),
        attack_tokens=sum(r["attack"] for r in reports.values()),
        rotation_delay=None if any(d is None for d in delays) else max(delays),
        rotation_delay_first=min((d for d in delays if d is not None), default=None),
        wall_seconds=time.monotonic() - wall_start,
        refused_codes=codes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--store", choices=["file", "redis", "none"], default="file")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    parser.add_argument("--rotation-hour", type=float, default=5.0)
    parser.add_argument("--speed", type=float, default=360.0, help="simulated seconds per real second")
    parser.add_argument("--fetch-interval", type=float, default=None, help="override fetch_interval (s)")
    parser.add_argument("--cooldown", type=float, default=None, help="override cooldown (s)")
    parser.add_argument("--fetch-burst", type=int, default=None, help="override fetch_burst")
    parser.add_argument(
        "--rotation-limit", type=float, default=ROTATION_LIMIT, help="allowed rotation delay (s, default 300)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    settings = Settings(
        store=args.store,
        processes=args.processes,
        hours=args.hours,
        rotation_hour=args.rotation_hour,
        speed=args.speed,
        fetch_interval=args.fetch_interval,
        cooldown=args.cooldown,
        fetch_burst=args.fetch_burst,
        rotation_limit=args.rotation_limit,
        seed=args.seed,
    )
    report = run(settings)
    if args.json:
        data = asdict(report)
        data["ok"] = report.ok
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(report.lines()))
        if report.refused_codes:
            print(f"  refusal codes: {report.refused_codes}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    threading.current_thread().name = "fleet-sim"
    sys.exit(main())
