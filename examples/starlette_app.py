"""A Starlette API that only Bitbucket Pipelines steps can call.

Run it offline against a fake issuer (it prints a curl command with a token)::

    python examples/starlette_app.py --fake

Or against your workspace (settings from BBVERIFY_* environment variables)::

    BBVERIFY_WORKSPACE=acme BBVERIFY_WORKSPACE_UUID={...} python examples/starlette_app.py

and, in a pipeline step with ``oidc: true``::

    curl -H "Authorization: Bearer $BITBUCKET_STEP_OIDC_TOKEN" https://your-service/whoami
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bbverify import ConfigurationError, PipelineClaims, Verifier
from bbverify.asgi import PipelineAuthMiddleware
from bbverify.config import verifier_from_env
from bbverify.starlette import requires  # answers 401/403 like every adapter (Starlette's: plain 403)
from bbverify.testing import FakeIssuer


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def whoami(request: Request) -> JSONResponse:
    claims: PipelineClaims = request.scope["bbverify.claims"]
    return JSONResponse({"caller": request.user.display_name, **claims.summary()})


@requires("deployment")  # only tokens of deployment steps carry this scope
async def deploy(request: Request) -> JSONResponse:
    claims: PipelineClaims = request.scope["bbverify.claims"]
    return JSONResponse({"deploying_to": claims.deployment_environment_uuid})


def create_app(verifier: Verifier, trusted_proxies: str | None = None) -> PipelineAuthMiddleware:
    """The protected app; /healthz stays open for load balancers."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/whoami", whoami),
            Route("/deploy", deploy, methods=["POST"]),
        ]
    )
    return PipelineAuthMiddleware(
        app, verifier=verifier, exclude_paths=["/healthz"], trusted_proxies=trusted_proxies
    )


def settings_or_exit(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The BBVERIFY_* environment settings; without any, a usage error (never a silent fake issuer)."""
    settings = {k: v for k, v in os.environ.items() if k.startswith("BBVERIFY_")}
    if not settings:
        near = sorted(k for k in os.environ if k.upper().startswith("BBVERIFY_"))
        hint = f" (found {', '.join(near)}: the names are upper case)" if near else ""
        parser.error(
            f"no BBVERIFY_* settings in the environment{hint}; set BBVERIFY_WORKSPACE and "
            "BBVERIFY_WORKSPACE_UUID (see docs/configuration.md), or run with --fake to try it "
            "against a fake issuer"
        )
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fake", action="store_true", help="use a fake issuer on 127.0.0.1 instead of BBVERIFY_* settings"
    )
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)

    fake = args.fake
    issuer = FakeIssuer().start() if fake else None
    if issuer is not None:
        verifier = issuer.verifier()
    else:
        settings_or_exit(parser)
        try:
            verifier = verifier_from_env(ignore=["BBVERIFY_TRUSTED_PROXIES"])
        except ConfigurationError as exc:
            parser.error(str(exc))
    trusted = None if fake else os.environ.get("BBVERIFY_TRUSTED_PROXIES")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)  # connections wait in the backlog until uvicorn starts accepting
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    print(f"Listening on {url}", flush=True)
    if issuer is not None:
        print("Try (tokens from a fake issuer, valid for an hour; refusals end with their answer):")
        print(
            "\n".join(
                issuer.curl_lines(
                    url,
                    path="/whoami",
                    deploy_path="/deploy",
                    deploy_refusal="403 insufficient_scope",  # requires("deployment")
                )
            ),
            flush=True,
        )
    # proxy_headers=False: bbverify reads X-Forwarded-For itself, only from trusted proxies.
    config = uvicorn.Config(create_app(verifier, trusted), log_level="warning", proxy_headers=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if issuer is not None:
            issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
