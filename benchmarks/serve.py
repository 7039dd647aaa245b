"""A tiny app behind a real server, for the HTTP section (run as a subprocess).

``python -m benchmarks.serve asgi|wsgi open|protected CONFIG_JSON`` binds
127.0.0.1 on a free port, prints ``PORT <n>`` once it can take requests, and
serves until killed. "open" has no middleware; "protected" wraps the same
app in bbverify's middleware with the realistic rule set.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any


def _verifier(config: dict[str, Any]) -> Any:
    from bbverify import Verifier
    from bbverify.policies import Environments, IPRanges, Repositories, StepDuration

    verifier = Verifier(
        issuer=config["issuer"],
        audience=config["audience"],
        policies=[
            Repositories(config["repository"], *config["other_repositories"]),
            Environments(config["environment"]),
            IPRanges(config["cidrs"]),
            StepDuration(max_minutes=config["max_minutes"]),
        ],
    )
    verifier.warm_up()
    return verifier


def _asgi(protected: bool, config: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Any = Starlette(routes=[Route("/", hello)])
    if protected:
        from bbverify.asgi import PipelineAuthMiddleware

        app = PipelineAuthMiddleware(app, verifier=_verifier(config))
    return app


def _wsgi(protected: bool, config: dict[str, Any]) -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        return "ok"

    if protected:
        from bbverify.wsgi import PipelineAuthMiddleware

        app.wsgi_app = PipelineAuthMiddleware(app.wsgi_app, verifier=_verifier(config))  # type: ignore[method-assign]
    return app


def main() -> None:
    kind, mode, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    config = json.loads(raw)
    protected = mode == "protected"
    if kind == "asgi":
        import uvicorn

        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets
        # that say they are TCP, and without it Nagle adds ~40 ms per response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)  # connections queue until uvicorn accepts them
        app = _asgi(protected, config)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        server.run(sockets=[sock])
    else:
        import logging

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log
        wsgi_server = make_server("127.0.0.1", 0, _wsgi(protected, config), threaded=True)
        print(f"PORT {wsgi_server.server_port}", flush=True)
        wsgi_server.serve_forever()


if __name__ == "__main__":
    main()
