"""Run every benchmark section and print one table (``python -m benchmarks [--quick]``)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import cryptography
import jwt as pyjwt

from bbverify.testing import FakeIssuer

from . import gateway_bench, http_bench, jwks_bench, micro

SECTIONS = ("micro", "http", "jwks", "gateway")


def _target(label: str, value: float, limit: float, *, at_most: bool) -> str:
    ok = value <= limit if at_most else value >= limit
    sign = "<=" if at_most else ">="
    return f"| {label:<58} | {value:>8.2f} | {sign} {limit:<5g} | {'met' if ok else 'NOT MET':<7} |"


def _heading(text: str) -> None:
    print(f"\n## {text}\n")
    sys.stdout.flush()


def _micro(issuer: FakeIssuer, quick: bool, targets: list[str]) -> None:
    results, info = micro.run(issuer, tokens=60 if quick else 1500, rounds=2 if quick else 9)
    _heading(
        f"1-4. Per token: median of {len(results[micro.FLOOR].per_op_ns)} interleaved rounds; "
        f"{info['tokens']} distinct tokens of {info['token_bytes']} bytes; rules: {info['rules']}"
    )
    floor = results[micro.FLOOR].median_us
    peer = results[micro.PYJWT].median_us
    print(f"| {'case':<34} | {'us/op':>9} | {'x floor':>7} | {'vs PyJWT':>8} | {'spread':>6} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for r in results.values():
        print(
            f"| {r.name:<34} | {r.median_us:>9.2f} | {r.median_us / floor:>7.2f} | "
            f"{peer / r.median_us:>7.1f}x | {r.spread * 100:>5.0f}% |"
        )
    print("\n(vs PyJWT: how many times faster than jwt.decode; spread: slowest round / fastest round - 1)")
    per_token = info["bytes_per_cached_token"]
    print(f"\nmemory per cached token: {per_token:.0f} bytes (tracemalloc, mean of {info['tokens']})")
    fresh = results[micro.FRESH].median_us
    repeated = results[micro.REPEATED].median_us
    repeated_rules = results[micro.REPEATED_RULES].median_us
    # The targets of issue 12.
    targets.append(_target("PyJWT / fresh token (x faster)", peer / fresh, 3, at_most=False))
    targets.append(_target("fresh token / floor", fresh / floor, 2.2, at_most=True))
    targets.append(_target("PyJWT / repeated token (x faster)", peer / repeated, 200, at_most=False))
    targets.append(
        _target("PyJWT / repeated token, 4 rules (x faster)", peer / repeated_rules, 60, at_most=False)
    )


def _http(issuer: FakeIssuer, quick: bool, targets: list[str]) -> None:
    _heading("5. HTTP: GET / on loopback, repeated token, 4 keep-alive client threads in this process")
    missing = http_bench.adapters_available()
    if missing:
        print(f"skipped: the adapters are not importable ({missing})")
        return
    stats = http_bench.run(issuer, requests=400 if quick else 3000, rounds=2 if quick else 6)
    print(
        f"| {'server, app':<38} | {'requests':>8} | {'req/s':>7} | {'p50 ms':>6} | {'p99 ms':>6} | "
        f"{'server CPU us/req':>17} | err |"
    )
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 19}|-----|")
    for name, s in stats.items():
        print(
            f"| {name:<38} | {len(s.latencies_ns):>8} | {s.rps:>7.0f} | {s.pct(0.5):>6.2f} | "
            f"{s.pct(0.99):>6.2f} | {s.server_cpu_us:>17.0f} | {s.errors:>3} |"
        )
    for label in http_bench.SERVERS.values():
        protected, unprotected = stats[f"{label}, protected"], stats[f"{label}, open"]
        kept = http_bench.kept_throughput(protected, unprotected)
        targets.append(
            _target(f"{label}: protected / open req/s (median of rounds)", kept, 0.9, at_most=False)
        )
        if protected.server_cpu_s and unprotected.server_cpu_s:
            # The same target read from the server's CPU per request (1 / CPU cost = capacity).
            kept = unprotected.server_cpu_us / protected.server_cpu_us
            targets.append(_target(f"{label}: open / protected server CPU", kept, 0.9, at_most=False))


def _jwks(issuer: FakeIssuer, quick: bool, targets: list[str]) -> None:
    _heading("6. Key set under load, and memory")
    callers = 20 if quick else 50
    for use_async in (False, True):
        r = jwks_bench.concurrent_new_key(issuer, callers, use_async=use_async)
        how = "coroutines (averify)" if use_async else "threads (verify)"
        print(
            f"- {r['callers']} {how} needing a just-published kid at once: "
            f"{r['verified']} verified, {r['fetches']} JWKS fetch(es)"
        )
        targets.append(_target(f"JWKS fetches, {callers} concurrent {how}", r["fetches"], 1, at_most=True))
    flood = jwks_bench.random_kid_flood(issuer, seconds=1.0 if quick else 3.0, cooldown=0.5)
    print(
        f"- random-kid flood, {flood['seconds']:.1f}s, 4 threads: {flood['requests']} requests "
        f"({flood['requests'] / flood['seconds']:.0f}/s), {flood['rejected_unknown_key']} refused as "
        f"unknown_key, {flood['fetches']} JWKS fetches (cooldown {flood['cooldown']}s allows at most "
        f"{flood['fetch_limit']}); caches afterwards {flood['cache']}"
    )
    targets.append(
        _target(
            "flood: fetches / allowed by cooldown", flood["fetches"] / flood["fetch_limit"], 1, at_most=True
        )
    )
    # Quick mode shrinks the cache so that it still overflows.
    mem = jwks_bench.memory(issuer, 2000 if quick else 50000, cache_size=500 if quick else 4096)
    print(
        f"- {mem['tokens']} distinct valid ES256 tokens verified in {mem['seconds']:.1f}s "
        f"(RSS before: {mem['start_rss_kib'] / 1024:.1f} MiB)"
    )
    print(f"\n| {'tokens verified':>15} | {'RSS MiB':>8} | {'cached tokens':>13} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 15}|")
    for done, rss, cached in mem["samples"]:
        print(f"| {done:>15} | {rss / 1024:>8.1f} | {cached:>13} |")
    cache = mem["cache"]
    print(f"\ncache_info() at the end: {cache}")
    targets.append(
        _target("token cache entries / limit", cache["tokens"] / cache["token_limit"], 1, at_most=True)
    )
    half, last = mem["samples"][-2][1], mem["samples"][-1][1]
    targets.append(
        _target("RSS growth, second half of the tokens (MiB)", (last - half) / 1024, 8, at_most=True)
    )


def _gateway(issuer: FakeIssuer, quick: bool, targets: list[str]) -> None:
    _heading("7. Gateway: GET / through nginx, with and without bbverify serve (auth_request)")
    missing = gateway_bench.available()
    if missing:
        print(f"skipped: {missing}")
        return
    samples = 60 if quick else 1000
    r = gateway_bench.run(
        issuer, requests=400 if quick else 3000, rounds=2 if quick else 6, latency_samples=samples
    )
    print(f"| {'path':<42} | {'requests':>8} | {'req/s':>7} | {'p50 ms':>6} | {'p99 ms':>6} | err |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 8}|-----|")
    for name, s in r["http"].items():
        print(
            f"| {name:<42} | {len(s.latencies_ns):>8} | {s.rps:>7.0f} | {s.pct(0.5):>6.2f} | "
            f"{s.pct(0.99):>6.2f} | {s.errors:>3} |"
        )
    print(
        f"\nThe gateway alone, {r['samples']} sequential checks on one keep-alive connection: "
        f"repeated token p50 {r['repeated'][0]:.2f} ms, p99 {r['repeated'][1]:.2f} ms; "
        f"fresh tokens p50 {r['fresh'][0]:.2f} ms, p99 {r['fresh'][1]:.2f} ms"
    )
    print(
        f"CPU per request on the gated path: gateway (2 workers) {r['gateway_cpu_us']:.0f} us, "
        f"upstream handler {r['upstream_cpu_us']:.0f} us"
    )
    if r["upstream_cpu_us"]:
        cost = r["gateway_cpu_us"] / r["upstream_cpu_us"]
        targets.append(_target("gateway CPU / upstream handler CPU per request", cost, 1.0, at_most=True))
    kept = r["kept"]
    targets.append(_target("nginx+gateway / nginx alone req/s (median of rounds)", kept, 0.5, at_most=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, figures are rough")
    parser.add_argument("--skip-http", action="store_true", help="skip section 5 (HTTP servers)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset of micro (1-4), http (5), jwks (6), gateway (7); default: all",
    )
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        parser.error(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    if args.skip_http:
        sections.discard("http")
    started = time.perf_counter()
    print(
        f"bbverify benchmarks ({'quick' if args.quick else 'full'} run): Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__}, PyJWT {pyjwt.__version__}, "
        f"{os.cpu_count()} CPU(s), {platform.machine()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    targets: list[str] = []
    with FakeIssuer() as issuer:
        for name, section in (("micro", _micro), ("http", _http), ("jwks", _jwks), ("gateway", _gateway)):
            if name in sections:
                section(issuer, args.quick, targets)
    _heading("Targets (from this run)")
    print(f"| {'target':<58} | {'value':>8} | {'limit':<8} | {'status':<7} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    print("\n".join(targets))
    print(f"\ntotal time {time.perf_counter() - started:.0f}s")
    return 0
