"""The Flask and Starlette examples as real servers load them, for tests/test_topology.py.

Settings come from ``BBVERIFY_*`` environment variables, as in production.
Each answer carries ``X-Worker-Pid`` so the test can tell the workers apart.
``flask_app`` is built at import, so under ``gunicorn --preload`` it is built
in the master; like a service that warms its keys without blocking start-up,
it starts ``warm_up()`` on a thread there, so a fetch is in flight when the
workers are forked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import flask_app as _flask_example
import starlette_app as _starlette_example

from bbverify import KeysUnavailable
from bbverify.config import verifier_from_env
from bbverify.flask import EXTENSION_KEY


def _warm(verifier: Any) -> None:
    with contextlib.suppress(KeysUnavailable):  # requests will fetch again
        verifier.warm_up()


def _wsgi_with_pid(app: Any) -> Any:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return app(environ, start)

    return wrapped


def _asgi_with_pid(app: Any) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                headers = [*message.get("headers", []), (b"x-worker-pid", str(os.getpid()).encode())]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def _build_flask() -> Any:
    app = _flask_example.create_app({k: v for k, v in os.environ.items() if k.startswith("BBVERIFY_")})
    verifier = app.extensions[EXTENSION_KEY].verifier
    threading.Thread(target=_warm, args=(verifier,), daemon=True).start()
    return _wsgi_with_pid(app)


flask_app = _build_flask() if os.environ.get("TOPOLOGY_SERVER") == "gunicorn" else None


def starlette_app() -> Any:
    """uvicorn ``--factory``: one per worker process."""
    verifier = verifier_from_env()
    threading.Thread(target=_warm, args=(verifier,), daemon=True).start()
    return _asgi_with_pid(_starlette_example.create_app(verifier))
