"""A FastAPI service that only Bitbucket Pipelines steps can call.

Offline, against a fake issuer (prints curl commands with tokens)::

    python examples/fastapi_app.py --fake

Against your workspace, with BBVERIFY_* settings (required without --fake)
and the production environment's UUID for the /deploy route::

    BBVERIFY_WORKSPACE=acme BBVERIFY_WORKSPACE_UUID={...} \\
    DEPLOY_ENVIRONMENT_UUID={...} python examples/fastapi_app.py

The OpenAPI page (/docs) shows the routes as bearer-protected.
"""

import argparse
import os
import socket
import sys
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI

from bbverify import ConfigurationError, PipelineClaims, Verifier
from bbverify.config import verifier_from_env
from bbverify.fastapi import PipelineAuth, install_error_handler
from bbverify.policies import Environments
from bbverify.testing import FakeIssuer


def create_app(
    verifier: Verifier, production_environment: str, trusted_proxies: str | None = None
) -> FastAPI:
    """Two protected routes: any pipeline step, and deployments to one environment."""
    app = FastAPI(title="bbverify FastAPI example")
    install_error_handler(app)  # RFC 6750 JSON bodies instead of {"detail": ...}
    # trusted_proxies: only when a proxy you run sets X-Forwarded-For (see docs/adapters.md).
    any_step = PipelineAuth(verifier, trusted_proxies=trusted_proxies)
    production_only = PipelineAuth(
        verifier, Environments(production_environment), trusted_proxies=trusted_proxies
    )

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/whoami")
    def whoami(claims: Annotated[PipelineClaims, Depends(any_step)]) -> dict[str, str | None]:
        return claims.summary()

    @app.post("/deploy")
    def deploy(claims: Annotated[PipelineClaims, Depends(production_only)]) -> dict[str, str | None]:
        return {"deploying_to": claims.deployment_environment_uuid, "step": claims.step_uuid}

    return app


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
    if fake:
        issuer: FakeIssuer | None = FakeIssuer().start()
        assert issuer is not None
        verifier, production = issuer.verifier(), issuer.environment_uuid
    else:
        issuer = None
        settings_or_exit(parser)
        production = os.environ.get("DEPLOY_ENVIRONMENT_UUID", "")
        if not production:
            parser.error("set DEPLOY_ENVIRONMENT_UUID, the environment the /deploy route admits")
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
    print(f"Listening on {url} (API docs at {url}/docs)", flush=True)
    if issuer is not None:
        print("Try (tokens from a fake issuer, valid for an hour; refusals end with their answer):")
        print("\n".join(issuer.curl_lines(url, path="/whoami", deploy_path="/deploy")), flush=True)
    config = uvicorn.Config(
        create_app(verifier, production, trusted), log_level="warning", proxy_headers=False
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if issuer is not None:
            issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
