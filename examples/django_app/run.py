"""Run the example Django project (examples/django_app) on 127.0.0.1.

Offline, against a fake issuer (prints curl commands with tokens)::

    python examples/django_app/run.py --fake

Against your workspace, edit ``settings.py`` (or set EXAMPLE_WORKSPACE,
EXAMPLE_WORKSPACE_UUID and EXAMPLE_PRODUCTION_ENV) and run it without
``--fake``; in production serve ``django_app.wsgi`` with gunicorn or
``django_app.asgi`` with uvicorn instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The project package is this directory; make it importable as "django_app".
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

import django
from django.conf import settings
from django.core.management import call_command
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application

from bbverify.testing import FakeIssuer


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fake", action="store_true", help="use a fake issuer on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)

    issuer = FakeIssuer().start() if args.fake else None
    if issuer is not None:
        # Same settings, pointed at the fake issuer and its production environment.
        table = {k: v for k, v in settings.BBVERIFY.items() if k not in ("workspace", "workspace_uuid")}
        table.update(issuer=issuer.issuer, audience=issuer.audience, workspace_uuid=issuer.workspace_uuid)
        deploy = {"allow": [{"environments": [issuer.environment_uuid]}]}
        table["policies"] = dict(table["policies"], deploy=deploy)
        settings.BBVERIFY = table
    django.setup()
    call_command("check")  # the system checks: a settings mistake stops here, naming its path

    server = ThreadedWSGIServer(("127.0.0.1", args.port), QuietHandler)
    server.set_app(get_wsgi_application())
    url = f"http://127.0.0.1:{server.server_port}"
    print(f"Listening on {url}", flush=True)
    if issuer is not None:
        print("Try (tokens from a fake issuer, valid for an hour; refusals end with their answer):")
        lines = issuer.curl_lines(
            url, path="/whoami", deploy_path="/deploy", deploy_refusal="403 environment_required"
        )
        print("\n".join(lines), flush=True)
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
