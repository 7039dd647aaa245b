"""The ``bbverify`` command line: parses the arguments and runs one sub-command, one function each.

Subcommands: ``demo``, ``inspect``, ``verify``, ``ip-ranges``, ``lookup``,
``serve``, ``fake-issuer``. Exit status: 0 success (token accepted, demo as expected), 1 rejected or a
failed check, 2 usage or configuration error (in every subcommand), 141 when
the reader of standard output went away (``bbverify inspect ... | head``),
quietly. Errors go to stderr; colour is used only on a terminal (and never
when ``NO_COLOR`` is set).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .console import Style
from .errors import ConfigurationError, VerificationError

__all__ = ["main"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
#: 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe.
EXIT_BROKEN_PIPE = 141

_EMPTY_INPUT_HELP = (
    "the token is empty. In a pipeline, $BITBUCKET_STEP_OIDC_TOKEN is set only in steps "
    "with 'oidc: true'; add it to the step, or pass the token (or - to read standard input)"
)


# What a terminal may act on: C0 controls (ESC, CR, BS ...), DEL, C1 controls
# (CSI/OSC as single bytes), and the invisible/bidirectional formatting
# characters that reorder or hide text (Unicode TR #9, "Trojan Source").
# The backslash is escaped too, so an escape in the output is always ours.
_UNSAFE_TERMINAL = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object) -> str:
    """``value`` as text that cannot drive a terminal (control and bidi characters escaped).

    Everything taken from a token goes through this before it is printed
    (``inspect`` decodes tokens nobody has checked). ``ESC`` becomes
    ``\\x1b``, U+202E becomes ``\\u202e``, a backslash ``\\\\``.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE_TERMINAL.sub(_escape_char, text)


def _json_line(value: object, indent: int | None = None) -> str:
    """JSON that cannot drive a terminal: ``ensure_ascii`` escapes C0, C1 and
    every non-ASCII character; DEL is ASCII, so it is escaped here."""
    return json.dumps(value, indent=indent).replace("\x7f", "\\u007f")


def _err(message: str) -> None:
    print(f"bbverify: {message}", file=sys.stderr)


def _read_token(arg: str) -> str | None:
    """The token given (``-``: read from standard input), without a ``Bearer`` prefix.

    ``None`` when there is none, after telling the user how to give one.
    """
    text = sys.stdin.read() if arg == "-" else arg
    text = text.strip()
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    if not text:
        _err(_EMPTY_INPUT_HELP)
        return None
    return text


# -- inspect ----------------------------------------------------------------------


def _lenient_b64(segment: str) -> bytes:
    # inspect is for debugging rejected tokens, so it decodes what verify refuses.
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def relative(seconds: float) -> str:
    """``in 4 min`` / ``3 h ago`` for a signed number of seconds from now."""
    size = abs(seconds)
    if size < 90:
        amount = f"{size:.0f} s"
    elif size < 90 * 60:
        amount = f"{size / 60:.0f} min"
    elif size < 48 * 3600:
        amount = f"{size / 3600:.1f} h"
    else:
        amount = f"{size / 86400:.1f} days"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, without any verification."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"a JWT has 3 dot-separated parts; this has {len(parts)}")
    try:
        header = json.loads(_lenient_b64(parts[0]))
        payload = json.loads(_lenient_b64(parts[1]))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise ValueError(f"not base64url-encoded JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("header and payload must be JSON objects")
    return header, payload


def _cmd_inspect(args: argparse.Namespace) -> int:
    style = Style(sys.stdout)
    token = _read_token(args.token)
    if token is None:
        return EXIT_USAGE
    try:
        header, payload = decode_unverified(token)
    except ValueError as exc:
        _err(f"cannot decode token: {exc}")
        return EXIT_REJECTED
    lifetime = _lifetime(payload)
    if args.json:
        document = {"verified": False, "header": header, "payload": payload, "lifetime_seconds": lifetime}
        print(_json_line(document, indent=2))
        return EXIT_OK
    print(style.yellow("NOT VERIFIED: decoded only; nothing here has been checked."))
    print(style.bold("Header"))
    for k, v in header.items():
        print(f"  {safe_text(k)}: {_json_line(v)}")
    print(style.bold("Claims"))
    now = time.time()
    for k, v in payload.items():
        line = f"  {safe_text(k)}: {_json_line(v)}"
        if k in ("iat", "exp", "nbf") and type(v) in (int, float):
            try:
                when = datetime.fromtimestamp(v, UTC).isoformat()
                line += f"  ({when}, {relative(v - now)})"
            except (OverflowError, OSError, ValueError):
                line += "  (not a usable date)"
        print(line)
    print(style.bold("Pipeline"))
    sub = payload.get("sub")
    parts = sub.split(":") if isinstance(sub, str) else []
    kind = "deployment step" if len(parts) == 3 else "build step" if len(parts) == 2 else "unknown"
    for label, key in (
        ("workspace", "workspaceUuid"),
        ("repository", "repositoryUuid"),
        ("environment", "deploymentEnvironmentUuid"),
        ("pipeline", "pipelineUuid"),
        ("step", "stepUuid"),
        ("branch", "branchName"),
    ):
        print(f"  {label:<12} {safe_text(payload.get(key, '-'))}")
    print(f"  {'kind':<12} {kind}")
    exp = payload.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        status = style.red("expired") if exp <= now else style.green("not expired")
        print(f"  {'status':<12} {status} ({relative(exp - now)})")
    if lifetime is not None:
        # StepDuration compares this with max_minutes + the 5-minute start buffer.
        print(f"  {'lifetime':<12} {lifetime:g} s ({lifetime / 60:.1f} min, exp - iat)")
    return EXIT_OK


def _lifetime(payload: dict[str, Any]) -> float | None:
    """``exp - iat`` in seconds, when both are numbers."""
    exp, iat = payload.get("exp"), payload.get("iat")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat))
    return float(exp - iat) if numbers else None  # type: ignore[operator]


# -- verify -----------------------------------------------------------------------


def _build_verifier(args: argparse.Namespace) -> Any:
    from . import config

    overrides: dict[str, Any] = {}
    if args.workspace:
        overrides["workspace"] = args.workspace
    if args.issuer:
        overrides["issuer"] = args.issuer
    if args.audience:
        overrides["audience"] = args.audience if len(args.audience) > 1 else args.audience[0]
    if args.jwks_url:
        overrides["jwks_url"] = args.jwks_url
    if args.workspace_uuid:
        overrides["workspace_uuid"] = args.workspace_uuid
    # File, then environment, then flags, as --help and the README say.
    return config.verifier_from_layers(args.config, os.environ, **overrides)


#: The settings ``verify`` takes as flags (``docs/configuration.md`` spells them as in Python).
_VERIFY_FLAGS = {
    "workspace": "--workspace",
    "issuer": "--issuer",
    "audience": "--audience",
    "workspace_uuid": "--workspace-uuid",
    "jwks_url": "--jwks-url",
}


def _from_flag(exc: ConfigurationError, args: argparse.Namespace) -> bool:
    """Whether ``exc`` is about a setting given as a flag (its key names the setting, never parsed text)."""
    setting = re.split(r"[\[.]", exc.key or "", maxsplit=1)[0]
    return setting in _VERIFY_FLAGS and bool(getattr(args, setting, None))


def _cmd_verify(args: argparse.Namespace) -> int:
    style = Style(sys.stdout)
    token = _read_token(args.token)
    if token is None:
        return EXIT_USAGE
    try:
        verifier = _build_verifier(args)
    except (ConfigurationError, OSError) as exc:
        _err(f"configuration error: {safe_text(exc)}")
        if isinstance(exc, ConfigurationError) and _from_flag(exc, args):
            # The advice names settings as Verifier arguments; say how this command spells them.
            _err("on this command line, " + ", ".join(f"{s} is {f}" for s, f in _VERIFY_FLAGS.items()))
        return EXIT_USAGE
    try:
        verifier.check_policy(args.policy)
    except ConfigurationError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_USAGE
    try:
        claims = verifier.verify(token, client_ip=args.client_ip, policy=args.policy)
    except VerificationError as exc:
        if args.json:
            print(
                _json_line(
                    {
                        "accepted": False,
                        "code": exc.code,
                        "status": exc.status_code,
                        "message": exc.message,
                        "rule": getattr(exc, "rule", None),
                        "seen": _seen(verifier, token),
                    }
                )
            )
        else:
            print(style.red(f"REJECTED ({exc.status_code} {safe_text(exc.code)}): {safe_text(exc.message)}"))
            _print_seen(_seen(verifier, token))
        return EXIT_REJECTED
    if args.json:
        print(_json_line({"accepted": True, "code": "ok", "claims": claims.summary()}))
    else:
        print(style.green("ACCEPTED"))
        for k, v in claims.summary().items():
            print(f"  {k:<12} {safe_text(v) if v is not None else '-'}")
        left = relative(claims.expires_at.timestamp() - time.time())
        print(f"  {'expires':<12} {claims.expires_at.isoformat()} ({left})")
    return EXIT_OK


def _seen(verifier: Any, token: str) -> dict[str, Any]:
    """The token's unverified ``iss``/``aud`` beside the configured ones, for the operator.

    Another workspace's token fails on its key (``unknown_key``) before the
    issuer is compared, so showing both is what tells the operator why.
    """
    try:
        _, payload = decode_unverified(token)
    except ValueError:
        payload = {}
    # Every trusted workspace's, so a verifier over several workspaces shows them all.
    specs = getattr(verifier, "workspaces", ())
    return {
        "token_iss": payload.get("iss"),
        "token_aud": payload.get("aud"),
        "configured_issuers": [spec.issuer for spec in specs],
        "configured_audiences": sorted({aud for spec in specs for aud in spec.audiences}),
    }


def _print_seen(seen: dict[str, Any]) -> None:
    # As JSON through _json_line: an unverified claim never drives the terminal.
    print("  unverified token values beside this verifier's settings:")
    print(f"    {'iss':<10} token: {_json_line(seen['token_iss'])}")
    print(f"    {'':<10} configured: {_json_line(seen['configured_issuers'])}")
    print(f"    {'aud':<10} token: {_json_line(seen['token_aud'])}")
    print(f"    {'':<10} configured: {_json_line(seen['configured_audiences'])}")


# -- ip-ranges --------------------------------------------------------------------


def _cmd_ip_ranges(args: argparse.Namespace) -> int:
    from . import ipranges

    if args.sample and args.source is not None:
        _err("give --source or --sample, not both")
        return EXIT_USAGE
    source = str(ipranges.SAMPLE_FEED) if args.sample else args.source or ipranges.DEFAULT_FEED_URL
    try:
        cidrs = ipranges.load_cidrs(
            source, product=args.product, direction=args.direction, region=args.region
        )
    except (ConfigurationError, OSError, ValueError) as exc:
        # A source that cannot be read or matches nothing is a usage error, like every subcommand's.
        _err(f"cannot read the IP-range feed: {exc}")
        return EXIT_USAGE
    text = json.dumps(cidrs, indent=2) + "\n" if args.format == "json" else "".join(c + "\n" for c in cidrs)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {len(cidrs)} ranges to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# -- lookup -----------------------------------------------------------------------


def _cmd_lookup(args: argparse.Namespace) -> int:
    from . import lookup

    try:
        authorization, source = lookup.credentials_from_env(os.environ)
        base_url = os.environ.get("BITBUCKET_API_URL") or lookup.DEFAULT_API_URL
        result = lookup.lookup(
            args.workspace,
            args.repository or (),
            authorization=authorization,
            base_url=base_url,
            timeout=args.timeout,
        )
    except ConfigurationError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_USAGE
    except lookup.LookupFailed as exc:
        _err(str(exc))
        return EXIT_REJECTED
    if args.format in ("table", "both"):
        sys.stdout.write(lookup.render_table(result))
    if args.format == "both":
        print(f"\n# bbverify.toml (credentials from {source})")
    if args.format in ("toml", "both"):
        sys.stdout.write(lookup.render_toml(result))
    return EXIT_OK


# -- fake-issuer ------------------------------------------------------------------


def _cmd_fake_issuer(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .claims import normalize_uuid
    from .fetch import is_loopback_host
    from .testing import TOKEN_KINDS, FakeIssuer

    if not is_loopback_host(args.host):
        _err(f"--host {args.host!r}: the fake issuer listens on loopback only (127.0.0.1, ::1)")
        return EXIT_USAGE
    try:
        uuids = {
            name: normalize_uuid(value, key=f"--{name.replace('_', '-')}")
            for name, value in (
                ("workspace_uuid", args.workspace_uuid),
                ("repository_uuid", args.repository_uuid),
                ("environment_uuid", args.environment_uuid),
            )
            if value is not None
        }
        issuer = FakeIssuer(
            args.workspace,
            workspace_uuid=uuids.get("workspace_uuid"),
            host=args.host,
            port=args.port,
            mint_endpoint=True,
        )
    except ConfigurationError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_USAGE
    issuer.repository_uuid = uuids.get("repository_uuid", issuer.repository_uuid)
    issuer.environment_uuid = uuids.get("environment_uuid", issuer.environment_uuid)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        issuer.start()
    except OSError as exc:
        _err(f"cannot listen on {args.host}:{args.port}: {exc}")
        return EXIT_USAGE
    try:
        base = issuer.base_url
        print(f"Fake Bitbucket issuer on {base} (test keys, loopback only). Ctrl-C or SIGTERM stops it.")
        print("Point your app at it (these settings, or the same as Verifier arguments):")
        print(f"  BBVERIFY_ISSUER={issuer.issuer}")
        print(f"  BBVERIFY_WORKSPACE_UUID={issuer.workspace_uuid}   # gives the audience {issuer.audience}")
        print(f"  repository {issuer.repository_uuid}, deployment environment {issuer.environment_uuid}")
        print("Fresh tokens, one per request:")
        for kind in TOKEN_KINDS:
            print(f"  curl -s {base}/mint/{kind}")
        print("Try your app:")
        print(f'  curl -H "Authorization: Bearer $(curl -s {base}/mint/valid)" http://127.0.0.1:8000/')
        sys.stdout.flush()
        stop.wait()
    finally:
        issuer.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("fake issuer stopped", file=sys.stderr)
    return EXIT_OK


# -- demo -------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(verbose=args.verbose, as_json=args.json)


# -- serve ------------------------------------------------------------------------


#: Top-level modules the ``serve`` extra installs (pyproject.toml); without them
#: ``serve`` is a usage error naming the extra, not a traceback.
_SERVE_EXTRA_MODULES = frozenset({"prometheus_client", "uvicorn"})


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import run

        # serve.run imports uvicorn only when it starts; ask for it before any work.
        __import__("uvicorn")
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _SERVE_EXTRA_MODULES:
            raise
        _err(
            f"serve needs the [serve] extra ({exc.name} is not installed): "
            "pip install -e '.[serve]' in a checkout of bbverify"
        )
        return EXIT_USAGE
    try:
        return run(args.config, host=args.host, port=args.port, workers=args.workers)
    except ConfigurationError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_USAGE


# -- parser -----------------------------------------------------------------------

_EPILOG = """examples:
  bbverify demo
  bbverify inspect "$BITBUCKET_STEP_OIDC_TOKEN"
  echo "$TOKEN" | bbverify inspect -
  bbverify verify "$TOKEN" --workspace acme --audience ari:cloud:bitbucket::workspace/<uuid>
  bbverify verify - --config bbverify.toml --client-ip 34.199.54.113 --json < token.txt
  bbverify ip-ranges --source https://ip-ranges.atlassian.com/ --product bitbucket --direction egress
  BITBUCKET_EMAIL=me@example.com BITBUCKET_API_TOKEN=... bbverify lookup --workspace acme --repository api
  bbverify fake-issuer --port 8900
"""


# Each sub-command's text: the one-line summary, a blank line, the
# description (one paragraph, shown unwrapped), a blank line, the examples.
_DEMO = """run the end-to-end demo offline (fake issuer + protected app on loopback)

Start a fake Bitbucket issuer and a protected app on 127.0.0.1, send them tokens for several scenarios,
and print what each got. Exits 0 when every scenario got the expected answer.

example:
  bbverify demo
  bbverify demo --json
"""
_INSPECT = """decode a token WITHOUT verifying it and show its claims

Decode a token without verifying it: header, claims, dates, the pipeline it names. Nothing is checked;
use 'verify' for that.

examples:
  bbverify inspect "$BITBUCKET_STEP_OIDC_TOKEN"
  bbverify inspect - < token.txt
"""
_VERIFY = """fully verify a token with the library's rules

Verify a token exactly as the library would. Settings come from --config (TOML), then BBVERIFY_*
environment variables, then these flags. Exit 0 accepted, 1 rejected, 2 usage or configuration error.

examples:
  bbverify verify "$TOKEN" --workspace acme --audience ari:cloud:bitbucket::workspace/<uuid>
  BBVERIFY_WORKSPACE=acme BBVERIFY_AUDIENCE=... bbverify verify - --json < token.txt
"""
_IP_RANGES = """read Atlassian's IP-range feed and print the CIDRs the IP rule uses

Read Atlassian's published IP-range feed (URL or file), filter it by product and direction, and print or
write the CIDR list.

examples:
  bbverify ip-ranges --source feed.json
  bbverify ip-ranges --sample
  bbverify ip-ranges --source https://ip-ranges.atlassian.com/ --format json -o ranges.json
"""
_LOOKUP = """find workspace, repository and deployment environment UUIDs by name (Bitbucket API)

Ask Bitbucket's REST API for the UUIDs tokens carry: the workspace UUID and default audience, each
repository's UUID and its deployment environments. Prints a table and a ready TOML snippet. Credentials
come from the environment only: BITBUCKET_EMAIL + BITBUCKET_API_TOKEN (Atlassian API token), or
BITBUCKET_ACCESS_TOKEN (workspace, project or repository access token), or BITBUCKET_USERNAME +
BITBUCKET_APP_PASSWORD. BITBUCKET_API_URL overrides https://api.bitbucket.org. Exit 0 found, 1 refused by
Bitbucket (401, 403, 404, 429, ...), 2 usage or configuration error.

example:
  export BITBUCKET_EMAIL=me@example.com BITBUCKET_API_TOKEN=...
  bbverify lookup --workspace acme --repository api --repository web
"""
_SERVE = """run the forward-auth gateway for nginx, Traefik, Caddy and Envoy

Answer a reverse proxy's auth checks: route the original request to a named policy, verify its token,
admit (200 + identity headers) or refuse (401/403 JSON). Settings come from [bbverify] and
[bbverify.serve] in --config (docs/gateway.md). Listens on 127.0.0.1:9180 unless told otherwise.

examples:
  bbverify serve --config bbverify.toml
  bbverify serve --config bbverify.toml --port 9180 --workers 2
"""
_FAKE_ISSUER = """run the test kit's fake Bitbucket issuer on loopback, to try a running app by hand

Serve discovery and keys.json of a fake Bitbucket workspace on 127.0.0.1 until stopped (Ctrl-C or
SIGTERM), and mint tokens on request: GET /mint/<kind> with kind valid, deployment, expired,
wrong-audience or other-repository. Test keys only: never point a production service at it.

examples:
  bbverify fake-issuer
  bbverify fake-issuer --port 8900 --repository-uuid '{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}'
"""


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    text: str,
    *,
    allow_abbrev: bool = False,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``, run by ``func`` and described by ``text`` (see above)."""
    summary, description, epilog = text.split("\n\n")
    command = sub.add_parser(
        name,
        allow_abbrev=allow_abbrev,
        help=summary,
        description=" ".join(description.split()),
        epilog=epilog.rstrip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    # allow_abbrev=False: a flag is spelled exactly (--work is not --workspace),
    # like every other setting (issue 11: near misses are errors).
    parser = argparse.ArgumentParser(
        prog="bbverify",
        allow_abbrev=False,
        description="Verify Bitbucket Pipelines OIDC tokens and try the rules offline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bbverify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = _command(sub, "demo", _cmd_demo, _DEMO)
    demo.add_argument("--verbose", "-v", action="store_true", help="also print each response body")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")

    inspect = _command(sub, "inspect", _cmd_inspect, _INSPECT)
    inspect.add_argument("token", help="the token, or - to read it from standard input")
    inspect.add_argument("--json", action="store_true", help="print header and claims as JSON")

    verify = _command(sub, "verify", _cmd_verify, _VERIFY)
    verify.add_argument("token", help="the token, or - to read it from standard input")
    verify.add_argument("--workspace", help="workspace slug (derives the issuer)")
    verify.add_argument("--issuer", help="exact issuer URL instead of --workspace")
    verify.add_argument("--audience", action="append", help="accepted audience (repeatable)")
    verify.add_argument("--jwks-url", help="fetch keys here instead of using discovery")
    verify.add_argument(
        "--workspace-uuid",
        help="workspace UUID: the token's workspaceUuid must be it, and the audience defaults to "
        "Bitbucket's ari:cloud:bitbucket::workspace/<uuid>",
    )
    verify.add_argument("--config", help="TOML configuration file (see docs/configuration.md)")
    verify.add_argument("--client-ip", help="client IP the IP-range rule should see")
    verify.add_argument("--policy", help="named policy to apply (default: the configured default_policy)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    ipr = _command(sub, "ip-ranges", _cmd_ip_ranges, _IP_RANGES)
    ipr.add_argument(
        "--source", default=None, help="feed URL (https) or file path (default: Atlassian's published feed)"
    )
    ipr.add_argument(
        "--sample",
        action="store_true",
        help="read the sample feed packaged with bbverify (offline; bbverify.ipranges.SAMPLE_FEED)",
    )
    ipr.add_argument("--product", default="bitbucket", help="product to keep (default: bitbucket)")
    ipr.add_argument("--direction", default="egress", help="direction to keep (default: egress)")
    ipr.add_argument("--region", help="region to keep (default: all)")
    ipr.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    ipr.add_argument("--output", "-o", help="write to this file instead of standard output")

    look = _command(sub, "lookup", _cmd_lookup, _LOOKUP, allow_abbrev=True)
    look.add_argument("--workspace", required=True, help="workspace slug")
    look.add_argument(
        "--repository", action="append", metavar="SLUG", help="repository slug (repeatable)"
    )
    look.add_argument(
        "--format", choices=("both", "table", "toml"), default="both", help="what to print (default: both)"
    )
    look.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")

    serve = _command(sub, "serve", _cmd_serve, _SERVE, allow_abbrev=True)
    serve.add_argument("--config", required=True, help="TOML file with [bbverify] and [bbverify.serve]")
    serve.add_argument("--host", help="address to listen on (default: serve.host or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port or 9180)")
    serve.add_argument("--workers", type=int, help="worker processes (default: serve.workers or 1)")

    fake = _command(sub, "fake-issuer", _cmd_fake_issuer, _FAKE_ISSUER, allow_abbrev=True)
    fake.add_argument("--host", default="127.0.0.1", help="loopback address (default: 127.0.0.1)")
    fake.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    fake.add_argument("--workspace", default="demo-workspace", help="workspace slug in the issuer path")
    fake.add_argument("--workspace-uuid", help="workspaceUuid of the tokens (default: random)")
    fake.add_argument("--repository-uuid", help="repositoryUuid of valid tokens (default: random)")
    fake.add_argument("--environment-uuid", help="environment of deployment tokens (default: random)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bbverify`` command."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _broken_pipe()


def _broken_pipe() -> int:
    """The reader of standard output left (``| head``): stop quietly, no traceback.

    Standard output is pointed at /dev/null so the interpreter's final flush
    cannot raise again (the recipe of Python's signal module documentation).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # no real file descriptor behind stdout (embedded use): nothing to flush
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
