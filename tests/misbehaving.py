"""One small misbehaving HTTP server for deadline tests: plain sockets and threads on 127.0.0.1.

Each accepted connection reads the request head and then acts out the
server's current *mode*:

* ``"ok"``: answers 200 with ``body()`` (JSON) and keeps the connection
  open for the next request, which gets the mode current then,
* ``"silent"``: accepts and never answers,
* ``"trickle_status"``: sends ``HTTP/1.1 200 OK`` one byte per ``interval``,
* ``"trickle_headers"``: a status line, then one header byte per ``interval``,
* ``"trickle_body"``: status and ``Transfer-Encoding: chunked`` headers, then
  one 1-byte chunk per ``interval``, never the last chunk,
* ``"endless_headers"``: a status line, then header lines forever
  (``interval`` apart), never the blank line.

With ``tls=True`` the server speaks HTTPS with a self-signed certificate
for 127.0.0.1 (``cert_path`` is what a client should trust); in ``"silent"``
mode it then never even completes the TLS handshake.

``mode`` may be changed at any time; a connection keeps the mode it started
with. ``first_modes`` lists modes for the first connections, before ``mode``
applies. Every stalling mode stops at ``stop()`` or after ``max_stall``
seconds, so no thread outlives the test by more than that.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MODES = ("ok", "silent", "trickle_status", "trickle_headers", "trickle_body", "endless_headers")


class MisbehavingServer:
    def __init__(
        self,
        mode: str = "ok",
        *,
        body: Callable[[], Any] = lambda: {},
        interval: float = 0.25,
        max_stall: float = 20.0,
        first_modes: tuple[str, ...] = (),
        tls: bool = False,
    ) -> None:
        for m in (mode, *first_modes):
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}")
        self.mode = mode
        self.body = body
        self.interval = interval
        self.max_stall = max_stall
        self._first = list(first_modes)
        self.connections = 0
        self.requests = 0
        #: Connections currently stalling (a stalling mode that has not ended).
        self.stalling = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._tls: ssl.SSLContext | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cert_path = ""
        if tls:
            self._tmp = tempfile.TemporaryDirectory()
            self.cert_path, key_path = _self_signed(Path(self._tmp.name))
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(self.cert_path, key_path)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def queue(self, *modes: str) -> None:
        """Use ``modes`` for the next connections, then ``mode`` again."""
        with self._lock:
            self._first.extend(modes)

    def _stalled(self, started: float) -> bool:
        """Wait one interval; True when the connection must stop stalling."""
        return self._stop.wait(self.interval) or time.monotonic() - started > self.max_stall

    def _next_mode(self) -> str:
        with self._lock:
            self.requests += 1
            return self._first.pop(0) if self._first else self.mode

    def _stall(self, conn: socket.socket, mode: str) -> None:
        """Act out a stalling mode for its whole window (``max_stall``, or until ``stop()``).

        A client that hangs up (at its deadline, as it should) does not end
        the window early, so ``stalling`` counts windows still open: "the
        client recovered while the server was still stalling" means the
        client did not wait for the stall to end.
        """
        started = time.monotonic()
        alive = True

        def send(data: bytes) -> None:
            nonlocal alive
            if alive:
                try:
                    conn.sendall(data)
                except OSError:
                    alive = False

        if mode == "trickle_status":
            for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                if self._stalled(started):
                    return
                send(bytes([byte]))
            return
        if mode != "silent":
            send(b"HTTP/1.1 200 OK\r\n")
        if mode == "trickle_headers":
            send(b"X-Slow: ")
        elif mode == "trickle_body":
            send(b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        n = 0
        while not self._stalled(started):
            if mode == "trickle_headers":
                send(b"a")
            elif mode == "endless_headers":
                send(f"X-Header-{n}: {n}\r\n".encode())
            elif mode == "trickle_body":
                send(b"1\r\n \r\n")
            n += 1

    def _serve(self, conn: socket.socket) -> None:
        stalling = False
        try:
            conn.settimeout(self.max_stall)
            if self._tls is not None:
                if self.mode == "silent" and not self._first:
                    stalling = True
                    with self._lock:
                        self.stalling += 1
                    started = time.monotonic()
                    while not self._stalled(started):
                        pass  # never answer the ClientHello
                    return
                conn = self._tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._conns.append(conn)  # the plain socket object is detached now
            for _ in range(1000):  # requests on this keep-alive connection
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                mode = self._next_mode()  # the mode when this request arrived
                if mode != "ok":
                    break
                payload = json.dumps(self.body()).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
            else:
                return
            stalling = True
            with self._lock:
                self.stalling += 1
            self._stall(conn, mode)
        except OSError:
            pass  # the client gave up, as it should
        finally:
            conn.close()
            if stalling:
                with self._lock:
                    self.stalling -= 1

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()


def _self_signed(directory: Path) -> tuple[str, str]:
    """A throwaway certificate and key for 127.0.0.1; returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@contextmanager
def misbehaving(mode: str = "ok", **options: Any) -> Iterator[MisbehavingServer]:
    server = MisbehavingServer(mode, **options)
    try:
        yield server
    finally:
        server.stop()
