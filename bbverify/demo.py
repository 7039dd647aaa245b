"""Runs ``bbverify demo``: the whole flow against a fake issuer on loopback, offline, in seconds.

It starts a fake Bitbucket issuer and a small protected WSGI app on
127.0.0.1, sends requests carrying tokens for realistic scenarios, and
prints what each got. The app sits behind a (pretend) load balancer on
loopback, so it trusts one proxy hop and reads the client address from
``X-Forwarded-For``, as a real deployment would.

Rules of the demo app:

* every route: the token's repository is on an allow list, the client IP is
  in Bitbucket's egress ranges (read from a sample of Atlassian's feed that
  ships with the package), and the step is allowed at most 20 minutes;
* ``/deploy`` also needs a deployment step for the production environment.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import requests

from .ipranges import SAMPLE_FEED
from .policies import Environments, IPRanges, Repositories, StepDuration
from .testing import FakeIssuer
from .verifier import Verifier
from .wsgi import PipelineAuthMiddleware

__all__ = ["Scenario", "run_demo"]

#: An address in the Bitbucket egress ranges of the sample feed (bbverify.ipranges.SAMPLE_FEED).
BITBUCKET_SAMPLE_IP = "34.199.54.113"
OUTSIDER_IP = "203.0.113.9"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Scenario:
    """One request of the demo and the answer it should get."""

    name: str
    path: str
    token: str | None
    forwarded_for: str
    expect_status: int
    expect_code: str
    server: str = "main"


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    status: int
    code: str
    why: str
    body: str = ""  # the response body as received (shown by ``demo -v``)

    @property
    def ok(self) -> bool:
        return self.status == self.scenario.expect_status and self.code == self.scenario.expect_code


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    # The protected app only sees requests the middleware let through.
    claims = environ.get("bbverify.claims")
    body = {
        "ok": True,
        "path": environ.get("PATH_INFO"),
        "repository": getattr(claims, "repository_uuid", None),
        "environment": getattr(claims, "deployment_environment_uuid", None),
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _dispatch(build: Any, deploy: Any) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        target = deploy if environ.get("PATH_INFO", "").startswith("/deploy") else build
        return target(environ, start_response)  # type: ignore[no-any-return]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 (a free port) for the ``with`` block."""
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _protected(issuer: FakeIssuer, production: str, *, timeout: float = 2.0) -> Any:
    base_rules = [
        Repositories(issuer.repository_uuid),
        # Read through the same loader as the live feed, from the sample shipped in the package.
        IPRanges.from_atlassian_feed(SAMPLE_FEED, product="bitbucket", direction="egress"),
        StepDuration(max_minutes=20),
    ]
    build = issuer.verifier(policies=base_rules, timeout=timeout, failure_backoff=1.0)
    # The deploy route shares the key cache and adds its own rule.
    deploy = Verifier(
        issuer=issuer.issuer,
        audience=issuer.audience,
        keys=build.keys,
        policies=[*base_rules, Environments(production)],
    )
    trusted = ["127.0.0.1/32"]
    return _dispatch(
        PipelineAuthMiddleware(_app, verifier=build, trusted_proxies=trusted, exclude_paths=["/healthz"]),
        PipelineAuthMiddleware(_app, verifier=deploy, trusted_proxies=trusted, exclude_paths=["/healthz"]),
    )


# A step token lives for the step's max-time plus Bitbucket's 5-minute buffer.
STEP_LIFETIME = (20 + 5) * 60
LONG_STEP_LIFETIME = (120 + 5) * 60  # Bitbucket's default max-time is 120 minutes


def _scenarios(issuer: FakeIssuer, production: str) -> list[Scenario]:
    now = time.time()

    def mint(**options: Any) -> str:
        options.setdefault("lifetime", STEP_LIFETIME)
        return issuer.mint(**options)

    good_build = mint(branch="main")
    tampered = issuer.sign(issuer.claims(lifetime=STEP_LIFETIME))
    # Flip one byte of the signature: the payload is intact, the signature is not.
    head, _, sig = tampered.rpartition(".")
    tampered = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    return [
        Scenario("allowed build step", "/build", good_build, BITBUCKET_SAMPLE_IP, 200, "ok"),
        Scenario(
            "allowed production deployment",
            "/deploy",
            mint(environment_uuid=production),
            BITBUCKET_SAMPLE_IP,
            200,
            "ok",
        ),
        Scenario(
            "another repository",
            "/build",
            mint(repository_uuid="{" + str(uuid.uuid4()) + "}"),
            BITBUCKET_SAMPLE_IP,
            403,
            "repository_not_allowed",
        ),
        Scenario(
            "deploy without a deployment environment",
            "/deploy",
            good_build,
            BITBUCKET_SAMPLE_IP,
            403,
            "environment_required",
        ),
        Scenario(
            "deploy to another environment",
            "/deploy",
            mint(environment_uuid="{" + str(uuid.uuid4()) + "}"),
            BITBUCKET_SAMPLE_IP,
            403,
            "environment_not_allowed",
        ),
        Scenario(
            "expired token",
            "/build",
            mint(issued_at=now - 3600),
            BITBUCKET_SAMPLE_IP,
            401,
            "expired",
        ),
        Scenario(
            "step allowed 120 minutes (rule: 20)",
            "/build",
            mint(lifetime=LONG_STEP_LIFETIME),
            BITBUCKET_SAMPLE_IP,
            403,
            "token_lifetime_too_long",
        ),
        Scenario("tampered signature", "/build", tampered, BITBUCKET_SAMPLE_IP, 401, "bad_signature"),
        Scenario(
            "spoofed X-Forwarded-For",
            "/build",
            good_build,
            f"{BITBUCKET_SAMPLE_IP}, {OUTSIDER_IP}",
            403,
            "ip_not_allowed",
        ),
        Scenario("no token", "/build", None, BITBUCKET_SAMPLE_IP, 401, "missing_token"),
        Scenario(
            "keys endpoint down (cold start)",
            "/build",
            mint(),
            BITBUCKET_SAMPLE_IP,
            503,
            "keys_unavailable",
            server="cold",
        ),
    ]


def _send(base: str, scenario: Scenario) -> Outcome:
    headers = {"X-Forwarded-For": scenario.forwarded_for}
    if scenario.token is not None:
        headers["Authorization"] = f"Bearer {scenario.token}"
    resp = requests.get(base + scenario.path, headers=headers, timeout=10)
    try:
        body = resp.json()
    except ValueError:
        body = {}
    text = resp.text[:2000]
    if resp.status_code == 200:
        return Outcome(scenario, 200, "ok", "allowed", text)
    code = str(body.get("code", "?"))
    why = str(body.get("message") or body.get("error_description") or resp.reason)
    return Outcome(scenario, resp.status_code, code, why, text)


def run_demo(*, verbose: bool = False, as_json: bool = False, out: Any = None) -> int:
    """Run every scenario; print a table; return 0 if all got the expected answer."""
    out = out or sys.stdout
    production = "{" + str(uuid.uuid4()) + "}"
    started = time.perf_counter()
    with FakeIssuer("demo-workspace") as issuer:
        scenarios = _scenarios(issuer, production)
        outcomes: list[Outcome] = []
        with serve(_protected(issuer, production)) as main_base:
            for s in scenarios:
                if s.server == "main":
                    outcomes.append(_send(main_base, s))
            issuer.fail("down")
            with serve(_protected(issuer, production)) as cold_base:
                for s in scenarios:
                    if s.server == "cold":
                        outcomes.append(_send(cold_base, s))
            issuer.recover()
    elapsed = time.perf_counter() - started
    failures = [o for o in outcomes if not o.ok]
    if as_json:
        rows = [
            {
                "scenario": o.scenario.name,
                "status": o.status,
                "code": o.code,
                "expected_status": o.scenario.expect_status,
                "expected_code": o.scenario.expect_code,
                "ok": o.ok,
                "why": o.why,
            }
            for o in outcomes
        ]
        print(
            json.dumps({"ok": not failures, "seconds": round(elapsed, 2), "results": rows}, indent=2),
            file=out,
        )
        return 0 if not failures else 1
    _print_table(outcomes, out, verbose)
    verdict = (
        "all scenarios got the expected answer" if not failures else f"{len(failures)} scenario(s) FAILED"
    )
    print(f"\n{len(outcomes)} scenarios in {elapsed:.1f} s: {verdict}", file=out)
    return 0 if not failures else 1


def _print_table(outcomes: list[Outcome], out: Any, verbose: bool) -> None:
    from .console import Style

    style = Style(out)
    print("bbverify demo: a fake Bitbucket issuer and a protected app on 127.0.0.1", file=out)
    print(
        "rules: repository allow list; Bitbucket egress IP ranges from a sample of Atlassian's feed"
        " (one trusted proxy); step <= 20 min;"
        " /deploy: production environment only\n",
        file=out,
    )
    width = max(len(o.scenario.name) for o in outcomes)
    print(f"{'scenario':<{width}}  status  {'decision':<24} why", file=out)
    print(f"{'-' * width}  ------  {'-' * 24} {'-' * 30}", file=out)
    for o in outcomes:
        mark = style.green("ok") if o.ok else style.red("UNEXPECTED")
        status = style.green(str(o.status)) if o.status == 200 else style.yellow(str(o.status))
        why = o.why if len(o.why) <= 70 or verbose else o.why[:67] + "..."
        print(f"{o.scenario.name:<{width}}  {status:>6}  {o.code:<24} {why}  [{mark}]", file=out)
        if verbose:
            print(f"{'':<{width}}  body: {_printable_body(o.body)}", file=out)
        if not o.ok:
            print(
                f"{'':<{width}}  expected {o.scenario.expect_status} {o.scenario.expect_code}",
                file=out,
            )


def _printable_body(body: str) -> str:
    # Re-encoded with json.dumps (ASCII, control characters escaped): a body never drives the terminal.
    try:
        return json.dumps(json.loads(body), sort_keys=True)
    except ValueError:
        return json.dumps(body)
