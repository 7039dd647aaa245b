"""A Flask app that only Bitbucket Pipelines steps can call.

Offline, against a fake issuer (prints curl commands with tokens)::

    python examples/flask_app.py --fake

Against your workspace: every BBVERIFY_* environment variable is copied into
``app.config`` (BBVERIFY_WORKSPACE, BBVERIFY_WORKSPACE_UUID, BBVERIFY_REPOSITORIES,
BBVERIFY_TRUSTED_PROXIES, ...)::

    BBVERIFY_WORKSPACE=acme BBVERIFY_WORKSPACE_UUID={...} python examples/flask_app.py
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from flask import Blueprint, Flask
from werkzeug.serving import make_server

from bbverify import ConfigurationError, PipelineClaims
from bbverify.flask import BBVerify, current_claims, require_pipeline
from bbverify.policies import RequestContext
from bbverify.testing import FakeIssuer

api = Blueprint("api", __name__)


def deployment_steps_only(claims: PipelineClaims, context: RequestContext) -> bool:
    """A per-route rule: only deployment steps may call /deploy."""
    return claims.is_deployment


@api.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"ok": True}


@api.get("/whoami")
@require_pipeline()  # no verifier given: use the app's BBVerify extension
def whoami() -> dict[str, Any]:
    return dict(current_claims().summary())


@api.post("/deploy")
@require_pipeline(None, deployment_steps_only)
def deploy() -> dict[str, Any]:
    return {"deploying_to": current_claims().deployment_environment_uuid}


def create_app(config: dict[str, Any]) -> Flask:
    """An app factory: BBVerify reads its settings from ``app.config``."""
    app = Flask(__name__)
    app.config.update(config)
    BBVerify(app)
    app.register_blueprint(api)
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

    issuer = FakeIssuer().start() if args.fake else None
    if issuer is not None:
        config = {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": issuer.audience}
    else:
        config = settings_or_exit(parser)
    try:
        app = create_app(config)
    except ConfigurationError as exc:
        parser.error(str(exc))
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    print(f"Listening on {url}", flush=True)
    if issuer is not None:
        print("Try (tokens from a fake issuer, valid for an hour; refusals end with their answer):")
        print(
            "\n".join(
                issuer.curl_lines(
                    url, path="/whoami", deploy_path="/deploy", deploy_refusal="403 policy_denied"
                )
            ),
            flush=True,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if issuer is not None:
            issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
