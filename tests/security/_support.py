"""Helpers shared by the security tests: forging tokens and loopback servers that count hits."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bbverify import InvalidToken, VerificationError, Verifier
from bbverify.testing import FakeIssuer, b64url

__all__ = ["CountingServer", "assert_rejected", "b64url", "compact", "counting_server", "jdump"]


def jdump(obj: Any) -> bytes:
    """Compact JSON, as a signer would write it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def compact(header: bytes, payload: bytes, signature: bytes) -> str:
    """Assemble a compact JWS from raw parts (no signing)."""
    return f"{b64url(header)}.{b64url(payload)}.{b64url(signature)}"


def assert_rejected(
    verifier: Verifier,
    issuer: FakeIssuer,
    token: object,
    code: str | set[str],
    error: type[VerificationError] = InvalidToken,
) -> VerificationError:
    """``token`` is refused with exactly ``error``/``code``, and a fresh valid token still passes.

    The second half catches poisoned caches: a rejection must leave no state
    that changes the next decision.
    """
    with pytest.raises(VerificationError) as info:
        verifier.verify(token)  # type: ignore[arg-type]
    exc = info.value
    assert type(exc) is error, repr(exc)
    codes = {code} if isinstance(code, str) else code
    assert exc.code in codes, repr(exc)
    claims = verifier.verify(issuer.mint())
    assert claims.workspace_uuid == issuer.workspace_uuid
    return exc


class CountingServer(ThreadingHTTPServer):
    """A loopback HTTP server that counts every request and answers with ``respond``.

    ``gate`` (when set up by the test) holds every answer until released, so a
    test can keep a fetch in flight for as long as it needs without sleeping.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, respond: Callable[[str], tuple[int, dict[str, str], bytes]]) -> None:
        self.respond = respond
        self.hits = 0
        self.paths: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _CountingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CountingHandler(BaseHTTPRequestHandler):
    server: CountingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        srv = self.server
        with srv._lock:
            srv.hits += 1
            srv.paths.append(self.path)
        srv.entered.set()
        if srv.gate is not None:
            srv.gate.wait(30)
        status, headers, body = srv.respond(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client may have given up, as it should
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _any


@contextmanager
def counting_server(
    respond: Callable[[str], tuple[int, dict[str, str], bytes]] | None = None,
) -> Iterator[CountingServer]:
    """Start a :class:`CountingServer` on 127.0.0.1 (port 0) for the duration of the block."""

    def default(path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, b'{"keys": []}'

    server = CountingServer(respond or default)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if server.gate is not None:
            server.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
