"""Apps for the server-process recipes of docs/adapters.md (gunicorn, ``uvicorn --workers``).

Built from the environment, as a deployment would: the verifier from
``BBVERIFY_*`` (:func:`bbverify.config.verifier_from_env`) and the proxy
setting from ``APP_TRUSTED_PROXIES``. Each answers ``/whoami`` with the
client address the rules saw.
"""

from __future__ import annotations

import os
from typing import Any

from bbverify.config import verifier_from_env
from bbverify.http import request_client_ip

_ADAPTER_ONLY = ("APP_TRUSTED_PROXIES",)


def _trusted() -> str | None:
    return os.environ.get("APP_TRUSTED_PROXIES") or None


def make_asgi() -> Any:
    """The Starlette app behind :class:`bbverify.asgi.PipelineAuthMiddleware` (``uvicorn --factory``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bbverify.asgi import PipelineAuthMiddleware

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"client_ip": request_client_ip(request), "pid": os.getpid()})

    app = Starlette(routes=[Route("/whoami", whoami)])
    return PipelineAuthMiddleware(app, verifier=verifier_from_env(), trusted_proxies=_trusted())


def make_wsgi() -> Any:
    """The bare WSGI app behind :class:`bbverify.wsgi.PipelineAuthMiddleware` (gunicorn)."""
    import json

    from bbverify.wsgi import PipelineAuthMiddleware

    def whoami(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = json.dumps(
            {"client_ip": request_client_ip(environ), "remote_addr": environ.get("REMOTE_ADDR")}
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]

    return PipelineAuthMiddleware(whoami, verifier=verifier_from_env(), trusted_proxies=_trusted())
