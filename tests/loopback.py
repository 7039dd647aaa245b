"""The suite's one loopback JSON-server harness: a real HTTP/1.1 server on 127.0.0.1, ephemeral port.

:class:`JSONServer` answers every request with ``document`` (JSON-encoded),
``status`` and ``headers``, all of which a test may change at any time. For
answers that depend on the request, ``respond(request)`` returns the whole
answer as ``(status, headers, body)``. ``delay`` (seconds) holds every answer;
``gate``, when a test sets it, holds every answer until the test sets the
event. Every wait is bounded (``MAX_HOLD`` seconds), and leaving the ``with``
block releases the gate, stops the server and joins its thread.

The server counts what it saw: ``hits``, ``paths`` and ``requests``
(:class:`Request`: method, path, headers). ``entered`` is set when a request
arrives, so a test can wait for a fetch to be in flight without sleeping.

Other servers in tests/ are different things: ``misbehaving.py`` stalls at the
byte level on raw sockets (deadline tests), ``servers.py`` runs the adapters
under real application servers and proxies (uvicorn, gunicorn, werkzeug,
nginx, Caddy), and ``bbverify.testing.FakeIssuer`` is the public test kit's issuer.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["MAX_HOLD", "Answer", "JSONServer", "Request", "json_answer"]

#: The longest a ``delay`` or ``gate`` holds one answer (seconds).
MAX_HOLD = 30.0

#: ``(status, headers, body)``: what :attr:`JSONServer.respond` returns.
Answer = tuple[int, dict[str, str], bytes]

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (``headers`` is case-insensitive for ``get``)."""

    method: str
    path: str
    headers: Message


def json_answer(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """An answer carrying ``document`` as JSON, with ``Content-Type: application/json`` and ``headers``."""
    return status, {**JSON_HEADERS, **(headers or {})}, json.dumps(document).encode()


class JSONServer:
    """A loopback HTTP server serving a JSON document; see the module docstring."""

    def __init__(
        self,
        document: Any = None,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        respond: Callable[[Request], Answer] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.document = document
        self.status = status
        self.headers = dict(headers or {})
        self.respond = respond
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}`` (no trailing slash)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def hits(self) -> int:
        """How many requests arrived."""
        return len(self.requests)

    @property
    def paths(self) -> list[str]:
        """The request targets, in arrival order."""
        return [r.path for r in self.requests]

    def __enter__(self) -> JSONServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer(self, request: Request) -> Answer:
        """Record ``request``, hold it as told, and return the answer."""
        with self._lock:
            self.requests.append(request)
        self.entered.set()
        if self.delay:
            time.sleep(min(self.delay, MAX_HOLD))
        gate = self.gate
        if gate is not None:
            gate.wait(MAX_HOLD)
        if self.respond is not None:
            return self.respond(request)
        return json_answer(self.document, self.status, self.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: JSONServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        status, headers, body = self.server.owner.answer(Request(self.command, self.path, self.headers))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(OSError):  # the client may have given up, as it should
                self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _any
